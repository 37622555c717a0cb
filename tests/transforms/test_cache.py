"""The transforms' one-entry cache is used within an evaluation and never goes stale."""

import copy
import gc
import io
import weakref

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.transforms import BatchNorm, spline_coupling
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO

from pyro_manifold.models import (
    Flow,
    FlowVAE,
    NoisyInjectiveFlow,
    VariationalMixtureOfFlows,
    VQFlow,
)
from pyro_manifold.transforms import (
    AffineCoupling,
    ConditionalZukoTransform,
    Reverse,
    affine_coupling,
    conditional_affine_coupling,
    conditional_conformal_embedding,
    conditional_masked_autoregressive,
    conditional_pcp_map,
    conformal_embedding,
    flow_stack,
    masked_autoregressive,
)
from pyro_manifold.transforms.splines import FreshSplineCoupling, fresh_spline_coupling

F64 = torch.float64


def _builders():
    def pcp():
        layer = conditional_pcp_map(2, 3, hidden_dims=[8]).double()
        return layer.condition(torch.randn(3, dtype=F64)), layer

    return {
        "affine_coupling": lambda: (lambda t: (t, t))(affine_coupling(3, [8]).double()),
        "masked_autoregressive": lambda: (lambda t: (t, t))(masked_autoregressive(3, [8]).double()),
        "conformal_embedding": lambda: (lambda t: (t, t))(conformal_embedding(2, 3).double()),
        "conditioned_pcp_map": pcp,
        "spline_coupling": lambda: (lambda t: (t, t))(fresh_spline_coupling(3, [8]).double()),
    }


def _perturb(module):
    with torch.no_grad():  # an in-place update, like an optimiser step
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("name", list(_builders()))
def test_cache_hits_within_an_evaluation_and_refreshes_after_an_update(name):
    t, owner = _builders()[name]()
    d_in = t.inverse_shape(torch.Size([5, 3]))[-1] if name == "conformal_embedding" else None
    z = torch.randn(5, d_in or (2 if name == "conditioned_pcp_map" else 3), dtype=F64)
    x = t(z)
    assert t(z) is x  # same input, same parameters: the cached result
    ladj = t.log_abs_det_jacobian(z, x)
    _perturb(owner)
    x_new = t(z)
    assert x_new is not x
    torch.testing.assert_close(x_new, t(z.clone()))  # recomputed with the new parameters
    assert not torch.allclose(x_new, x)
    torch.testing.assert_close(
        t.log_abs_det_jacobian(z, x_new), t.log_abs_det_jacobian(z.clone(), x_new.clone())
    )
    assert not torch.allclose(t.log_abs_det_jacobian(z, x_new), ladj)


@pytest.mark.parametrize("name", list(_builders()))
def test_backward_twice_through_the_same_input_recomputes(name):
    t, owner = _builders()[name]()
    z = torch.randn(
        4, 2 if name in ("conditioned_pcp_map", "conformal_embedding") else 3, dtype=F64
    )
    for _ in range(2):  # the second pass must not reuse the first (freed) graph
        x = t(z)
        (x.sum() + t.log_abs_det_jacobian(z, x).sum()).backward()
    assert all(p.grad is not None for p in owner.parameters())


@pytest.mark.parametrize("name", list(_builders()))
def test_an_input_refilled_in_place_is_recomputed(name):
    # a data buffer refilled with copy_ is the same tensor object with new values
    t, _ = _builders()[name]()
    d_in = 2 if name in ("conditioned_pcp_map", "conformal_embedding") else 3
    z = torch.randn(5, d_in, dtype=F64)
    with torch.no_grad():
        x = t(z)
        ladj = t.log_abs_det_jacobian(z, x)
        z.copy_(torch.randn_like(z))
        x_new = t(z)
        torch.testing.assert_close(x_new, t(z.clone()))
        assert not torch.allclose(x_new, x)
        ladj_new = t.log_abs_det_jacobian(z, x_new)
        torch.testing.assert_close(ladj_new, t.log_abs_det_jacobian(z.clone(), x_new.clone()))
        if name == "conformal_embedding":  # an isometry's ladj and a projection's inverse
            return  # do not depend on z, and its inverse is never cached
        assert not torch.allclose(ladj_new, ladj)
        y = x_new.clone()
        z_back = t.inv(y)
        y.mul_(1.1)
        torch.testing.assert_close(t.inv(y), t.inv(y.clone()))
        assert not torch.allclose(t.inv(y), z_back)


