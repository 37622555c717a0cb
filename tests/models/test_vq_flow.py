"""VQFlow: the two training stages with fit, the objective, chart flow families."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_manifold.datasets import LinkedRings
from pyro_manifold.infer import fit
from pyro_manifold.models import VQFlow


def _small(**kwargs):
    options = dict(num_charts=4, num_layers=2, hidden_dims=[16], autoencoder_hidden_dims=[32])
    return VQFlow(3, **{**options, **kwargs})


def test_two_stage_training_learns_the_rings_and_freezes_the_atlas():
    pyro.set_rng_seed(0)
    x = LinkedRings().sample(512, noise=0.02, seed=0).data
    vq = _small(num_charts=6, epsilon=0.2)
    fit(vq.model, vq.guide, x, num_steps=60, batch_size=128, lr=3e-3, device="cpu")
    vq.set_stage("flows", x)
    atlas = {k: v.clone() for k, v in vq.autoencoder.state_dict().items()}
    with torch.no_grad():
        before = float(vq.log_prob(x).mean())
    counts = torch.bincount(vq.autoencoder.assign(x), minlength=6) + 1
    torch.testing.assert_close(vq.chart_logits.detach(), counts.float().log())
    result = fit(vq.model, vq.guide, x, num_steps=120, batch_size=128, lr=3e-3, device="cpu")
    with torch.no_grad():
        after = float(vq.log_prob(x).mean())
    assert after > before + 1.0, (before, after)
    for k, v in vq.autoencoder.state_dict().items():
        assert torch.equal(v, atlas[k]), f"the atlas moved in stage 2: {k}"
    assert not vq.autoencoder.training
    # the stage-2 loss is the negative log-likelihood of eq. (2) (d = D: no reconstruction)
    with torch.no_grad():
        loss = Trace_ELBO().differentiable_loss(vq.model, vq.guide, x[:50])
        torch.testing.assert_close(loss, -vq.log_prob(x[:50]).sum(), rtol=1e-5, atol=1e-3)
    assert result.history["loss"][-1] < result.history["loss"][0]
    samples = vq.sample(200)
    assert samples.shape == (200, 3) and torch.isfinite(samples).all()
    assert float(LinkedRings().distance(samples).mean()) < 0.5
    # the in-regions sampler is the mixture's rejection sampler: every draw in its region
    torch.manual_seed(7)
    within = vq.sample(300, within_regions=True)
    torch.manual_seed(7)
    x_k, k = vq.distribution().sample_with_charts((300,), within_regions=True)
    torch.testing.assert_close(within, x_k)
    assert vq.distribution().region_mask(within)[torch.arange(300), k].all()


def test_lower_dimensional_charts_add_the_reconstruction_term():
    torch.manual_seed(1)
    vq = _small(latent_dim=2, reconstruction_weight=3.0).double()
    vq.set_stage("flows")
    x = torch.randn(20, 3, dtype=torch.float64)
    loss = Trace_ELBO().differentiable_loss(vq.model, vq.guide, x)
    error = (x - vq.reconstruct(x)).pow(2).sum(-1)
    torch.testing.assert_close(loss, -vq.log_prob(x).sum() + 3.0 * error.sum())
    assert (error > 0).all()
    loss.backward()
    for name, p in [*vq.chart_flow.named_parameters(), *vq.embedding.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in vq.autoencoder.parameters())
    z = vq.encode(x)
    assert z.shape == (20, 2)
    post = vq.chart_posterior(x)
    torch.testing.assert_close(post.sum(-1), torch.ones(20, dtype=torch.float64))
    assert vq.sample(10).shape == (10, 3)


def test_one_pass_through_the_charts_per_step(monkeypatch):
    # log_prob (Pyro's site "x") and the reconstruction term share one chart pass
    from pyro_manifold.distributions import ChartMixture

    torch.manual_seed(1)
    vq = _small(latent_dim=2, reconstruction_weight=3.0).double()
    vq.set_stage("flows")
    x = torch.randn(20, 3, dtype=torch.float64)
    passes = []
    original = ChartMixture._chart_terms
    monkeypatch.setattr(
        ChartMixture, "_chart_terms", lambda *a, **k: passes.append(1) or original(*a, **k)
    )
    loss = Trace_ELBO().differentiable_loss(vq.model, vq.guide, x)
    assert len(passes) == 1
    # a distribution held across optimizer steps recomputes after each step
    p = vq.distribution()
    optimizer = torch.optim.SGD(vq.chart_flow.parameters(), lr=0.1)
    first = p.log_prob(x).sum()
    torch.testing.assert_close(p.log_prob(x).sum(), first)  # memo: same value, no new pass
    assert len(passes) == 2
    (-first + loss).backward()
    optimizer.step()
    second = p.log_prob(x).sum()
    assert len(passes) == 3 and not torch.allclose(second, first)
    with torch.no_grad():  # another grad mode is another memo entry
        torch.testing.assert_close(p.log_prob(x).sum(), second)
    assert len(passes) == 4
    torch.testing.assert_close(second, vq.distribution().log_prob(x).sum())  # fresh instance


@pytest.mark.parametrize("flow", ["maf", "spline_autoregressive", "spline_coupling"])
def test_other_chart_flow_families(flow):
    torch.manual_seed(2)
    vq = _small(flow=flow, num_overlap=2)
    vq.set_stage("flows")
    x = torch.randn(8, 3)
    assert vq.log_prob(x).shape == (8,)
    assert torch.isfinite(vq.log_prob(x)).all()
    assert vq.sample(5).shape == (5, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_overlap"):
        _small(num_overlap=5)
    with pytest.raises(ValueError, match="epsilon"):
        _small(epsilon=-0.5)
    with pytest.raises(ValueError, match="latent_dim"):
        _small(latent_dim=4)
    with pytest.raises(ValueError, match="flow"):
        _small(flow="glow")
    vq = _small()
    with pytest.raises(ValueError, match="x"):
        vq.log_prob(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="stage"):
        vq.set_stage("decoder")


def test_save_load_and_copy():
    import copy
    import io

    torch.manual_seed(3)
    vq = _small(latent_dim=2).double()
    vq.set_stage("flows")
    x = torch.randn(6, 3, dtype=torch.float64)
    buf = io.BytesIO()
    torch.save(vq.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(4)
    fresh = _small(latent_dim=2).double()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    fresh.set_stage("flows")
    with torch.no_grad():
        torch.testing.assert_close(fresh.log_prob(x), vq.log_prob(x))
        twin = copy.deepcopy(vq)
        assert twin.embedding.nn._owner is twin
        torch.testing.assert_close(twin.log_prob(x), vq.log_prob(x))


def test_predictive_samples_the_atlas_as_its_distribution_does():
    """``model(None, n)`` draws from the atlas: Predictive gives ChartMixture.sample's draws."""
    import pyro
    from pyro.infer import Predictive

    from pyro_manifold.errors import ArgumentError

    torch.manual_seed(0)
    vq = VQFlow(3, num_charts=3, num_layers=1, hidden_dims=[8])
    with pytest.raises(ArgumentError, match="x: the atlas stage"):
        vq.model(None, 4)
    vq.set_stage("flows")
    pyro.set_rng_seed(1)
    drawn = vq.model(None, 50)
    pyro.set_rng_seed(1)
    torch.testing.assert_close(drawn, vq.distribution().sample((50,)))
    draws = Predictive(vq.model, num_samples=2)(None, 50)["x"]  # as every model is sampled
    assert draws.shape == (2, 50, 3) and torch.isfinite(draws).all()
    assert not torch.equal(draws[0], draws[1])
    with pytest.raises(ValueError, match="num_samples"):
        vq.model(None, 0)
