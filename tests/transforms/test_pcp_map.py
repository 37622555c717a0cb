"""ConditionalPCPMap beyond the registry battery: conditioning, monotonicity, the
Newton inverse (convergence, warm start, errors, implicit gradients), rsample use."""

import pyro.distributions as dist
import pytest
import torch

from pyro_manifold.nn import PICNN
from pyro_manifold.transforms import (
    ConditionalPCPMap,
    ConditionedPCPMap,
    PCPMapInverseError,
    conditional_pcp_map,
)


def _layer(seed=0, dim=3, context=2, hidden=(8, 8), **kwargs):
    torch.manual_seed(seed)
    layer = conditional_pcp_map(dim, context, list(hidden), **kwargs).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def _randn(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def test_condition_returns_a_fresh_plain_transform_that_broadcasts():
    layer = _layer()
    h = _randn(4, 2)
    t = layer.condition(h)
    assert isinstance(t, ConditionedPCPMap) and t is not layer.condition(h)
    assert t.forward_shape((5, 4, 3)) == (5, 4, 3) and t.forward_shape((3,)) == (4, 3)
    z = _randn(5, 4, 3)
    y = t(z)
    for k in range(5):  # particles on the left share the context
        torch.testing.assert_close(y[k], layer.condition(h)(z[k].clone()))
    # another context, another map
    assert not torch.allclose(layer.condition(_randn(4, 2))(z.clone()), y)


def test_map_is_the_gradient_of_a_strongly_convex_potential():
    layer = _layer(1)
    t = layer.condition(_randn(2))
    z1, z2 = _randn(200, 3), _randn(200, 3)
    _, quadratic = layer.potential_weights()
    # strong monotonicity: (y1 - y2).(z1 - z2) >= quadratic * |z1 - z2|^2
    inner = ((t(z1) - t(z2.clone())) * (z1 - z2)).sum(-1)
    assert (inner >= quadratic * ((z1 - z2) ** 2).sum(-1) - 1e-10).all()
    jac = torch.autograd.functional.jacobian(lambda v: t(v.clone()), _randn(3))
    torch.testing.assert_close(jac, jac.T)  # a gradient map has a symmetric Jacobian


def test_log_det_without_grad_matches_and_is_detached():
    layer = _layer(2)
    t = layer.condition(_randn(6, 2))
    z = _randn(6, 3)
    with_grad = t.log_abs_det_jacobian(z, t(z))
    assert with_grad.requires_grad
    t2 = layer.condition(t.context)
    with torch.no_grad():
        z2 = z.clone()
        without = t2.log_abs_det_jacobian(z2, t2(z2))
    assert not without.requires_grad
    torch.testing.assert_close(without, with_grad.detach())


def test_inverse_jacobian_and_parameter_gradient_are_the_implicit_ones():
    layer = _layer(3)
    h = _randn(2)
    t = layer.condition(h)
    y = _randn(3)
    z = t.inv(y)
    jac_inv = torch.autograd.functional.jacobian(lambda v: layer.condition(h).inv(v.clone()), y)
    jac_fwd = torch.autograd.functional.jacobian(
        lambda v: layer.condition(h)(v.clone()), z.detach()
    )
    torch.testing.assert_close(jac_inv, torch.linalg.inv(jac_fwd), atol=1e-8, rtol=1e-7)
    # d/d gamma1 of sum(z(y)) against central finite differences
    (grad,) = torch.autograd.grad(layer.condition(h).inv(y.clone()).sum(), layer.gamma1)
    eps = 1e-6
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            layer.gamma1.add_(sign * eps)
            values.append(layer.condition(h).inv(y.clone()).sum())
            layer.gamma1.sub_(sign * eps)
    torch.testing.assert_close(grad, (values[0] - values[1]) / (2 * eps), atol=1e-6, rtol=1e-5)


def test_inverse_warm_start_and_float32():
    layer = _layer(4)
    t = layer.condition(_randn(8, 2))
    calls = []
    original = layer.potential_derivatives

    def counting(z, context):  # one call per Newton iteration
        calls.append(1)
        return original(z, context)

    layer.potential_derivatives = counting
    y = 3.0 * _randn(8, 3)
    with torch.no_grad():
        z = t.inv(y)
        cold = len(calls)
        calls.clear()
        z_again = t.inv(y.clone())  # uncached, starts from the previous solution
    assert len(calls) < cold and len(calls) == 1
    torch.testing.assert_close(z_again, z)
    layer32 = _layer(4).float()
    t32 = layer32.condition(torch.randn(8, 2))
    y32 = torch.randn(8, 3)
    torch.testing.assert_close(t32(t32.inv(y32).clone()), y32, atol=1e-3, rtol=1e-3)


def test_inverse_that_does_not_converge_raises_a_clear_error():
    layer = _layer(5, max_iter=1, tol=1e-14)
    with torch.no_grad():
        layer.gamma1.fill_(3.0)  # a strongly non-quadratic potential
    t = layer.condition(_randn(16, 2))
    with pytest.raises(PCPMapInverseError, match=r"did not converge in 1 iterations for \d+ of 16"):
        t.inv(10.0 * _randn(16, 3))
    with pytest.raises(ValueError, match="y: expected finite values"):
        layer.condition(_randn(2)).inv(torch.full((3,), float("nan"), dtype=torch.float64))


def test_rsample_and_log_prob_train_without_solving_the_inverse():
    layer = _layer(6)
    loc = torch.zeros(5, 3, dtype=torch.float64, requires_grad=True)
    h = _randn(5, 2)
    t = layer.condition(h)

    def fail(*args, **kwargs):
        raise AssertionError("the Newton solve ran: the sample was not found in the cache")

    t._newton = fail
    q = dist.TransformedDistribution(dist.Normal(loc, 1.0).to_event(1), [t])
    z = q.rsample((4,))
    assert z.shape == (4, 5, 3)
    log_q = q.log_prob(z)
    base = dist.Normal(loc, 1.0).to_event(1)
    z0 = torch.stack([layer.condition(h).inv(z[k].detach().clone()) for k in range(4)])
    expected = base.log_prob(z0) - layer.condition(h).log_abs_det_jacobian(z0, z[0])
    torch.testing.assert_close(log_q.detach(), expected.detach(), atol=1e-8, rtol=1e-8)
    (log_q.sum() + z.sum()).backward()
    assert loc.grad is not None and loc.grad.abs().sum() > 0
    assert all(p.grad is not None for p in layer.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match="picnn: expected input_dim=3"):
        ConditionalPCPMap(3, 2, PICNN(4, 2, [8]))
    with pytest.raises(TypeError, match="picnn"):
        ConditionalPCPMap(3, 2, torch.nn.Linear(3, 1))
    with pytest.raises(ValueError, match="min_curvature"):
        conditional_pcp_map(3, 2, [8], min_curvature=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        conditional_pcp_map(3, 2, [8], max_iter=0)
    layer = conditional_pcp_map(3, 2, [8])
    with pytest.raises(ValueError, match=r"context: expected shape \(\*, 2\)"):
        layer.condition(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="context: expected finite"):
        layer.condition(torch.full((2,), float("inf")))
