"""ChartMixture (VQ-Flows eq. 2): closed forms against brute force, in float64."""

import math

import pyro
import pytest
import torch
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from pyro.infer import Trace_ELBO
from torch.distributions import constraints

from pyro_manifold.distributions import ChartMixture
from pyro_manifold.models import VQAutoencoder
from pyro_manifold.nn import chart_membership
from pyro_manifold.transforms import (
    conditional_affine_coupling,
    conditional_conformal_embedding,
    conditional_masked_autoregressive,
)

F64 = torch.float64


def _perturb(module, scale=0.3):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module.double()


# ----------------------------------------------------------------------------- the circle
class CircleAtlas:
    """K chart centres equally spaced on the unit circle; the encoder is the identity."""

    def __init__(self, num_charts):
        theta = 2 * math.pi * torch.arange(num_charts, dtype=F64) / num_charts
        self.centres = torch.stack([theta.cos(), theta.sin()], -1)

    def chart_distances(self, x):
        return (x.unsqueeze(-2) - self.centres).norm(dim=-1)


class _Arc(TransformModule):
    """y -> (cos phi, sin phi), phi = theta + (2 alpha / pi) atan(y): a curve, so conformal."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = False

    def __init__(self, theta, alpha):
        super().__init__(cache_size=1)
        self.theta, self.alpha = theta, alpha

    def _call(self, y):
        phi = self.theta + 2 * self.alpha / math.pi * torch.atan(y[..., 0])
        return torch.stack([phi.cos(), phi.sin()], -1)

    def _inverse(self, x):
        angle = torch.atan2(x[..., 1], x[..., 0]) - self.theta + math.pi
        delta = torch.remainder(angle, 2 * math.pi) - math.pi
        return torch.tan(math.pi / 2 * delta / self.alpha).unsqueeze(-1)

    def log_abs_det_jacobian(self, y, x):
        return math.log(2 * self.alpha / math.pi) - torch.log1p(y[..., 0] ** 2)


class ArcEmbedding(ConditionalTransformModule):
    """Chart k maps R onto the open arc of half-width alpha around its centre."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = False

    def __init__(self, alpha):
        super().__init__()
        self.alpha = alpha

    def condition(self, context):
        return _Arc(torch.atan2(context[..., 1], context[..., 0]), self.alpha)


def _arc_half_width(atlas, m, eps):
    """Bisection for the angle at which a point leaves the region U_0 (the arc's end)."""

    def member(delta):
        x = torch.tensor([[math.cos(delta), math.sin(delta)]], dtype=F64)
        return bool(chart_membership(atlas.chart_distances(x), m, eps)[0, 0])

    lo, hi = 0.0, math.pi
    assert member(lo) and not member(hi)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if member(mid) else (lo, mid)
    return lo


def _circle_mixture(m, eps, restrict=True):
    torch.manual_seed(0)
    atlas = CircleAtlas(4)
    alpha = _arc_half_width(atlas, m, eps)
    inner = _perturb(conditional_conformal_embedding(1, 1, context_dim=2, hidden_dims=[8]))
    logits = torch.randn(4, dtype=F64)
    mix = ChartMixture(
        atlas,
        [inner],
        logits,
        data_dim=2,
        latent_dim=1,
        embedding=ArcEmbedding(alpha),
        num_overlap=m,
        epsilon=eps,
        restrict=restrict,
    )
    return mix, alpha


@pytest.mark.parametrize(("m", "eps"), [(1, 0.5), (2, 0.0), (2, 0.3)])
def test_circle_density_integrates_to_one_over_arc_length(m, eps):
    mix, alpha = _circle_mixture(m, eps)
    assert alpha > math.pi / 4  # the regions overlap
    theta = 2 * math.pi * torch.arange(40000, dtype=F64) / 40000
    x = torch.stack([theta.cos(), theta.sin()], -1)
    with torch.no_grad():
        density = mix.log_prob(x).exp()
    integral = float(density.mean() * 2 * math.pi)  # periodic trapezoid rule, ds = dtheta
    assert abs(integral - 1) < 1e-6, integral
    # the unrestricted sum adds mass from charts whose region excludes x: not normalised
    unrestricted, _ = _circle_mixture(m, eps, restrict=False)
    with torch.no_grad():
        extra = unrestricted.log_prob(x).exp()
    assert (extra >= density - 1e-12).all() and float(extra.mean() * 2 * math.pi) > 1.01


