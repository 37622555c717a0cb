"""The synchronisation-free ELBOs equal Pyro's in value and gradient, and never sync."""

import contextlib
import traceback

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from torch import nn

import pyro_manifold.infer.elbo as elbo_module
from pyro_manifold.infer import FastTrace_ELBO, FastTraceEnum_ELBO, fast_elbo, fit
from pyro_manifold.models import FlowVAE, NoisyInjectiveFlow, VariationalMixtureOfFlows


class LinearGaussian(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
        self.a = nn.Parameter(torch.randn(3, 2, dtype=torch.float64) * 0.1)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.w.T, 0.5).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ self.a, 0.7).to_event(1))


class ScoreFunction(nn.Module):
    """A discrete latent sampled (not enumerated) by the guide: score-function gradients."""

    def __init__(self):
        super().__init__()
        self.logit = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.loc = nn.Parameter(torch.tensor([-1.0, 1.0], dtype=torch.float64))
        self.q = nn.Linear(2, 1).double()

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            b = pyro.sample("b", dist.Bernoulli(logits=self.logit.expand(x.shape[0])))
            pyro.sample("x", dist.Normal(self.loc[b.long()], 1.0).to_event(0), obs=x[:, 0])

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("b", dist.Bernoulli(logits=self.q(x).squeeze(-1)))


def _programs():
    torch.manual_seed(0)
    x = torch.randn(16, 3, dtype=torch.float64)
    lg = LinearGaussian()
    sf = ScoreFunction()
    vae = FlowVAE(2, 3, "iaf", hidden_dims=[8], likelihood="gaussian").double()
    nif = NoisyInjectiveFlow(3, 2, top_flow="realnvp", top_layers=2, top_hidden_dims=[8]).double()
    return {
        "reparameterized": (lg, (x,), Trace_ELBO()),
        "particles": (
            lg,
            (x,),
            Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1),
        ),
        "score-function": (sf, (x[:, :2],), Trace_ELBO()),
        "iaf-vae": (vae, (x,), Trace_ELBO()),
        "nif": (nif, (x,), Trace_ELBO()),
    }


def _value_and_grads(module, args, elbo, seed=1):
    pyro.set_rng_seed(seed)
    module.zero_grad(set_to_none=True)
    loss = elbo.differentiable_loss(module.model, module.guide, *args)
    loss.backward()
    grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
    return loss.detach(), grads


@pytest.mark.parametrize("name", list(_programs()))
def test_fast_trace_elbo_equals_pyro_value_and_gradients(name):
    module, args, stock = _programs()[name]
    want, want_grads = _value_and_grads(module, args, stock)
    got, got_grads = _value_and_grads(module, args, fast_elbo(stock))
    assert isinstance(fast_elbo(stock), FastTrace_ELBO)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert len(got_grads) == len(want_grads) > 0
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("labelled", [False, True])
def test_fast_trace_enum_elbo_equals_pyro(labelled):
    torch.manual_seed(0)
    m = VariationalMixtureOfFlows(2, 3, "realnvp", num_layers=2, hidden_dims=[8]).double()
    x = torch.randn(20, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, -1, 2] * 5) if labelled else None
    stock = TraceEnum_ELBO(max_plate_nesting=1)
    want, want_grads = _value_and_grads(m, (x, y), stock)
    got, got_grads = _value_and_grads(m, (x, y), fast_elbo(stock))
    assert isinstance(fast_elbo(stock), FastTraceEnum_ELBO)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


