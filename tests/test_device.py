"""End-to-end device tests: every model configuration trains, scores, samples and checkpoints
on the device named by ``PYRO_MANIFOLD_TEST_DEVICE`` (default ``cpu``).

Per configuration (one row of :func:`_cases`): build with a fixed seed, ``.to(DEVICE)``,
a few :func:`~pyro_manifold.infer.fit` steps on the fast path with ``sync_every`` 1 and
3 (the per-step read, and fused Adam skipping on the device), then check that every
parameter, buffer and output is on ``DEVICE`` in float32; the model's evaluation,
``sample`` and ``pyro.infer.Predictive``; the checkpoint loaded on the CPU into a fresh
CPU model, compared with the device model, and moved back to the device; and
``resume=`` on the device (on the CPU also against an uninterrupted run, which ``fit``
promises to equal exactly there).

Run on a GPU with ``PYRO_MANIFOLD_TEST_DEVICE=cuda pytest -m device``. The tiny models
and data keep the whole file to seconds on one CPU thread, so it also runs in the
ordinary suite.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import pytest
import torch
from pyro.infer import ELBO, Predictive, Trace_ELBO, TraceEnum_ELBO
from torch import Tensor, nn

from pyro_manifold.datasets import load_dataset
from pyro_manifold.infer import fit, load_checkpoint
from pyro_manifold.metrics import importance_log_likelihood, iwae_log_likelihood
from pyro_manifold.models import (
    Flow,
    FlowVAE,
    NoisyInjectiveFlow,
    VariationalMixtureOfFlows,
    VQAutoencoder,
    VQFlow,
)

DEVICE = torch.device(os.environ.get("PYRO_MANIFOLD_TEST_DEVICE", "cpu"))


def _device_unusable(device: torch.device) -> str | None:
    """Why ``device`` cannot be used here, or ``None`` when it can."""
    if device.type == "cuda" and not torch.cuda.is_available():
        return "torch.cuda.is_available() is False (no CUDA device or no CUDA build of torch)"
    try:
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as e:
        return f"{type(e).__name__}: {e}"
    return None


_UNUSABLE = _device_unusable(DEVICE)
if _UNUSABLE is not None:
    pytest.skip(
        f"PYRO_MANIFOLD_TEST_DEVICE={os.environ.get('PYRO_MANIFOLD_TEST_DEVICE')!r} names "
        f"device {DEVICE}, which is not available: {_UNUSABLE}",
        allow_module_level=True,
    )

pytestmark = pytest.mark.device

NUM_STEPS, RESUMED_STEPS, SYNC_EVERY = 6, 9, 3
FIT_OPTIONS = dict(
    batch_size=64,
    lr=3e-3,
    device=DEVICE,
    sync_every=SYNC_EVERY,  # needs adam/adamw: fused, on the CPU as on CUDA
    log_every=3,
    checkpoint_every=3,
    progress=False,
    fast=True,
    seed=0,
)


# -- data (CPU tensors, built once) ------------------------------------------------------
@functools.cache
def _moons() -> tuple[Tensor]:
    return (load_dataset("two_moons", 256, seed=0).data,)


@functools.cache
def _moons_labelled() -> tuple[Tensor, Tensor]:
    data = load_dataset("two_moons", 256, seed=0)
    y = data.labels.clone()
    y[torch.arange(256) % 4 != 0] = -1  # a quarter labelled, -1 = unlabelled
    return data.data, y


@functools.cache
def _sphere() -> tuple[Tensor]:
    return (load_dataset("sphere", 256, seed=0, noise=0.03).data,)


@functools.cache
def _binary() -> tuple[Tensor]:
    generator = torch.Generator().manual_seed(0)
    return ((torch.rand(256, 8, generator=generator) < 0.3).float(),)


# -- evaluations -------------------------------------------------------------------------
def _log_prob(m: nn.Module, x: Tensor) -> Tensor:
    return m.log_prob(x)


def _vae_networks(m: FlowVAE, x: Tensor) -> Tensor:
    """Deterministic encoder and decoder outputs, per point."""
    loc, scale, h = m.encode(x)
    return torch.cat([loc, scale, h, m.decode(loc)], -1)


def _vae_iwae(m: FlowVAE, x: Tensor) -> Tensor:
    return iwae_log_likelihood(m, x, num_samples=4, chunk_size=4)


def _nif_prior_of_code(m: NoisyInjectiveFlow, x: Tensor) -> Tensor:
    """Deterministic: the prior flow's density at the pseudo-inverse of the top flow."""
    return m.prior().log_prob(m.encode(x))


