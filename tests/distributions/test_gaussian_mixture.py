"""GaussianMixture: log_prob against a direct sum of densities, sampling, shapes, validation."""

import math

import numpy as np
import pytest
import torch

from pyro_manifold.distributions import GaussianMixture

F64 = torch.float64


def _params(batch=(), k=3, d=2, batched_tril=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*batch, k, generator=g, dtype=F64)
    loc = 3 * torch.randn(*batch, k, d, generator=g, dtype=F64)
    tril_batch = batch if batched_tril else ()
    raw = torch.randn(*tril_batch, k, d, d, generator=g, dtype=F64)
    tril = raw.tril(-1) + torch.diag_embed(0.5 + raw.diagonal(dim1=-2, dim2=-1).abs())
    return logits, loc, tril


def _brute_force_log_prob(logits, loc, tril, x):
    """log sum_k pi_k N(x; mu_k, L_k L_k^T), each density written out from its formula."""
    d = loc.shape[-1]
    weights = torch.softmax(logits, -1)
    cov = tril @ tril.mT
    diff = x.unsqueeze(-2) - loc  # (*, K, d)
    maha = (diff.unsqueeze(-2) @ torch.linalg.inv(cov) @ diff.unsqueeze(-1))[..., 0, 0]
    density = torch.exp(-0.5 * maha) / torch.sqrt((2 * math.pi) ** d * torch.linalg.det(cov))
    return (weights * density).sum(-1).log()


@pytest.mark.parametrize("batched_tril", [False, True])
@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_log_prob_is_the_sum_of_the_gaussian_densities(batch, batched_tril):
    logits, loc, tril = _params(batch, batched_tril=batched_tril)
    mix = GaussianMixture(logits, loc, tril, validate_args=True)
    assert mix.batch_shape == batch and mix.event_shape == (2,)
    x = 2 * torch.randn(5, *batch, 2, dtype=F64)
    want = _brute_force_log_prob(logits, loc, tril.expand(*batch, 3, 2, 2), x)
    torch.testing.assert_close(mix.log_prob(x), want, atol=1e-10, rtol=1e-10)
    # as Pyro's MixtureSameFamily of MultivariateNormals
    pyro_mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits),
        torch.distributions.MultivariateNormal(loc, scale_tril=tril),
    )
    torch.testing.assert_close(mix.log_prob(x), pyro_mix.log_prob(x), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(mix.mean, pyro_mix.mean)
    torch.testing.assert_close(mix.variance, pyro_mix.variance)


@pytest.mark.parametrize("batched_tril", [False, True])
def test_samples_follow_log_prob(batched_tril):
    """One dimension: the samples' empirical CDF against the CDF of the density (KS)."""
    logits, loc, tril = _params((2,), k=3, d=1, batched_tril=batched_tril, seed=1)
    mix = GaussianMixture(logits, loc, tril)
    torch.manual_seed(0)
    n = 20_000
    x = mix.sample((n,))  # (n, 2, 1)
    assert x.shape == (n, 2, 1)
    # the CDF from the density: integrate exp(log_prob) on a fine grid
    grid = torch.linspace(-20, 20, 40_001, dtype=F64)
    density = mix.log_prob(grid[:, None, None].expand(-1, 2, 1)).exp()  # (G, 2)
    assert torch.allclose(torch.trapezoid(density, grid, dim=0), torch.ones(2, dtype=F64))
    cdf = torch.cumulative_trapezoid(density, grid, dim=0)
    for b in range(2):
        values = x[:, b, 0].sort().values
        model_cdf = torch.from_numpy(np.interp(values.numpy(), grid[1:].numpy(), cdf[:, b].numpy()))
        empirical = torch.arange(1, n + 1, dtype=F64) / n
        ks = (model_cdf - empirical).abs().max()
        assert ks < 1.63 / math.sqrt(n), ks  # the 1% critical value of the KS statistic


@pytest.mark.parametrize("batched_tril", [False, True])
def test_sample_moments_and_expand(batched_tril):
    logits, loc, tril = _params((3,), k=2, d=3, batched_tril=batched_tril, seed=2)
    mix = GaussianMixture(logits, loc, tril)
    torch.manual_seed(0)
    expanded = mix.expand((4, 3))
    assert expanded.batch_shape == (4, 3) and expanded.event_shape == (3,)
    draws = expanded.sample((50_000,))
    assert draws.shape == (50_000, 4, 3, 3)
    flat = draws.transpose(0, 1).reshape(-1, 3, 3)  # (200_000, batch 3, d 3)
    torch.testing.assert_close(flat.mean(0), mix.mean, atol=0.05, rtol=0)
    torch.testing.assert_close(flat.var(0), mix.variance, atol=0.05, rtol=0.02)
    x = torch.randn(7, 1, 3, 3, dtype=F64)
    torch.testing.assert_close(expanded.log_prob(x), mix.log_prob(x).expand(7, 4, 3))


def test_validation_checks_the_constraints():
    logits, loc, tril = _params()
    with pytest.raises(ValueError, match="scale_tril"):
        GaussianMixture(logits, loc, tril.mT.contiguous(), validate_args=True)  # upper
    mix = GaussianMixture(logits, loc, tril, validate_args=True)
    with pytest.raises(ValueError, match="value: expected shape"):
        mix.log_prob(torch.zeros(3, dtype=F64))
    assert not mix.has_rsample and mix.support.event_dim == 1
