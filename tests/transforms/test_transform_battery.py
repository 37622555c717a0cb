"""The registry-driven battery every transform and conditional transform goes through.

Add each new TransformModule / ConditionalTransformModule of pyro_manifold.transforms to
CASES; ``test_registry_covers_every_public_transform`` fails until you do.
"""

import inspect
import io
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from pyro.distributions.conditional import (
    ConditionalComposeTransformModule,
    ConditionalTransformModule,
)
from pyro.distributions.torch_transform import ComposeTransformModule, TransformModule
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN

import pyro_manifold.transforms as T


@dataclass(frozen=True)
class Case:
    build: Callable[[], torch.nn.Module]
    input_dim: int
    output_dim: int
    context_dim: int | None = None


CASES = {
    "MaskedAutoregressive": Case(lambda: T.masked_autoregressive(4, [16]), 4, 4),
    "ConditionalMaskedAutoregressive": Case(
        lambda: T.conditional_masked_autoregressive(4, 3, [16]), 4, 4, 3
    ),
    "AffineCoupling": Case(lambda: T.affine_coupling(5, [16]), 5, 5),
    "AffineCoupling(reverse)": Case(lambda: T.affine_coupling(5, [16], reverse=True), 5, 5),
    "ConditionalAffineCoupling": Case(lambda: T.conditional_affine_coupling(5, 2, [16]), 5, 5, 2),
    "ConditionalPCPMap": Case(lambda: T.conditional_pcp_map(3, 2, [8, 8]), 3, 3, 2),
    "Reverse": Case(T.Reverse, 3, 3),
    "ConformalEmbedding": Case(lambda: T.conformal_embedding(2, 5), 2, 5),
    "ConformalEmbedding(square)": Case(lambda: T.conformal_embedding(3, 3), 3, 3),
    "ConditionalConformalEmbedding": Case(
        lambda: T.conditional_conformal_embedding(2, 4, 3, [8]), 2, 4, 3
    ),
    "ConditionalSplineCoupling": Case(lambda: T.conditional_spline_coupling(4, 2, [16]), 4, 4, 2),
    "FreshSplineCoupling": Case(lambda: T.fresh_spline_coupling(4, [16]), 4, 4),
    "FreshConditionalSplineAutoregressive": Case(
        lambda: T.FreshConditionalSplineAutoregressive(
            3, ConditionalAutoRegressiveNN(3, 2, [16], param_dims=T.spline_param_dims(8))
        ),
        3,
        3,
        2,
    ),
    "FreshSplineAutoregressive": Case(
        lambda: T.FreshSplineAutoregressive(
            3, AutoRegressiveNN(3, [16], param_dims=T.spline_param_dims(8))
        ),
        3,
        3,
    ),
}
# every family of the flow-stack factory, plain and conditional, as one composed transform
for _flow in T.FLOWS:
    CASES[f"flow_stack({_flow})"] = Case(
        lambda f=_flow: ComposeTransformModule(list(T.flow_stack(4, f, 2, [16]))), 4, 4
    )
    CASES[f"flow_stack({_flow}, context)"] = Case(
        lambda f=_flow: ConditionalComposeTransformModule(
            list(T.flow_stack(4, f, 2, [16], context_dim=3))
        ),
        4,
        4,
        3,
    )
try:
    import zuko
except ImportError:  # an optional extra: pip install -e .[zuko]
    zuko = None
else:
    CASES["ZukoTransform"] = Case(
        lambda: T.ZukoTransform(zuko.flows.NSF(3, transforms=2, hidden_features=[16])), 3, 3
    )
    CASES["ConditionalZukoTransform"] = Case(
        lambda: T.ConditionalZukoTransform(
            zuko.flows.MAF(3, context=2, transforms=2, hidden_features=[16])
        ),
        3,
        3,
        2,
    )
#: public transforms tested elsewhere, and where
ELSEWHERE = {"StackedFlows": "tests/transforms/test_flow_stack.py (events (K, D))"}
BATCH_SHAPES = [(), (3,), (2, 3)]


