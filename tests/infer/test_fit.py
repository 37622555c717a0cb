import importlib
import json
import math
import pickle

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from torch import nn

from pyro_manifold._parallel import editing_in_place
from pyro_manifold.infer import NonFiniteLossError, fit, load_checkpoint, save_checkpoint
from pyro_manifold.models import Flow, VQAutoencoder


class LinearGaussian(nn.Module):
    """z ~ N(0, I), x ~ N(Wz + b, s^2): module parameters in the model, pyro.params in the guide."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 2) * 0.1)
        self.b = nn.Parameter(torch.zeros(3))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.w.T + self.b, 0.5).to_event(1), obs=x)

    def guide(self, x):
        a = pyro.param("a", torch.zeros(3, 2))
        s = pyro.param("s", torch.ones(2), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ a, s).to_event(1))


def _data(n=200):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, 2, generator=g)
    return z @ torch.tensor([[1.0, 0.5, -1.0], [0.0, 2.0, 1.0]]) + 0.3 * torch.randn(
        n, 3, generator=g
    )


def _snapshot(m):
    store = pyro.get_param_store()
    return [p.detach().clone() for p in m.parameters()] + [
        store["a"].detach().clone(),
        store["s"].detach().clone(),
    ]


def test_loss_decreases_on_a_toy_flow():
    flow = Flow(2, "maf", num_layers=2, hidden_dims=[16])
    x = torch.randn(512, 2) @ torch.tensor([[1.0, 0.9], [0.0, 0.3]]) + 2.0
    result = fit(
        flow.model,
        flow.guide,
        x,
        num_steps=150,
        batch_size=128,
        lr=5e-3,
        device="cpu",
        progress=False,
    )
    assert result.step == 150
    assert result.history["loss"][-1] < result.history["loss"][0] - 1.0


def test_resume_continues_the_same_run(tmp_path):
    x = _data()
    kwargs = dict(num_steps=40, batch_size=64, device="cpu", progress=False, seed=3)
    m1 = LinearGaussian()
    torch.manual_seed(0)
    m1.load_state_dict(LinearGaussian().state_dict())
    fit(m1.model, m1.guide, x, **kwargs)
    straight = _snapshot(m1)

    pyro.clear_param_store()
    torch.manual_seed(0)
    m2 = LinearGaussian()
    fit(m2.model, m2.guide, x, **{**kwargs, "num_steps": 17}, run_dir=tmp_path, checkpoint_every=5)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 17

    pyro.clear_param_store()
    torch.manual_seed(123)
    m3 = LinearGaussian()  # fresh weights, overwritten by the checkpoint
    result = fit(m3.model, m3.guide, x, **kwargs, resume=tmp_path / "checkpoint.pt")
    assert result.step == 40
    for a, b in zip(straight, _snapshot(m3), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_enumerated_elbo_trains_a_mixture():
    class Mixture(nn.Module):
        def __init__(self):
            super().__init__()
            self.locs = nn.Parameter(torch.tensor([-0.5, 0.5]))

        @config_enumerate
        def model(self, x):
            with pyro.plate("data", x.shape[0]):
                k = pyro.sample("k", dist.Categorical(torch.ones(2) / 2))
                pyro.sample("x", dist.Normal(self.locs[k], 0.5), obs=x)

        def guide(self, x):
            pass

    m = Mixture()
    x = torch.cat([torch.randn(100) * 0.5 - 3, torch.randn(100) * 0.5 + 3])
    fit(
        m.model,
        m.guide,
        x,
        loss=TraceEnum_ELBO(max_plate_nesting=1),
        num_steps=300,
        lr=0.05,
        device="cpu",
        progress=False,
    )
    torch.testing.assert_close(
        m.locs.detach().sort().values, torch.tensor([-3.0, 3.0]), atol=0.3, rtol=0
    )


class Exploding(nn.Module):
    """Its model's observation scale turns NaN from the 12th call on (call 1 discovers)."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1))
        self.calls = 0

    def model(self, x):
        self.calls += 1
        scale = torch.tensor(1.0) if self.calls < 12 else torch.tensor(float("nan"))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(self.loc, scale, validate_args=False), obs=x)

    def guide(self, x):
        pass


