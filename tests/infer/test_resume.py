"""Resume is exact with validation, and a refused resume or run directory changes nothing."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_manifold.errors import CheckpointError, RunLockedError
from pyro_manifold.infer import fit, load_checkpoint, save_checkpoint
from pyro_manifold.infer.rundir import RunLock
from pyro_manifold.models import Flow, FlowVAE

ARGS = dict(num_steps=20, batch_size=32, device="cpu", progress=False, seed=3, lr=5e-3,
            validate_every=4, checkpoint_every=6, log_every=4)  # fmt: skip


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=g) * torch.tensor([2.0, 0.5])
    return x[:192], x[192:]


def _flow():
    torch.manual_seed(1)
    return Flow(2, "realnvp", num_layers=2, hidden_dims=[8])


def _state(flow):
    return [t.detach().clone() for t in flow.state_dict().values()]


class Killed(Exception):
    pass


def _killed_at(t_kill):
    def hook(t):
        if t == t_kill:
            raise Killed
        return {}

    return hook


@pytest.mark.parametrize(
    "kill, schedule", [(13, None), (9, None), (17, None), (13, "cosine"), (9, "cosine")]
)
def test_resume_after_a_best_validation_ends_as_the_uninterrupted_run(tmp_path, kill, schedule):
    x, val = _data()
    args = dict(ARGS, lr_schedule=schedule)
    flow = _flow()
    straight = fit(flow.model, flow.guide, x, validation_data=val, run_dir=tmp_path / "a",
                   step_kwargs=lambda t: {}, **args)  # fmt: skip
    want = _state(flow)
    flow = _flow()
    with pytest.raises(Killed, match="step_kwargs"):  # killed before step kill + 1
        fit(flow.model, flow.guide, x, validation_data=val, run_dir=tmp_path / "b",
            step_kwargs=_killed_at(kill), **args)  # fmt: skip
    saved = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert saved["step"] == kill // 6 * 6 and saved["best_states"] is not None
    flow = _flow()
    resumed = fit(flow.model, flow.guide, x, validation_data=val, run_dir=tmp_path / "b",
                  resume=tmp_path / "b" / "checkpoint.pt", step_kwargs=lambda t: {},
                  **args)  # fmt: skip
    for a, b in zip(_state(flow), want, strict=True):
        assert torch.equal(a, b)
    assert resumed.best_validation_loss == straight.best_validation_loss
    for key in ("step", "loss", "val_step", "val_loss"):  # the logging window straddles 6, 12
        assert resumed.history[key] == straight.history[key], key


def test_an_early_stopped_run_resumed_stays_stopped(tmp_path):
    x, val = _data()
    flow = _flow()
    args = {**ARGS, "num_steps": 200, "patience": 1, "validate_every": 2, "checkpoint_every": 2}
    first = fit(flow.model, flow.guide, x, validation_data=val, run_dir=tmp_path, **args)
    assert first.stopped_early
    again = fit(flow.model, flow.guide, x, validation_data=val, run_dir=tmp_path,
                resume=tmp_path / "checkpoint.pt", **args)  # fmt: skip
    assert again.stopped_early and again.step == first.step


@pytest.mark.parametrize("patience", [None, 5])
def test_an_early_stopped_run_resumed_with_more_patience_trains_on(tmp_path, patience):
    x, val = _data()
    flow = _flow()
    args = {**ARGS, "num_steps": 200, "validate_every": 2, "checkpoint_every": 2}
    first = fit(flow.model, flow.guide, x, validation_data=val, run_dir=tmp_path, patience=1,
                **args)  # fmt: skip
    assert first.stopped_early
    again = fit(flow.model, flow.guide, x, validation_data=val, run_dir=tmp_path,
                resume=tmp_path / "checkpoint.pt", patience=patience,
                **{**args, "num_steps": first.step + 4})  # fmt: skip
    assert again.step == first.step + 4 and not again.stopped_early


def _files(run_dir):
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(flow=lambda: Flow(3, "realnvp", num_layers=2, hidden_dims=[8])), "shape"),
        (dict(flow=lambda: Flow(2, "realnvp", num_layers=3, hidden_dims=[8])), "keys"),
        (dict(optimizer="sgd"), "optimizer: expected 'adam' as in checkpoint"),
        (dict(rows=100), "trained on 192 data rows"),
    ],
)
def test_a_resume_that_does_not_fit_is_refused_before_anything_changes(tmp_path, change, match):
    x, val = _data()
    flow = _flow()
    fit(flow.model, flow.guide, x, run_dir=tmp_path, **{**ARGS, "num_steps": 6})
    other = change.get("flow", _flow)()
    data = torch.randn(change.get("rows", 192), other.data_dim)
    args = {**ARGS, "optimizer": change.get("optimizer", "adam")}
    _assert_resume_refused(other, data, tmp_path, match, args)


@pytest.mark.parametrize("other", [torch.optim.Adamax, torch.optim.RAdam])
def test_a_resume_with_another_optimizer_of_adams_settings_is_refused(tmp_path, other):
    """Adamax and RAdam need a subset of Adam's settings: the checkpoint keeps the class of
    the optimizer a callable made (fit_options' optimizer_class)."""
    x, _ = _data()
    flow = _flow()
    adam = {**ARGS, "optimizer": lambda p: torch.optim.Adam(p, lr=5e-3)}
    fit(flow.model, flow.guide, x, run_dir=tmp_path, **{**adam, "num_steps": 6})
    args = {**ARGS, "optimizer": lambda p: other(p, lr=5e-3)}
    match = rf"optimizer_class: expected 'Adam' as in checkpoint .*, got '{other.__name__}'"
    _assert_resume_refused(_flow(), x, tmp_path, match, args)


@pytest.mark.parametrize("second", [None, "cosine"])
def test_a_resume_that_drops_or_swaps_a_one_cycle_schedule_names_lr_schedule(tmp_path, second):
    """OneCycleLR adds settings to the optimizer's groups: a changed schedule is still
    refused as a changed lr_schedule, not as another optimizer."""
    x, _ = _data()
    flow = _flow()

    def one_cycle(opt):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=20)

    fit(flow.model, flow.guide, x, run_dir=tmp_path,
        **{**ARGS, "lr_schedule": one_cycle, "num_steps": 6})  # fmt: skip
    match = rf"lr_schedule: expected 'callable' as in checkpoint .*, got {second!r}"
    _assert_resume_refused(_flow(), x, tmp_path, match, {**ARGS, "lr_schedule": second})


