import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.testing.gof import multinomial_goodness_of_fit
from pyro.distributions.transforms import SplineCoupling
from pyro.nn import DenseNN
from torch import nn

from pyro_manifold.distributions import MixtureOfFlows, SelectedComponent
from pyro_manifold.models import Flow
from pyro_manifold.nn import BatchedAutoRegressiveNN, BatchedDenseNN, BatchedLinear
from pyro_manifold.transforms import Reverse, flow_stack

K, D = 3, 2
TEST_FAILURE_RATE = 1e-3


def _linears(module, kind):
    return [m for m in module.modules() if isinstance(m, kind)]


def _copy_into_batched(batched_layers, single_flows):
    """Give component k of the batched layers the weights of single_flows[k]."""
    with torch.no_grad():
        for i, layer in enumerate(batched_layers):
            targets = _linears(layer, BatchedLinear)
            for k, single in enumerate(single_flows):
                sources = _linears(single[i], nn.Linear)
                assert len(sources) == len(targets)
                for t, s in zip(targets, sources, strict=True):
                    t.weight[k].copy_(s.weight)
                    t.bias[k].copy_(s.bias)
                    if t.mask is not None:
                        assert torch.equal(t.mask, s.mask)


def _identity_spline_flow(seed):
    torch.manual_seed(seed)
    layers = []
    for i in range(2):
        if i > 0:
            layers.append(Reverse())
        net = DenseNN(1, [8], param_dims=[8, 8, 7, 8])
        layers.append(SplineCoupling(2, 1, net, count_bins=8, identity=True))
    return nn.ModuleList(layers)


def _separate_flows(kind):
    if kind == "spline_coupling":
        return [_identity_spline_flow(10 + k).double() for k in range(K)]
    flows = []
    for k in range(K):
        torch.manual_seed(10 + k)
        flow = Flow(D, kind, num_layers=3, hidden_dims=[8, 8] if kind == "realnvp" else [8])
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(0.3 * torch.randn_like(p))
        flows.append(flow.double())
    return flows


def _layers_of(single):
    return list(single.layers) if isinstance(single, Flow) else list(single)


def _matched_pair(kind):
    singles = _separate_flows(kind)
    hidden = [8, 8] if kind == "realnvp" else [8]
    num_layers = 3 if kind != "spline_coupling" else 2
    batched = flow_stack(D, kind, num_layers, hidden, num_components=K).double()
    _copy_into_batched(batched, [_layers_of(s) for s in singles])
    base = dist.Normal(torch.zeros(K, D, dtype=torch.float64), 1.0).to_event(1)
    components = dist.TransformedDistribution(base, list(batched))
    separate = [
        dist.TransformedDistribution(
            dist.Normal(torch.zeros(D, dtype=torch.float64), 1.0).to_event(1), _layers_of(s)
        )
        for s in singles
    ]
    return components, separate


@pytest.mark.parametrize("kind", ["realnvp", "maf", "spline_coupling"])
def test_batched_components_match_separately_built_flows(kind):
    torch.manual_seed(0)
    components, separate = _matched_pair(kind)
    assert components.batch_shape == (K,) and components.event_shape == (D,)
    x = 1.5 * torch.randn(20, D, dtype=torch.float64)
    logits = torch.randn(K, dtype=torch.float64)
    mixture = MixtureOfFlows(logits, components)
    got = mixture.component_log_prob(x)
    expected = torch.stack([p.log_prob(x.clone()) for p in separate], -1)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
    # the forward (sampling) direction as well: same base noise, same points
    u = torch.randn(6, K, D, dtype=torch.float64)
    x_batched = u
    for t in components.transforms:
        x_batched = t(x_batched)
    for k, p in enumerate(separate):
        x_k = u[:, k]
        for t in p.transforms:
            x_k = t(x_k)
        torch.testing.assert_close(x_batched[:, k], x_k, atol=1e-10, rtol=1e-10)
    # the mixture density is the log-sum-exp of the separately computed components
    log_pi = torch.log_softmax(logits, -1)
    torch.testing.assert_close(
        mixture.log_prob(x), torch.logsumexp(expected + log_pi, -1), atol=1e-10, rtol=1e-10
    )


def test_shapes_and_broadcasting():
    comps = dist.Normal(torch.randn(K, D), 1.0).to_event(1)
    p = MixtureOfFlows(torch.randn(4, K), comps)
    assert p.batch_shape == (4,) and p.event_shape == (D,)
    x = p.sample((5,))
    assert x.shape == (5, 4, D)
    assert p.log_prob(x).shape == (5, 4)
    assert p.component_log_prob(x).shape == (5, 4, K)
    assert p.posterior_log_prob(x).exp().sum(-1).allclose(torch.ones(5, 4))
    x, k = p.sample_with_components((7,))
    assert x.shape == (7, 4, D) and k.shape == (7, 4) and k.dtype == torch.int64
    q = p.expand((2, 4))
    assert q.batch_shape == (2, 4) and q.log_prob(torch.zeros(D)).shape == (2, 4)
    # components with their own batch dims broadcast against the weights
    comps2 = dist.Normal(torch.randn(4, K, D), 1.0).to_event(1)
    p2 = MixtureOfFlows(torch.zeros(K), comps2)
    x2, k2 = p2.sample_with_components((3,))
    assert x2.shape == (3, 4, D) and k2.shape == (3, 4)
    torch.testing.assert_close(
        p2.component(k2).log_prob(x2), p2.component_log_prob(x2).gather(-1, k2[..., None])[..., 0]
    )