def _nif_importance(m: NoisyInjectiveFlow, x: Tensor) -> Tensor:
    return importance_log_likelihood(m.model, m.guide, x, num_samples=4, chunk_size=4)


def _vq_negative_loss(m: VQAutoencoder, x: Tensor) -> Tensor:
    return -m.loss(x)


def _vq_distances(m: VQAutoencoder, x: Tensor) -> Tensor:
    return m.chart_distances(x)


def _sample(m: nn.Module) -> Any:
    return m.sample(7)


def _vq_outputs(m: VQAutoencoder) -> Any:
    x = _sphere()[0][:7].to(DEVICE)
    return m.reconstruct(x), m.assign(x), m.chart_membership(x, 2, 0.1)


# -- stage 2 of VQ-Flows: the atlas is trained first (on the CPU), then frozen -------------
def _vq_flow_second_stage(data: tuple[Tensor, ...]) -> VQFlow:
    vq = VQFlow(
        3, num_charts=3, latent_dim=2, flow="maf", num_layers=1, hidden_dims=[8],
        autoencoder_hidden_dims=[8],
    )  # fmt: skip
    fit(vq.model, vq.guide, data, num_steps=3, batch_size=64, device="cpu", progress=False)
    vq.set_stage("flows", data[0])
    return vq


@dataclass(frozen=True)
class Case:
    """One model configuration.

    ``build(data)`` makes the model on the CPU (the caller seeds torch); ``score(m, x)``
    is deterministic (compared across devices); ``evaluate(m, x)`` is the model's own
    evaluation, which may draw randomness (seeded, compared on the same device);
    ``outputs(m)`` draws samples or other outputs; ``predictive`` holds the argument
    tuples for ``Predictive`` (``"data"``: the first rows of the data, with the guide).
    """

    build: Callable[[tuple[Tensor, ...]], nn.Module]
    data: Callable[[], tuple[Tensor, ...]]
    loss: Callable[[], ELBO] = Trace_ELBO
    score: Callable[[nn.Module, Tensor], Tensor] = _log_prob
    evaluate: Callable[[nn.Module, Tensor], Tensor] | None = None
    outputs: Callable[[nn.Module], Any] = _sample
    generate: tuple | None = None  # Predictive(model) arguments for new points


def _enum() -> ELBO:
    return TraceEnum_ELBO(max_plate_nesting=1)


