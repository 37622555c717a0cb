"""Every model's ``sample`` draws in batches: no tensor of the draw holds more than a batch.

The draws are watched with a dispatch mode that records the rows of every tensor that an
operation returns; only the buffers that gather the draws (``aten.empty``) may hold all
``num_samples`` rows. Not a memory or time measurement: a count of rows.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pyro_manifold.models import (
    Flow,
    FlowVAE,
    NoisyInjectiveFlow,
    VariationalMixtureOfFlows,
    VQFlow,
)

N, BATCH = 1010, 100  # eleven batches, the last of ten points


class RowWatcher(TorchDispatchMode):
    """The operation and shape of every tensor an operation returns."""

    def __init__(self):
        super().__init__()
        self.outputs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dim() > 0:
                self.outputs.append((func.overloadpacket, tuple(t.shape)))
        return out


def _vq_flow():
    vq = VQFlow(3, num_charts=2, num_layers=1, hidden_dims=[8], autoencoder_hidden_dims=[8])
    vq.set_stage("flows", torch.randn(32, 3))
    return vq


MODELS = {
    "flow": (lambda: Flow(2, "realnvp", num_layers=2, hidden_dims=[8]), {}, 2),
    "nif": (lambda: NoisyInjectiveFlow(3, 1, top_flow="realnvp", top_layers=1), {}, 3),
    "nif s=0": (lambda: NoisyInjectiveFlow(3, 1, top_flow=None), {"s": 0.0}, 3),
    "vmonf": (
        lambda: VariationalMixtureOfFlows(2, num_components=3, num_layers=1, hidden_dims=[8]),
        {},
        2,
    ),
    "vq_flow": (_vq_flow, {}, 3),
    "flow_vae": (lambda: FlowVAE(2, data_dim=5, hidden_dims=[8]), {}, 5),
    "flow_vae draws": (lambda: FlowVAE(2, data_dim=5, hidden_dims=[8]), {"mean": False}, 5),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_sample_draws_in_batches(name):
    make, kwargs, dim = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    watcher = RowWatcher()
    with watcher:
        out = model.sample(N, batch_size=BATCH, **kwargs)
    x = out[0] if isinstance(out, tuple) else out
    assert x.shape == (N, dim) and torch.isfinite(x).all()
    if isinstance(out, tuple):  # the mixture's components come along, one per point
        assert out[1].shape == (N,) and int(out[1].min()) >= 0
    # the model never saw more than a batch (tensors shaped like its parameters aside):
    # only the buffers that gather the draws hold more rows, all N of them
    widest = max(max(t.shape, default=0) for t in [*model.parameters(), *model.buffers()])
    assert widest < N
    large = [(op, shape) for op, shape in watcher.outputs if shape[0] > max(BATCH, widest)]
    assert large and all(op is torch.ops.aten.empty and shape[0] == N for op, shape in large), large
    assert max(shape[0] for _, shape in watcher.outputs if shape[0] < N) <= max(BATCH, widest)


@pytest.mark.parametrize("name", ["flow", "nif", "vmonf", "vq_flow", "flow_vae"])
def test_sample_draws_8192_points_per_call_by_default(name):
    """README: every model's ``sample`` draws "``batch_size`` points per call of the model
    (default 8192)": a draw of 8192 + 10 points without a batch size passes through the
    model as one batch of 8192 and one of 10."""
    from pyro_manifold.metrics import SAMPLE_BATCH

    assert SAMPLE_BATCH == 8192
    make, kwargs, dim = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    n = SAMPLE_BATCH + 10
    watcher = RowWatcher()
    with watcher, torch.no_grad():
        out = model.sample(n, **kwargs)
    x = out[0] if isinstance(out, tuple) else out
    assert x.shape == (n, dim)
    rows = {shape[0] for op, shape in watcher.outputs if op is not torch.ops.aten.empty}
    assert max(r for r in rows if r < n) == SAMPLE_BATCH and 10 in rows


def test_batched_flow_draw_equals_one_call_for_a_fixed_seed():
    flow = Flow(2, "realnvp", num_layers=2, hidden_dims=[8]).eval()
    torch.manual_seed(3)
    whole = flow.sample(1000, batch_size=1000)
    torch.manual_seed(3)
    batched = flow.sample(1000, batch_size=64)  # 128 numbers a batch, 40 in the last
    assert torch.equal(whole, batched)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "8"])
def test_sample_refuses_a_bad_batch_size(batch_size):
    flow = Flow(2, "realnvp", num_layers=1, hidden_dims=[8])
    with pytest.raises((ValueError, TypeError), match="batch_size"):
        flow.sample(4, batch_size=batch_size)
