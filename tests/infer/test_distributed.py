"""Data-parallel fit: 2 gloo processes on the CPU against one process, in float64.

One spawn runs every distributed case (imports dominate the cost); the tests compare
its results with single-process runs in this process.
"""

import os
import socket
import time
from contextlib import contextmanager

import pyro
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pyro.infer import TraceEnum_ELBO

from pyro_manifold.infer import fit, load_checkpoint
from pyro_manifold.infer.distributed import (
    DataParallelGroup,
    data_parallel_group,
    torchrun_process_group,
)
from pyro_manifold.models import (
    Flow,
    FlowVAE,
    NoisyInjectiveFlow,
    VariationalMixtureOfFlows,
    VQAutoencoder,
    VQFlow,
)

WORLD = 2
B = 8  # per-rank batch; the global batch and the single-process batch are 2 * B
SEED = 5
TIMEOUT = 120.0


@contextmanager
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.8], [0.0, 0.4]], dtype=torch.float64
    )
    val = torch.randn(37, 2, generator=g, dtype=torch.float64)  # 37 rows: uneven shards
    return x, val


def _flow():
    pyro.clear_param_store()
    torch.manual_seed(0)
    return Flow(2, "realnvp", num_layers=2, hidden_dims=[8, 8])


def _vmonf(prior="learned"):
    pyro.clear_param_store()
    torch.manual_seed(0)
    return VariationalMixtureOfFlows(
        2, 2, num_layers=1, hidden_dims=[8, 8], encoder_hidden_dims=[8], prior=prior
    )


def _stochastic_models():
    pyro.clear_param_store()
    torch.manual_seed(0)
    return {
        "nif": NoisyInjectiveFlow(2, 1, top_flow="realnvp", top_layers=1, top_hidden_dims=[8]),
        "vae": FlowVAE(
            1,
            2,
            "iaf",
            num_flows=1,
            hidden_dims=[8],
            likelihood="gaussian",
            kl_warmup_steps=4,
        ),
        # k-means start on the first batch and dead-code re-seeding every call: both
        # edit the codebook in place, outside the gradient all-reduce
        "vq_autoencoder": VQAutoencoder(2, 1, num_charts=6, hidden_dims=[8], reseed_every=1),
        "vq_flow": VQFlow(
            2, num_charts=3, num_layers=1, hidden_dims=[8], autoencoder_hidden_dims=[8]
        ),
    }


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


COMMON = dict(device="cpu", progress=False, seed=SEED, lr=1e-2)


def _worker(rank, world, port, out_dir):
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    with torchrun_process_group("cpu"):  # as `python -m pyro_manifold fit` holds it
        x, val = _data()
        out = {}
        # distributed=None: data-parallel in the group joined from torchrun's variables
        flow = _flow()
        fit(flow.model, flow.guide, x, num_steps=1, batch_size=B, optimizer="sgd", **COMMON)
        out["group"] = (dist.get_rank(), dist.get_world_size(), dist.get_backend())
        out["one_step"] = _params(flow)
        flow = _flow()
        run = fit(
            flow.model,
            flow.guide,
            x,
            num_steps=6,
            batch_size=B,
            validation_data=val,
            validate_every=3,
            run_dir=os.path.join(out_dir, "run"),
            checkpoint_every=3,
            distributed=True,
            **COMMON,
        )
        out["run"] = (_params(flow), run.history, str(run.checkpoint))
        flow = _flow()
        fit(
            flow.model,
            flow.guide,
            x,
            num_steps=10,
            batch_size=B,
            resume=run.checkpoint,  # rank 0 reads it and sends it to rank 1
            run_dir=os.path.join(out_dir, "resumed"),
            **COMMON,
        )
        out["resumed"] = _params(flow)
        for prior in ("learned", "responsibilities"):
            vmonf = _vmonf(prior)
            elbo = TraceEnum_ELBO(max_plate_nesting=1)
            result = fit(
                vmonf.model, vmonf.guide, x, loss=elbo, num_steps=3, batch_size=B, **COMMON
            )
            state = _params(vmonf) + [vmonf.mixture_log_weights().detach()]
            out[f"vmonf_{prior}"] = (state, result.history["loss"])
        for name, module in _stochastic_models().items():
            result = fit(module.model, module.guide, x, num_steps=2, batch_size=B, **COMMON)
            if name == "vq_flow":  # then the chart flows on the atlas
                module.set_stage("flows", x)
                result = fit(module.model, module.guide, x, num_steps=2, batch_size=B, **COMMON)
            noise = pyro.sample("noise", pyro.distributions.Normal(0.0, 1.0))
            out[name] = (_params(module), list(module.buffers()), result.history["loss"], noise)
        if rank == 0:  # rank 0 is still busy (evaluating, plotting) when rank 1 is done
            time.sleep(0.5)
        out["block_end"] = time.monotonic()
    out["left"] = time.monotonic()
    out["initialized_after"] = dist.is_initialized()
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("distributed")
    context = mp.start_processes(
        _worker,
        args=(WORLD, _free_port(), str(out_dir)),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + TIMEOUT
    while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
        if time.monotonic() > deadline:
            for p in context.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"the {WORLD} training processes did not finish in {TIMEOUT} s")
    return out_dir, [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _assert_close(got, want, tol=1e-10):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=0, atol=tol)