def _cases() -> dict[str, Case]:
    flow = dict(num_layers=2, hidden_dims=[8])
    nif = dict(top_layers=1, top_hidden_dims=[8])
    mix = dict(num_layers=1, hidden_dims=[8], encoder_hidden_dims=[8])
    vae = dict(hidden_dims=[8], flow_hidden_dims=[8])
    vq = dict(num_charts=3, num_layers=1, hidden_dims=[8], autoencoder_hidden_dims=[8])
    return {
        "flow-maf": Case(lambda d: Flow(2, "maf", batch_norm=True, **flow), _moons,
                         generate=(None, 5)),
        "flow-realnvp": Case(lambda d: Flow(2, "realnvp", **flow), _moons, generate=(None, 5)),
        "flow-spline": Case(lambda d: Flow(2, "spline_coupling", **flow), _moons,
                            generate=(None, 5)),
        "nif-maf": Case(lambda d: NoisyInjectiveFlow(3, 2, top_flow="maf", **nif), _sphere,
                        generate=(None, 5)),
        "nif-realnvp-prior-flow": Case(
            lambda d: NoisyInjectiveFlow(3, 2, top_flow="realnvp", prior_flow="realnvp",
                                         prior_layers=1, prior_hidden_dims=[8], **nif),
            _sphere, score=_nif_prior_of_code, evaluate=_nif_importance, generate=(None, 5),
        ),
        "nif-spline-mixture-prior": Case(
            lambda d: NoisyInjectiveFlow(3, 2, top_flow="spline_coupling", prior_components=2,
                                         **nif),
            _sphere, generate=(None, 5),
        ),
        "vmonf-unsupervised": Case(
            lambda d: VariationalMixtureOfFlows(
                2, 2, "realnvp", prior="responsibilities", initial_temperature=2.0,
                temperature_decay=0.9, **mix),
            _moons, loss=_enum, generate=(None, None, 5),
        ),
        "vmonf-semi-supervised": Case(
            lambda d: _initialized(VariationalMixtureOfFlows(2, 2, "maf", prior="learned", **mix),
                                   d),
            _moons_labelled, loss=_enum, generate=(None, None, 5),
        ),
        "flowvae-gaussian": Case(
            lambda d: FlowVAE(2, 3, None, likelihood="gaussian", kl_warmup_steps=4, **vae),
            _sphere, score=_vae_networks, evaluate=_vae_iwae, generate=(None, 5),
        ),
        "flowvae-iaf": Case(lambda d: FlowVAE(2, 8, "iaf", num_flows=2, **vae), _binary,
                            score=_vae_networks, evaluate=_vae_iwae, generate=(None, 5)),
        "flowvae-pcp": Case(lambda d: FlowVAE(2, 8, "pcp", num_flows=1, **vae), _binary,
                            score=_vae_networks, evaluate=_vae_iwae, generate=(None, 5)),
        "vq-autoencoder": Case(lambda d: VQAutoencoder(3, 2, 4, hidden_dims=[8]), _sphere,
                               score=_vq_distances, evaluate=_vq_negative_loss,
                               outputs=_vq_outputs),
        "vqflow-atlas": Case(lambda d: VQFlow(3, flow="realnvp", **vq), _sphere),
        "vqflow-flows": Case(_vq_flow_second_stage, _sphere),
    }  # fmt: skip


def _initialized(m: VariationalMixtureOfFlows, data: tuple[Tensor, ...]) -> nn.Module:
    m.initialize_components(data[0], y=data[1])  # seeded k-means on the CPU buffers
    return m


CASES = _cases()


# -- checks ------------------------------------------------------------------------------
def _tensors(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _assert_on(obj: Any, device: torch.device, what: str) -> None:
    tensors = _tensors(obj)
    assert tensors, f"{what}: no tensors"
    for t in tensors:
        assert t.device.type == device.type, f"{what}: tensor on {t.device}, expected {device}"
        if t.is_floating_point():
            assert t.dtype == torch.float32, f"{what}: dtype {t.dtype}, expected float32"


def _assert_module_on(m: nn.Module, device: torch.device) -> None:
    for name, t in [*m.named_parameters(), *m.named_buffers()]:
        assert t.device.type == device.type, f"{name} on {t.device}, expected {device}"
        if t.is_floating_point():
            assert t.dtype == torch.float32, f"{name}: dtype {t.dtype}, expected float32"


def _assert_finite_per_point(value: Tensor, n: int, what: str) -> None:
    _assert_on(value, DEVICE, what)
    assert value.shape[0] == n, f"{what}: shape {tuple(value.shape)}, expected ({n}, ...)"
    assert torch.isfinite(value).all(), f"{what}: not finite"


def _seeded(fn: Callable[[nn.Module, Tensor], Tensor], m: nn.Module, x: Tensor) -> Tensor:
    pyro.set_rng_seed(7)
    with torch.no_grad():
        return fn(m, x)


def _cpu_state(m: nn.Module) -> dict[str, Any]:
    return {k: v.cpu() if isinstance(v, Tensor) else v for k, v in m.state_dict().items()}


def _assert_states_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], Tensor):
            assert a[k].device.type == "cpu" and b[k].device.type == "cpu", k
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        else:  # extra state (e.g. a temperature step)
            assert a[k] == b[k], k


