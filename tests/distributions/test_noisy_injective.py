import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_manifold.distributions import BlockLinear, GaussianNIF, NoisyInjective, StochasticInverse


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _nif(d, D, **kwargs):
    torch.manual_seed(0)
    nif = GaussianNIF(d, D, **kwargs).double()
    with torch.no_grad():
        nif.weight.add_(0.3 * torch.randn_like(nif.weight))
        nif.bias.normal_()
        nif.noise_raw.add_(0.5 * torch.randn_like(nif.noise_raw))
    return nif


@pytest.mark.parametrize("d", [1, 2])
def test_marginal_equals_quadrature(d):
    nif = _nif(d, 3)
    x = nif.marginal().sample((4,))
    n = 801 if d == 1 else 201
    grid = torch.linspace(-7, 7, n)
    pts = grid[:, None] if d == 1 else torch.cartesian_prod(grid, grid)
    w = (grid[1] - grid[0]) ** d
    with torch.no_grad():
        prior = dist.Normal(0.0, 1.0).log_prob(pts).sum(-1)
        like = nif.likelihood(pts).log_prob(x[:, None, :])  # (4, M)
        quad = torch.logsumexp(prior + like, -1) + math.log(w)
        exact = nif.marginal().log_prob(x)
    torch.testing.assert_close(exact, quad, atol=1e-6, rtol=1e-6)


def test_marginal_is_the_low_rank_gaussian():
    nif = _nif(2, 5)
    A, s2 = nif.weight[0], nif.noise_scale.pow(2)
    dense = dist.MultivariateNormal(nif.bias, A @ A.T + torch.diag(s2))
    x = torch.randn(6, 5)
    torch.testing.assert_close(nif.marginal().log_prob(x), dense.log_prob(x))


def test_marginal_under_a_gaussian_z_equals_quadrature():
    """z ~ N(mu_k, L_k L_k^T), a batch of two: p(x) = N(A mu_k + b, A L_k L_k^T A^T + Sigma)."""
    nif = _nif(2, 3)
    loc = torch.tensor([[1.0, -0.5], [-2.0, 0.3]])
    tril = torch.tensor([[[0.7, 0.0], [0.4, 0.5]], [[1.2, 0.0], [-0.3, 0.2]]])
    x = torch.randn(4, 1, 3)
    grid = torch.linspace(-7, 7, 281)
    pts = torch.cartesian_prod(grid, grid)
    w = (grid[1] - grid[0]) ** 2
    with torch.no_grad():
        prior = dist.MultivariateNormal(loc[:, None], scale_tril=tril[:, None]).log_prob(pts)
        like = nif.likelihood(pts).log_prob(x[:, :, None, :])  # (4, 1, M)
        quad = torch.logsumexp(prior + like, -1) + math.log(w)  # (4, 2)
        exact = nif.marginal(loc, tril).log_prob(x)
    torch.testing.assert_close(exact, quad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        nif.marginal(torch.zeros(2), torch.eye(2)).log_prob(x[:, 0]),
        nif.marginal().log_prob(x[:, 0]),
    )


@pytest.mark.parametrize("d, D", [(1, 3), (2, 5), (3, 4)])
def test_stochastic_inverse_is_the_normalised_likelihood(d, D):
    nif = _nif(d, D)
    x = torch.randn(7, D)
    z = torch.randn(5, 7, d)
    q = nif.stochastic_inverse(x)
    torch.testing.assert_close(
        q.log_prob(z), nif.likelihood(z).log_prob(x) - nif.log_manifold_term(x)
    )


def test_manifold_term_matches_quadrature():
    nif = _nif(1, 2)
    x = torch.randn(3, 2)
    grid = torch.linspace(-30, 30, 20001)
    like = nif.likelihood(grid[:, None]).log_prob(x[:, None, :])
    quad = torch.logsumexp(like, -1) + math.log(grid[1] - grid[0])
    torch.testing.assert_close(nif.log_manifold_term(x), quad, atol=1e-6, rtol=1e-6)


def test_mode_is_the_weighted_least_squares_solution():
    nif = _nif(3, 6)
    x = torch.randn(4, 6)
    w = 1 / nif.noise_scale.detach()
    A = nif.weight[0].detach()
    ls = torch.linalg.lstsq((w[:, None] * A), (w * (x - nif.bias.detach())).T).solution.T
    q = nif.stochastic_inverse(x)
    torch.testing.assert_close(q.mean, ls)
    torch.testing.assert_close(q.mode, ls)
    lam = A.T @ torch.diag(w**2) @ A
    torch.testing.assert_close(q.covariance_matrix[0], torch.linalg.inv(lam))


