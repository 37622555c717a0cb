import io

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Predictive, Trace_ELBO, TraceEnum_ELBO
from torch import nn

from pyro_manifold.infer import fit
from pyro_manifold.models import Flow, VariationalMixtureOfFlows
from pyro_manifold.nn import BatchedLinear

K, D = 3, 2
ELBO = TraceEnum_ELBO(max_plate_nesting=1)


def _random_mixture(flow="realnvp", prior="uniform", seed=0, **kwargs):
    torch.manual_seed(seed)
    hidden = [8] if flow == "maf" else [8, 8]
    m = VariationalMixtureOfFlows(
        D,
        K,
        flow,
        num_layers=2,
        hidden_dims=hidden,
        encoder_hidden_dims=[8],
        prior=prior,
        **kwargs,
    ).double()
    with torch.no_grad():  # move off the initial values so that nothing is symmetric
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def _hand_elbo(m, x, y=None):
    r"""sum_k q(k|x)[log p(x|k) + log pi_k - log q(k|x)], and for labelled points
    log p(x|y) + log pi_y + alpha log q(y|x)."""
    q = m.responsibilities(x)
    log_px = m.component_log_prob(x)
    log_pi = m.mixture_log_weights()
    terms = (q * (log_px + log_pi - q.log())).sum(-1)
    if y is None:
        return terms.sum()
    lab = y >= 0
    yl = y[lab]
    labelled = (
        log_px[lab].gather(-1, yl[:, None])[:, 0]
        + log_pi[yl]
        + m.label_weight * q[lab].log().gather(-1, yl[:, None])[:, 0]
    )
    return terms[~lab].sum() + labelled.sum()