def _perturb_(module):
    """Move parameters off their initial values so identity-like inits cannot hide bugs."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


def _make(case, batch_shape=(), seed=0):
    torch.manual_seed(seed)
    module = _perturb_(case.build().double())
    context = None
    if case.context_dim is not None:
        context = torch.randn(*batch_shape, case.context_dim, dtype=torch.float64)
        transform = module.condition(context)
    else:
        transform = module
    return module, transform, context


def test_registry_covers_every_public_transform():
    public = {
        name
        for name in T.__all__
        if inspect.isclass(getattr(T, name))
        and issubclass(getattr(T, name), TransformModule | ConditionalTransformModule)
    }
    covered = {type(case.build()).__name__ for case in CASES.values()} | set(ELSEWHERE)
    if zuko is None:
        covered |= {"ZukoTransform", "ConditionalZukoTransform"}
    assert public <= covered, f"add to CASES: {sorted(public - covered)}"


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
def test_round_trip_and_shapes(name, batch_shape):
    case = CASES[name]
    _, t, _ = _make(case, batch_shape)
    u = torch.randn(*batch_shape, case.input_dim, dtype=torch.float64)
    x = t(u)
    assert x.shape == (*batch_shape, case.output_dim)
    assert t.forward_shape(u.shape) == x.shape
    assert t.inverse_shape(x.shape) == u.shape
    ladj = t.log_abs_det_jacobian(u, x)
    assert ladj.shape == batch_shape
    # cached: the inverse of the very output returns the input
    assert t.inv(x) is u or torch.allclose(t.inv(x), u, atol=1e-9)
    # uncached: a fresh tensor forces the computation
    u2 = t.inv(x.clone())
    torch.testing.assert_close(u2, u, atol=1e-8, rtol=1e-8)
    x2 = torch.randn_like(x) if t.bijective else x.clone()
    torch.testing.assert_close(t(t.inv(x2.clone()).clone()), x2, atol=1e-8, rtol=1e-8)
    # the log-det from the inverse path agrees with the forward one
    torch.testing.assert_close(t.log_abs_det_jacobian(u2, x.clone()), ladj, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", CASES)
def test_log_det_against_autograd(name):
    case = CASES[name]
    _, t, _ = _make(case)
    for seed in range(3):
        torch.manual_seed(100 + seed)
        u = torch.randn(case.input_dim, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda v: t(v.clone()), u)
        if case.input_dim == case.output_dim:
            expected = torch.linalg.slogdet(jac)[1]
        else:  # dimension-raising: 1/2 log det J^T J
            expected = 0.5 * torch.linalg.slogdet(jac.T @ jac)[1]
        got = t.log_abs_det_jacobian(u, t(u))
        torch.testing.assert_close(got, expected, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", CASES)
def test_gradient_reaches_every_parameter(name):
    case = CASES[name]
    module, t, context = _make(case, (6,))
    if context is not None:
        context.requires_grad_(True)
    x = torch.randn(6, case.output_dim, dtype=torch.float64, requires_grad=True)
    u = t.inv(x)
    loss = (u**2).sum() - t.log_abs_det_jacobian(u, x).sum()
    loss.backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} gets no gradient"
    assert x.grad is not None and x.grad.abs().sum() > 0
    if context is not None:
        assert context.grad is not None and context.grad.abs().sum() > 0


@pytest.mark.parametrize("name", CASES)
def test_save_and_load(name):
    case = CASES[name]
    module, t, context = _make(case, (4,), seed=0)
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    fresh, _, _ = _make(case, (4,), seed=1)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    t2 = fresh.condition(context) if context is not None else fresh
    u = torch.randn(4, case.input_dim, dtype=torch.float64)
    torch.testing.assert_close(t2(u), t(u.clone()))


@pytest.mark.parametrize("name", CASES)
def test_device_and_dtype_moves(name):
    case = CASES[name]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        module = case.build().to(device=device, dtype=torch.float32)
        for tensor in [*module.parameters(), *module.buffers()]:
            assert tensor.device.type == device
            assert not tensor.is_floating_point() or tensor.dtype == torch.float32
        t = module
        if case.context_dim is not None:
            t = module.condition(torch.randn(2, case.context_dim, device=device))
        u = torch.randn(2, case.input_dim, device=device)
        x = t(u)
        assert x.device.type == device and x.dtype == torch.float32
        assert t.log_abs_det_jacobian(u, x).device.type == device
