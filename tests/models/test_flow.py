import pyro
import pytest
import torch
from pyro.infer import Predictive, Trace_ELBO

from pyro_manifold.models import Flow
from pyro_manifold.transforms import FLOWS


def _random_flow(kind, **kwargs):
    torch.manual_seed(0)
    flow = Flow(
        2, kind, num_layers=3, hidden_dims=[16, 16] if kind != "maf" else [16], **kwargs
    ).double()
    with torch.no_grad():  # move off the initial values, keeping densities smooth
        for p in flow.parameters():
            p.mul_(0.3) if kind == "spline_coupling" else p.add_(0.05 * torch.randn_like(p))
    return flow.eval()


def _grid(lim=10.0, n=500):
    xs = torch.linspace(-lim, lim, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], -1), (xs[1] - xs[0]) ** 2


@pytest.mark.parametrize("kind", FLOWS)
def test_density_integrates_to_one(kind):
    flow = _random_flow(kind)
    pts, area = _grid()
    with torch.no_grad():
        total = flow.log_prob(pts).exp().sum() * area
    assert abs(total.item() - 1.0) < 0.02


@pytest.mark.parametrize("kind", FLOWS)
def test_samples_agree_with_log_prob(kind):
    """Histogram of samples against the density integrated over the same cells."""
    flow = _random_flow(kind)
    samples = flow.sample(50000)
    edges = torch.linspace(-4, 4, 9, dtype=torch.float64)
    pts, area = _grid(4.0, 320)
    with torch.no_grad():
        dens = flow.log_prob(pts).exp() * area
    cell = lambda z: torch.bucketize(z.contiguous(), edges[1:-1])  # noqa: E731
    expected = torch.zeros(8, 8, dtype=torch.float64).index_put_(
        (cell(pts[:, 0]), cell(pts[:, 1])), dens, accumulate=True
    )
    inside = (samples.abs() < 4).all(-1)
    s = samples[inside]
    observed = torch.zeros(8, 8, dtype=torch.float64).index_put_(
        (cell(s[:, 0]), cell(s[:, 1])), torch.ones(len(s), dtype=torch.float64), accumulate=True
    ) / len(samples)
    mask = expected > 0.01
    rel = ((observed - expected).abs() / expected)[mask]
    assert rel.max() < 0.15, rel.max()


def test_elbo_is_the_negative_log_likelihood():
    flow = _random_flow("realnvp")
    x = torch.randn(7, 2, dtype=torch.float64)
    loss = Trace_ELBO().differentiable_loss(flow.model, flow.guide, x)
    torch.testing.assert_close(loss, -flow.log_prob(x.clone()).sum())


def test_log_prob_is_the_change_of_variables():
    flow = _random_flow("maf")
    x = torch.randn(5, 2, dtype=torch.float64)
    u, logdet = x, torch.zeros(5, dtype=torch.float64)
    for t in reversed(flow.layers):
        prev = t.inv(u)
        logdet = logdet + t.log_abs_det_jacobian(prev, u)
        u = prev
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(u).sum(-1) - logdet
    torch.testing.assert_close(flow.log_prob(x.clone()), expected)


def test_predictive_draws_new_data():
    flow = _random_flow("spline_coupling")
    samples = Predictive(flow.model, num_samples=3)(None, 10)["x"]
    assert samples.shape == (3, 10, 2)


def test_batch_norm_trains_and_evaluates():
    flow = Flow(3, "maf", num_layers=2, hidden_dims=[12], batch_norm=True)
    x = torch.randn(64, 3)
    flow.train()
    lp_train = flow.log_prob(x)
    flow.eval()
    lp_eval = flow.log_prob(x.clone())
    assert lp_train.shape == lp_eval.shape == (64,)
    assert torch.isfinite(lp_eval).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(data_dim=1), "data_dim"),
        (dict(data_dim=2, flow="glow"), "flow"),
        (dict(data_dim=2, num_layers=0), "num_layers"),
        (dict(data_dim=4, hidden_dims=[2]), "hidden_dims"),
    ],
)
def test_bad_hyper_parameters(kwargs, match):
    kwargs.setdefault("flow", "maf")
    with pytest.raises((ValueError, TypeError), match=match):
        Flow(**kwargs)


def test_bad_data():
    flow = Flow(2, "realnvp", num_layers=1)
    with pytest.raises(ValueError, match=r"x: expected shape \(\*, 2\)"):
        flow.log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="x: expected finite"):
        flow.log_prob(torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(ValueError, match="x: expected dtype torch.float32"):
        flow.log_prob(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="x: expected a floating-point"):
        flow.model(torch.zeros(3, 2, dtype=torch.long))
    pyro.clear_param_store()