def test_non_finite_loss_names_step_and_site_and_keeps_checkpoint(tmp_path):
    m = Exploding()
    x = torch.randn(64)
    with pytest.raises(NonFiniteLossError, match="step 11") as info:
        fit(
            m.model,
            m.guide,
            x,
            num_steps=50,
            batch_size=64,
            device="cpu",
            progress=False,
            run_dir=tmp_path,
            checkpoint_every=3,
        )
    assert info.value.step == 11  # call 1 is the parameter discovery pass
    assert info.value.sites == ["model:obs (scale not finite)"]
    assert info.value.parameter == "Exploding.loc"
    assert "largest gradient: Exploding.loc" in str(info.value)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["step"] == 9
    assert torch.isfinite(saved["modules"][0]["loc"]).all()


class SqrtOfZero(nn.Module):
    """A finite loss whose gradient is NaN: d/dw sqrt(w - w) = inf * 0 from step ``bad_from``."""

    def __init__(self, bad_from):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1))
        self.w = nn.Parameter(torch.ones(1))
        self.bad_from, self.calls = bad_from, 0

    def model(self, x):
        self.calls += 1
        if self.calls >= self.bad_from:
            pyro.factor("trap", torch.sqrt(self.w - self.w).sum())
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(self.loc, 1.0), obs=x)

    def guide(self, x):
        pass


def test_non_finite_gradient_with_finite_loss_names_the_parameter(tmp_path):
    m = SqrtOfZero(bad_from=6)
    before = None
    with pytest.raises(NonFiniteLossError, match="non-finite gradient at step 5") as info:
        fit(
            m.model,
            m.guide,
            torch.randn(32),
            num_steps=20,
            batch_size=32,
            device="cpu",
            progress=False,
            run_dir=tmp_path,
            checkpoint_every=2,
        )
    assert info.value.parameter == "SqrtOfZero.w"
    assert info.value.nonfinite_parameters == ["SqrtOfZero.w"]
    assert info.value.sites == []
    before = load_checkpoint(tmp_path / "checkpoint.pt")
    assert before["step"] == 4
    assert torch.isfinite(m.w).all() and torch.isfinite(m.loc).all()  # step 5 not applied


class NaNBatches(nn.Module):
    """Batch norm in the model; the data of the listed calls carry a NaN."""

    def __init__(self, bad_calls):
        super().__init__()
        self.norm = nn.BatchNorm1d(2)
        self.loc = nn.Parameter(torch.zeros(2))
        self.bad_calls, self.calls = set(bad_calls), 0

    def model(self, x):
        self.calls += 1
        if self.calls in self.bad_calls:
            x = x.clone()
            x[0, 0] = float("nan")
        h = self.norm(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(self.loc, 1.0, validate_args=False).to_event(1), obs=h)

    def guide(self, x):
        pass


def test_skip_mode_drops_non_finite_batches_and_restores_buffers(tmp_path):
    m = NaNBatches(bad_calls={4, 5, 9})  # call 1 discovers parameters: steps 3, 4 and 8
    x = torch.randn(64, 2) + 3.0
    with pytest.warns(RuntimeWarning, match="skipped 3 of 12 steps"):
        result = fit(
            m.model,
            m.guide,
            x,
            num_steps=12,
            batch_size=16,
            device="cpu",
            progress=False,
            on_nonfinite="skip",
            run_dir=tmp_path,
            log_every=4,
        )
    assert result.skipped_steps == [3, 4, 8]
    assert torch.isfinite(m.loc).all()
    assert torch.isfinite(m.norm.running_mean).all() and torch.isfinite(m.norm.running_var).all()
    assert int(m.norm.num_batches_tracked) == 12 - 3  # skipped batches leave no trace
    assert all(map(math.isfinite, result.history["loss"]))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["skipped_steps"] == [3, 4, 8]


def test_skip_mode_gives_up_after_too_many_in_a_row():
    m = SqrtOfZero(bad_from=3)
    with pytest.raises(NonFiniteLossError, match="max_consecutive_skips=4"):
        fit(
            m.model,
            m.guide,
            torch.randn(32),
            num_steps=50,
            batch_size=32,
            device="cpu",
            progress=False,
            on_nonfinite="skip",
            max_consecutive_skips=4,
        )


