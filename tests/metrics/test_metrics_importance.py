import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_manifold.metrics import importance_log_likelihood

D_LATENT, D_DATA, SIGMA = 2, 3, 0.5


@pytest.fixture
def linear_gaussian():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(D_DATA, D_LATENT, generator=g, dtype=torch.float64)
    b = torch.randn(D_DATA, generator=g, dtype=torch.float64)
    z = torch.randn(200, D_LATENT, generator=g, dtype=torch.float64)
    x = z @ W.T + b + SIGMA * torch.randn(200, D_DATA, generator=g, dtype=torch.float64)
    marginal_cov = W @ W.T + SIGMA**2 * torch.eye(D_DATA, dtype=torch.float64)
    exact = dist.MultivariateNormal(b, marginal_cov).log_prob(x)
    post_cov = torch.linalg.inv(torch.eye(D_LATENT, dtype=torch.float64) + W.T @ W / SIGMA**2)
    post_mean = (x - b) @ W @ post_cov / SIGMA**2  # post_cov is symmetric

    def model(x):
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(torch.zeros(D_LATENT, dtype=x.dtype), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(z @ W.T + b, SIGMA).to_event(1), obs=x)

    def exact_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(post_mean, post_cov))

    def poor_guide(x):  # shifted by half a posterior sd, 1.5 times too wide
        shift = 0.5 * post_cov.diagonal().sqrt()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(post_mean + shift, 2.25 * post_cov))

    return dict(
        W=W, b=b, x=x, exact=exact, model=model, exact_guide=exact_guide, poor_guide=poor_guide
    )


def test_exact_posterior_gives_exact_marginal_for_every_k(linear_gaussian):
    lg = linear_gaussian
    for k, chunk in [(1, 100), (7, 3), (250, 100)]:
        out = importance_log_likelihood(
            lg["model"], lg["exact_guide"], lg["x"], num_samples=k, chunk_size=chunk
        )
        assert out.shape == (200,)
        torch.testing.assert_close(out, lg["exact"], rtol=0, atol=1e-8)


def test_bound_tightens_with_k_and_stays_below(linear_gaussian):
    lg = linear_gaussian
    bounds = {
        k: importance_log_likelihood(lg["model"], lg["poor_guide"], lg["x"], num_samples=k)
        for k in (1, 10, 1000)
    }
    gaps = {k: (lg["exact"] - v).mean().item() for k, v in bounds.items()}
    # the K = 1 gap estimates KL(q || p) = 0.68 for this guide
    assert gaps[1] > 0.3
    assert gaps[1] > gaps[10] > abs(gaps[1000])
    assert abs(gaps[1000]) < 0.01
    # per point: below the exact value up to Monte Carlo error (sd < 0.05 at K = 1000)
    assert (bounds[1000] <= lg["exact"] + 0.15).all()
    assert (bounds[1000] >= lg["exact"] - 0.15).all()


def test_chunking_does_not_change_the_estimate(linear_gaussian):
    lg = linear_gaussian
    a = importance_log_likelihood(
        lg["model"], lg["poor_guide"], lg["x"], num_samples=2000, chunk_size=2000
    )
    b = importance_log_likelihood(
        lg["model"], lg["poor_guide"], lg["x"], num_samples=2000, chunk_size=37
    )
    assert abs((a - b).mean().item()) < 0.01
    torch.testing.assert_close(a, b, rtol=0, atol=0.2)


def test_draws_chunk_size_particles_and_iwae_scores_batch_size_points_at_a_time(
    linear_gaussian,
):
    """README: the evaluation helpers (``iwae_log_likelihood``) "stream over the data in
    batches with bounded memory": the guide draws at most ``chunk_size`` particles for at
    most ``batch_size`` data points in one pass; with the exact posterior as the guide the
    streamed bound is still the exact marginal."""
    from pyro_manifold.metrics import iwae_log_likelihood

    lg = linear_gaussian
    W, b = lg["W"], lg["b"]
    eye = torch.eye(D_LATENT, dtype=W.dtype)
    post_cov = torch.linalg.inv(eye + W.T @ W / SIGMA**2)
    passes = []

    class Recorded:  # an object with model and guide, as iwae_log_likelihood takes
        model = staticmethod(lg["model"])

        @staticmethod
        def guide(x):  # the exact posterior of each point in the batch
            with pyro.plate("data", x.shape[0]):
                post_mean = (x - b) @ W @ post_cov / SIGMA**2
                z = pyro.sample("z", dist.MultivariateNormal(post_mean, post_cov))
            passes.append(tuple(z.shape[:-1]))  # (particles, points)

    x = lg["x"][:25]
    bound = iwae_log_likelihood(Recorded(), x, num_samples=50, chunk_size=20, batch_size=10)
    assert passes == [(20, 10), (20, 10), (10, 10)] * 2 + [(20, 5), (20, 5), (10, 5)]
    torch.testing.assert_close(bound, lg["exact"][:25], rtol=0, atol=1e-8)


def test_sums_over_inner_plates_and_keeps_no_grad(linear_gaussian):
    lg = linear_gaussian
    x = lg["x"]
    W, b = lg["W"], lg["b"]
    loc = torch.zeros(D_LATENT, dtype=x.dtype, requires_grad=True)

    def model_plates(x):  # the same model with the data dims in a plate at dim -2
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
            mean = (z @ W.T + b).transpose(-1, -2).squeeze(-3)  # (K, D, N)
            with pyro.plate("features", D_DATA, dim=-2):
                pyro.sample("x", dist.Normal(mean, SIGMA), obs=x.T)

    pyro.set_rng_seed(3)
    a = importance_log_likelihood(
        model_plates, lg["poor_guide"], x, num_samples=50, max_plate_nesting=2
    )
    pyro.set_rng_seed(3)
    b_ = importance_log_likelihood(lg["model"], lg["poor_guide"], x, num_samples=50)
    torch.testing.assert_close(a, b_)
    assert not a.requires_grad


def test_global_latent_counts_for_every_point():
    # y_n = m + noise, m ~ N(0, 1) global; with N = 1 the marginal is N(0, 2)
    def model(y):
        m = pyro.sample("m", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 1.0))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.Normal(m, 1.0), obs=y)

    def guide(y):  # the prior as proposal: the weights are the likelihoods p(y_n | m)
        pyro.sample("m", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 1.0))

    y = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    out = importance_log_likelihood(model, guide, y, num_samples=20000, chunk_size=5000)
    expected = dist.Normal(0.0, 2.0**0.5).log_prob(y)
    torch.testing.assert_close(out, expected, rtol=0, atol=0.03)


def test_argument_errors(linear_gaussian):
    lg = linear_gaussian
    with pytest.raises(ValueError, match="data_plate"):
        importance_log_likelihood(
            lg["model"], lg["poor_guide"], lg["x"], num_samples=2, data_plate="points"
        )
    with pytest.raises(ValueError, match="num_samples"):
        importance_log_likelihood(lg["model"], lg["poor_guide"], lg["x"], num_samples=0)
    with pytest.raises(TypeError, match="model"):
        importance_log_likelihood(None, lg["poor_guide"], lg["x"])

    def subsampled(x):
        with pyro.plate("data", x.shape[0], subsample_size=5) as idx:
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1), obs=x[idx])

    with pytest.raises(ValueError, match="subsamples"):
        importance_log_likelihood(subsampled, lambda x: None, lg["x"], num_samples=2)