def _nif_program(nif):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(nif.latent_dim), 1.0).to_event(1))
            pyro.sample("x", nif.likelihood(z), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", nif.stochastic_inverse(x))

    return model, guide


def test_trace_elbo_is_the_nif_bound_with_an_exact_manifold_term():
    nif = _nif(2, 4)
    x = torch.randn(5, 4)
    model, guide = _nif_program(nif)
    for seed in range(3):
        pyro.set_rng_seed(seed)
        guide_trace = pyro.poutine.trace(guide).get_trace(x)
        z = guide_trace.nodes["z"]["value"]
        pyro.set_rng_seed(seed)
        loss = Trace_ELBO().differentiable_loss(model, guide, x)
        # per sample: log p(z) + log p(x|z) - log q(z|x) = log p(z) + manifold term exactly
        bound = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + nif.log_manifold_term(x)
        torch.testing.assert_close(-loss, bound.sum())


def test_elbo_is_below_the_exact_log_likelihood():
    nif = _nif(2, 4)
    x = nif.marginal().sample((5,))
    model, guide = _nif_program(nif)
    elbo = Trace_ELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        est = -elbo.loss(model, guide, x)
        exact = nif.marginal().log_prob(x).sum().item()
    assert est < exact
    # the gap is the KL from q(z|x) to the posterior; it is small but not zero
    assert exact - est < 5.0


def test_sampling_agrees_with_the_distributions():
    nif = _nif(2, 3)
    x = torch.randn(3)
    q = nif.stochastic_inverse(x)
    zs = q.rsample((200000,))
    torch.testing.assert_close(zs.mean(0), q.mean, atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(zs.T), q.covariance_matrix, atol=0.01, rtol=0)
    # -2 (log q - max) is chi-square with d degrees of freedom
    stat = -2 * (q.log_prob(zs) - q.log_prob(q.mean))
    assert abs(stat.mean().item() - 2.0) < 0.02
    p = nif.likelihood(torch.tensor([0.5, -1.0]))
    xs = p.rsample((200000,))
    torch.testing.assert_close(xs.mean(0), p.mean, atol=0.01, rtol=0)
    torch.testing.assert_close(xs.var(0), p.variance, atol=0.01, rtol=0.02)
    torch.testing.assert_close(q.entropy(), -q.log_prob(zs).mean(), atol=0.01, rtol=0)


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)], ids=str)
def test_shapes_and_expand(batch_shape):
    nif = _nif(2, 4)
    x = torch.randn(*batch_shape, 4)
    q = nif.stochastic_inverse(x)
    assert q.batch_shape == batch_shape and q.event_shape == (2,)
    assert q.rsample((5,)).shape == (5, *batch_shape, 2)
    assert q.log_prob(q.rsample((5,))).shape == (5, *batch_shape)
    qe = q.expand((4, *batch_shape))
    assert qe.batch_shape == (4, *batch_shape)
    torch.testing.assert_close(qe.mean[0], q.mean)
    p = nif.likelihood(torch.randn(*batch_shape, 2))
    assert p.batch_shape == batch_shape and p.event_shape == (4,)
    assert p.log_prob(p.sample((2,))).shape == (2, *batch_shape)
    assert p.expand((3, *batch_shape)).sample().shape == (3, *batch_shape, 4)


@pytest.mark.parametrize("validate", [True, False])
def test_expand_keeps_validation_and_shares_the_factorisation(validate):
    """An expanded distribution checks values as the original does and recomputes nothing."""
    nif = _nif(2, 4)
    x, z = torch.randn(3, 4), torch.randn(3, 2)
    q = StochasticInverse(x, nif.linear, nif.bias, nif.noise_scale, validate_args=validate)
    p = NoisyInjective(z, nif.linear, nif.bias, nif.noise_scale, validate_args=validate)
    qe, pe = q.expand((5, 3)), p.expand((5, 3))
    assert qe._validate_args == pe._validate_args == validate
    assert qe._chol is q._chol  # the Cholesky factor of Lambda, not a new one
    torch.testing.assert_close(qe.log_prob(q.mean), q.log_prob(q.mean).expand(5, 3))
    torch.testing.assert_close(pe.log_prob(p.mean), p.log_prob(p.mean).expand(5, 3))
    nan_z, nan_x = torch.full((2,), float("nan")), torch.full((4,), float("nan"))
    for d, value in ((qe, nan_z), (pe, nan_x)):
        if validate:
            with pytest.raises(ValueError, match="value"):
                d.log_prob(value)
        else:
            assert torch.isnan(d.log_prob(value)).all()

    class Sub(StochasticInverse):
        pass

    sub = Sub(x, nif.linear, nif.bias, nif.noise_scale)
    assert type(sub.expand((2, 3))) is Sub  # _instance: the subclass is kept