@pytest.mark.parametrize("flow", ["realnvp", "maf", "spline_coupling"])
def test_input_gradients_of_the_same_leaf_twice(flow):
    # the score d log p / dx of one batch, asked for twice of a distribution built once:
    # the second pass must not reuse the first pass's freed graph (before: "Trying to
    # backward through the graph a second time")
    d = Flow(2, flow, num_layers=2, hidden_dims=[8]).distribution()
    x = torch.randn(6, 2, requires_grad=True)
    (first,) = torch.autograd.grad(d.log_prob(x).sum(), x)
    (second,) = torch.autograd.grad(d.log_prob(x).sum(), x)
    torch.testing.assert_close(first, second)
    d.log_prob(x).sum().backward()
    d.log_prob(x).sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)
    assert not x._backward_hooks  # no hook is left on the user's tensor


@pytest.mark.parametrize("flow", ["realnvp", "maf", "spline_coupling"])
def test_refilled_buffer_gives_the_new_log_density(flow):
    d = Flow(2, flow, num_layers=2, hidden_dims=[8]).distribution()  # built once, reused
    buf = torch.randn(5, 2)
    with torch.no_grad():
        before = d.log_prob(buf).clone()
        buf.copy_(torch.randn(5, 2))
        torch.testing.assert_close(d.log_prob(buf), d.log_prob(buf.clone()))
        assert not torch.allclose(d.log_prob(buf), before)


def _trained_one_step():
    x = torch.randn(8, 2)
    models = {
        f: Flow(2, f, num_layers=2, hidden_dims=[8]) for f in ("realnvp", "maf", "spline_coupling")
    }
    models["nif"] = NoisyInjectiveFlow(2, 1, top_flow="realnvp", top_layers=1, top_hidden_dims=[8])
    models["vmonf_spline"] = VariationalMixtureOfFlows(
        2, 2, flow="spline_coupling", num_layers=1, hidden_dims=[8], encoder_hidden_dims=[8]
    )
    models["vae_pcp"] = FlowVAE(1, 2, "pcp", num_flows=1, hidden_dims=[8], likelihood="gaussian")
    models["vq_flow"] = VQFlow(
        2, num_charts=3, num_layers=1, hidden_dims=[8], autoencoder_hidden_dims=[8]
    )
    for name, m in models.items():
        elbo = TraceEnum_ELBO(max_plate_nesting=1) if name == "vmonf_spline" else Trace_ELBO()
        elbo.differentiable_loss(m.model, m.guide, x).backward()
    return models


def test_a_model_after_a_training_step_deep_copies_and_pickles():
    # keeping the best model with copy.deepcopy, or torch.save(model), in the middle of
    # training: the transforms' caches hold the step's graph, which cannot be copied
    for name, m in _trained_one_step().items():
        buffer = io.BytesIO()
        torch.save(m, buffer)  # nor do the cache's weak references pickle
        buffer.seek(0)
        for twin in (copy.deepcopy(m), torch.load(buffer, weights_only=False)):
            for a, b in zip(m.parameters(), twin.parameters(), strict=True):
                assert torch.equal(a, b), name
            if isinstance(m, Flow):
                x = torch.randn(5, 2)
                with torch.no_grad():
                    torch.testing.assert_close(twin.log_prob(x), m.log_prob(x))


def test_cache_under_inference_mode():
    d = Flow(2, "maf", num_layers=2, hidden_dims=[8]).distribution()
    x = torch.randn(5, 2)
    with torch.inference_mode():
        buf = torch.randn(5, 2)
        first = d.log_prob(buf).clone()
        buf.copy_(x)  # inference tensors keep no version counter: never served stale
        torch.testing.assert_close(d.log_prob(buf), d.log_prob(x.clone()))
        assert not torch.allclose(d.log_prob(buf), first)
        draw = d.sample((3,))
        torch.testing.assert_close(d.log_prob(draw), d.log_prob(draw.clone()))


@pytest.mark.parametrize("flow", ["realnvp", "maf", "spline_coupling"])
def test_flow_log_prob_of_the_same_tensor_follows_the_parameters(flow):
    f = Flow(2, flow, num_layers=2, hidden_dims=[8])
    x = torch.randn(6, 2)
    with torch.no_grad():
        before = f.log_prob(x)
        _perturb(f)
        after = f.log_prob(x)
        fresh = f.log_prob(x.clone())
    torch.testing.assert_close(after, fresh)
    assert not torch.allclose(after, before)


