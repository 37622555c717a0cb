"""ConformalEmbedding and its conditional twin: conformality, left inverse, log-det (float64)."""

import pytest
import torch

from pyro_manifold.transforms import (
    ConditionalConformalEmbedding,
    ConformalEmbedding,
    conditional_conformal_embedding,
    conformal_embedding,
)


def _perturbed(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return module.double()


@pytest.mark.parametrize("dims", [(1, 2), (2, 5), (3, 3), (4, 7)])
def test_jacobian_is_conformal_and_log_det_exact(dims):
    torch.manual_seed(0)
    d, D = dims
    c = _perturbed(conformal_embedding(d, D))
    z = torch.randn(d, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(c, z)
    lam = torch.exp(c.log_abs_det_jacobian(z, c(z)) / d)
    torch.testing.assert_close(jac.T @ jac, lam**2 * torch.eye(d, dtype=torch.float64))
    expected = 0.5 * torch.linalg.slogdet(jac.T @ jac)[1]
    torch.testing.assert_close(c.log_abs_det_jacobian(z, c(z)), expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(jac / lam, c.frame())


def test_left_inverse_is_the_orthogonal_projection():
    torch.manual_seed(1)
    c = _perturbed(conformal_embedding(2, 5))
    x = torch.randn(10, 5, dtype=torch.float64)
    z = c.inv(x)
    # least squares: argmin_z |c(z) - x|
    w = c.frame() * torch.exp(c.log_abs_det_jacobian(z[0], x[0]) / 2)
    z_ls = torch.linalg.lstsq(w, (x - c.shift).T).solution.T
    torch.testing.assert_close(z, z_ls)
    # c(c^+(c(z))) = c(z), and c^+(c(z)) = z
    x_on = c(z)
    torch.testing.assert_close(c(c.inv(x_on.clone())), x_on)
    torch.testing.assert_close(c.inv(x_on.clone()), z)
    # the residual is orthogonal to the plane
    torch.testing.assert_close(c.frame().T @ (x - x_on).T, torch.zeros(2, 10, dtype=torch.float64))


def test_conditional_per_context_matches_batched():
    torch.manual_seed(2)
    c = _perturbed(conditional_conformal_embedding(2, 4, context_dim=3, hidden_dims=[8]))
    h = torch.randn(6, 3, dtype=torch.float64)
    z = torch.randn(6, 2, dtype=torch.float64)
    t = c.condition(h)
    x = t(z)
    for i in range(6):
        ti = c.condition(h[i])
        torch.testing.assert_close(ti(z[i]), x[i])
        jac = torch.autograd.functional.jacobian(lambda v, ti=ti: ti(v.clone()), z[i])
        lam2 = (jac.T @ jac)[0, 0]
        torch.testing.assert_close(jac.T @ jac, lam2 * torch.eye(2, dtype=torch.float64))
        torch.testing.assert_close(t.log_abs_det_jacobian(z, x)[i], torch.log(lam2))
    # a single context broadcasts over a batch of points
    t1 = c.condition(h[0])
    assert t1.log_abs_det_jacobian(z, t1(z)).shape == (6,)


def test_repeated_contexts_share_one_network_pass_with_the_same_values_and_gradients():
    # VQ-Flows conditions on one chart centre per point: distinct contexts run the network
    # once each, which must not change values or parameter gradients (float64).
    torch.manual_seed(3)
    c = _perturbed(conditional_conformal_embedding(2, 5, context_dim=3, hidden_dims=[8]))
    centres = torch.randn(3, 3, dtype=torch.float64)
    chart = torch.tensor([0, 2, 2, 1, 0, 2, 1])
    z = torch.randn(7, 2, dtype=torch.float64)
    x = torch.randn(7, 5, dtype=torch.float64)

    def outputs(context):
        t = c.condition(context)
        return t(z), t.inv(x), t.log_abs_det_jacobian(z, x)

    calls = []
    hook = c.nn.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    shared = outputs(centres[chart])
    hook.remove()
    assert calls == [3]  # one network pass over the 3 distinct centres
    loss = sum(o.sum() for o in shared)
    grads = torch.autograd.grad(loss, list(c.parameters()))
    per_row = [[] for _ in shared]
    for i, k in enumerate(chart):
        t = c.condition(centres[k])
        per_row[0].append(t(z[i]))
        per_row[1].append(t.inv(x[i]))
        per_row[2].append(t.log_abs_det_jacobian(z[i], x[i]))
    for got, rows in zip(shared, per_row, strict=True):
        torch.testing.assert_close(got, torch.stack(rows))
    loss_rows = sum(torch.stack(rows).sum() for rows in per_row)
    for g, g_rows in zip(grads, torch.autograd.grad(loss_rows, list(c.parameters())), strict=True):
        torch.testing.assert_close(g, g_rows)
    # a context that needs gradients runs per row, so each row gets its own derivative
    leaf = centres[chart].clone().requires_grad_()
    (grad_leaf,) = torch.autograd.grad(sum(o.sum() for o in outputs(leaf)), leaf)
    for i in range(7):
        row = leaf[i].detach().clone().requires_grad_()
        t = c.condition(row)
        value = t(z[i]).sum() + t.inv(x[i]).sum() + t.log_abs_det_jacobian(z[i], x[i])
        torch.testing.assert_close(grad_leaf[i], torch.autograd.grad(value, row)[0])


def test_shapes_and_bijective_flag():
    torch.manual_seed(3)
    c = ConformalEmbedding(2, 4)
    assert not c.bijective and c.forward_shape((5, 2)) == (5, 4)
    assert c.inverse_shape((7, 3, 4)) == (7, 3, 2)
    assert ConformalEmbedding(3, 3).bijective
    with pytest.raises(ValueError, match="shape"):
        c.forward_shape((5, 3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="latent_dim"):
        ConformalEmbedding(5, 3)
    with pytest.raises(ValueError, match="latent_dim"):
        conditional_conformal_embedding(4, 2, context_dim=2)
    with pytest.raises(TypeError, match="data_dim"):
        ConformalEmbedding(2, 3.0)
    with pytest.raises(ValueError, match="scale_min"):
        ConformalEmbedding(2, 3, scale_min=0.0)
    with pytest.raises(ValueError, match="context_dim"):
        conditional_conformal_embedding(2, 3, context_dim=0)
    assert isinstance(conditional_conformal_embedding(1, 2, 1), ConditionalConformalEmbedding)
