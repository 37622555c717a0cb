r"""Property tests (hypothesis) for every transform family of pyro_manifold.transforms, float64.

Each example draws the dimensions, hidden widths, a batch shape, a context batch shape that
broadcasts to it, a seed and the size of a random perturbation of the initial
parameters, then checks

* the round trip: ``inv(t(u)) == u`` and ``t(inv(x)) == x`` for bijections; for the
  dimension-raising conformal embedding, the left inverse ``inv(t(z)) == z`` and that
  ``t(inv(x))`` is the orthogonal projection of ``x`` onto the embedded plane;
* ``log_abs_det_jacobian`` (cached, uncached and after an inverse call) against
  ``torch.autograd.functional.jacobian``: ``log|det J|``, or :math:`\tfrac12\log\det J^\top J`
  for a dimension-raising map; and that the points of a batch do not interact (the
  Jacobian of the batched map is block diagonal);
* PCP-Map with pre-activations past ``F.softplus``'s threshold: the analytic derivatives
  of the potential (log-determinant, Newton inverse) match autograd through the forward map.

Runs are deterministic: ``derandomize=True`` and no example database.
"""

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pyro.distributions.conditional import ConditionalTransform
from pyro.nn import AutoRegressiveNN, ConditionalDenseNN, DenseNN
from torch import Tensor, nn
from torch.distributions import Transform

import pyro_manifold.transforms as T

F64 = torch.float64
TOL = {"atol": 1e-8, "rtol": 1e-8}


@dataclass
class Built:
    """A freshly built (unperturbed) module and its sizes."""

    module: nn.Module
    input_dim: int
    output_dim: int
    context_dim: int | None = None


def _dim(draw, lo: int, hi: int, label: str) -> int:
    """An int in ``[lo, hi]``; shrinks (and derandomized runs start) mid-range, not at ``lo``."""
    mid = (lo + hi + 1) // 2
    return draw(st.sampled_from(sorted(range(lo, hi + 1), key=lambda n: abs(n - mid))), label=label)


def _widths(draw, lo: int, hi: int) -> list[int]:
    return draw(st.lists(st.integers(lo, hi), min_size=1, max_size=2), label="hidden_dims")


def _sigma_min(draw) -> float:
    return draw(st.sampled_from([1e-4, 1e-3, 1e-2]), label="sigma_min")


def _maf(draw) -> Built:
    d = _dim(draw, 2, 5, "input_dim")
    return Built(T.masked_autoregressive(d, _widths(draw, d, 3 * d), _sigma_min(draw)), d, d)


def _conditional_maf(draw) -> Built:
    d = _dim(draw, 2, 5, "input_dim")
    c = _dim(draw, 1, 3, "context_dim")
    layer = T.conditional_masked_autoregressive(d, c, _widths(draw, d, 3 * d), _sigma_min(draw))
    return Built(layer, d, d, c)


def _coupling(draw) -> Built:
    d = _dim(draw, 2, 5, "input_dim")
    split = _dim(draw, 1, d - 1, "split_dim")
    net = DenseNN(split, _widths(draw, 2, 12), param_dims=[d - split, d - split])
    reverse = draw(st.booleans(), label="reverse")
    return Built(T.AffineCoupling(split, net, reverse=reverse, sigma_min=_sigma_min(draw)), d, d)


def _conditional_coupling(draw) -> Built:
    d = _dim(draw, 2, 5, "input_dim")
    c = _dim(draw, 1, 3, "context_dim")
    split = _dim(draw, 1, d - 1, "split_dim")
    net = ConditionalDenseNN(split, c, _widths(draw, 2, 12), param_dims=[d - split, d - split])
    reverse = draw(st.booleans(), label="reverse")
    layer = T.ConditionalAffineCoupling(split, net, reverse=reverse, sigma_min=_sigma_min(draw))
    return Built(layer, d, d, c)


def _reverse(draw) -> Built:
    d = _dim(draw, 1, 5, "input_dim")
    return Built(T.Reverse(), d, d)


def _conformal_dims(draw) -> tuple[int, int, int | None]:
    d = _dim(draw, 1, 4, "latent_dim")
    big_d = _dim(draw, d, 6, "data_dim")
    r = draw(st.none() | st.integers(1, big_d + 1), label="num_reflections")
    return d, big_d, r


def _conformal(draw) -> Built:
    d, big_d, r = _conformal_dims(draw)
    scale_min = draw(st.sampled_from([1e-3, 1e-2]), label="scale_min")
    return Built(T.ConformalEmbedding(d, big_d, r, scale_min=scale_min), d, big_d)