class EditsInPlace(nn.Module):
    """Adds one to ``w`` in place at every call (as a VQ layer re-seeds a code)."""

    def __init__(self, bad_calls):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.loc = nn.Parameter(torch.zeros(()))
        self.bad_calls, self.calls = set(bad_calls), 0

    def model(self, x):
        self.calls += 1
        with torch.no_grad(), editing_in_place(self.w):
            self.w.add_(1.0)
        loc = self.loc * (math.nan if self.calls in self.bad_calls else 1.0)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(loc + 0 * self.w, 1.0, validate_args=False), obs=x)

    def guide(self, x):
        pass


@pytest.mark.parametrize("sync_every", [1, 5])
def test_skipped_steps_undo_in_place_parameter_edits(sync_every):
    m = EditsInPlace(bad_calls={4, 5, 9})  # call 1 discovers parameters: steps 3, 4 and 8
    with pytest.warns(RuntimeWarning, match="skipped 3 of 12 steps"):
        result = fit(m.model, m.guide, torch.randn(32), num_steps=12, batch_size=16,
                     device="cpu", progress=False, on_nonfinite="skip",
                     sync_every=sync_every)  # fmt: skip
    assert result.skipped_steps == [3, 4, 8]
    assert float(m.w.detach()) == 1 + 12 - 3  # the discovery call and the applied steps only


def test_a_skipped_step_leaves_the_vq_codebook_as_it_was():
    torch.manual_seed(0)
    vq = VQAutoencoder(2, code_dim=2, num_charts=8, hidden_dims=[16], reseed_every=2)
    x = torch.randn(64, 2) * 0.01  # one tight cluster: most codes die and get re-seeded
    calls, codebooks = {"n": 0}, {}

    def model(batch):
        calls["n"] += 1
        codebooks[calls["n"]] = vq.quantizer.codebook.detach().clone()
        if calls["n"] == 5:  # a re-seeding call whose encodings are all NaN
            batch = torch.full_like(batch, math.nan)
        vq.model(batch)

    with pytest.warns(RuntimeWarning, match="skipped 1 of 8 steps"):
        result = fit(model, vq.guide, x, num_steps=8, batch_size=32, device="cpu",
                     progress=False, on_nonfinite="skip")  # fmt: skip
    assert result.skipped_steps == [4]  # call 5 (call 1 discovers the parameters)
    assert not torch.equal(codebooks[5], codebooks[4])  # re-seeding moves codes
    torch.testing.assert_close(codebooks[6], codebooks[5], rtol=0, atol=0)


def test_validation_early_stopping_and_history(tmp_path):
    flow = Flow(2, "realnvp", num_layers=1, hidden_dims=[8])
    x = torch.randn(256, 2)
    result = fit(
        flow.model,
        flow.guide,
        x,
        validation_data=torch.randn(64, 2),
        num_steps=2000,
        lr=0.05,
        validate_every=5,
        patience=3,
        device="cpu",
        progress=False,
        run_dir=tmp_path,
        log_every=5,
    )
    assert result.stopped_early and result.step < 2000
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["val_step"][-1] == result.step
    assert result.best_validation_loss == min(history["val_loss"])
    assert (tmp_path / "best.pt").exists()


class BadBeyondTen(nn.Module):
    """x ~ N(loc, 1), with a factor ``bad`` (NaN or +inf) for rows beyond 10 (finite data)."""

    def __init__(self, bad: float):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1))
        self.bad = bad

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(self.loc, 1.0), obs=x)
            pyro.factor("bad", torch.where(x > 10, torch.tensor(self.bad), torch.tensor(0.0)))

    def guide(self, x):
        pass