def test_a_checkpoint_without_fit_options_resumes_with_other_options(tmp_path):
    """Checkpoints written before fit kept its options (fit_options) still resume; only the
    step rule applies to them."""
    x, _ = _data()
    flow = _flow()
    fit(flow.model, flow.guide, x, run_dir=tmp_path, **{**ARGS, "num_steps": 6})
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    for key in ("fit_options", "format", "digest"):  # save_checkpoint writes the last two
        del state[key]
    save_checkpoint(state, tmp_path / "old.pt")
    again = _flow()
    result = fit(again.model, again.guide, x, resume=tmp_path / "old.pt",
                 **{**ARGS, "lr": 1e-3, "seed": 9})  # fmt: skip
    assert result.step == ARGS["num_steps"]
    with pytest.raises(CheckpointError, match="num_steps: expected at least the 6 steps"):
        fit(again.model, again.guide, x, resume=tmp_path / "old.pt", **{**ARGS, "num_steps": 5})


def _assert_resume_refused(flow, data, run_dir, match, args):
    """Resuming run_dir's checkpoint with these arguments raises CheckpointError matching
    ``match`` and changes neither ``flow`` nor a file of ``run_dir``."""
    files, before = _files(run_dir), _state(flow)
    with pytest.raises(CheckpointError, match=match):
        fit(flow.model, flow.guide, data, run_dir=run_dir, resume=run_dir / "checkpoint.pt",
            **args)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(_state(flow), before, strict=True))
    assert _files(run_dir) == files