def _conditional_conformal(draw) -> Built:
    d, big_d, r = _conformal_dims(draw)
    c = _dim(draw, 1, 3, "context_dim")
    layer = T.conditional_conformal_embedding(d, big_d, c, _widths(draw, 2, 8), r)
    return Built(layer, d, big_d, c)


def _pcp_map(draw) -> Built:
    d = _dim(draw, 1, 4, "input_dim")
    c = _dim(draw, 1, 3, "context_dim")
    min_curvature = draw(st.sampled_from([1e-3, 1e-2, 0.1]), label="min_curvature")
    layer = T.conditional_pcp_map(d, c, _widths(draw, 2, 8), min_curvature=min_curvature)
    return Built(layer, d, d, c)


def _spline_autoregressive(draw) -> Built:
    d = _dim(draw, 2, 4, "input_dim")
    bins = draw(st.sampled_from([4, 8]), label="count_bins")
    net = AutoRegressiveNN(d, _widths(draw, d, 3 * d), param_dims=T.spline_param_dims(bins))
    return Built(T.FreshSplineAutoregressive(d, net, count_bins=bins), d, d)


def _spline_coupling(draw) -> Built:
    d = _dim(draw, 2, 4, "input_dim")
    bins = draw(st.sampled_from([4, 8]), label="count_bins")
    return Built(T.fresh_spline_coupling(d, _widths(draw, 2, 8), count_bins=bins), d, d)


FAMILIES: dict[str, Callable] = {
    "MaskedAutoregressive": _maf,
    "ConditionalMaskedAutoregressive": _conditional_maf,
    "AffineCoupling": _coupling,
    "ConditionalAffineCoupling": _conditional_coupling,
    "Reverse": _reverse,
    "ConformalEmbedding": _conformal,
    "ConditionalConformalEmbedding": _conditional_conformal,
    "ConditionalPCPMap": _pcp_map,
    "FreshSplineAutoregressive": _spline_autoregressive,
    "FreshSplineCoupling": _spline_coupling,
}


def _batch(data) -> tuple[int, ...]:
    # hypothesis shrinks towards the first choice: start from a non-trivial shape
    ndim = data.draw(st.sampled_from([1, 2, 0]), label="batch ndim")
    sizes = st.lists(st.sampled_from([2, 1, 3]), min_size=ndim, max_size=ndim)
    return tuple(data.draw(sizes, label="batch_shape"))


@dataclass
class Example:
    """A conditioned, perturbed float64 transform and a batch of inputs for it."""

    transform: Transform
    built: Built
    batch_shape: tuple[int, ...]
    scale: float


def _example(data, family: str) -> Example:
    draw = data.draw
    seed = draw(st.integers(0, 2**31 - 1), label="seed")
    batch_shape = _batch(data)
    perturbation = draw(st.sampled_from([0.3, 0.1, 1.0, 0.0]), label="perturbation")
    scale = draw(st.sampled_from([1.0, 0.3, 4.0]), label="input_scale")
    torch.manual_seed(seed)
    built = FAMILIES[family](draw)
    module = built.module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(perturbation * torch.randn_like(p))
    transform = module
    if built.context_dim is not None:
        # the context's batch shape broadcasts to the input's: dims dropped or set to 1
        drop = draw(st.integers(0, len(batch_shape)), label="context: dropped dims")
        kept = batch_shape[drop:]
        ones = [draw(st.booleans(), label="context: size 1") for _ in kept]
        context_batch = tuple(1 if one else n for n, one in zip(kept, ones, strict=True))
        context = torch.randn(*context_batch, built.context_dim, dtype=F64)
        transform = module.condition(context)
    return Example(transform, built, batch_shape, scale)


def test_families_cover_every_public_transform():
    covered = set(FAMILIES) | {
        "ConditionedPCPMap",  # what ConditionalPCPMap.condition returns
        # Pyro's spline arithmetic round-trips to about 1e-7, not this file's 1e-8:
        # test_transform_battery.py checks it at its tolerances
        "ConditionalSplineCoupling",
        "FreshConditionalSplineAutoregressive",
        "StackedFlows",  # events (K, D): tests/transforms/test_flow_stack.py
        "ZukoTransform",  # zuko is optional: test_transform_battery.py, test_flow_stack.py
        "ConditionalZukoTransform",
    }
    public = {
        name
        for name in T.__all__
        if inspect.isclass(getattr(T, name))
        and issubclass(getattr(T, name), Transform | ConditionalTransform | nn.Module)
    }
    assert public <= covered, f"add a family for: {sorted(public - covered)}"