@pytest.mark.parametrize("bad, loss", [(float("nan"), "nan"), (float("inf"), "-inf")])
def test_a_nonfinite_validation_loss_warns_and_counts_as_no_improvement(bad, loss):
    """fit's docstring (patience): a non-finite validation loss is never silent, even with
    Pyro's validation off (on, Pyro's own checks refuse the NaN): it warns, naming the step,
    and counts as no improvement, so patience stops the run."""
    m = BadBeyondTen(bad)
    x, val = torch.randn(64), torch.tensor([0.0, 20.0])
    with (
        pyro.validation_enabled(False),
        pytest.warns(RuntimeWarning, match=rf"validation loss at step 2 is {loss}, not finite"),
    ):
        result = fit(m.model, m.guide, x, validation_data=val, num_steps=50, batch_size=16,
                     validate_every=2, patience=2, progress=False, device="cpu")  # fmt: skip
    assert result.stopped_early and result.step == 4
    assert math.isinf(result.best_validation_loss)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(data=torch.tensor([[0.0, float("nan")]])), "data"),
        (dict(data=torch.zeros(0, 2)), "data"),
        (dict(data=(torch.zeros(4, 2), torch.zeros(3))), r"data\[1\]"),
        (dict(batch_size=0), "batch_size"),
        (dict(lr=-1.0), "lr"),
        (dict(num_steps=0), "num_steps"),
        (dict(optimizer="lbfgs"), "optimizer"),
        (dict(on_nonfinite="ignore"), "on_nonfinite"),
        (dict(max_consecutive_skips=0), "max_consecutive_skips"),
        (dict(validation_data=torch.zeros(4, 3)), "validation_data"),
    ],
)
def test_bad_input_is_refused_before_any_change(kwargs, match):
    flow = Flow(2, "realnvp", num_layers=1, hidden_dims=[8])
    before = [p.detach().clone() for p in flow.parameters()]
    args = dict(data=torch.zeros(4, 2), device="cpu", progress=False, num_steps=2)
    args.update(kwargs)
    data = args.pop("data")
    with pytest.raises((ValueError, TypeError), match=match):
        fit(flow.model, flow.guide, data, **args)
    for a, b in zip(before, flow.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr_schedule=lambda opt: 3), r"lr_schedule: expected a callable optimizer -> "
         r"torch\.optim\.lr_scheduler\.LRScheduler, got one that returned int 3"),
        (dict(lr_schedule=lambda opt: None), "got one that returned NoneType None"),
        (dict(lr_schedule=torch.optim.lr_scheduler.ReduceLROnPlateau),
         r"lr_schedule: expected a scheduler stepped without arguments once per step, got "
         r"ReduceLROnPlateau \(it needs a metric\)"),
        (dict(optimizer=lambda params: None), r"optimizer: expected a callable params -> "
         r"torch\.optim\.Optimizer, got one that returned NoneType None"),
    ],
)  # fmt: skip
def test_a_callable_optimizer_or_schedule_that_returns_the_wrong_thing_is_refused_by_name(
    tmp_path, kwargs, match
):
    flow = Flow(2, "realnvp", num_layers=1, hidden_dims=[8])
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    with pytest.raises(TypeError, match=match):
        fit(flow.model, flow.guide, torch.randn(64, 2), num_steps=3, batch_size=32,
            device="cpu", progress=False, run_dir=tmp_path / "run", **kwargs)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in flow.state_dict().items())
    assert not (tmp_path / "run").exists()


class _WarmUp:
    """A learning-rate factor whose state (its __dict__, in LambdaLR's) holds a function."""

    def __init__(self):
        self.shape = lambda t: min(1.0, (t + 1) / 5)

    def __call__(self, t):
        return self.shape(t)


def test_a_schedule_whose_state_no_checkpoint_can_hold_is_refused_before_training(tmp_path):
    """Else the first checkpoint fails after checkpoint_every steps trained for nothing."""
    flow = Flow(2, "realnvp", num_layers=1, hidden_dims=[8])
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    with pytest.raises(ValueError, match=r"lr_schedule's state\['lr_lambdas'\]\[0\]\['shape'\]"):
        fit(flow.model, flow.guide, torch.randn(64, 2), num_steps=6, batch_size=32,
            device="cpu", progress=False, run_dir=tmp_path / "run", checkpoint_every=3,
            lr_schedule=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, _WarmUp()))  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in flow.state_dict().items())
    assert not (tmp_path / "run").exists()
    # without a run directory nothing is saved, so such a schedule is fine
    fit(flow.model, flow.guide, torch.randn(64, 2), num_steps=2, batch_size=32, device="cpu",
        progress=False,
        lr_schedule=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, _WarmUp()))  # fmt: skip


