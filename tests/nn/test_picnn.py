"""PICNN: shapes, convexity in the convex input, argument checks."""

import pytest
import torch

from pyro_manifold.nn import PICNN


def _perturbed_picnn(seed, input_dim=3, context_dim=2, hidden=(16, 16)):
    torch.manual_seed(seed)
    net = PICNN(input_dim, context_dim, list(hidden)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return net


def test_shapes_and_broadcasting():
    torch.manual_seed(0)
    net = PICNN(3, 2, [8, 8], context_hidden_dims=[5, 7])
    z, h = torch.randn(4, 6, 3), torch.randn(6, 2)
    out = net(z, h)
    assert out.shape == (4, 6)
    torch.testing.assert_close(out[1], net(z[1], h))
    assert net(torch.randn(3), torch.randn(2)).shape == ()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hessian_in_z_is_positive_semidefinite(seed):
    net = _perturbed_picnn(seed)
    torch.manual_seed(100 + seed)
    largest = 0.0
    for _ in range(10):
        z = 2.0 * torch.randn(3, dtype=torch.float64)
        h = 2.0 * torch.randn(2, dtype=torch.float64)
        hess = torch.autograd.functional.hessian(lambda v, h=h: net(v, h), z)
        torch.testing.assert_close(hess, hess.T)
        eigenvalues = torch.linalg.eigvalsh(hess)
        assert eigenvalues.min() >= -1e-10 * max(1.0, eigenvalues.abs().max().item())
        largest = max(largest, eigenvalues.max().item())
    assert largest > 1e-6, "the convex path is degenerate (zero Hessian): test is vacuous"


@pytest.mark.parametrize("seed", [0, 1])
def test_midpoint_convexity_in_z_not_in_context(seed):
    net = _perturbed_picnn(seed)
    torch.manual_seed(200 + seed)
    a, b = 3.0 * torch.randn(2, 500, 3, dtype=torch.float64)
    h = torch.randn(500, 2, dtype=torch.float64)
    gap = 0.5 * (net(a, h) + net(b, h)) - net(0.5 * (a + b), h)
    assert gap.min() >= -1e-10
    # the dependence on the context is unconstrained: midpoint convexity fails somewhere
    z = torch.randn(500, 3, dtype=torch.float64)
    h1, h2 = 3.0 * torch.randn(2, 500, 2, dtype=torch.float64)
    gap_h = 0.5 * (net(z, h1) + net(z, h2)) - net(z, 0.5 * (h1 + h2))
    assert gap_h.min() < 0


def test_nonnegative_weights():
    net = _perturbed_picnn(0)
    assert all(bool((w >= 0).all()) for w in net.nonnegative_weights())


def test_bad_arguments():
    with pytest.raises(ValueError, match="input_dim"):
        PICNN(0, 2)
    with pytest.raises(ValueError, match="context_hidden_dims"):
        PICNN(2, 2, [8, 8], context_hidden_dims=[8])
    with pytest.raises(TypeError, match="hidden_dims"):
        PICNN(2, 2, 8)
    net = PICNN(2, 3, [4])
    with pytest.raises(ValueError, match=r"z: expected shape \(\*, 2\)"):
        net(torch.zeros(5, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="context"):
        net(torch.zeros(5, 2), torch.zeros(5, 2))


@pytest.mark.parametrize("hidden", [[], [6], [5, 7, 4]], ids=str)
def test_derivatives_match_autograd(hidden):
    torch.manual_seed(3)
    net = PICNN(3, 2, hidden).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.4 * torch.randn_like(p))
    z = torch.randn(2, 4, 3, dtype=torch.float64)
    h = torch.randn(4, 2, dtype=torch.float64)  # broadcast over the first dimension
    value, grad, hess = net.derivatives(z, h)
    assert value.shape == (2, 4) and grad.shape == (2, 4, 3) and hess.shape == (2, 4, 3, 3)
    torch.testing.assert_close(value, net(z, h))
    for i in range(2):
        for j in range(4):
            f = lambda v, c=h[j]: net(v, c)  # noqa: E731
            expected_grad = torch.autograd.functional.jacobian(f, z[i, j])
            expected_hess = torch.autograd.functional.hessian(f, z[i, j])
            torch.testing.assert_close(grad[i, j], expected_grad, atol=1e-12, rtol=1e-10)
            torch.testing.assert_close(hess[i, j], expected_hess, atol=1e-12, rtol=1e-10)