def test_a_second_writer_is_refused_and_nothing_changes(tmp_path):
    x, _ = _data()
    flow = _flow()
    before = _state(flow)
    with RunLock(tmp_path):
        files = _files(tmp_path)
        with pytest.raises(RunLockedError, match="held by pid"):
            fit(flow.model, flow.guide, x, run_dir=tmp_path, **ARGS)
        assert _files(tmp_path) == files
    assert all(torch.equal(a, b) for a, b in zip(_state(flow), before, strict=True))


def test_meta_and_missing_devices_are_refused_with_the_model_unchanged():
    x, _ = _data()
    flow = _flow()
    before = _state(flow)
    for device in ("meta", "cuda:7" if torch.cuda.is_available() else "cuda", "nonsense"):
        with pytest.raises(ValueError, match="device: expected"):
            fit(flow.model, flow.guide, x, **{**ARGS, "device": device})
    assert all(torch.equal(a, b) for a, b in zip(_state(flow), before, strict=True))


class WithSite(torch.nn.Module):
    def __init__(self, site):
        super().__init__()
        self.site = site
        self.loc = torch.nn.Parameter(torch.zeros(2))

    def model(self, x):
        import pyro

        pyro.module("with_site", self)
        shift = pyro.param("shift", torch.zeros(2)) if self.site else 0.0
        with pyro.plate("data", len(x)):
            pyro.sample(
                "x",
                pyro.distributions.Normal(self.loc + shift, 1.0, validate_args=False).to_event(1),
                obs=x,
            )

    def guide(self, x):
        pass


def test_a_checkpoint_with_other_param_sites_is_refused_before_loading(tmp_path):
    import pyro

    x, _ = _data()
    pyro.clear_param_store()
    m = WithSite(site=True)
    fit(m.model, m.guide, x, run_dir=tmp_path, **{**ARGS, "num_steps": 6})
    pyro.clear_param_store()
    other = WithSite(site=False)
    with pytest.raises(CheckpointError, match=r"pyro.param sites \['shift'\], this run has \[\]"):
        fit(other.model, other.guide, x, resume=tmp_path / "checkpoint.pt", **ARGS)
    assert torch.equal(other.loc, torch.zeros(2))


def test_a_failure_late_in_set_up_puts_the_loaded_state_back(tmp_path, monkeypatch):
    from pyro_manifold.infer.distributed import DataParallelGroup

    x, _ = _data()
    flow = _flow()
    fit(flow.model, flow.guide, x, run_dir=tmp_path, **{**ARGS, "num_steps": 6})
    fresh = _flow()
    before = _state(fresh)

    def broken(self, modules, params):
        raise RuntimeError("broadcast failed")

    monkeypatch.setattr(DataParallelGroup, "broadcast_state_", broken)
    with pytest.raises(RuntimeError, match="broadcast failed"):  # after the checkpoint loaded
        fit(fresh.model, fresh.guide, x, resume=tmp_path / "checkpoint.pt", **ARGS)
    assert all(torch.equal(a, b) for a, b in zip(_state(fresh), before, strict=True))


def test_a_failed_set_up_keeps_the_train_mode(monkeypatch):
    from pyro_manifold.infer.distributed import DataParallelGroup

    x, _ = _data()
    flow = _flow().train()

    def broken(self, modules, params):
        raise RuntimeError("broadcast failed")

    monkeypatch.setattr(DataParallelGroup, "broadcast_state_", broken)
    with pytest.raises(RuntimeError, match="broadcast failed"):
        fit(flow.model, flow.guide, x, **ARGS)
    assert all(m.training for m in flow.modules())


class BadSteps(torch.nn.Module):
    """The loss is NaN at the steps whose per-step argument ``bad`` is set."""

    def __init__(self):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.zeros(2))

    def model(self, x, bad=0.0):
        import pyro

        pyro.module("bad_steps", self)
        shift = float("nan") if bad else 0.0
        with pyro.plate("data", len(x)):
            pyro.sample(
                "x",
                pyro.distributions.Normal(self.loc + shift, 1.0, validate_args=False).to_event(1),
                obs=x,
            )

    def guide(self, x, bad=0.0):
        pass