def test_sampled_components_are_the_ones_that_generated_the_points():
    locs = torch.tensor([[-10.0, 0.0], [0.0, 0.0], [10.0, 0.0]])
    p = MixtureOfFlows(torch.tensor([0.1, 0.3, 0.6]).log(), dist.Normal(locs, 0.5).to_event(1))
    x, k = p.sample_with_components((6000,))
    assert torch.equal(p.posterior_log_prob(x).argmax(-1), k)
    counts = torch.bincount(k, minlength=K).double()
    assert multinomial_goodness_of_fit(torch.tensor([0.1, 0.3, 0.6]), counts) > TEST_FAILURE_RATE


def test_selected_component_with_enumerated_indices():
    torch.manual_seed(0)
    components, _ = _matched_pair("realnvp")
    p = MixtureOfFlows(torch.zeros(K, dtype=torch.float64), components)
    x = torch.randn(9, D, dtype=torch.float64)
    k = torch.arange(K).reshape(K, 1)  # what parallel enumeration in a plate of 9 passes
    selected = p.component(k)
    assert isinstance(selected, SelectedComponent) and selected.batch_shape == (K, 1)
    torch.testing.assert_close(selected.log_prob(x), p.component_log_prob(x).T)
    assert selected.expand((K, 9)).batch_shape == (K, 9)
    # reparameterised draws from chosen components keep their gradients
    y = p.component(torch.tensor([0, 2, 2, 1])).rsample()
    assert y.shape == (4, D) and y.requires_grad


def test_samples_agree_with_log_prob_in_2d():
    """Histogram of samples against the mixture density integrated over the same cells."""
    torch.manual_seed(0)
    components, _ = _matched_pair("realnvp")
    p = MixtureOfFlows(torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64).log(), components)
    with torch.no_grad():
        samples = p.sample((20000,))
        lim, cells, fine = 6.0, 8, 400
        xs = torch.linspace(-lim, lim, fine + 1, dtype=torch.float64)
        mids = 0.5 * (xs[1:] + xs[:-1])
        gx, gy = torch.meshgrid(mids, mids, indexing="ij")
        pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)
        mass = p.log_prob(pts).exp() * (xs[1] - xs[0]) ** 2
    edges = torch.linspace(-lim, lim, cells + 1, dtype=torch.float64)[1:-1]

    def cell(z):
        z = z.T.contiguous()
        return torch.bucketize(z[0], edges) * cells + torch.bucketize(z[1], edges)

    probs = torch.zeros(cells * cells + 1, dtype=torch.float64)
    probs[:-1].index_add_(0, cell(pts), mass)
    probs[-1] = (1 - probs[:-1].sum()).clamp_min(0)
    assert abs(probs[:-1].sum().item() - 1) < 0.02  # the grid holds the mass
    inside = (samples.abs() < lim).all(-1)
    counts = torch.zeros_like(probs)
    counts[:-1].index_add_(
        0, cell(samples[inside]), torch.ones(int(inside.sum()), dtype=torch.float64)
    )
    counts[-1] = (~inside).sum()
    # pool the cells too sparse for a chi-squared test into the last bucket
    small = torch.cat([probs[:-1] < 1e-3, torch.tensor([True])])
    probs = torch.cat([probs[~small], probs[small].sum().reshape(1)])
    counts = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    assert len(probs) > 20
    assert multinomial_goodness_of_fit(probs, counts) > TEST_FAILURE_RATE


def test_usable_as_a_pyro_site():
    comps = dist.Normal(torch.randn(K, D), 1.0).to_event(1)
    mixture = MixtureOfFlows(torch.zeros(K), comps)

    def model(x=None):
        with pyro.plate("data", 5):
            return pyro.sample("x", mixture, obs=x)

    trace = pyro.poutine.trace(model).get_trace()
    assert trace.nodes["x"]["value"].shape == (5, D)
    assert trace.log_prob_sum().isfinite()


def test_bad_arguments_raise_clear_errors():
    comps = dist.Normal(torch.zeros(K, D), 1.0).to_event(1)
    with pytest.raises(ValueError, match="component_distribution: expected batch shape"):
        MixtureOfFlows(torch.zeros(K + 1), comps)
    with pytest.raises(TypeError, match="component_distribution: expected a torch Distribution"):
        MixtureOfFlows(torch.zeros(K), "flow")
    with pytest.raises(ValueError, match="mixture_logits"):
        MixtureOfFlows(torch.zeros(2, K), dist.Normal(torch.zeros(3, K, D), 1.0).to_event(1))
    p = MixtureOfFlows(torch.zeros(K), comps)
    with pytest.raises(ValueError, match=r"k: expected component indices in \[0, 2\], got"):
        p.component(torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="k: expected an integer tensor"):
        p.component(torch.tensor([0.0, 1.0]))


def test_batched_networks_validate_their_arguments():
    with pytest.raises(ValueError, match="num_components"):
        BatchedLinear(0, 2, 3)
    with pytest.raises(ValueError, match="permutation"):
        BatchedAutoRegressiveNN(2, 3, [6], permutation=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="hidden_dims"):
        BatchedDenseNN(2, 3, [])