class EnumeratedMixture(nn.Module):
    """A discrete latent per point, enumerated in parallel by the guide, in several settings.

    ``variant``: ``"plain"``; ``"masked"`` (a masked observation); ``"subsampled"`` (a
    subsampling plate, so every site is scaled); ``"nested"`` (the k-dependent
    observation in an inner plate too, a global observed site, a site in another plate);
    ``"saturated"`` (guide probabilities that underflow to exactly 0); ``"impossible"``
    (also an observation of log-density -inf where q(k) = 0); fallbacks to Pyro's
    contraction: ``"sequential"``, ``"model-enumerated"`` (a second discrete latent
    enumerated in the model), ``"two-guide-sites"`` and ``"masked-guide"`` (a guide
    distribution masked per point, whose q need not sum to one over k).
    """

    def __init__(self, variant, k=3):
        super().__init__()
        self.variant = variant
        self.loc = nn.Parameter(torch.randn(k, 2, dtype=torch.float64))
        self.logits = nn.Parameter(torch.randn(k, dtype=torch.float64))
        self.q = nn.Linear(2, k).double()
        self.noise = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def _plate(self, x):
        if self.variant == "subsampled":
            return pyro.plate("data", x.shape[0], subsample_size=7)
        return pyro.plate("data", x.shape[0])

    def model(self, x):
        v = self.variant
        if v == "nested":
            pyro.sample("global", dist.Normal(self.noise, 1.0), obs=torch.tensor(0.2).double())
            with pyro.plate("other", 4, dim=-2):
                pyro.sample("y", dist.Normal(self.noise, 1.0), obs=torch.zeros(4, 1).double())
        with self._plate(x) as idx:
            xs = x[idx]
            z = pyro.sample("z", dist.Categorical(logits=self.logits))
            if v == "model-enumerated":
                b = pyro.sample(
                    "b", dist.Bernoulli(logits=self.noise), infer={"enumerate": "parallel"}
                )
                shift = b.unsqueeze(-1)
            else:
                shift = 0.0
            loc = self.loc[z] + shift
            mask = xs[:, 0] > 0 if v == "masked" else True
            with poutine.mask(mask=mask):
                pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=xs)
            if v == "nested":
                with pyro.plate("features", 2, dim=-2):
                    per_feature = loc.squeeze(-2).transpose(-1, -2)  # (K, 2, 1)
                    pyro.sample("xf", dist.Normal(per_feature, self.noise.exp()), obs=xs.T)
            if v == "impossible":  # component 2 cannot have made any point
                low = self.loc[z][..., 0] - 3.0 + 100.0 * (z == 2)
                pyro.sample("u", dist.Uniform(low, low + 6.0), obs=xs[:, 0])
            if v == "two-guide-sites":
                pyro.sample("w", dist.Normal(0.0, 1.0))

    def guide(self, x):
        v = self.variant
        with self._plate(x) as idx:
            logits = self.q(x[idx])
            if v in ("saturated", "impossible"):
                logits = logits * 2000.0
            if v == "impossible":  # nor does the guide give it any probability
                logits = logits - torch.tensor([0.0, 0.0, 1e4], dtype=logits.dtype)
            how = "sequential" if v == "sequential" else "parallel"
            q = dist.Categorical(logits=logits)
            if v == "masked-guide":
                q = q.mask(x[idx][:, 1] > 0)
            pyro.sample("z", q, infer={"enumerate": how})
            if v == "two-guide-sites":
                pyro.sample("w", dist.Normal(self.noise, 1.0))


CLOSED_FORM = ["plain", "masked", "subsampled", "nested", "saturated", "impossible"]
CONTRACTED = ["sequential", "model-enumerated", "two-guide-sites", "masked-guide"]