def test_a_run_of_skipped_steps_continues_across_a_resume(tmp_path):
    from pyro_manifold.infer import NonFiniteLossError

    x, _ = _data()
    args = {**ARGS, "on_nonfinite": "skip", "max_consecutive_skips": 3, "checkpoint_every": 100}
    hook = lambda t: {"bad": float(4 <= t <= 7)}  # noqa: E731  (steps 5 to 8)
    m = BadSteps()
    with pytest.raises(NonFiniteLossError, match="step 8"):  # the fourth bad step in a row
        fit(m.model, m.guide, x, step_kwargs=hook, **{**args, "num_steps": 12})
    m = BadSteps()
    with pytest.warns(RuntimeWarning, match="skipped 2 of 6"):
        fit(m.model, m.guide, x, step_kwargs=hook, run_dir=tmp_path, **{**args, "num_steps": 6})
    with pytest.raises(NonFiniteLossError, match="step 8"):
        fit(m.model, m.guide, x, step_kwargs=hook, resume=tmp_path / "checkpoint.pt",
            **{**args, "num_steps": 12})  # fmt: skip


def test_a_failed_set_up_leaves_no_new_run_directory_and_no_new_param_sites(tmp_path, monkeypatch):
    import pyro

    from pyro_manifold.infer.distributed import DataParallelGroup

    x, _ = _data()
    pyro.clear_param_store()
    pyro.param("kept", torch.ones(2))
    m = WithSite(site=True)  # declares the pyro.param site "shift" on its first evaluation

    def broken(self, modules, params):
        raise RuntimeError("broadcast failed")

    monkeypatch.setattr(DataParallelGroup, "broadcast_state_", broken)
    with pytest.raises(RuntimeError, match="broadcast failed"):
        fit(m.model, m.guide, x, run_dir=tmp_path / "a" / "b", **ARGS)
    assert list(tmp_path.iterdir()) == []
    assert list(pyro.get_param_store().keys()) == ["kept"]
    assert torch.equal(pyro.param("kept"), torch.ones(2))


@pytest.mark.parametrize(
    "config, match",
    [({"a": object()}, r"config\['a'\]: expected tensors and plain data"),
     ({"w": torch.ones(2)}, "config: expected values that JSON can hold")],
)  # fmt: skip
def test_a_config_no_checkpoint_can_hold_is_refused_before_training(tmp_path, config, match):
    x, _ = _data()
    flow = _flow()
    before = _state(flow)
    with pytest.raises(ValueError if "plain" in match else TypeError, match=match):
        fit(flow.model, flow.guide, x, run_dir=tmp_path / "run", config=config,
            step_kwargs=_killed_at(0), **ARGS)  # fmt: skip
    assert not (tmp_path / "run").exists()
    assert all(torch.equal(a, b) for a, b in zip(_state(flow), before, strict=True))


def test_numpy_values_in_config_are_written_plain(tmp_path):
    import json

    import numpy as np

    x, _ = _data()
    flow = _flow()
    fit(flow.model, flow.guide, x, run_dir=tmp_path, config={"lr": np.float32(0.5)},
        **{**ARGS, "num_steps": 2})  # fmt: skip
    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 0.5}
    assert load_checkpoint(tmp_path / "checkpoint.pt")["config"] == {"lr": 0.5}


def test_a_failed_set_up_in_an_existing_run_directory_leaves_its_files_byte_identical(
    tmp_path, monkeypatch
):
    from pyro_manifold.infer.distributed import DataParallelGroup

    x, _ = _data()
    flow = _flow()
    fit(flow.model, flow.guide, x, run_dir=tmp_path, **{**ARGS, "num_steps": 2})
    (tmp_path / ".lock").write_text('{"pid": 1, "host": "gone", "since": "then"}\n')
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(self, modules, params):
        raise RuntimeError("broadcast failed")

    monkeypatch.setattr(DataParallelGroup, "broadcast_state_", broken)
    with pytest.raises(RuntimeError, match="broadcast failed"):  # after the lock was taken
        fit(flow.model, flow.guide, x, run_dir=tmp_path, resume=tmp_path / "checkpoint.pt",
            **ARGS)  # fmt: skip
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_a_scheduler_that_adds_settings_to_the_optimizer_resumes_exactly(tmp_path):
    """OneCycleLR adds max_lr, base_momentum, ... to each group: still this run's optimiser."""
    x, _ = _data()

    def one_cycle(opt):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=20)

    args = {**ARGS, "lr_schedule": one_cycle}
    flow = _flow()
    fit(flow.model, flow.guide, x, run_dir=tmp_path / "a", **args)
    want = _state(flow)
    flow = _flow()
    with pytest.raises(Killed):
        fit(flow.model, flow.guide, x, run_dir=tmp_path / "b", step_kwargs=_killed_at(9), **args)
    flow = _flow()
    fit(flow.model, flow.guide, x, resume=tmp_path / "b" / "checkpoint.pt", **args)
    assert all(torch.equal(a, b) for a, b in zip(_state(flow), want, strict=True))


