"""FlowVAE (Gaussian, IAF and PCP-Map guides) and its IWAE evaluation."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO

from pyro_manifold.metrics import iwae_log_likelihood
from pyro_manifold.models import FlowVAE
from pyro_manifold.transforms import ConditionedPCPMap

ENCODERS = [None, "iaf", "pcp"]


def _vae(encoder_flow, seed=0, latent_dim=3, data_dim=10, **kwargs):
    torch.manual_seed(seed)
    vae = FlowVAE(
        latent_dim,
        data_dim,
        encoder_flow,
        num_flows=2,
        hidden_dims=[12],
        flow_hidden_dims=[12],
        **kwargs,
    ).double()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return vae


def _binary(n=6, d=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.4).double()


@pytest.mark.parametrize("encoder_flow", ENCODERS, ids=str)
def test_elbo_gradients_reach_encoder_decoder_and_flows(encoder_flow):
    vae = _vae(encoder_flow)
    pyro.set_rng_seed(0)
    x = _binary()
    loss = Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    value = loss.differentiable_loss(vae.model, vae.guide, x)
    assert value.shape == () and torch.isfinite(value)
    value.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_iaf_guide_log_density_equals_the_hand_computation():
    vae = _vae("iaf", seed=3)
    x = _binary(seed=4)
    pyro.set_rng_seed(5)
    trace = poutine.trace(vae.guide).get_trace(x)
    trace.compute_log_prob()
    z = trace.nodes["z"]["value"]
    log_q = trace.nodes["z"]["log_prob"]
    # by hand: invert each stable IAF layer z_k = s * z_{k-1} + (1 - s) * m, s = sigmoid(l + 2)
    loc, scale, h = vae.encode(x)
    with torch.no_grad():
        current, total_log_det = z.detach(), torch.zeros(x.shape[0], dtype=x.dtype)
        for layer in reversed(vae.flows):
            previous = torch.zeros_like(current)
            for _ in range(vae.latent_dim):  # autoregressive: exact after L sweeps
                m, logit = layer.nn(previous, context=h)
                s = torch.sigmoid(logit + 2.0)
                previous = (current - (1 - s) * m) / s
            m, logit = layer.nn(previous, context=h)
            torch.testing.assert_close(
                torch.sigmoid(logit + 2.0) * previous + (1 - torch.sigmoid(logit + 2.0)) * m,
                current,
            )
            total_log_det += F.logsigmoid(logit + 2.0).sum(-1)
            current = previous
        base = torch.distributions.Normal(loc, scale).log_prob(current).sum(-1)
    torch.testing.assert_close(log_q.detach(), base - total_log_det, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("encoder_flow", ["iaf", "pcp"])
def test_guide_builds_fresh_transforms_and_scores_without_the_cache(encoder_flow):
    vae = _vae(encoder_flow, seed=6)
    x = _binary(n=4, seed=7)
    q1, q2 = vae.posterior(x), vae.posterior(x)
    assert all(a is not b for a, b in zip(q1.transforms, q2.transforms, strict=True))
    z = q1.rsample()
    # q2 never saw z: it must invert (sequentially for IAF, by Newton for PCP-Map)
    torch.testing.assert_close(q2.log_prob(z.detach().clone()), q1.log_prob(z).detach())


def test_pcp_guide_never_solves_the_inverse_in_training_or_evaluation(monkeypatch):
    def fail(self, y):
        raise AssertionError("Newton solve in the guide")

    monkeypatch.setattr(ConditionedPCPMap, "_newton", fail)
    vae = _vae("pcp", seed=8)
    x = _binary(n=4, seed=9)
    Trace_ELBO().differentiable_loss(vae.model, vae.guide, x).backward()
    bound = iwae_log_likelihood(vae, x, num_samples=6, chunk_size=3, batch_size=2)
    assert bound.shape == (4,) and torch.isfinite(bound).all()


def _linear_gaussian_vae(exact_posterior):
    """z ~ N(0, I_2), x | z ~ N(W z + b, sigma^2 I_3), W with orthogonal columns so the
    posterior N(S W^T (x - b) / sigma^2, S), S = (I + W^T W / sigma^2)^-1, is diagonal."""
    torch.manual_seed(10)
    vae = FlowVAE(
        2, 3, None, encoder_hidden_dims=[], decoder_hidden_dims=[], likelihood="gaussian"
    ).double()
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    w = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0] @ w  # rotate the columns
    b = torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64)
    sigma = 0.7
    s = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + w.T @ w / sigma**2)
    post_std = s.diagonal().sqrt()
    if not exact_posterior:  # a poorer guide: wider and shifted
        post_std = 1.6 * post_std
    with torch.no_grad():
        vae.decoder_head.weight.copy_(w)
        vae.decoder_head.bias.copy_(b)
        vae.decoder_scale_raw.fill_(math.log(math.expm1(sigma - vae.min_scale)))
        gain = s @ w.T / sigma**2
        vae.encoder_head.weight.zero_()
        vae.encoder_head.weight[:2].copy_(gain)
        vae.encoder_head.bias[:2].copy_(-gain @ b + (0.0 if exact_posterior else 0.3))
        vae.encoder_head.bias[2:].copy_(torch.log(torch.expm1(post_std - vae.min_scale)))
    marginal = dist.MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(3, dtype=torch.float64))
    return vae, marginal


def test_iwae_with_the_exact_posterior_is_exact_for_every_k():
    vae, marginal = _linear_gaussian_vae(exact_posterior=True)
    torch.manual_seed(11)
    x = marginal.sample((5,))
    for k in (1, 7):
        bound = iwae_log_likelihood(vae, x, num_samples=k, chunk_size=3)
        torch.testing.assert_close(bound, marginal.log_prob(x), atol=1e-10, rtol=1e-10)


def test_iwae_converges_to_the_exact_log_likelihood_from_below():
    vae, marginal = _linear_gaussian_vae(exact_posterior=False)
    torch.manual_seed(12)
    pyro.set_rng_seed(12)
    x = marginal.sample((4,))
    exact = marginal.log_prob(x)
    repeats = 25  # independent estimates: each point repeated
    gaps = []
    for k in (1, 10, 100, 1000):
        bound = iwae_log_likelihood(
            vae, x.repeat(repeats, 1), num_samples=k, chunk_size=250, batch_size=100
        ).reshape(repeats, 4)
        mean, stderr = bound.mean(0), bound.std(0) / math.sqrt(repeats)
        assert (mean <= exact + 3 * stderr + 1e-12).all(), (k, mean - exact, stderr)
        gaps.append((exact - mean).mean().item())
    assert gaps[0] > 0.1  # the guide is genuinely off
    assert gaps[0] > gaps[1] > gaps[3] and gaps[0] > gaps[2] > gaps[3]  # the bound tightens
    assert abs(gaps[3]) < 0.02  # K = 1000: within Monte Carlo error of the exact value


def test_kl_warmup_scales_the_latent_sites_by_the_step_argument():
    vae = _vae(None, kl_warmup_steps=4)
    x = _binary()
    vae.train()
    scales = []
    for t in range(6):
        kwargs = vae.step_kwargs(t)
        guide_trace = poutine.trace(vae.guide).get_trace(x, **kwargs)
        replayed = poutine.replay(vae.model, trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(x, **kwargs)
        scales.append(guide_trace.nodes["z"]["scale"])
        assert model_trace.nodes["z"]["scale"] == guide_trace.nodes["z"]["scale"]
        assert model_trace.nodes["x"]["scale"] == 1.0
    assert scales == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert poutine.trace(vae.guide).get_trace(x).nodes["z"]["scale"] == 1.0  # the default
    # no step count in the module; state dicts saved with the old one still load
    assert "training_steps" not in vae.state_dict()
    old = {**vae.state_dict(), "training_steps": torch.tensor(6)}
    _vae(None, kl_warmup_steps=4).load_state_dict(old)
    with pytest.raises(ValueError, match=r"kl_weight: expected a finite number > 0, got 0.0"):
        vae.guide(x, kl_weight=0.0)


def test_reconstructions_and_samples_through_predictive():
    vae = _vae("iaf")
    x = _binary(n=5)
    recon = vae.reconstruct(x)
    assert recon.shape == (5, 10) and ((recon >= 0) & (recon <= 1)).all()
    means = vae.sample(7)
    draws = vae.sample(7, mean=False)
    assert means.shape == draws.shape == (7, 10)
    assert ((draws == 0) | (draws == 1)).all()
    pixels = torch.tensor([[0, 255, 51] * 3 + [0], [0, 255, 0] * 3 + [255]], dtype=torch.uint8)
    vae.init_decoder_bias(pixels)
    torch.testing.assert_close(
        torch.sigmoid(vae.decoder_head.bias[:4]).float(), torch.tensor([0.001, 0.999, 0.1, 0.001])
    )
    gaussian = _vae(None, likelihood="gaussian")
    assert gaussian.sample(2).shape == (2, 10)
    assert (gaussian.decoder_scale() > 0).all()


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="latent_dim: expected an int >= 1, got 0"):
        FlowVAE(0)
    with pytest.raises(ValueError, match="encoder_flow: expected one of"):
        FlowVAE(2, encoder_flow="maf")
    with pytest.raises(ValueError, match="likelihood"):
        FlowVAE(2, likelihood="poisson")
    with pytest.raises(ValueError, match="flow_hidden_dims: expected widths >= latent_dim"):
        FlowVAE(8, encoder_flow="iaf", flow_hidden_dims=[4])
    vae = FlowVAE(2, data_dim=784, hidden_dims=[8])
    with pytest.raises(ValueError, match=r"x: expected shape \(\*, 784\)"):
        vae.model(torch.zeros(3, 28 * 27))
    with pytest.raises(ValueError, match=r"x: expected shape \(\*, 784\)"):
        vae.guide(torch.zeros(3, 28, 28))
    with pytest.raises(TypeError, match="floating-point"):
        vae.guide(torch.zeros(3, 784, dtype=torch.uint8))
    grey = torch.full((2, 784), 0.5)
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="expects binary data"):
        vae.model(grey)
    with pyro.validation_enabled(False):
        vae.model(grey)  # no check without validation
    with pytest.raises(ValueError, match="guide needs data"):
        vae.guide(None)
    with pytest.raises(TypeError, match="vae: expected an object with callable model"):
        iwae_log_likelihood(object(), grey)


def test_x_mean_is_recorded_for_predictive_and_left_out_of_training_steps():
    m = FlowVAE(2, 6, None, hidden_dims=[8])
    x = (torch.rand(5, 6) < 0.5).float()
    m.train()
    assert "x_mean" not in pyro.poutine.trace(m.model).get_trace(x).nodes
    with torch.no_grad():
        assert "x_mean" in pyro.poutine.trace(m.model).get_trace(x).nodes
    m.eval()
    assert "x_mean" in pyro.poutine.trace(m.model).get_trace(x).nodes
    m.train()
    draws = pyro.infer.Predictive(m.model, guide=m.guide, num_samples=2)(x)
    assert draws["x_mean"].shape == (2, 5, 6)
