import math

import pytest
import torch

from pyro_manifold.metrics import bits_per_dim, mean_log_likelihood, pixel_log_likelihood


def test_bits_per_dim_matches_pixel_space_definition():
    torch.manual_seed(0)
    log_prob = torch.randn(5, dtype=torch.float64) * 100
    num_dims = 784
    # log density of v + u on [0, 256)^D is log p(x) - D log 256
    pixel = log_prob - num_dims * math.log(256)
    expected = -pixel / (num_dims * math.log(2))
    torch.testing.assert_close(bits_per_dim(log_prob, num_dims), expected)


def test_bits_per_dim_uniform_is_log2_levels():
    out = bits_per_dim(torch.zeros(3), 10, num_levels=16)
    torch.testing.assert_close(out, torch.full((3,), 4.0))


def test_bits_per_dim_checks_arguments():
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(torch.zeros(2), 0)
    with pytest.raises(TypeError, match="num_levels"):
        bits_per_dim(torch.zeros(2), 3, num_levels=2.5)
    with pytest.raises(TypeError, match="log_prob"):
        bits_per_dim([0.0], 3)


def test_pixel_log_likelihood_is_change_of_variables():
    # a logit flow: y = logit(lam + (1 - 2 lam) x); compare with autograd's Jacobian
    lam = 1e-6
    x = torch.rand(4, 3, dtype=torch.float64) * 0.9 + 0.05

    def to_logit(u):
        s = lam + (1 - 2 * lam) * u
        return torch.log(s) - torch.log1p(-s)

    logdet = torch.stack(
        [torch.autograd.functional.jacobian(to_logit, xi).diagonal().log().sum() for xi in x]
    )
    log_prob_logit = torch.distributions.Normal(0.0, 1.0).log_prob(to_logit(x)).sum(-1)
    out = pixel_log_likelihood(log_prob_logit, logdet)
    torch.testing.assert_close(out, log_prob_logit + logdet)
    with pytest.raises(ValueError, match="logit_logdet"):
        pixel_log_likelihood(torch.zeros(3), torch.zeros(2))


def test_mean_log_likelihood_mean_and_standard_error():
    torch.manual_seed(0)
    data = torch.randn(103, 2)
    normal = torch.distributions.Normal(torch.zeros(2), 1.0)

    def fn(x):
        return normal.log_prob(x).sum(-1)

    mean, se = mean_log_likelihood(fn, data, batch_size=10)
    values = fn(data).double()
    assert mean == pytest.approx(values.mean().item())
    assert se == pytest.approx((values.std() / math.sqrt(103)).item())


def test_mean_log_likelihood_no_grad_and_errors():
    w = torch.ones(2, requires_grad=True)

    def fn(x):
        out = (x * w).sum(-1)
        assert not out.requires_grad
        return out

    mean, se = mean_log_likelihood(fn, torch.ones(1, 2))
    assert mean == 2.0 and math.isnan(se)
    with pytest.raises(ValueError, match="log_prob_fn"):
        mean_log_likelihood(lambda x: x, torch.ones(4, 2))
    with pytest.raises(ValueError, match="batch_size"):
        mean_log_likelihood(fn, torch.ones(4, 2), batch_size=0)


def test_mean_log_likelihood_scores_one_batch_at_a_time():
    """README: the evaluation helpers "stream over the data in batches with bounded memory":
    ``log_prob_fn`` sees consecutive batches of at most ``batch_size`` rows, in order."""
    data = torch.arange(103.0).unsqueeze(-1)
    seen = []

    def fn(x):
        seen.append(x[:, 0].clone())
        return x[:, 0]

    mean_log_likelihood(fn, data, batch_size=10)
    assert [len(b) for b in seen] == [10] * 10 + [3]
    assert torch.equal(torch.cat(seen), data[:, 0])


@pytest.mark.parametrize("batch_size", [1, 7, 1000, 5000])
def test_mean_log_likelihood_streams_exact_statistics(batch_size):
    """Merging batch statistics gives the one-shot mean and standard error (float64)."""
    g = torch.Generator().manual_seed(0)
    values = 1e3 + torch.randn(2345, generator=g, dtype=torch.float64) * 5.0
    data = values.unsqueeze(-1)
    mean, se = mean_log_likelihood(lambda x: x[:, 0], data, batch_size=batch_size)
    assert mean == pytest.approx(values.mean().item(), rel=0, abs=1e-10)
    want_se = (values.std(correction=1) / math.sqrt(values.numel())).item()
    assert se == pytest.approx(want_se, rel=1e-10)