def _jacobian_blocks(t: Transform, u: Tensor, output_dim: int) -> Tensor:
    """Per-point Jacobians ``(N, D_out, D_in)``; asserts the batch's points do not interact."""
    n, input_dim = math.prod(u.shape[:-1]), u.shape[-1]
    jac = torch.autograd.functional.jacobian(lambda v: t(v.clone()), u)
    jac = jac.reshape(n, output_dim, n, input_dim)
    across = ~torch.eye(n, dtype=torch.bool)
    leak = jac.permute(0, 2, 1, 3)[across]
    assert leak.numel() == 0 or leak.abs().max() <= 1e-12, "points of a batch interact"
    idx = torch.arange(n)
    return jac[idx, :, idx, :]


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_round_trip(family, data):
    ex = _example(data, family)
    t, built, batch = ex.transform, ex.built, ex.batch_shape
    u = ex.scale * torch.randn(*batch, built.input_dim, dtype=F64)
    x = t(u)
    assert x.shape == (*batch, built.output_dim)
    assert t.forward_shape(u.shape) == x.shape
    assert t.inverse_shape(x.shape) == u.shape
    assert torch.isfinite(x).all()
    # a fresh tensor defeats Pyro's identity-keyed cache, so the inverse is computed
    torch.testing.assert_close(t.inv(x.clone()), u, **TOL)
    x_new = ex.scale * torch.randn_like(x)
    if t.bijective:
        torch.testing.assert_close(t(t.inv(x_new.clone()).clone()), x_new, **TOL)
        return
    # left inverse only: t(inv(.)) is the orthogonal projection onto the affine plane
    assert built.input_dim < built.output_dim
    projected = t(t.inv(x_new.clone()).clone())
    torch.testing.assert_close(t(t.inv(projected.clone()).clone()), projected, **TOL)
    chord = t(torch.randn_like(u)) - projected  # a direction within the plane
    residual = x_new - projected
    inner = (residual * chord).sum(-1)
    bound = 1e-9 * (1 + residual.norm(dim=-1) * chord.norm(dim=-1))
    assert (inner.abs() <= bound).all(), inner


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_log_abs_det_jacobian_against_autograd(family, data):
    ex = _example(data, family)
    t, built, batch = ex.transform, ex.built, ex.batch_shape
    u = ex.scale * torch.randn(*batch, built.input_dim, dtype=F64)
    x = t(u)
    cached = t.log_abs_det_jacobian(u, x)
    assert cached.shape == batch
    blocks = _jacobian_blocks(t, u, built.output_dim)
    if built.input_dim == built.output_dim:
        sign, expected = torch.linalg.slogdet(blocks)
        assert (sign != 0).all()
    else:
        expected = 0.5 * torch.linalg.slogdet(blocks.mT @ blocks).logabsdet
    expected = expected.reshape(batch)
    torch.testing.assert_close(cached, expected, **TOL)
    uncached = t.log_abs_det_jacobian(u.clone(), x.clone())
    torch.testing.assert_close(uncached, expected, **TOL)
    x2 = x.clone()
    torch.testing.assert_close(t.log_abs_det_jacobian(t.inv(x2), x2), expected, **TOL)


# ------------------------------------------------------- PCP-Map beyond softplus's threshold
@given(data=st.data())
def test_pcp_map_is_exact_with_saturated_activations(data):
    """Pre-activations past ``F.softplus``'s threshold (20, where it becomes the identity).

    The forward map is the autograd gradient of the potential; the log-determinant and the
    Newton inverse use :meth:`~pyro_manifold.nn.PICNN.derivatives`, which must differentiate
    the same function.
    """
    draw = data.draw
    torch.manual_seed(draw(st.integers(0, 2**31 - 1), label="seed"))
    d = _dim(draw, 1, 4, "input_dim")
    c = _dim(draw, 1, 3, "context_dim")
    layer = T.conditional_pcp_map(d, c, _widths(draw, 2, 8)).double()
    gain = draw(st.sampled_from([30.0, 10.0, 100.0]), label="z_weight gain")
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for linear in layer.picnn.z_weight:
            linear.weight.mul_(gain)
    batch = _batch(data)
    context = torch.randn(*batch, c, dtype=F64)
    t = layer.condition(context)
    u = 2.0 * torch.randn(*batch, d, dtype=F64)
    x = t(u)
    _, grad, _ = layer.potential_derivatives(u, context)
    torch.testing.assert_close(grad, x, **TOL)
    blocks = _jacobian_blocks(t, u, d)
    expected = torch.linalg.slogdet(blocks).logabsdet.reshape(batch)
    torch.testing.assert_close(t.log_abs_det_jacobian(u.clone(), x.clone()), expected, **TOL)
    with torch.no_grad():  # Newton's solution itself, without the implicit-function step
        back = layer.condition(context).inv(x.detach().clone())
    torch.testing.assert_close(back, u, **TOL)