def test_nif_elbo_twice_on_the_same_batch():
    m = NoisyInjectiveFlow(3, 2, top_flow="maf", top_layers=2, top_hidden_dims=[8],
                           batch_norm=True)  # fmt: skip
    x = torch.randn(16, 3)
    for _ in range(2):  # pyro's BatchNorm layer too: the guide starts a new evaluation
        Trace_ELBO().differentiable_loss(m.model, m.guide, x).backward()
    _perturb(m)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m.log_prob(x), m.log_prob(x.clone()))


@pytest.mark.parametrize("backward", [True, False])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_transforms_conditioned_per_step_are_freed_with_their_graph(direction, backward):
    # VQ-Flows and conditional flows build new conditioned transforms at every step; their
    # cache must not keep them (and their autograd graphs) alive: memory grew ~13 MB per
    # step of a 784-d VQ-RealNVP before the cache's gradient hooks held them weakly.
    layers = [
        conditional_affine_coupling(4, 2, [8]),
        conditional_masked_autoregressive(4, 2, [8]),
        conditional_conformal_embedding(4, 4, context_dim=2, hidden_dims=[8]),
    ]
    alive = []
    for layer in layers:
        t = layer.condition(torch.randn(2))
        x = torch.randn(5, 4)
        y = t(x) if direction == "forward" else t.inv(x)
        if backward:
            y.sum().backward()
        alive.append(weakref.ref(t))
        del t, y
    gc.collect()
    assert [ref() for ref in alive] == [None] * len(layers)


def _families():
    """Every transform family as the README snippet uses it: (layers, module to register).

    Conditioned layers are conditioned once, outside the model, and held across steps
    (their networks' parameters live in the conditional parent).
    """
    h = torch.randn(2, dtype=F64)

    def held(layer):
        layer = layer.double()
        return [layer.condition(h)], layer

    def plain(*layers):
        layers = torch.nn.ModuleList(layers).double()
        return list(layers), layers

    return {
        "affine_coupling": lambda: plain(affine_coupling(3, [8])),
        "masked_autoregressive": lambda: plain(masked_autoregressive(3, [8])),
        "spline_coupling": lambda: plain(fresh_spline_coupling(3, [8])),
        "conformal_embedding": lambda: plain(conformal_embedding(3, 3)),
        "reverse": lambda: plain(Reverse(), affine_coupling(3, [8])),
        "pyro_batch_norm": lambda: plain(affine_coupling(3, [8]), BatchNorm(3)),
        "conditional_affine_coupling": lambda: held(conditional_affine_coupling(3, 2, [8])),
        "conditional_masked_autoregressive": lambda: held(
            conditional_masked_autoregressive(3, 2, [8])
        ),
        "conditional_conformal_embedding": lambda: held(
            conditional_conformal_embedding(3, 3, context_dim=2, hidden_dims=[8])
        ),
        "conditional_pcp_map": lambda: held(conditional_pcp_map(3, 2, hidden_dims=[8])),
    }


@pytest.mark.parametrize("name", list(_families()))
def test_the_readme_snippet_trains_with_stock_svi_and_evaluations_in_between(name):
    """Pyro's SVI.evaluate_loss runs under no_grad; the steps after it must still train."""
    torch.manual_seed(0)
    pyro.clear_param_store()
    layers, module = _families()[name]()
    x = torch.randn(128, 3, dtype=F64) * 0.5 + 1.0

    def model(x):
        pyro.module("layers", module)
        base = dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1)
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.TransformedDistribution(base, layers), obs=x)

    svi = SVI(model, lambda x: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.evaluate_loss(x)]
    for _ in range(8):
        losses.append(svi.step(x))
        with torch.no_grad():
            svi.evaluate_loss(x)  # interleaved evaluations do not freeze training
    losses.append(svi.evaluate_loss(x))
    assert losses[-1] < losses[0] - 1.0 and losses[-2] < losses[1], losses


def test_pyro_batch_norm_keeps_no_cache():
    # Pyro's BatchNorm (in Flow and NoisyInjectiveFlow with batch_norm=True) has no cache,
    # so it cannot serve a stale result; if Pyro ever gives it one, it needs FreshCache
    assert BatchNorm(2)._cache_size == 0