def test_checkpoint_refuses_pickled_objects_and_corrupt_files(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "pyro_manifold.checkpoint/1", "obj": pickle.PickleError()}, evil)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(evil)
    good = save_checkpoint({"w": torch.ones(100)}, tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.pt"):
        load_checkpoint(cut)
    other = tmp_path / "other.pt"
    torch.save({"w": torch.ones(1)}, other)
    with pytest.raises(ValueError, match="format"):
        load_checkpoint(other)


def test_deferred_checks_skip_the_same_steps_as_immediate_ones():
    x = torch.randn(64, 2) + 3.0
    runs = {}
    for sync_every in (1, 5):
        torch.manual_seed(0)
        m = NaNBatches(bad_calls={4, 5, 9})
        with pytest.warns(RuntimeWarning, match="skipped 3 of 12 steps"):
            result = fit(m.model, m.guide, x, num_steps=12, batch_size=16, device="cpu",
                         progress=False, on_nonfinite="skip", sync_every=sync_every,
                         log_every=4)  # fmt: skip
        assert result.skipped_steps == [3, 4, 8]
        assert torch.isfinite(m.norm.running_mean).all()
        assert int(m.norm.num_batches_tracked) == 12 - 3
        runs[sync_every] = (m.loc.detach().clone(), result.history["loss"])
    torch.testing.assert_close(runs[5][0], runs[1][0], rtol=1e-5, atol=1e-6)  # fused Adam
    torch.testing.assert_close(runs[5][1], runs[1][1], rtol=1e-5, atol=1e-6)


def test_deferred_check_raises_for_the_first_bad_step_before_any_later_checkpoint(tmp_path):
    m = Exploding()
    with pytest.raises(NonFiniteLossError, match="step 11") as info:
        fit(m.model, m.guide, torch.randn(64), num_steps=50, batch_size=64, device="cpu",
            progress=False, run_dir=tmp_path, checkpoint_every=3, sync_every=10)  # fmt: skip
    assert (
        info.value.sites == ["model:obs (scale not finite)"]
        and info.value.parameter == "Exploding.loc"
    )
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 9
    assert torch.isfinite(m.loc).all()  # the bad steps were skipped on the device


def test_deferred_checks_read_back_rarely():
    reads = {}
    for sync_every in (1, 10):
        flow = Flow(2, "realnvp", num_layers=1, hidden_dims=[8])
        calls = {"n": 0}
        original = torch.Tensor.__bool__

        def counting(self, calls=calls, original=original):
            calls["n"] += 1
            return original(self)

        torch.Tensor.__bool__ = counting
        try:
            fit(flow.model, flow.guide, torch.randn(256, 2), num_steps=40, batch_size=32,
                device="cpu", progress=False, log_every=20, sync_every=sync_every)  # fmt: skip
        finally:
            torch.Tensor.__bool__ = original
        reads[sync_every] = calls["n"]
    assert reads[1] >= 40 and reads[10] < reads[1] - 30


def test_deferred_checks_need_a_fused_adam():
    flow = Flow(2, "realnvp", num_layers=1, hidden_dims=[8])
    with pytest.raises(ValueError, match="sync_every: values above 1 need optimizer"):
        fit(flow.model, flow.guide, torch.zeros(4, 2), device="cpu", progress=False,
            optimizer="sgd", sync_every=4)  # fmt: skip


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(device="cpu"), "cuda_graph=True needs a CUDA device"),
        (dict(device="cpu", optimizer="sgd"), "optimizer 'adam' or 'adamw'"),
        (dict(device="cpu", lr_schedule="cosine"), "no lr_schedule"),
    ],
)
def test_cuda_graph_refuses_what_it_cannot_replay_before_any_change(tmp_path, options, match):
    flow = Flow(2, "realnvp", num_layers=1, hidden_dims=[8])
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        fit(flow.model, flow.guide, torch.randn(64, 2), num_steps=3, progress=False,
            run_dir=tmp_path / "run", cuda_graph=True, **options)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in flow.state_dict().items())
    assert not (tmp_path / "run").exists()
    with pytest.raises(TypeError, match="cuda_graph: expected True or False"):
        fit(flow.model, flow.guide, torch.randn(64, 2), num_steps=3, cuda_graph="yes")