def _build(case: Case, data: tuple[Tensor, ...], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    return case.build(data)


# -- the test ----------------------------------------------------------------------------
@pytest.mark.parametrize("sync_every", [1, SYNC_EVERY], ids=["sync1", "sync3"])
@pytest.mark.parametrize("name", list(CASES))
def test_model_end_to_end_on_device(name, sync_every, tmp_path):
    options = {**FIT_OPTIONS, "sync_every": sync_every}  # per-step read, or deferred
    case = CASES[name]
    data = case.data()
    data_dev = tuple(t.to(DEVICE) for t in data)
    x_dev, n_eval = data_dev[0][:32], 32
    evaluate = case.evaluate or case.score
    run = tmp_path / "run"

    # build, move, train a few steps on the fast path, finiteness read per step or deferred
    m = _build(case, data, seed=0).to(DEVICE)
    _assert_module_on(m, DEVICE)
    result = fit(m.model, m.guide, data_dev, loss=case.loss(), num_steps=NUM_STEPS,
                 run_dir=run, **options)  # fmt: skip
    assert result.step == NUM_STEPS and not result.skipped_steps
    assert result.history["step"] == [3, 6]
    assert all(torch.isfinite(torch.tensor(result.history["loss"])))
    _assert_module_on(m, DEVICE)
    assert not m.training

    # the model's evaluation, samples and the posterior predictive, on the device
    score = _seeded(case.score, m, x_dev)
    _assert_finite_per_point(score, n_eval, "score")
    value = _seeded(evaluate, m, x_dev)
    _assert_finite_per_point(value, n_eval, "evaluation")
    _assert_on(case.outputs(m), DEVICE, "samples")
    predictive = Predictive(m.model, guide=m.guide, num_samples=2)
    _assert_on(predictive(*(t[:8] for t in data_dev)), DEVICE, "Predictive with the guide")
    if case.generate is not None:
        new = Predictive(m.model, num_samples=2)(*case.generate)
        _assert_on(new, DEVICE, "Predictive of new points")
        assert new["x"].shape[:2] == (2, 5)

    # the checkpoint: written on the device, loaded on the CPU into a fresh CPU model
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == NUM_STEPS
    for t in _tensors(state):
        assert t.device.type == "cpu"
    assert len(state["modules"]) == 1
    cpu_model = _build(case, data, seed=1)
    cpu_model.load_state_dict(state["modules"][0])
    cpu_model.eval()
    _assert_module_on(cpu_model, torch.device("cpu"))
    _assert_states_equal(_cpu_state(cpu_model), _cpu_state(m))
    cpu_score = _seeded(case.score, cpu_model, data[0][:n_eval])
    assert cpu_score.device.type == "cpu"
    torch.testing.assert_close(cpu_score, score.cpu(), rtol=1e-3, atol=1e-3)
    # ... and back on the device: the same model as the trained one
    back = cpu_model.to(DEVICE)
    _assert_module_on(back, DEVICE)
    torch.testing.assert_close(_seeded(case.score, back, x_dev), score, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_seeded(evaluate, back, x_dev), value, rtol=1e-5, atol=1e-5)

    # resume on the device from the checkpoint into a fresh model
    pyro.clear_param_store()
    resumed = _build(case, data, seed=2).to(DEVICE)
    result = fit(resumed.model, resumed.guide, data_dev, loss=case.loss(),
                 num_steps=RESUMED_STEPS, resume=run / "checkpoint.pt",
                 run_dir=tmp_path / "resumed", **options)  # fmt: skip
    assert result.step == RESUMED_STEPS
    assert result.history["step"] == [3, 6, 9]
    assert result.history["loss"][:2] == state["history"]["loss"]
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["step"] == RESUMED_STEPS
    _assert_module_on(resumed, DEVICE)
    _assert_finite_per_point(_seeded(evaluate, resumed, x_dev), n_eval, "resumed evaluation")
    _assert_on(case.outputs(resumed), DEVICE, "resumed samples")

    if DEVICE.type == "cpu":  # fit promises an exact continuation on the CPU
        pyro.clear_param_store()
        straight = _build(case, data, seed=0).to(DEVICE)
        uninterrupted = fit(straight.model, straight.guide, data_dev, loss=case.loss(),
                            num_steps=RESUMED_STEPS, **options)  # fmt: skip
        assert uninterrupted.history["loss"] == result.history["loss"]
        _assert_states_equal(_cpu_state(resumed), _cpu_state(straight))


# -- fit(cuda_graph=True): the step captured once and replayed ---------------------------
needs_cuda = pytest.mark.skipif(
    DEVICE.type != "cuda", reason="cuda_graph needs PYRO_MANIFOLD_TEST_DEVICE=cuda"
)
GRAPH_OPTIONS = {**FIT_OPTIONS, "checkpoint_every": 100, "sync_every": 5, "log_every": 5}


def _fit_quietly(
    m: nn.Module, data: tuple[Tensor, ...], loss: ELBO, **options
) -> tuple[list[str], int]:
    """Fit; return the cuda_graph warnings (why the step ran eagerly) and replayed steps."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(m.model, m.guide, tuple(t.to(DEVICE) for t in data), loss=loss,
                     **{**GRAPH_OPTIONS, **options})  # fmt: skip
    notes = [str(w.message) for w in caught if "cuda_graph" in str(w.message)]
    return notes, result.graphed_steps


@needs_cuda
def test_cuda_graph_replays_the_eager_step():
    """A flow's step has no randomness: replayed and eager training agree to rounding."""
    runs = []
    for graphed in (False, True):
        m = _build(CASES["flow-maf"], _moons(), seed=0).to(DEVICE)  # batch norm: buffers
        notes, replayed = _fit_quietly(m, _moons(), Trace_ELBO(), num_steps=20,
                                       cuda_graph=graphed)  # fmt: skip
        assert not notes and replayed == (17 if graphed else 0)
        runs.append(_cpu_state(m))
    for key in runs[0]:
        torch.testing.assert_close(runs[1][key], runs[0][key], rtol=1e-4, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("name", list(CASES))
def test_cuda_graph_trains_every_configuration_or_says_why(name):
    case = CASES[name]
    m = _build(case, case.data(), seed=0).to(DEVICE)
    x = case.data()[0][:32].to(DEVICE)
    before = _seeded(case.score, m, x)
    notes, replayed = _fit_quietly(m, case.data(), case.loss(), num_steps=12, cuda_graph=True)
    # either the step was captured and replayed after the warm-up, or fit said why not
    assert (replayed == 12 - 3 and not notes) or (
        replayed == 0 and len(notes) == 1 and "training goes on eagerly" in notes[0]
    ), (replayed, notes)
    _assert_module_on(m, DEVICE)
    after = _seeded(case.score, m, x)  # the same input object: no stale cache entry
    _assert_finite_per_point(after, 32, f"{name} score after graph training")
    assert not torch.equal(before, after), "training changed nothing the model reports"


@needs_cuda
def test_cuda_graph_says_why_a_changing_schedule_cannot_be_replayed():
    m = _build(CASES["vmonf-unsupervised"], _moons(), seed=0).to(DEVICE)  # annealed
    notes, replayed = _fit_quietly(m, _moons(), _enum(), num_steps=8, cuda_graph=True)
    assert len(notes) == 1 and "step_kwargs" in notes[0] and replayed == 0