@pytest.mark.parametrize(
    "first, second, match",
    [
        ({}, {"lr": 5e-2}, r"lr: expected 0\.005 as in checkpoint .*, got 0\.05"),
        ({}, {"weight_decay": 0.1}, r"weight_decay: expected 0\.0 as in checkpoint .*, got 0\.1"),
        ({}, {"optimizer": "adamw"}, r"optimizer: expected 'adam' as in .*, got 'adamw'"),
        ({"optimizer": "adamw"}, {"optimizer": "adam"}, r"optimizer: expected 'adamw'"),
        ({}, {"lr_schedule": "cosine"}, r"lr_schedule: expected None as in .*, got 'cosine'"),
        ({"lr_schedule": "cosine"}, {"lr_schedule": None}, r"expected 'cosine' as in .*, got None"),
        ({"lr_schedule": "cosine"}, {"lr_schedule": torch.optim.lr_scheduler.ConstantLR},
         r"got 'callable'"),
        ({"lr_schedule": "cosine"}, {"num_steps": 40},
         r"num_steps: expected 20 as in checkpoint .* \(lr_schedule='cosine' anneals over "
         r"num_steps\), got 40"),
        ({}, {"seed": 4}, r"seed: expected 3 as in checkpoint .*, got 4"),
        ({}, {"num_steps": 5}, r"num_steps: expected at least the 6 steps of checkpoint .*, got 5"),
    ],
)  # fmt: skip
def test_a_resume_that_changes_what_the_checkpoint_fixes_is_refused_before_anything_changes(
    tmp_path, first, second, match
):
    """Loading the checkpoint would silently override these (or break its schedule)."""
    x, _ = _data()
    flow = _flow()
    with pytest.raises(Killed):  # the checkpoint of step 6 of a 20-step run
        fit(flow.model, flow.guide, x, run_dir=tmp_path, step_kwargs=_killed_at(7),
            **{**ARGS, **first})  # fmt: skip
    _assert_resume_refused(_flow(), x, tmp_path, match, {**ARGS, **first, **second})


def test_a_resume_may_change_what_the_checkpoint_does_not_fix(tmp_path):
    x, _ = _data()
    flow = _flow()
    fit(flow.model, flow.guide, x, run_dir=tmp_path, **{**ARGS, "num_steps": 6})
    again = _flow()
    result = fit(again.model, again.guide, x, resume=tmp_path / "checkpoint.pt",
                 **{**ARGS, "num_steps": 30, "batch_size": 16, "clip_norm": 1.0, "sync_every": 2,
                    "checkpoint_every": 7, "log_every": 5})  # fmt: skip
    assert result.step == 30


class SpoiledVAE(FlowVAE):
    """A Bernoulli FlowVAE whose loss is NaN at the steps ``bad`` (KL warm-up as its own)."""

    bad = {5, 10, 14}  # steps 6, 11 and 15: before, between and after the resume points

    def model(self, x, spoil=0.0, **kwargs):
        return super().model(x * float("nan") if spoil else x, **kwargs)

    def guide(self, x, spoil=0.0, **kwargs):
        return super().guide(x, **kwargs)

    def step_kwargs(self, step):
        return {**super().step_kwargs(step), "spoil": float(step in self.bad)}