@pytest.mark.parametrize("first, second", [(1, 3), (3, 1)])
def test_resume_with_another_sync_every_keeps_this_runs_optimizer(tmp_path, first, second):
    """The checkpoint's fused/foreach flags do not replace the resumed run's own."""
    x = torch.randn(128, 2)
    flow = Flow(2, "realnvp", num_layers=1, hidden_dims=[8])
    options = dict(batch_size=32, progress=False, device="cpu", checkpoint_every=4)
    fit(flow.model, flow.guide, x, num_steps=4, run_dir=tmp_path, sync_every=first, **options)
    again = Flow(2, "realnvp", num_layers=1, hidden_dims=[8])
    result = fit(again.model, again.guide, x, num_steps=8, sync_every=second,
                 resume=tmp_path / "checkpoint.pt", **options)  # fmt: skip
    assert result.step == 8 and math.isfinite(result.history["loss"][-1])


class _ReplayedEagerly:
    """A stand-in for a captured CUDA graph on the CPU: each call runs the step itself."""

    def __init__(self, step_fn, batch):
        self.step_fn, self.shapes = step_fn, [b.shape for b in batch]

    def accepts(self, batch):
        return [b.shape for b in batch] == self.shapes

    def __call__(self, *batch):
        return tuple(t.clone() for t in self.step_fn(*batch))


def _graph_on_cpu(monkeypatch, capture):
    fit_module = importlib.import_module("pyro_manifold.infer.fit")  # not the function
    monkeypatch.setattr(fit_module, "check_graphable", lambda *a, **k: None)
    monkeypatch.setattr(
        importlib.import_module("pyro_manifold.infer._step"), "capture_step", capture
    )


def test_cuda_graph_control_flow_warms_up_then_replays(monkeypatch):
    x = torch.randn(128, 2)
    options = dict(num_steps=10, batch_size=32, progress=False, device="cpu", sync_every=5)
    torch.manual_seed(1)
    eager = Flow(2, "maf", num_layers=2, hidden_dims=[8], batch_norm=True)
    fit(eager.model, eager.guide, x, **options)
    _graph_on_cpu(monkeypatch, _ReplayedEagerly)
    torch.manual_seed(1)
    graphed = Flow(2, "maf", num_layers=2, hidden_dims=[8], batch_norm=True)
    pyro.clear_param_store()
    result = fit(graphed.model, graphed.guide, x, cuda_graph=True, **options)
    assert result.graphed_steps == 10 - 3  # GRAPH_WARMUP eager steps first
    for (name, a), b in zip(eager.state_dict().items(), graphed.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)  # capturable Adam


def test_cuda_graph_gives_up_with_the_reason(monkeypatch):
    from pyro_manifold.models import VariationalMixtureOfFlows

    x = torch.randn(128, 2)
    options = dict(num_steps=6, batch_size=32, progress=False, device="cpu", sync_every=2)
    _graph_on_cpu(monkeypatch, lambda step_fn, batch: "capture failed (RuntimeError: host read)")
    flow = Flow(2, "realnvp", num_layers=1, hidden_dims=[8])
    with pytest.warns(RuntimeWarning, match=r"cuda_graph: capture failed \(RuntimeError: host"):
        result = fit(flow.model, flow.guide, x, cuda_graph=True, **options)
    assert result.graphed_steps == 0 and result.step == 6
    _graph_on_cpu(monkeypatch, _ReplayedEagerly)
    counted = Counting()
    with pytest.warns(RuntimeWarning, match="extra state"):  # its Python step count
        result = fit(counted.model, counted.guide, x[:, 0], cuda_graph=True, **options)
    assert result.graphed_steps == 0 and counted.calls == 1 + 6  # discovery, then eagerly
    mix = VariationalMixtureOfFlows(2, 2, "realnvp", num_layers=1, hidden_dims=[8],
                                    initial_temperature=2.0, temperature_decay=0.9)  # fmt: skip
    with pytest.warns(RuntimeWarning, match=r"\(step_kwargs\) change from step to step"):
        result = fit(mix.model, mix.guide, x, loss=TraceEnum_ELBO(max_plate_nesting=1),
                     cuda_graph=True, **options)  # fmt: skip
    assert result.graphed_steps == 0 and result.step == 6
    constant = VariationalMixtureOfFlows(2, 2, "realnvp", num_layers=1, hidden_dims=[8])
    result = fit(constant.model, constant.guide, x, loss=TraceEnum_ELBO(max_plate_nesting=1),
                 cuda_graph=True, **options)  # a constant temperature replays  # fmt: skip
    assert result.graphed_steps == 6 - 3


