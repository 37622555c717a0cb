import math

import pyro
import pytest
import torch
from pyro.infer import Predictive, Trace_ELBO

from pyro_manifold.infer import fit
from pyro_manifold.metrics import importance_log_likelihood
from pyro_manifold.models import NoisyInjectiveFlow


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _model(d=1, D=2, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("top_flow", "realnvp")
    kwargs.setdefault("top_layers", 2)
    kwargs.setdefault("top_hidden_dims", [16, 16])
    m = NoisyInjectiveFlow(D, d, init_noise_scale=0.5, **kwargs).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def test_trace_elbo_is_the_deep_nif_bound():
    m = _model(2, 4, top_flow="maf", top_hidden_dims=[16])
    x = torch.randn(6, 4)
    for seed in range(3):
        pyro.set_rng_seed(seed)
        z = pyro.poutine.trace(m.guide).get_trace(x).nodes["z"]["value"]
        pyro.set_rng_seed(seed)
        loss = Trace_ELBO().differentiable_loss(m.model, m.guide, x.clone())
        y, logdet = x, torch.zeros(6)
        for t in reversed(m.top_layers):
            prev = t.inv(y)
            logdet = logdet + t.log_abs_det_jacobian(prev, y)
            y = prev
        bound = m.prior().log_prob(z) + m.nif.log_manifold_term(y) - logdet
        torch.testing.assert_close(-loss, bound.sum())


def test_exact_log_prob_against_quadrature_and_elbo_below_it():
    m = _model(1, 2)
    x = torch.randn(3, 2)
    grid = torch.linspace(-8, 8, 4001)[:, None]
    with torch.no_grad():
        joint = m.prior().log_prob(grid) + m._observation(grid, 1.0).log_prob(x[:, None, :])
        quad = torch.logsumexp(joint, -1) + math.log(grid[1, 0] - grid[0, 0])
        exact = m.log_prob(x)
        torch.testing.assert_close(exact, quad, atol=1e-6, rtol=1e-6)
        elbo = Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
        assert -elbo.loss(m.model, m.guide, x) < exact.sum().item()


def test_prior_flow_model_is_consistent_with_its_guide():
    m = _model(2, 3, prior_flow="realnvp", prior_layers=2, prior_hidden_dims=[16, 16])
    with pytest.raises(ValueError, match="prior_flow"):
        m.log_prob(torch.zeros(1, 3))
    x = torch.randn(2, 3)
    g = torch.linspace(-7, 7, 281)
    grid = torch.cartesian_prod(g, g)
    with torch.no_grad():
        joint = m.prior().log_prob(grid) + m._observation(grid, 1.0).log_prob(x[:, None, :])
        quad = torch.logsumexp(joint, -1) + 2 * math.log(g[1] - g[0])
    iwae = importance_log_likelihood(m.model, m.guide, x, num_samples=4000, chunk_size=1000)
    torch.testing.assert_close(iwae, quad, atol=0.05, rtol=0)


def test_zero_noise_samples_lie_on_the_learned_manifold_and_temperature():
    m = _model(1, 3, top_flow="realnvp")
    x = m.sample(50, s=0.0)
    y = m.top_inverse(x)
    A = m.nif.weight[0].detach()
    r = y - m.nif.bias.detach()
    assert (r - r @ (A @ torch.linalg.pinv(A)).T).abs().max() < 1e-8
    # encode recovers z exactly for on-manifold points
    z = torch.randn(20, 1)
    on = m.nif.likelihood(z, s=0.0).sample()
    for t in m.top_layers:
        on = t(on)
    torch.testing.assert_close(m.encode(on), z)
    pred = Predictive(m.model, num_samples=2)(None, 7, t=2.0, s=0.5)
    assert pred["x"].shape == (2, 7, 3) and pred["z"].shape == (2, 7, 1)
    zs = m.prior(t=4.0).sample((20000,))
    assert abs(zs.std().item() - 2.0) < 0.05


def test_fit_learns_a_line_in_the_plane():
    torch.set_default_dtype(torch.float32)
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2000, 1, generator=g) * 2
    x = torch.cat([t, 0.5 * t + 1], -1) + 0.01 * torch.randn(2000, 2, generator=g)
    torch.manual_seed(0)
    m = NoisyInjectiveFlow(2, 1, top_flow=None)
    result = fit(
        m.model, m.guide, x, num_steps=1000, lr=5e-2, batch_size=256, device="cpu", progress=False
    )
    assert result.history["loss"][-1] < result.history["loss"][0] - 2
    # p(x) = N(b, AA^T + Sigma): long along the line, thin across it (data noise 0.01)
    with torch.no_grad():
        evals, evecs = torch.linalg.eigh(m.nif.marginal().covariance_matrix)
        line = torch.tensor([1.0, 0.5]) / math.sqrt(1.25)
        assert evals[0].sqrt() < 0.03 < 1.5 < evals[1].sqrt()
        assert abs(evecs[:, 1] @ line) > 0.999
        assert (m.nif.bias - torch.tensor([0.0, 1.0])) @ torch.tensor([-0.5, 1.0]) < 0.05


def _two_clusters_on_the_manifold(m, n):
    """Points x = f(Az + b) with z in two clusters at (+-2.5, 0), where a unit normal is thin."""
    g = torch.Generator().manual_seed(1)
    sign = torch.randint(0, 2, (n, 1), generator=g) * 2.0 - 1.0
    z = torch.cat([2.5 * sign, torch.zeros(n, 1)], -1) + 0.3 * torch.randn(n, 2, generator=g)
    with torch.no_grad():
        x = m.nif.likelihood(z, s=0.0).sample()
        for t in m.top_layers:
            x = t(x)
    return x