def test_an_entry_follows_the_module_mode():
    # dropout in the network: a value computed in training mode is not an eval-mode value
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Dropout(0.5))
            self.head = torch.nn.Linear(8, 2)

        def forward(self, kept):
            mu, s = self.head(self.body(kept)).chunk(2, -1)
            return mu, s

    t = AffineCoupling(1, Net(), input_dim=2)
    x = torch.randn(64, 2)
    with torch.no_grad():
        t.train()
        t.inv(x)
        t.eval()
        torch.testing.assert_close(t.inv(x), t.inv(x.clone()))
        torch.testing.assert_close(
            t.log_abs_det_jacobian(t.inv(x), x), t.log_abs_det_jacobian(t.inv(x), x.clone())
        )


def test_an_entry_follows_the_layers_buffers():
    """README: an entry is reused only "with the same parameter and buffer versions": an
    autoregressive layer's masks are buffers, and a mask refilled in place (here emptied,
    so the network no longer sees its inputs) gives a new value for the same input tensor,
    in either direction."""
    for direction in ("forward", "inverse"):
        t = masked_autoregressive(3, [8])
        x = torch.randn(16, 3)
        call = t if direction == "forward" else t.inv
        with torch.no_grad():
            before = call(x)  # the entry, looked up by x
            masks = [b for name, b in t.named_buffers() if name.endswith("mask")]
            assert masks and not any(isinstance(b, torch.nn.Parameter) for b in masks)
            for mask in masks:
                mask.zero_()
            after = call(x)
            assert not torch.allclose(after, before), direction
            torch.testing.assert_close(after, call(x.clone()))


@pytest.mark.parametrize(
    "build",
    [
        lambda: conditional_affine_coupling(3, 2, [8]),
        lambda: conditional_masked_autoregressive(3, 2, [8]),
        lambda: conditional_conformal_embedding(3, 3, context_dim=2, hidden_dims=[8]),
        lambda: conditional_pcp_map(3, 2, hidden_dims=[8]),
        lambda: flow_stack(3, "spline_coupling", 1, [8], context_dim=2)[0],
        lambda: flow_stack(3, "spline_autoregressive", 1, [8], context_dim=2)[0],
        lambda: ConditionalZukoTransform(
            pytest.importorskip("zuko").flows.MAF(3, context=2, transforms=1, hidden_features=[8])
        ),
    ],
    ids=[
        "affine_coupling",
        "masked_autoregressive",
        "conformal_embedding",
        "pcp_map",
        "spline_coupling",
        "spline_autoregressive",
        "zuko",
    ],  # fmt: skip
)
def test_a_conditioned_layer_held_across_an_update_recomputes(build):
    # the network's parameters belong to the conditional parent, not to the conditioned
    # transform: its caches must follow them, and a context refilled in place, too
    torch.manual_seed(0)
    layer = build().double()
    h = torch.randn(4, 2, dtype=F64)
    t = layer.condition(h)
    z = torch.randn(4, 3, dtype=F64)
    with torch.no_grad():
        before = t(z)
        _perturb(layer)
        torch.testing.assert_close(t(z), layer.condition(h.clone())(z.clone()))
        assert not torch.allclose(t(z), before)
        h.add_(1.0)
        torch.testing.assert_close(t(z), layer.condition(h.clone())(z.clone()))


def test_a_conditioned_embedding_trains_twice_on_the_same_tensors():
    # its network's outputs were kept forever: the second backward met a freed graph
    layer = conditional_conformal_embedding(2, 3, context_dim=2, hidden_dims=[8])
    t, z = layer.condition(torch.randn(5, 2)), torch.randn(5, 2)
    for _ in range(2):
        (t(z.clone()).sum() + t.log_abs_det_jacobian(z, t(z)).sum()).backward()
    assert all(p.grad is not None for p in layer.parameters())


def test_a_conditioned_embedding_reports_the_context_batch_shape():
    t = conditional_conformal_embedding(2, 4, context_dim=3).condition(torch.randn(5, 3))
    assert t.forward_shape((2,)) == t(torch.randn(2)).shape == (5, 4)
    assert t.inverse_shape((4,)) == t.inv(torch.randn(4)).shape == (5, 2)
    assert t.forward_shape((7, 1, 2)) == (7, 5, 4)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_pcp_map_runs_without_gradients(mode):
    torch.manual_seed(0)
    layer = conditional_pcp_map(2, 3, hidden_dims=[8]).double()
    h, z = torch.randn(4, 3, dtype=F64), torch.randn(4, 2, dtype=F64)
    expected = layer.condition(h)(z).detach()
    with getattr(torch, mode)():
        t = layer.condition(h.clone())
        y = t(z.clone())
        torch.testing.assert_close(y, expected)
        torch.testing.assert_close(t.inv(y.clone()), z)
        assert t.log_abs_det_jacobian(z, y).shape == (4,)


