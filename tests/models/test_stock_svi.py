"""Every model trains with Pyro's own SVI and optimisers, not only with our fit."""

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO

from pyro_manifold.infer import fit, load_checkpoint
from pyro_manifold.models import (
    Flow,
    FlowVAE,
    NoisyInjectiveFlow,
    VariationalMixtureOfFlows,
    VQAutoencoder,
    VQFlow,
)


def _cases():
    x2 = torch.randn(128, 2) * 0.5 + 1.0
    x3 = torch.randn(128, 3) * torch.tensor([1.0, 1.0, 0.1])
    binary = (torch.rand(128, 6) < 0.3).float()
    enum = TraceEnum_ELBO(max_plate_nesting=1)
    vq = VQFlow(3, num_charts=3, flow="realnvp", num_layers=2, hidden_dims=[8])
    vq.set_stage("flows", x3)
    return {
        "Flow": (lambda: Flow(2, "maf", num_layers=2, hidden_dims=[8]), x2, Trace_ELBO()),
        "Flow_spline_batch_norm": (
            lambda: Flow(2, "spline_coupling", num_layers=2, hidden_dims=[8], batch_norm=True),
            x2,
            Trace_ELBO(),
        ),
        "NoisyInjectiveFlow": (lambda: NoisyInjectiveFlow(3, 2, top_layers=1), x3, Trace_ELBO()),
        "VariationalMixtureOfFlows": (
            lambda: VariationalMixtureOfFlows(2, 2, "realnvp", num_layers=1),
            x2,
            enum,
        ),
        "VariationalMixtureOfFlows_spline": (
            lambda: VariationalMixtureOfFlows(
                2, 2, "spline_coupling", num_layers=1, hidden_dims=[8]
            ),
            x2,
            enum,
        ),
        "FlowVAE": (lambda: FlowVAE(2, 6, "iaf", hidden_dims=[8]), binary, Trace_ELBO()),
        "FlowVAE_pcp": (
            lambda: FlowVAE(2, 6, "pcp", num_flows=1, hidden_dims=[8]),
            binary,
            Trace_ELBO(),
        ),
        "VQAutoencoder": (lambda: VQAutoencoder(3, 2, 3, hidden_dims=[8]), x3, Trace_ELBO()),
        "VQFlow": (lambda: vq, x3, Trace_ELBO()),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_pyro_svi_trains_every_parameter(name):
    build, x, elbo = _cases()[name]
    torch.manual_seed(0)
    build()  # an earlier instance of the same class leaves entries in the param store
    torch.manual_seed(1)
    m = build()
    trainable = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    for _ in range(5):
        svi.step(x)
    unchanged = [
        n for n, p in m.named_parameters() if n in trainable and torch.equal(p, trainable[n])
    ]
    assert trainable and not unchanged


def test_fit_saves_module_parameters_once(tmp_path):
    flow = Flow(2, "realnvp", num_layers=1, hidden_dims=[8])
    pyro.param("extra", torch.zeros(2))  # an unrelated site in the store is not saved
    fit(flow.model, flow.guide, torch.randn(64, 2), num_steps=3, device="cpu", progress=False,
        run_dir=tmp_path)  # fmt: skip
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["params"] == {}
    assert set(state["modules"][0]) == set(flow.state_dict())


def test_nested_model_registers_each_parameter_once():
    # VQFlow's atlas stage runs its autoencoder's model: its parameters must be stored once,
    # under VQFlow's name, and a second VQFlow must replace the first one's entries cleanly.
    x = torch.randn(64, 3)
    for seed in (0, 1):
        torch.manual_seed(seed)
        vq = VQFlow(3, num_charts=3, flow="realnvp", num_layers=1, hidden_dims=[8])
        svi = SVI(vq.model, vq.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        svi.step(x)
        store = pyro.get_param_store()
        stored = [store._params[name] for name in store.keys()]
        assert len({id(p) for p in stored}) == len(stored)
        assert all(name.startswith("VQFlow$$$") for name in store.keys())
        ours = {id(p) for p in vq.parameters() if p.requires_grad}
        assert {id(p) for p in stored} == ours


@pytest.mark.parametrize("name", list(_cases()))
def test_pyro_svi_trains_with_evaluations_without_gradients_in_between(name):
    """evaluate_loss (under no_grad) between steps never freezes a model's training."""
    build, x, elbo = _cases()[name]
    torch.manual_seed(0)
    m = build()
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 2e-2}), elbo)
    trainable = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}

    def evaluate():  # the same draws each time: the losses compare the parameters
        with torch.random.fork_rng():
            torch.manual_seed(2)
            return svi.evaluate_loss(x)

    before = evaluate()
    for _ in range(10):
        svi.step(x)
        with torch.no_grad():
            svi.evaluate_loss(x)
    moved = [
        n for n, p in m.named_parameters() if n in trainable and not torch.equal(p, trainable[n])
    ]
    assert moved, "no parameter changed: a cached no-grad value was served to the steps"
    assert evaluate() < before