def test_circle_samples_agree_with_the_density():
    mix, _ = _circle_mixture(1, 0.5)
    torch.manual_seed(1)
    x, k = mix.sample_with_charts((40000,))
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(40000, dtype=F64))
    # each sample lies in the region of the chart that drew it
    inside = chart_membership(mix.atlas.chart_distances(x), 1, 0.5)
    assert inside[torch.arange(40000), k].all()
    theta = 2 * math.pi * torch.arange(40000, dtype=F64) / 40000
    grid = torch.stack([theta.cos(), theta.sin()], -1)
    with torch.no_grad():
        w = mix.log_prob(grid).exp() * 2 * math.pi / 40000
    phi = torch.atan2(x[:, 1], x[:, 0])
    for f in (torch.cos, torch.sin, lambda t: torch.cos(2 * t), lambda t: torch.sin(3 * t)):
        exact = float((w * f(theta)).sum())
        est = float(f(phi).mean())
        assert abs(est - exact) < 4.5 / math.sqrt(40000), (est, exact)
    counts = torch.bincount(k, minlength=4).to(F64) / 40000
    assert (counts - mix.chart_weights).abs().max() < 0.015


def _leaky_circle_mixture():
    """Arcs twice as wide as the regions: every chart spills mass outside U_k."""
    mix, alpha = _circle_mixture(1, 0.5)
    mix.embedding = ArcEmbedding(min(2 * alpha, 3.0))
    mix.sample_within_regions = True
    return mix


def test_rejection_samples_follow_the_normalised_restricted_density():
    mix = _leaky_circle_mixture()
    n = 40000
    theta = 2 * math.pi * torch.arange(n, dtype=F64) / n
    grid = torch.stack([theta.cos(), theta.sin()], -1)
    with torch.no_grad():
        terms = mix.chart_log_terms(grid).exp() * 2 * math.pi / n  # p_k q_k ds inside U_k
    mass = float(terms.sum())
    assert 0.3 < mass < 0.9  # eq. (2) is not normalised for these charts
    w = terms.sum(-1) / mass
    torch.manual_seed(4)
    x, k = mix.sample_with_charts((n,))
    assert mix.region_mask(x)[torch.arange(n), k].all()  # each kept draw lies in U_k
    phi = torch.atan2(x[:, 1], x[:, 0])
    for f in (torch.cos, torch.sin, lambda t: torch.cos(2 * t), lambda t: torch.sin(3 * t)):
        exact = float((w * f(theta)).sum())
        assert abs(float(f(phi).mean()) - exact) < 4.5 / math.sqrt(n), exact
    shares = torch.bincount(k, minlength=4).to(F64) / n  # p_k P[g_k(z) in U_k], normalised
    assert (shares - terms.sum(0) / mass).abs().max() < 0.015
    # every draw: some fall outside their chart's region, and the moments differ
    x_all, k_all = mix.sample_with_charts((n,), within_regions=False)
    outside = ~mix.region_mask(x_all)[torch.arange(n), k_all]
    assert float(outside.double().mean()) > 0.1
    phi_all = torch.atan2(x_all[:, 1], x_all[:, 0])
    assert abs(float(torch.cos(3 * phi_all).mean() - torch.cos(3 * phi).mean())) > 0.05


def test_rejection_gives_up_with_a_clear_error():
    mix = _leaky_circle_mixture()
    torch.manual_seed(5)
    with pytest.raises(RuntimeError, match=r"kept \d+ of 200 draws inside.*max_draws = 1 "):
        mix.sample_with_charts((200,), max_draws=1)
    assert mix.sample_with_charts((200,), max_draws=3)[0].shape == (200, 2)