class Counting(nn.Module):
    """Counts its model's calls in a Python int saved as extra state."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(()))
        self.calls = 0

    def get_extra_state(self):
        return {"calls": self.calls}

    def set_extra_state(self, state):
        self.calls = state["calls"]

    def model(self, x):
        self.calls += 1
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(self.loc, 1.0), obs=x)

    def guide(self, x):
        pass


@pytest.mark.parametrize("progress, shown", [(True, True), (False, False), (None, False)])
def test_the_progress_bar_shows_when_asked_and_the_default_stays_quiet_off_a_terminal(
    capsys, progress, shown
):
    """``progress=True`` draws the bar on stderr; ``progress=False``, and the default when
    stderr is not a terminal (here pytest's capture), write nothing at all."""
    flow = Flow(2, "realnvp", num_layers=1, hidden_dims=[8])
    fit(flow.model, flow.guide, torch.randn(64, 2), num_steps=3, batch_size=32, device="cpu",
        progress=progress)  # fmt: skip
    out, err = capsys.readouterr()
    assert out == ""
    assert ("3/3" in err) == shown and (err == "") == (not shown)


class Coins(nn.Module):
    """A user's program without a ``check_data``: three coins with learnt logits."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(3))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Bernoulli(logits=self.logits).to_event(1), obs=x)

    def guide(self, x):
        pass


def test_pyros_validation_checks_the_first_evaluation_of_the_fast_path(tmp_path):
    """README: "Pyro's validation is on for the first evaluation and off inside the training
    steps": an observation outside its distribution's support (0.75 under a Bernoulli) is
    refused by Pyro's own check before any step, change or file; with validation switched
    off by the user, fit trains on it as Pyro's SVI would."""
    coins = Coins()
    x = torch.full((32, 3), 0.75)
    options = dict(num_steps=3, batch_size=8, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"site 'x'(.|\n)*support"):
        fit(coins.model, coins.guide, x, run_dir=tmp_path / "run", **options)
    assert torch.equal(coins.logits, torch.zeros(3)) and not (tmp_path / "run").exists()
    with pyro.validation_enabled(False):
        assert fit(coins.model, coins.guide, x, **options).step == 3
    assert not torch.equal(coins.logits, torch.zeros(3))


class Marked(nn.Module):
    """Its loss is NaN at the steps whose keyword argument ``bad`` is set."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(()))

    def model(self, x, bad=0.0):
        loc = self.loc * (math.nan if bad else 1.0)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(loc, 1.0, validate_args=False), obs=x)

    def guide(self, x, bad=0.0):
        pass


@pytest.mark.parametrize(
    "trigger, read_at",
    [("sync_every", 7), ("log", 3), ("validation", 4), ("checkpoint", 6)],
)
def test_deferred_flags_are_read_every_n_steps_and_before_each_log_validation_checkpoint(
    tmp_path, trigger, read_at
):
    """README: with ``sync_every=N`` "the flags are read every N steps and before every log,
    validation and checkpoint": a bad step 2 is reported when the first of those comes
    (here N = 7, and one log, validation or checkpoint at its step), not later."""
    options = dict(sync_every=7, log_every=100, validate_every=100, checkpoint_every=100)
    options.update({
        "sync_every": {},
        "log": {"log_every": 3},
        "validation": {"validation_data": torch.randn(8), "validate_every": 4},
        "checkpoint": {"run_dir": tmp_path / "run", "checkpoint_every": 6},
    }[trigger])  # fmt: skip
    started = []

    def hook(t):
        started.append(t)
        return {"bad": float(t == 1)}  # step 2

    m = Marked()
    with pytest.raises(NonFiniteLossError, match="step 2"):
        fit(m.model, m.guide, torch.randn(32), num_steps=20, batch_size=8, device="cpu",
            progress=False, step_kwargs=hook, **options)  # fmt: skip
    assert max(started) + 1 == read_at  # the steps taken when the flags were read
    assert torch.isfinite(m.loc) and not (tmp_path / "run" / "checkpoint.pt").exists()