def test_fit_prior_learns_where_the_data_sit_on_the_manifold_and_nothing_else():
    m = _model(2, 3, prior_flow="realnvp", prior_layers=3, prior_hidden_dims=[32, 32])
    x = _two_clusters_on_the_manifold(m, 2000)

    def prior_fit_on_draws():
        pyro.set_rng_seed(3)
        with torch.no_grad():
            draws = m.nif.stochastic_inverse(m.top_inverse(x)).sample()
            return m.prior().log_prob(draws).mean().item()

    before = prior_fit_on_draws()
    others = {n: p.detach().clone() for n, p in m.named_parameters() if "prior_layers" not in n}
    m.train()
    result = m.fit_prior(
        x, num_steps=600, batch_size=256, lr=1e-2, validation_data=x[:200], progress=False
    )
    assert m.training and result.step == 600 and result.history["val_loss"]
    for name, p in m.named_parameters():  # the NIF layer and the top flow did not move
        if "prior_layers" not in name:
            assert torch.equal(p, others[name]), name
    after = prior_fit_on_draws()
    assert after > before + 3.0
    with torch.no_grad():  # the prior's samples now sit in the two clusters
        z_new = m.prior().sample((4000,))
    assert (z_new[:, 0].abs() > 1.25).double().mean() > 0.8  # unit normal: 0.21
    with pytest.raises(ValueError, match="prior_flow: fit_prior needs a prior flow or a mixture"):
        _model(2, 3).fit_prior(x, num_steps=1)


def test_mixture_prior_log_prob_is_exact():
    m = _model(2, 3, top_flow="maf", top_hidden_dims=[16], prior_components=3)
    x = torch.randn(4, 3)
    with torch.no_grad():
        grid = torch.linspace(-9, 9, 361)
        pts = torch.cartesian_prod(grid, grid)
        joint = m.prior().log_prob(pts) + m._observation(pts, 1.0).log_prob(x[:, None, :])
        quad = torch.logsumexp(joint, -1) + 2 * math.log(grid[1] - grid[0])
    torch.testing.assert_close(m.log_prob(x), quad, atol=1e-5, rtol=1e-5)


def test_fit_prior_em_finds_the_clusters_on_the_manifold():
    m = _model(2, 3, prior_components=2)
    x = _two_clusters_on_the_manifold(m, 3000)
    unit = m.log_prob(x[:500]).mean()  # a mixture at its start is no unit normal: compare below
    others = {n: p.detach().clone() for n, p in m.named_parameters() if "prior_mixture" not in n}
    result = m.fit_prior(x, num_steps=100, validation_data=x[:300], seed=2)
    assert 2 < result.step < 100  # stopped once converged
    losses = result.history["loss"]
    assert all(b <= a + 1e-9 for a, b in zip(losses, losses[1:], strict=False))  # EM ascends
    assert result.best_validation_loss == min(result.history["val_loss"])
    for name, p in m.named_parameters():  # the NIF layer and the top flow did not move
        if "prior_mixture" not in name:
            assert torch.equal(p, others[name]), name
    means = m.prior_mixture.loc.detach()[:, 0].sort().values
    torch.testing.assert_close(means, torch.tensor([-2.5, 2.5]), atol=0.2, rtol=0)
    assert m.log_prob(x[:500]).mean() > unit
    with torch.no_grad():
        z_new = m.prior().sample((4000,))
    assert (z_new[:, 0].abs() > 1.25).double().mean() > 0.95  # unit normal: 0.21


def test_mixture_prior_trains_with_the_rest_and_round_trips():
    m = _model(2, 3, prior_components=2)
    x = m.sample(200).detach()
    result = fit(m.model, m.guide, x, num_steps=5, batch_size=50, progress=False)
    assert result.step == 5
    assert any(n.startswith("prior_mixture.") for n, _ in m.named_parameters())
    clone = NoisyInjectiveFlow(3, 2, top_flow="realnvp", top_layers=2, top_hidden_dims=[16, 16],
                               prior_components=2).double()  # fmt: skip
    clone.load_state_dict(m.state_dict())
    torch.testing.assert_close(clone.eval().log_prob(x[:5]), m.eval().log_prob(x[:5]))


def test_bad_input():
    m = _model(1, 2)
    with pytest.raises(ValueError, match=r"x: expected shape \(\*, 2\)"):
        m.log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="x: expected finite"):
        m.guide(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="latent_dim"):
        NoisyInjectiveFlow(2, 2)
    with pytest.raises(ValueError, match="prior_flow"):
        NoisyInjectiveFlow(3, 1, prior_flow="maf")
    with pytest.raises(ValueError, match="t: expected"):
        m.sample(3, t=0.0)
    with pytest.raises(ValueError, match="s: expected"):
        m.model(torch.zeros(2, 2), s=0.0)
    with pytest.raises(ValueError, match="prior_components: expected None with prior_flow"):
        NoisyInjectiveFlow(3, 2, prior_flow="maf", prior_components=2)
    with pytest.raises(ValueError, match="prior_components: expected an int >= 1, got 0"):
        NoisyInjectiveFlow(3, 2, prior_components=0)