# ----------------------------------------------------------------------------- learned pieces
class OneChart:
    def __init__(self, code_dim):
        self.centres = torch.randn(1, code_dim, dtype=F64)

    def chart_distances(self, x):
        return torch.ones(*x.shape[:-1], 1, dtype=F64)


def _chart_map(flow, embedding, context):
    layers = [t.condition(context) for t in flow] + [embedding.condition(context)]

    def g(z):
        for t in layers:
            z = t(z.clone())
        return z

    return g, layers


def test_single_chart_reduces_to_the_injective_change_of_variables():
    torch.manual_seed(2)
    atlas = OneChart(3)
    flow = [
        _perturb(conditional_affine_coupling(2, 3, [8])),
        _perturb(conditional_masked_autoregressive(2, 3, [8])),
    ]
    emb = _perturb(conditional_conformal_embedding(2, 4, 3, [8]))
    mix = ChartMixture(atlas, flow, torch.zeros(1, dtype=F64), 4, 2, emb)
    x = torch.randn(5, 4, dtype=F64)
    g, layers = _chart_map(flow, emb, atlas.centres[0])
    expected, codes, projections = [], [], []
    for xi in x:
        # c^+ by least squares against the (affine) embedding's Jacobian
        c = layers[-1]
        jac_c = torch.autograd.functional.jacobian(
            lambda v, c=c: c(v.clone()), torch.zeros(2, dtype=F64)
        )
        y = torch.linalg.lstsq(jac_c, (xi - c(torch.zeros(2, dtype=F64))).unsqueeze(-1)).solution[
            :, 0
        ]
        for t in reversed(layers[:-1]):
            y = t.inv(y.clone())
        z = y
        jac = torch.autograd.functional.jacobian(g, z)
        log_q = -0.5 * (z**2).sum() - math.log(2 * math.pi)
        expected.append(log_q - 0.5 * torch.linalg.slogdet(jac.T @ jac)[1])
        codes.append(z)
        projections.append(g(z))
    torch.testing.assert_close(mix.log_prob(x), torch.stack(expected))
    torch.testing.assert_close(mix.encode(x), torch.stack(codes))
    torch.testing.assert_close(mix.encode(x, stochastic=True), torch.stack(codes))
    torch.testing.assert_close(mix.reconstruct(x), torch.stack(projections))
    torch.testing.assert_close(mix.chart_posterior(x), torch.ones(5, 1, dtype=F64))


def _vq_mixture(m=2, eps=0.3, restrict=True):
    torch.manual_seed(3)
    atlas = _perturb(VQAutoencoder(4, code_dim=3, num_charts=5, hidden_dims=[8]), 0.0)
    atlas.eval()
    flow = [
        _perturb(conditional_affine_coupling(2, 3, [8])),
        _perturb(conditional_affine_coupling(2, 3, [8], reverse=True)),
    ]
    emb = _perturb(conditional_conformal_embedding(2, 4, 3, [8]))
    logits = torch.randn(5, dtype=F64, requires_grad=True)
    return ChartMixture(atlas, flow, logits, 4, 2, emb, m, eps, restrict), flow, emb


def test_sparse_log_prob_equals_brute_force_over_member_charts():
    mix, flow, emb = _vq_mixture()
    x = torch.randn(6, 4, dtype=F64)
    mask = mix.atlas.chart_membership(x, 2, 0.3)
    assert (mask.sum(-1) >= 2).all() and (~mask).any()
    log_p = mix.chart_weights.detach().log()
    terms = torch.full((6, 5), -math.inf, dtype=F64)
    zs = torch.zeros(6, 5, 2, dtype=F64)
    for n in range(6):
        for k in mask[n].nonzero()[:, 0].tolist():
            g, layers = _chart_map(flow, emb, mix.atlas.centres[k].detach())
            y = layers[-1].inv(x[n].clone())
            for t in reversed(layers[:-1]):
                y = t.inv(y.clone())
            jac = torch.autograd.functional.jacobian(g, y)
            log_q = -0.5 * (y**2).sum() - math.log(2 * math.pi)
            terms[n, k] = log_p[k] + log_q - 0.5 * torch.linalg.slogdet(jac.T @ jac)[1]
            zs[n, k] = y.detach()
    with torch.no_grad():
        torch.testing.assert_close(mix.chart_log_terms(x), terms)
        torch.testing.assert_close(mix.log_prob(x), terms.logsumexp(-1))
        post = mix.chart_posterior(x)
        torch.testing.assert_close(post.sum(-1), torch.ones(6, dtype=F64))
        assert (post[~mask] == 0).all() and (post[mask] > 0).all()
        torch.testing.assert_close(mix.encode(x), (post.unsqueeze(-1) * zs).sum(-2))
        torch.manual_seed(4)
        z_s = mix.encode(x, stochastic=True)
        for n in range(6):
            assert any(torch.allclose(z_s[n], zs[n, k]) for k in mask[n].nonzero()[:, 0])
    # unrestricted: every chart contributes
    full, _, _ = _vq_mixture(restrict=False)
    with torch.no_grad():
        assert torch.isfinite(full.chart_log_terms(x)).all()
        assert (full.log_prob(x) > mix.log_prob(x)).all()


