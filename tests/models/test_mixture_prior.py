import math

import pytest
import torch

from pyro_manifold.models._mixture_prior import COVARIANCE_FLOOR, GaussianMixturePrior

F64 = {"dtype": torch.float64}


def _prior(d=3, k=2):
    torch.manual_seed(0)
    prior = GaussianMixturePrior(d, k).double()
    with torch.no_grad():
        prior.loc.normal_()
        prior.tril_raw.add_(0.3 * torch.randn_like(prior.tril_raw))
        prior.logits.normal_()
    return prior


def _points(n=400, d=3):
    g = torch.Generator().manual_seed(1)
    shift = torch.randint(0, 2, (n, 1), generator=g) * 4.0 - 2.0
    return shift + torch.randn(n, d, generator=g, dtype=torch.float64)


def test_em_step_is_the_closed_form_m_step():
    prior, z = _prior(), _points()
    # brute force: densities from the formula, full (N, K, d) tensors, no helpers
    cov = prior.scale_tril() @ prior.scale_tril().mT
    diff = z[:, None, :] - prior.loc
    maha = torch.einsum("nki,kij,nkj->nk", diff, torch.linalg.inv(cov), diff)
    log_norm = -0.5 * (3 * math.log(2 * math.pi) + torch.logdet(cov))
    log_joint = torch.log_softmax(prior.logits, -1) + log_norm - 0.5 * maha
    r = torch.softmax(log_joint, -1).detach()
    weight = r.sum(0)
    loc = (r.T @ z) / weight[:, None]
    centred = z[:, None, :] - loc
    want_cov = torch.einsum("nk,nki,nkj->kij", r, centred, centred) / weight[:, None, None]
    want_cov = want_cov + COVARIANCE_FLOOR * torch.eye(3)

    before = prior.em_step(z)

    torch.testing.assert_close(before, torch.logsumexp(log_joint, -1).mean().item())
    with torch.no_grad():
        got_cov = prior.scale_tril() @ prior.scale_tril().mT
        torch.testing.assert_close(torch.softmax(prior.logits, -1), weight / len(z))
        torch.testing.assert_close(prior.loc, loc)
        torch.testing.assert_close(got_cov, want_cov)
    assert prior.em_step(z) >= before  # EM never lowers the likelihood


def test_scale_tril_has_a_positive_floor_and_gradients():
    prior = _prior()
    with torch.no_grad():
        prior.tril_raw.fill_(-50.0)
    diag = prior.scale_tril().diagonal(dim1=-2, dim2=-1)
    assert (diag > 0).all()
    prior.distribution().log_prob(_points(5)).sum().backward()
    for name, p in prior.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_a_failed_em_step_leaves_the_mixture_as_it_was():
    prior, z = _prior(), _points()
    state = {n: v.clone() for n, v in prior.state_dict().items()}
    z_bad = z.clone()
    z_bad[3, 1] = math.inf
    with pytest.raises(FloatingPointError, match="finite mean log p"):
        prior.em_step(z_bad)
    for name, value in prior.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_fit_em_finds_the_clusters_and_keeps_the_best_validation_iterate():
    prior, z = _prior(), _points(2000)
    history = prior.fit_em(z[:1500], z[1500:], max_steps=200, seed=0)
    assert 2 < len(history["step"]) < 200
    assert all(b <= a + 1e-9 for a, b in zip(history["loss"], history["loss"][1:], strict=False))
    final = -prior.distribution().log_prob(z[1500:]).mean().item()
    assert final == pytest.approx(min(history["val_loss"]), abs=1e-12)
    means = prior.loc.detach()[:, 0].sort().values
    torch.testing.assert_close(means, torch.tensor([-2.0, 2.0], **F64), atol=0.15, rtol=0)


@pytest.mark.parametrize(
    ("z", "z_val", "match"),
    [
        (torch.zeros(1, 3, **F64), None, r"z: expected at least 2 points"),
        (torch.zeros(5, 2, **F64), None, r"z: expected shape \(\*, 3\)"),
        (torch.zeros(5, 3), None, "z: expected dtype torch.float64"),
        (torch.full((5, 3), math.nan, **F64), None, "z: expected finite"),
        (torch.zeros(5, 3, **F64), torch.full((2, 3), math.inf, **F64), "z_val: expected finite"),
    ],
)
def test_fit_em_bad_input_changes_nothing(z, z_val, match):
    prior = _prior()
    state = {n: v.clone() for n, v in prior.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        prior.fit_em(z, z_val, seed=0)
    for name, value in prior.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_the_low_memory_sampler_draws_the_mixture_under_a_plate_too():
    prior = _prior()
    with torch.no_grad():
        for t in (1.0, 2.0):
            mixture = prior.distribution(t)
            # moments of the mixture: the weighted means and the law of total covariance
            w = torch.softmax(prior.logits, -1)
            mean = w @ prior.loc
            centred = prior.loc - mean
            within = torch.einsum("k,kij->ij", w, mixture.scale_tril @ mixture.scale_tril.mT)
            cov = within + centred.T @ (w[:, None] * centred)
            for draws in (
                mixture.sample((200_000,)),
                mixture.expand((2000,)).sample((100,)).reshape(-1, 3),  # as in pyro.plate
            ):
                assert draws.shape == (200_000, 3)
                torch.testing.assert_close(draws.mean(0), mean, atol=0.02, rtol=0)
                torch.testing.assert_close(draws.T.cov(), cov, atol=0.05, rtol=0.02)