def _binarize_with_every_generator(x):
    """Dynamic binarisation (torch), flipped when numpy's and Python's draws say so."""
    import random

    import numpy as np

    from pyro_manifold.datasets import dynamic_binarize

    b = dynamic_binarize(x)
    return (1 - b if np.random.rand() + random.random() > 1.2 else b,)


def _plain(state):
    """A checkpoint without what a clock decides (the times) and its digest."""
    state = {k: v for k, v in state.items() if k not in ("elapsed", "digest")}
    state["history"] = {k: v for k, v in state["history"].items() if k != "time"}
    return state


def _assert_identical(a, b, where="checkpoint"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a.nan_to_num(), b.nan_to_num()), where
        assert torch.equal(a.isnan(), b.isnan()), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("kill", [11, 13])
def test_a_sampling_model_resumes_bit_for_bit_with_every_option_at_once(tmp_path, kill):
    """Latent draws, a transform drawing from torch, numpy and Python, device-side flags
    read every 3 steps, checkpoints every 4 (not dividing the kill), skipped NaN steps on
    both sides of the resume point, validation and early stopping: the last checkpoint, the
    history and the model end as the uninterrupted run's."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (160, 6), dtype=torch.uint8, generator=g)
    x, val = pixels[:128], _binarize_with_every_generator(pixels[128:])[0]
    args = dict(num_steps=20, batch_size=16, device="cpu", progress=False, seed=3, lr=1e-2,
                sync_every=3, checkpoint_every=4, log_every=5, on_nonfinite="skip",
                validate_every=3, patience=4,
                transform_batch=_binarize_with_every_generator)  # fmt: skip

    def vae():
        torch.manual_seed(1)
        return SpoiledVAE(2, 6, hidden_dims=[8], kl_warmup_steps=8)

    def kill_at(model, t_kill):
        def schedule(t):
            if t == t_kill:
                raise Killed
            return model.step_kwargs(t)

        return schedule

    straight = vae()
    with pytest.warns(RuntimeWarning, match="skipped 3 of 20"):
        fit(straight.model, straight.guide, x, validation_data=val, run_dir=tmp_path / "a",
            **args)  # fmt: skip
    first = vae()
    with pytest.raises(Killed):
        fit(first.model, first.guide, x, validation_data=val, run_dir=tmp_path / "b",
            step_kwargs=kill_at(first, kill), **args)  # fmt: skip
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == kill // 4 * 4
    resumed = vae()
    with pytest.warns(RuntimeWarning, match="skipped 3 of 20"):
        fit(resumed.model, resumed.guide, x, validation_data=val, run_dir=tmp_path / "b",
            resume=tmp_path / "b" / "checkpoint.pt", **args)  # fmt: skip
    want, got = (_plain(load_checkpoint(tmp_path / d / "checkpoint.pt")) for d in "ab")
    assert want["skipped_steps"] == [6, 11, 15] and len(want["history"]["val_loss"]) == 7
    _assert_identical(want, got)
    _assert_identical(straight.state_dict(), resumed.state_dict(), "model")


def test_a_vq_flow_resumed_in_another_stage_is_refused_by_name(tmp_path):
    """The stage is not module state: a flows-stage checkpoint needs set_stage("flows") first."""
    from pyro_manifold.models import VQFlow

    x = torch.randn(64, 3)

    def vq_flow():
        torch.manual_seed(0)
        return VQFlow(3, num_charts=2, latent_dim=2, num_layers=1, hidden_dims=[8])

    args = dict(batch_size=32, device="cpu", progress=False)
    first = vq_flow()
    first.set_stage("flows", x)
    fit(first.model, first.guide, x, num_steps=2, run_dir=tmp_path, **args)
    files = _files(tmp_path)
    again = vq_flow()  # stage "atlas": the autoencoder trains too
    before = _state(again)
    with pytest.raises(CheckpointError, match=r"\[\d+\] tensors.*has \[\d+\].*another stage"):
        fit(again.model, again.guide, x, num_steps=4, run_dir=tmp_path,
            resume=tmp_path / "checkpoint.pt", **args)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(_state(again), before, strict=True))
    assert _files(tmp_path) == files
    again.set_stage("flows")
    assert fit(again.model, again.guide, x, num_steps=4, run_dir=tmp_path,
               resume=tmp_path / "checkpoint.pt", **args).step == 4  # fmt: skip


@pytest.mark.parametrize("name", ["checkpoint.pt", "best.pt", "history.json", "config.json"])
def test_a_run_directory_whose_files_are_directories_is_refused_before_training(tmp_path, name):
    """Else the first write fails after training (and leaves its temporary file)."""
    x, val = _data()
    (tmp_path / name).mkdir()
    files = _files_and_dirs(tmp_path)
    flow = _flow()
    before = _state(flow)
    match = f"run_dir: expected {name} in .* to be a file it can replace, got a directory"
    with pytest.raises(OSError, match=match):
        fit(flow.model, flow.guide, x, validation_data=val, run_dir=tmp_path, config={"a": 1},
            step_kwargs=_killed_at(0), **ARGS)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(_state(flow), before, strict=True))
    assert _files_and_dirs(tmp_path) == files


def _files_and_dirs(run_dir):
    return sorted(p.name for p in run_dir.iterdir())


def test_a_checkpoint_not_written_by_fit_is_refused_naming_what_it_lacks(tmp_path):
    from pyro_manifold.infer import save_checkpoint

    x, _ = _data()
    flow = _flow()
    weights = save_checkpoint({"modules": [flow.state_dict()]}, tmp_path / "weights.pt")
    before = _state(flow)
    match = r"resume: checkpoint .*weights\.pt lacks \['history', 'optimizer', .*'step'\]"
    with pytest.raises(CheckpointError, match=match):
        fit(flow.model, flow.guide, x, run_dir=tmp_path / "run", resume=weights, **ARGS)
    assert all(torch.equal(a, b) for a, b in zip(_state(flow), before, strict=True))
    assert not (tmp_path / "run").exists()


class ScaleFromLoc(nn.Module):
    """x ~ N(loc, scale), the positive pyro.param "scale" initialised from the parameter loc."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.ones(1))

    def model(self, x):
        scale = pyro.param("scale", self.loc, constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(self.loc, scale), obs=x)

    def guide(self, x):
        pass