def test_batch_shapes_sampling_and_pyro_site():
    mix, flow, emb = _vq_mixture()
    torch.manual_seed(5)
    x = mix.sample((2, 3))
    assert x.shape == (2, 3, 4)
    assert mix.log_prob(x).shape == (2, 3)
    assert mix.chart_posterior(x).shape == (2, 3, 5)
    assert mix.encode(x).shape == (2, 3, 2)
    assert mix.reconstruct(x).shape == (2, 3, 4)
    for within in (False, True):  # an empty sample shape gives empty tensors, no error
        empty, k_empty = mix.sample_with_charts((0, 3), within_regions=within)
        assert empty.shape == (0, 3, 4) and k_empty.shape == (0, 3)
    # a sample x = g_k(z) lies on chart k: f_k(x) = z (through the left inverse c_k^+)
    torch.manual_seed(6)
    xs, k = mix.sample_with_charts((8,))
    torch.manual_seed(6)
    k_again = torch.multinomial(mix.chart_weights.detach(), 8, replacement=True)
    z = torch.randn(8, 2, dtype=F64)
    assert torch.equal(k, k_again)
    for n in range(8):
        _, layers = _chart_map(flow, emb, mix.atlas.centres[k[n]].detach())
        y = layers[-1].inv(xs[n].clone())
        for t in reversed(layers[:-1]):
            y = t.inv(y.clone())
        torch.testing.assert_close(y.detach(), z[n])

    def model(data):
        with pyro.plate("data", data.shape[0]):
            pyro.sample("x", mix, obs=data)

    data = torch.randn(7, 4, dtype=F64)
    loss = Trace_ELBO().differentiable_loss(model, lambda data: None, data)
    torch.testing.assert_close(loss, -mix.log_prob(data).sum())
    loss.backward()
    assert mix.chart_logits.grad.abs().sum() > 0
    for module in [*flow, emb]:
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_arguments():
    mix, flow, emb = _vq_mixture()
    atlas, logits = mix.atlas, torch.zeros(5, dtype=F64)
    with pytest.raises(ValueError, match="num_overlap"):
        ChartMixture(atlas, flow, logits, 4, 2, emb, num_overlap=6)
    with pytest.raises(ValueError, match="epsilon"):
        ChartMixture(atlas, flow, logits, 4, 2, emb, epsilon=-0.1)
    with pytest.raises(ValueError, match="latent_dim"):
        ChartMixture(atlas, flow, logits, 4, 5, emb)
    with pytest.raises(ValueError, match="embedding"):
        ChartMixture(atlas, flow, logits, 4, 2, None)
    with pytest.raises(ValueError, match="chart_logits"):
        ChartMixture(atlas, flow, torch.zeros(4, dtype=F64), 4, 2, emb)
    with pytest.raises(ValueError, match="x"):
        mix.log_prob(torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ValueError, match="x"):
        mix.log_prob(torch.zeros(3, 4, dtype=torch.float32))
    with pytest.raises(TypeError, match="x"):
        mix.log_prob([[0.0] * 4])