@pytest.mark.parametrize("variant", CLOSED_FORM + CONTRACTED + ["particles"])
def test_fast_trace_enum_elbo_closed_form_equals_pyro(variant, monkeypatch):
    torch.manual_seed(0)
    module = EnumeratedMixture("plain" if variant == "particles" else variant)
    x = torch.randn(12, 2, dtype=torch.float64)
    if variant == "impossible":
        x[:, 0] = x[:, 0].clamp(-2.0, 2.0)
    nesting = 2 if variant == "nested" else 1
    if variant == "particles":
        stock = TraceEnum_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    else:
        stock = TraceEnum_ELBO(max_plate_nesting=nesting)
    contractions = []
    original = elbo_module._compute_dice_elbo

    def counted(model_trace, guide_trace):
        contractions.append(1)
        return original(model_trace, guide_trace)

    monkeypatch.setattr(elbo_module, "_compute_dice_elbo", counted)
    off = variant in ("impossible",)  # Uniform validates its support: -inf only without it
    with pyro.validation_enabled(not off):
        want, want_grads = _value_and_grads(module, (x,), stock)
        got, got_grads = _value_and_grads(module, (x,), fast_elbo(stock))
    assert bool(contractions) == (variant in CONTRACTED)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert len(got_grads) == len(want_grads) > 0
    for g, w in zip(got_grads, want_grads, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    if variant in ("saturated", "impossible"):  # the case the mask is for
        with torch.no_grad():
            assert (torch.softmax(module.q(x) * 2000.0, -1) == 0).any()
    if variant == "impossible":  # unmasked, 0 * -inf would be nan
        with torch.no_grad():
            u = dist.Uniform(module.loc[2, 0] + 97, module.loc[2, 0] + 103, validate_args=False)
            assert torch.isinf(u.log_prob(x[:, 0].clamp(-2.0, 2.0))).all()


@pytest.mark.parametrize("num_components", [1, 4])
def test_fast_trace_enum_elbo_closed_form_for_the_mixture_of_flows(num_components, monkeypatch):
    torch.manual_seed(0)
    m = VariationalMixtureOfFlows(2, num_components, "realnvp", num_layers=2, hidden_dims=[8])
    m = m.double()
    x = torch.randn(20, 2, dtype=torch.float64)
    monkeypatch.setattr(elbo_module, "_compute_dice_elbo", None)  # must not be needed
    stock = TraceEnum_ELBO(max_plate_nesting=1)
    got, got_grads = _value_and_grads(m, (x,), fast_elbo(stock))
    monkeypatch.undo()
    want, want_grads = _value_and_grads(m, (x,), stock)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert len(got_grads) == len(want_grads) > 0
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@contextlib.contextmanager
def _count_host_reads():
    """Count the Tensor methods that copy a value to the host (each one a sync on a GPU)."""
    calls = {"n": 0, "where": []}
    names = ("item", "tolist", "__bool__", "__float__", "__int__")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def counting(original):
        def wrapper(self, *args, **kwargs):
            calls["n"] += 1
            calls["where"].append(traceback.extract_stack()[-2].filename)
            return original(self, *args, **kwargs)

        return wrapper

    for n in names:
        setattr(torch.Tensor, n, counting(saved[n]))
    try:
        yield calls
    finally:
        for n in names:
            setattr(torch.Tensor, n, saved[n])


@pytest.mark.parametrize("name", ["iaf-vae", "nif", "vmonf"])
def test_fast_elbos_do_not_read_back_to_the_host(name):
    if name == "vmonf":
        module = VariationalMixtureOfFlows(2, 3, "realnvp", num_layers=2, hidden_dims=[8])
        args, stock = (torch.randn(20, 2),), TraceEnum_ELBO(max_plate_nesting=1)
    else:
        module, args, stock = _programs()[name]
        module.float()
        args = tuple(a.float() for a in args)
    reads = {}
    for elbo in (stock, fast_elbo(stock)):
        with pyro.validation_enabled(False), _count_host_reads() as calls:
            elbo.differentiable_loss(module.model, module.guide, *args).backward()
        reads[type(elbo).__name__] = calls
    stock_reads, fast_reads = reads.values()
    assert stock_reads["n"] > 0  # the counter sees Pyro's own reads
    assert fast_reads["n"] == 0, fast_reads["where"]


def test_fit_fast_and_stock_paths_take_the_same_steps():
    x = torch.randn(64, 3, dtype=torch.float64)
    results = []
    for fast in (True, False):
        torch.manual_seed(0)
        m = LinearGaussian()
        fit(m.model, m.guide, x, num_steps=20, batch_size=16, device="cpu", progress=False,
            fast=fast)  # fmt: skip
        results.append([p.detach().clone() for p in m.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_fast_elbo_keeps_other_estimators_and_refuses_non_elbos():
    mean_field = TraceMeanField_ELBO()
    assert fast_elbo(mean_field) is mean_field
    fast = FastTrace_ELBO()
    assert fast_elbo(fast) is fast
    with pytest.raises(TypeError, match="loss: expected a pyro.infer.ELBO, got str"):
        fast_elbo("elbo")
    with pytest.raises(TypeError, match="loss: expected a pyro.infer.ELBO"):
        fit(lambda x: None, lambda x: None, torch.zeros(4, 2), loss=object(), device="cpu")


@pytest.mark.parametrize("enumerated", [False, True], ids=["Trace_ELBO", "TraceEnum_ELBO"])
def test_fit_swaps_in_the_fast_elbo_and_fast_false_runs_the_one_given(monkeypatch, enumerated):
    """README: by default ``Trace_ELBO`` and ``TraceEnum_ELBO`` are swapped for
    ``FastTrace_ELBO`` / ``FastTraceEnum_ELBO``; ``fast=False`` runs the ELBO exactly as
    given. Counts which object's ``differentiable_loss`` fit's steps call."""
    x = torch.randn(32, 2, dtype=torch.float64)
    fast_type = FastTraceEnum_ELBO if enumerated else FastTrace_ELBO
    for fast in (True, False):
        torch.manual_seed(0)
        if enumerated:
            module = VariationalMixtureOfFlows(2, 2, "realnvp", num_layers=1, hidden_dims=[8])
            stock = TraceEnum_ELBO(max_plate_nesting=1)
        else:
            module = NoisyInjectiveFlow(2, 1, top_flow="realnvp", top_layers=1)
            stock = Trace_ELBO()
        module.double()
        calls = {"stock": 0, "fast": 0}

        def counted(original, key, calls=calls):
            def wrapper(*args, **kwargs):
                calls[key] += 1
                return original(*args, **kwargs)

            return wrapper

        for cls, key in ((type(stock), "stock"), (fast_type, "fast")):  # the twin overrides
            monkeypatch.setattr(cls, "differentiable_loss", counted(cls.differentiable_loss, key))
        fit(module.model, module.guide, x, loss=stock, num_steps=4, batch_size=16,
            device="cpu", progress=False, fast=fast)  # fmt: skip
        monkeypatch.undo()
        used, unused = ("fast", "stock") if fast else ("stock", "fast")
        assert calls[used] >= 4 and calls[unused] == 0, (fast, calls)