def test_a_constrained_param_initialised_from_a_module_parameter_is_trained_and_saved(tmp_path):
    """Only pyro.module's own (unconstrained) sites count as the module's: a constrained
    site initialised from a module's parameter is a tensor of its own, trained and saved."""
    pyro.clear_param_store()
    m = ScaleFromLoc()
    x = 5.0 * torch.randn(512, generator=torch.Generator().manual_seed(0))
    fit(m.model, m.guide, x, num_steps=300, lr=0.05, batch_size=512, device="cpu",
        progress=False, run_dir=tmp_path, checkpoint_every=300)  # fmt: skip
    assert 4.0 < float(pyro.param("scale")) < 6.0
    assert "scale" in load_checkpoint(tmp_path / "checkpoint.pt")["params"]
    pyro.clear_param_store()


def test_a_stale_pyro_module_registration_is_not_saved_as_a_param_site(tmp_path):
    """pyro.module keeps an earlier instance's tensor in the param store under the same
    name (no clear_param_store): it is not this module's parameter, nor a pyro.param
    site, or the checkpoint could not be resumed in a fresh process."""
    import pyro

    x, _ = _data()
    pyro.clear_param_store()
    earlier = WithSite(site=False)
    fit(earlier.model, earlier.guide, x, **{**ARGS, "num_steps": 2})
    assert "with_site$$$loc" in pyro.get_param_store()
    m = WithSite(site=False)
    fit(m.model, m.guide, x, run_dir=tmp_path, **{**ARGS, "num_steps": 6})
    assert load_checkpoint(tmp_path / "checkpoint.pt")["params"] == {}
    pyro.clear_param_store()  # as a fresh process has it
    again = WithSite(site=False)
    assert fit(again.model, again.guide, x, resume=tmp_path / "checkpoint.pt", **ARGS).step == 20