@pytest.mark.parametrize("prior", ["uniform", "learned"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_enumerated_elbo_is_the_exact_sum_over_components(prior, temperature):
    m = _random_mixture(prior=prior, initial_temperature=temperature)
    if prior == "learned":
        with torch.no_grad():
            m.weights.logits.copy_(torch.tensor([0.5, -1.0, 0.2]))
    x = torch.randn(11, D, dtype=torch.float64)
    loss = ELBO.differentiable_loss(m.model, m.guide, x)
    hand = _hand_elbo(m, x)
    torch.testing.assert_close(loss, -hand, atol=1e-10, rtol=1e-10)
    # and so are the gradients, for every parameter (flows, encoder, mixture weights)
    params = [p for p in m.parameters() if p.requires_grad]
    g_pyro = torch.autograd.grad(loss, params)
    g_hand = torch.autograd.grad(-_hand_elbo(m, x), params)
    for a, b in zip(g_pyro, g_hand, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_semi_supervised_elbo_adds_the_classification_term():
    m = _random_mixture(label_weight=2.0)
    x = torch.randn(10, D, dtype=torch.float64)
    y = torch.tensor([-1, 0, 2, -1, -1, 1, -1, -1, 0, -1])
    loss = ELBO.differentiable_loss(m.model, m.guide, x, y)
    torch.testing.assert_close(loss, -_hand_elbo(m, x, y), atol=1e-10, rtol=1e-10)
    # all labelled: no latent site left, the bound is log p(x, y) + alpha log q(y|x)
    y_all = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    loss_all = ELBO.differentiable_loss(m.model, m.guide, x, y_all)
    torch.testing.assert_close(loss_all, -_hand_elbo(m, x, y_all), atol=1e-10, rtol=1e-10)

    # the sign: the encoder enters only through -alpha log q(y|x), and a small step
    # against the loss raises q(y|x)
    def log_q_y():
        return m.responsibilities(x).log().gather(-1, y_all[:, None]).sum()

    before = log_q_y()
    grads = torch.autograd.grad(loss_all, list(m.encoder.parameters()))
    with torch.no_grad():
        for p, g in zip(m.encoder.parameters(), grads, strict=True):
            p.sub_(1e-4 * g)
    assert log_q_y() > before


def test_log_prob_is_the_logsumexp_of_the_components():
    m = _random_mixture(prior="learned")
    x = torch.randn(7, D, dtype=torch.float64)
    parts = m.component_log_prob(x)
    assert parts.shape == (7, K)
    expected = torch.logsumexp(parts + m.mixture_log_weights(), -1)
    torch.testing.assert_close(m.log_prob(x), expected)
    # the bound is below the exact log-likelihood, with equality when q is the posterior
    assert -ELBO.loss(m.model, m.guide, x) <= m.log_prob(x).sum().item() + 1e-9


@pytest.mark.parametrize("flow", ["realnvp", "maf"])
def test_components_match_separately_built_flows(flow):
    m = _random_mixture(flow)
    singles = []
    for k in range(K):
        torch.manual_seed(100 + k)
        f = Flow(D, flow, num_layers=2, hidden_dims=[8] if flow == "maf" else [8, 8]).double()
        with torch.no_grad():
            for p in f.parameters():
                p.add_(0.3 * torch.randn_like(p))
        singles.append(f.eval())
    with torch.no_grad():
        for i, layer in enumerate(m.layers):
            targets = [t for t in layer.modules() if isinstance(t, BatchedLinear)]
            for k, f in enumerate(singles):
                sources = [s for s in f.layers[i].modules() if isinstance(s, nn.Linear)]
                for t, s in zip(targets, sources, strict=True):
                    t.weight[k].copy_(s.weight)
                    t.bias[k].copy_(s.bias)
    x = 2 * torch.randn(13, D, dtype=torch.float64)
    expected = torch.stack([f.log_prob(x.clone()) for f in singles], -1)
    torch.testing.assert_close(m.component_log_prob(x), expected, atol=1e-10, rtol=1e-10)


def test_sample_returns_points_and_their_components():
    m = _random_mixture("maf")
    x, k = m.sample(50)
    assert x.shape == (50, D) and k.shape == (50,) and k.dtype == torch.int64
    assert int(k.min()) >= 0 and int(k.max()) < K
    assert torch.isfinite(m.log_prob(x)).all()


def test_responsibilities_cluster_and_temperature_schedule():
    m = _random_mixture(initial_temperature=4.0, final_temperature=1.0, temperature_decay=0.5)
    x = torch.randn(6, D, dtype=torch.float64)
    assert m.step_kwargs(0) == {"temperature": 4.0} and m.step_kwargs(1) == {"temperature": 2.5}
    assert m.step_kwargs(3)["temperature"] == pytest.approx(1.375)
    q4 = m.responsibilities(x, temperature=4.0)
    torch.testing.assert_close(q4, torch.softmax(m.encoder_logits(x) / 4.0, -1))
    assert torch.equal(m.cluster(x), q4.argmax(-1))
    # by default the final temperature, in the programs as in responsibilities
    torch.testing.assert_close(m.responsibilities(x), torch.softmax(m.encoder_logits(x), -1))
    m.train()
    for kwargs, t in [({}, 1.0), ({"temperature": 2.5}, 2.5)]:
        guide = poutine.trace(m.guide).get_trace(x, **kwargs)
        logits = guide.nodes["component"]["fn"].logits
        torch.testing.assert_close(logits, torch.log_softmax(m.encoder_logits(x) / t, -1))
    # training calls keep no step count: the state dict holds tensors only
    before = m.state_dict()
    ELBO.differentiable_loss(m.model, m.guide, x, temperature=2.5)
    assert "_extra_state" not in m.state_dict() and m.state_dict().keys() == before.keys()
    # state dicts saved with the old step count still load (the step lives in fit now)
    buf = io.BytesIO()
    torch.save({**m.state_dict(), "_extra_state": {"temperature_step": 3}}, buf)
    m2 = _random_mixture(initial_temperature=4.0, temperature_decay=0.5, seed=1)
    m2.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    torch.testing.assert_close(m2.encoder_logits(x), m.encoder_logits(x))
    # the exact posterior is also available for clustering
    exact = m.cluster(x, exact=True)
    assert torch.equal(exact, (m.component_log_prob(x) + m.mixture_log_weights()).argmax(-1))


def test_validation_losses_use_the_final_temperature():
    """README: "validation losses use the models' defaults (the final temperature, ...)":
    the programs called without ``temperature`` run at ``final_temperature`` (here 2, not
    1), and fit's validation loss is the exact enumerated ELBO per point there."""
    m = _random_mixture(initial_temperature=5.0, final_temperature=2.0, temperature_decay=0.5)
    x, val = torch.randn(32, D, dtype=torch.float64), torch.randn(12, D, dtype=torch.float64)
    guide = poutine.trace(m.guide).get_trace(val)
    torch.testing.assert_close(guide.nodes["component"]["fn"].logits,
                               torch.log_softmax(m.encoder_logits(val) / 2.0, -1))  # fmt: skip
    result = fit(m.model, m.guide, x, loss=ELBO, validation_data=val, validate_every=3,
                 num_steps=3, batch_size=16, device="cpu", progress=False,
                 restore_best=False)  # fmt: skip
    with torch.no_grad():
        at = {t: ELBO.loss(m.model, m.guide, val, temperature=t) / len(val) for t in (1.0, 2.0)}
    assert result.history["val_loss"] == [pytest.approx(at[2.0], rel=1e-9)]
    assert abs(at[2.0] - at[1.0]) > 1e-3


def test_predictive_draws_posterior_components_and_new_data():
    m = _random_mixture()
    x = torch.randn(5, D, dtype=torch.float64)
    post = Predictive(m.model, guide=m.guide, num_samples=4, return_sites=["component"])(x)
    assert post["component"].shape == (4, 5)
    new = Predictive(m.model, num_samples=3)(None, None, 10)
    assert new["x"].shape == (3, 10, D) and new["component"].shape == (3, 10)
    vec = Predictive(m.model, num_samples=3, parallel=True)(None, None, 10)
    assert vec["x"].shape == (3, 10, D)


def test_fit_trains_with_enumeration_and_anneals_the_temperature():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(64, D) * 0.3 - 2, torch.randn(64, D) * 0.3 + 2])
    m = VariationalMixtureOfFlows(
        D,
        2,
        num_layers=1,
        hidden_dims=[8, 8],
        encoder_hidden_dims=[8],
        initial_temperature=3.0,
        temperature_decay=0.9,
        prior="responsibilities",
    )
    temperatures = []

    def guide(*args, temperature):
        temperatures.append(temperature)
        return m.guide(*args, temperature=temperature)

    result = fit(
        m.model,
        guide,  # the model's own schedule, from m.step_kwargs
        x,
        loss=TraceEnum_ELBO(max_plate_nesting=1),
        num_steps=20,
        batch_size=32,
        lr=1e-2,
        device="cpu",
        progress=False,
    )
    # one evaluation discovers the parameters, then step t (from 0) runs at T_t
    assert temperatures == [3.0] + [m.temperature_at(t) for t in range(20)]
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert m.mixture_log_weights().exp().sum().item() == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_fully_labelled_training_teaches_the_guide_the_labels():
    """Two blobs whose labels are the reverse of any order the encoder might prefer."""
    torch.manual_seed(0)
    x = torch.cat(
        [
            torch.randn(100, D) * 0.5 + torch.tensor([2.0, 0.0]),
            torch.randn(100, D) * 0.5 - torch.tensor([2.0, 0.0]),
        ]
    )
    y = torch.cat([torch.ones(100, dtype=torch.int64), torch.zeros(100, dtype=torch.int64)])
    m = VariationalMixtureOfFlows(D, 2, num_layers=1, hidden_dims=[8, 8], encoder_hidden_dims=[16])
    fit(
        m.model,
        m.guide,
        (x, y),
        loss=TraceEnum_ELBO(max_plate_nesting=1),
        num_steps=100,
        batch_size=100,
        lr=1e-2,
        device="cpu",
        progress=False,
    )
    assert (m.cluster(x) == y).double().mean().item() > 0.97


@pytest.mark.filterwarnings("ignore:component")
def test_semi_supervised_with_few_labels_and_trace_elbo():
    """Partially labelled batches also run under plain Trace_ELBO (sampled k)."""
    torch.manual_seed(0)
    m = VariationalMixtureOfFlows(D, 2, num_layers=1, hidden_dims=[4, 4], encoder_hidden_dims=[4])
    x = torch.randn(6, D)
    y = torch.tensor([0, -1, -1, 1, -1, -1])
    assert torch.isfinite(torch.tensor(Trace_ELBO().loss(m.model, m.guide, x, y)))
    trace = pyro.poutine.trace(m.model).get_trace(x, y)
    assert {"label", "x_labelled", "classification", "component", "x"} <= set(trace.nodes)
    assert trace.nodes["classification"]["scale"] == m.label_weight


@pytest.mark.parametrize("flow", ["spline_coupling", "maf", "spline_autoregressive"])
def test_other_component_families_train(flow):
    m = _random_mixture(flow)
    m.train()
    x = torch.randn(16, D, dtype=torch.float64)
    loss = ELBO.differentiable_loss(m.model, m.guide, x)
    loss.backward()
    assert all(p.grad is not None for p in m.layers.parameters())


def test_initialize_components_with_kmeans():
    torch.manual_seed(0)
    m = VariationalMixtureOfFlows(D, 2, num_layers=1, hidden_dims=[4, 4])
    x = torch.cat([torch.randn(40, D) * 0.2 + 3, torch.randn(40, D) * 0.2 - 3])
    labels = m.initialize_components(x)
    assert labels.shape == (80,) and len(labels.unique()) == 2
    assert torch.allclose(m.base_loc.abs(), torch.full((2, D), 3.0), atol=0.2)
    assert (m.base_scale < 0.4).all()


def test_seeded_kmeans_follows_the_labels():
    # two clusters; the labels name them against k-means++'s own order
    torch.manual_seed(0)
    m = VariationalMixtureOfFlows(D, 2, num_layers=1, hidden_dims=[4, 4])
    x = torch.cat([torch.randn(40, D) * 0.2 + 3, torch.randn(40, D) * 0.2 - 3])
    for first in (0, 1):
        y = torch.full((80,), -1)
        y[0], y[79] = first, 1 - first  # one labelled point per cluster
        labels = m.initialize_components(x, y=y)
        expected = torch.cat([torch.full((40,), first), torch.full((40,), 1 - first)])
        assert torch.equal(labels, expected)
        assert torch.allclose(m.base_loc[first], torch.full((D,), 3.0), atol=0.2)
    # labelled points keep their class even where the nearest centroid is the other one
    y = torch.full((80,), -1)
    y[:3], y[40], y[41] = 0, 1, 0
    labels = m.initialize_components(x, y=y)
    assert labels[41] == 0 and (labels[42:] == 1).all() and (labels[:40] == 0).all()


def test_fit_encoder_learns_a_partition_and_leaves_the_flows():
    torch.manual_seed(0)
    m = VariationalMixtureOfFlows(D, 3, num_layers=1, hidden_dims=[8, 8])
    x = torch.randn(300, D)
    labels = (x[:, 0] > 0.5).long() + (x[:, 0] > -0.5).long()  # three slabs
    before = {k: v.clone() for k, v in m.layers.state_dict().items()}
    fresh = (m.encoder_logits(x).argmax(-1) == labels).double().mean()
    agreement = m.fit_encoder(x, labels, num_steps=400, lr=1e-2)
    assert fresh < 0.7 and agreement > 0.95
    assert agreement == (m.cluster(x) == labels).double().mean()
    assert all(torch.equal(v, m.layers.state_dict()[k]) for k, v in before.items())
    assert m.fit_encoder(x, labels, num_steps=0) == agreement  # 0 steps: unchanged


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="num_components: expected an int >= 1, got 0"):
        VariationalMixtureOfFlows(D, 0)
    with pytest.raises(ValueError, match="flow: expected one of"):
        VariationalMixtureOfFlows(D, 2, flow="glow")
    with pytest.raises(ValueError, match="prior: expected one of"):
        VariationalMixtureOfFlows(D, 2, prior="dirichlet")
    with pytest.raises(ValueError, match="temperature_decay"):
        VariationalMixtureOfFlows(D, 2, temperature_decay=0.0)
    m = VariationalMixtureOfFlows(D, 2, num_layers=1, hidden_dims=[4, 4])
    x = torch.randn(4, D)
    with pytest.raises(ValueError, match=r"x: expected shape \(\*, 2\)"):
        m.log_prob(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 2\)"):
        m.model(torch.randn(2, 4, D))
    with pytest.raises(ValueError, match=r"y: expected labels in \[0, 1\] or -1"):
        m.model(x, torch.tensor([0, 1, 2, -1]))
    with pytest.raises(ValueError, match=r"y: expected labels in \[0, 1\] or -1"):
        m.guide(x, torch.tensor([0, -2, 1, -1]))
    with pytest.raises(ValueError, match=r"y: expected shape \(4,\)"):
        m.model(x, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="y: expected an integer tensor"):
        m.model(x, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="x: expected dtype torch.float32"):
        m.log_prob(x.double())
    with pytest.raises(ValueError, match="temperature"):
        m.responsibilities(x, temperature=0.0)