def test_zero_noise_samples_lie_on_the_manifold():
    nif = _nif(2, 5)
    x = nif.likelihood(torch.randn(10, 2), s=0.0).sample()
    A = nif.weight[0].detach()
    r = x - nif.bias.detach()
    resid = r - r @ (A @ torch.linalg.pinv(A)).T
    assert resid.abs().max() < 1e-10
    with pytest.raises(ValueError, match="noise_multiplier"):
        nif.likelihood(torch.randn(2), s=0.0).log_prob(x[0])
    with pytest.raises(ValueError, match="s: expected a finite number >= 0"):
        nif.likelihood(torch.randn(2), s=-1.0)


def test_image_blocks_match_the_dense_map():
    torch.manual_seed(1)
    image = GaussianNIF(2 * 2 * 2, 2 * 4 * 4, image_shape=(2, 4, 4), factor=2).double()
    with torch.no_grad():
        image.weight.add_(0.3 * torch.randn_like(image.weight))
        image.bias.normal_()
    A = image.linear.dense()
    assert A.shape == (32, 8)
    # each latent coordinate touches exactly one 2x2 patch of both channels
    assert ((A != 0).sum(0) == 8).all()
    dense = GaussianNIF(8, 32, weight=A).double()
    with torch.no_grad():
        dense.bias.copy_(image.bias)
        dense.noise_raw.copy_(image.noise_raw)
    x, z = torch.randn(3, 32), torch.randn(3, 8)
    torch.testing.assert_close(image.linear.matvec(z), z @ A.T)
    torch.testing.assert_close(image.linear.rmatvec(x), x @ A)
    torch.testing.assert_close(image.log_manifold_term(x), dense.log_manifold_term(x))
    torch.testing.assert_close(image.stochastic_inverse(x).mean, dense.stochastic_inverse(x).mean)
    torch.testing.assert_close(
        image.stochastic_inverse(x).log_prob(z), dense.stochastic_inverse(x).log_prob(z)
    )
    torch.testing.assert_close(
        image.stochastic_inverse(x).covariance_matrix, dense.stochastic_inverse(x).covariance_matrix
    )
    torch.testing.assert_close(image.marginal().log_prob(x), dense.marginal().log_prob(x))
    xb = image.linear.data_to_blocks(x)
    torch.testing.assert_close(image.linear.blocks_to_data(xb), x)


def test_gradients_flow_through_every_parameter():
    nif = _nif(2, 4)
    x = torch.randn(6, 4)
    q = nif.stochastic_inverse(x)
    z = q.rsample()
    loss = -(dist.Normal(0.0, 1.0).log_prob(z).sum() + nif.log_manifold_term(x).sum())
    loss.backward()
    for name, p in nif.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_input():
    nif = _nif(2, 4)
    with pytest.raises(ValueError, match=r"x: expected shape \(\*, 4\)"):
        nif.stochastic_inverse(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="x: expected finite"):
        nif.log_manifold_term(torch.tensor([0.0, float("nan"), 0.0, 0.0]))
    with pytest.raises(ValueError, match="x: expected dtype"):
        nif.stochastic_inverse(torch.zeros(4, dtype=torch.float32))
    with pytest.raises(ValueError, match="latent_dim: expected less than data_dim"):
        GaussianNIF(4, 4)
    with pytest.raises(ValueError, match="rank deficient"):
        GaussianNIF(2, 4, weight=torch.tensor([[1.0, 2.0], [2.0, 4.0], [0.0, 0.0], [1, 2]]))
    with pytest.raises(ValueError, match="factor"):
        GaussianNIF(4, 16, image_shape=(1, 4, 4), factor=3)
    with pytest.raises(ValueError, match="weight"):
        BlockLinear(torch.randn(1, 2, 3))
    with pytest.raises(ValueError, match="noise_scale"):
        StochasticInverse(
            torch.zeros(3), BlockLinear(torch.randn(1, 3, 1)), torch.zeros(3), -torch.ones(3)
        )
    with pytest.raises(ValueError, match="latent"):
        NoisyInjective(
            torch.zeros(3), BlockLinear(torch.randn(1, 3, 1)), torch.zeros(3), torch.ones(3)
        )