def test_state_built_in_inference_mode_is_never_cached_and_never_crashes():
    with torch.inference_mode():
        d = Flow(2, "spline_coupling", num_layers=2, hidden_dims=[8], batch_norm=True).eval()
        x = torch.randn(5, 2)
        first = d.log_prob(x)
    with torch.no_grad():  # parameters that are inference tensors, used outside it
        y = torch.randn(5, 2)
        torch.testing.assert_close(d.log_prob(y), d.log_prob(y.clone()))
        torch.testing.assert_close(d.log_prob(x.clone()), first)


def test_fresh_spline_coupling_is_built_as_pyro_builds_it():
    torch.manual_seed(3)
    ours = fresh_spline_coupling(4, [8], count_bins=5)
    torch.manual_seed(3)
    pyros = spline_coupling(4, hidden_dims=[8], count_bins=5)
    assert type(ours) is FreshSplineCoupling
    theirs = pyros.state_dict()
    assert list(ours.state_dict()) == list(theirs)
    for name, value in ours.state_dict().items():
        assert torch.equal(value, theirs[name]), name
    u = torch.randn(6, 4)
    torch.testing.assert_close(ours(u), pyros(u))


def _chart_mixture():
    torch.manual_seed(0)
    vq = VQFlow(3, num_charts=3, num_layers=1, hidden_dims=[8], autoencoder_hidden_dims=[8])
    return vq, vq.distribution()


def test_chart_mixture_scores_the_same_data_twice_with_backward_in_between():
    # its memo kept the first pass's graph: the second backward met a freed graph
    vq, d = _chart_mixture()
    x = torch.randn(16, 3)
    for _ in range(2):
        d.log_prob(x).sum().backward()
    with torch.no_grad():
        before = d.log_prob(x)
        _perturb(vq)
        torch.testing.assert_close(d.log_prob(x), d.log_prob(x.clone()))
        assert not torch.allclose(d.log_prob(x), before)
    torch.testing.assert_close(d.reconstruct(x), d.reconstruct(x.clone()))


def test_chart_mixture_under_inference_mode():
    vq, d = _chart_mixture()
    x = torch.randn(16, 3)
    with torch.no_grad():
        expected = d.log_prob(x.clone())
    with torch.inference_mode():
        torch.testing.assert_close(d.log_prob(x), expected)
        torch.testing.assert_close(d.log_prob(x), expected)
        built_inside = VQFlow(3, num_charts=3, num_layers=1, hidden_dims=[8]).eval()
        assert built_inside.log_prob(x).shape == (16,)


def test_a_users_pyro_layers_train_under_stock_svi_after_an_evaluation():
    import pyro
    from pyro.distributions.transforms import affine_coupling as pyro_affine_coupling
    from pyro.infer import SVI, Trace_ELBO

    from pyro_manifold.models import Flow

    pyro.clear_param_store()
    torch.manual_seed(0)
    flow = Flow(2, lambda d: [pyro_affine_coupling(d, hidden_dims=[8])])
    x = torch.randn(200, 2) * 2.0 + 1.0
    svi = SVI(flow.model, flow.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi.evaluate_loss(x)
    losses = [svi.step(x) for _ in range(5)]
    assert len(set(losses)) == 5 and losses[-1] < losses[0]


def test_a_vqflow_chart_embedding_held_across_a_decoder_update_recomputes():
    # the chart placement reads the autoencoder's decoder, which it does not own
    from pyro_manifold.models import VQFlow

    torch.manual_seed(0)
    vq = VQFlow(3, num_charts=2, latent_dim=2, num_layers=1, hidden_dims=[8],
                autoencoder_hidden_dims=[8])  # fmt: skip
    code = torch.randn(4, vq.embedding.context_dim)
    t, z = vq.embedding.condition(code), torch.randn(4, 2)
    with torch.no_grad():
        before = t(z)
        for p in vq.autoencoder.decoder.parameters():
            p.add_(0.5)
        torch.testing.assert_close(t(z), vq.embedding.condition(code.clone())(z.clone()))
        assert not torch.allclose(t(z), before)