def test_ranks_join_the_torchrun_group_from_the_environment(ranks):
    _, results = ranks
    assert [r["group"] for r in results] == [(0, 2, "gloo"), (1, 2, "gloo")]


def test_ranks_leave_the_group_together(ranks):
    # the barrier in torchrun_process_group: rank 1 destroys the group only once rank 0
    # is done with it, so rank 0 never loses a gloo connection it still holds
    _, results = ranks
    assert results[1]["left"] >= results[0]["block_end"]
    assert results[1]["block_end"] < results[0]["block_end"]  # rank 1 was done first
    assert not any(r["initialized_after"] for r in results)


def test_one_step_on_two_ranks_equals_one_step_on_their_union(ranks):
    _, results = ranks
    x, _ = _data()
    with _float64():
        flow = _flow()
        before = _params(flow)
        # SGD: a step is proportional to the gradient (Adam's first step is not)
        fit(flow.model, flow.guide, x, num_steps=1, batch_size=WORLD * B, optimizer="sgd", **COMMON)
    single = _params(flow)
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(single, before, strict=True))
    for r in results:
        _assert_close(r["one_step"], single)


def test_training_run_matches_one_process_with_reduced_validation(ranks):
    _, results = ranks
    x, val = _data()
    with _float64():
        flow = _flow()
        single = fit(
            flow.model,
            flow.guide,
            x,
            num_steps=6,
            batch_size=WORLD * B,
            validation_data=val,
            validate_every=3,
            **COMMON,
        )
    for params, history, _ in (r["run"] for r in results):
        _assert_close(params, _params(flow))
        assert history["val_step"] == single.history["val_step"] == [3, 6]
        for key in ("loss", "val_loss"):
            torch.testing.assert_close(
                torch.tensor(history[key]), torch.tensor(single.history[key]), rtol=0, atol=1e-10
            )


def test_rank_zero_writes_a_checkpoint_that_resumes_in_one_process(ranks):
    out_dir, results = ranks
    run_dir = out_dir / "run"
    assert {str(run_dir / "checkpoint.pt")} == {r["run"][2] for r in results}
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".lock",
        "best.pt",
        "checkpoint.pt",
        "history.json",
    ]
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["step"] == 6 and state["world_size"] == 2 and len(state["rank_rng"]) == 2
    x, val = _data()
    with _float64():
        flow = _flow()
        straight = fit(flow.model, flow.guide, x, num_steps=10, batch_size=WORLD * B, **COMMON)
        want = _params(flow)
        flow = _flow()
        resumed = fit(
            flow.model,
            flow.guide,
            x,
            num_steps=10,
            batch_size=WORLD * B,
            resume=run_dir / "checkpoint.pt",
            **COMMON,
        )
    assert resumed.step == 10
    _assert_close(_params(flow), want)
    for r in results:  # and resumes on 2 processes
        _assert_close(r["resumed"], want)
    assert resumed.history["step"] == [6, 10] and straight.history["step"] == [10]


@pytest.mark.parametrize("prior", ["learned", "responsibilities"])
def test_enumerated_guide_trains_data_parallel(ranks, prior):
    _, results = ranks
    x, _ = _data()
    with _float64():
        vmonf = _vmonf(prior)
        elbo = TraceEnum_ELBO(max_plate_nesting=1)
        single = fit(
            vmonf.model, vmonf.guide, x, loss=elbo, num_steps=3, batch_size=WORLD * B, **COMMON
        )
    want = _params(vmonf) + [vmonf.mixture_log_weights().detach()]
    if prior == "responsibilities":  # the prior moved: the comparison below is not vacuous
        assert (want[-1] - torch.full((2,), 0.5).log()).abs().max() > 1e-4
    # k is enumerated exactly: the loss has no sampling noise, so the runs agree (with
    # the prior updated from the responsibilities of the whole global batch)
    for state, losses in (r[f"vmonf_{prior}"] for r in results):
        _assert_close(state, want)
        assert losses == pytest.approx(single.history["loss"], abs=1e-10)


@pytest.mark.parametrize("name", ["nif", "vae", "vq_autoencoder", "vq_flow"])
def test_models_stay_in_sync_across_ranks(ranks, name):
    _, results = ranks
    (params0, buffers0, loss0, noise0), (params1, buffers1, loss1, noise1) = (
        r[name] for r in results
    )
    _assert_close(params1, params0, tol=0.0)
    for a, b in zip(buffers0, buffers1, strict=True):
        assert torch.equal(a, b)
    assert loss0 == loss1 and all(torch.isfinite(torch.tensor(loss0)))
    assert noise0 != noise1  # each rank draws its own latent noise (seed + rank)


def test_a_single_process_group_changes_nothing():
    group = data_parallel_group(None, torch.device("cpu"))
    assert isinstance(group, DataParallelGroup) and not group.distributed
    assert (group.rank, group.world_size, group.is_main) == (0, 1, True)
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    group.synchronize_([p], [])
    assert p.grad.tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="no process group"):
        data_parallel_group(True, torch.device("cpu"))
    with pytest.raises(ValueError, match="cannot be shared"):
        DataParallelGroup(torch.device("cpu")).local_batch_size(4, 0)
