"""Faults: SIGKILL mid-checkpoint, bad rows late in the data, NaN parameters, late errors."""

import os
import signal
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from unittest import mock

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_manifold._validation import is_binary
from pyro_manifold.datasets import dynamic_binarize
from pyro_manifold.errors import ArgumentError, CheckpointError
from pyro_manifold.infer import NonFiniteLossError, fit, load_checkpoint
from pyro_manifold.infer import _data_check as data_check
from pyro_manifold.models import (
    Flow,
    FlowVAE,
    NoisyInjectiveFlow,
    VariationalMixtureOfFlows,
    VQAutoencoder,
    VQFlow,
)

needs_sigkill = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

NUM_STEPS, EVERY, KILL_AT = 30, 5, 3  # the 3rd checkpoint write (step 15) is killed

CHILD = textwrap.dedent(
    """
    import io, os, sys, time
    import torch
    torch.set_num_threads(1)
    from pyro_manifold.infer import fit
    from pyro_manifold.models import Flow

    run_dir, out, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "resume"
    kill_at, num_steps, every = (int(os.environ[k]) for k in ("KILL_AT", "NUM_STEPS", "EVERY"))
    real_save, writes = torch.save, [0]

    def slow_save(obj, f, *args, **kwargs):  # write half the file, then (maybe) hang
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        writes[0] += 1
        f.write(data[: len(data) // 2])
        f.flush()
        if writes[0] == kill_at:
            print("mid-write", flush=True)
            time.sleep(120)
        f.write(data[len(data) // 2 :])

    torch.save = slow_save
    torch.manual_seed(0)
    flow = Flow(2, "maf", num_layers=2, hidden_dims=[16])
    x = torch.randn(512, 2) * torch.tensor([2.0, 0.5]) + 1.0
    checkpoint = os.path.join(run_dir, "checkpoint.pt")
    fit(flow.model, flow.guide, x, num_steps=num_steps, batch_size=64, lr=1e-2, device="cpu",
        progress=False, run_dir=run_dir, checkpoint_every=every, seed=3,
        resume=checkpoint if resume else None)
    buf = io.BytesIO()
    real_save(flow.state_dict(), buf)
    open(out, "wb").write(buf.getvalue())
    """
)


def _child(script, run_dir, out, mode, kill_at=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.update(KILL_AT=str(kill_at), NUM_STEPS=str(NUM_STEPS), EVERY=str(EVERY))
    return subprocess.Popen(
        [sys.executable, str(script), str(run_dir), str(out), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@needs_sigkill
def test_sigkill_mid_checkpoint_leaves_a_complete_one_and_resume_matches(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)

    reference = _child(script, tmp_path / "ref", tmp_path / "ref.pt", "fresh")
    killed = _child(script, tmp_path / "run", tmp_path / "unused.pt", "fresh", kill_at=KILL_AT)
    line = killed.stdout.readline()  # blocks until the child is half-way through a write
    assert line.strip() == "mid-write", killed.stderr.read()
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL

    # (a) the file on disk is the last complete checkpoint; the half-written one is a temp
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == (KILL_AT - 1) * EVERY
    leftovers = [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1

    # (b) resuming ends where the uninterrupted run ends, bit for bit
    resumed = _child(script, tmp_path / "run", tmp_path / "resumed.pt", "resume")
    for proc in (reference, resumed):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    want = torch.load(tmp_path / "ref.pt", weights_only=True)
    got = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == NUM_STEPS
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


# -- silent data and nameless non-finite losses ------------------------------------------
class NaNLoc(nn.Module):
    """A Normal whose ``loc`` turns NaN from the 3rd training call on (validation stays on)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.calls = 0

    def model(self, x):
        if self.training and torch.is_grad_enabled():
            self.calls += 1
        loc = self.w * (float("nan") if self.calls >= 3 else 1.0)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def guide(self, x):
        pass


@pytest.mark.parametrize("sync_every", [1, 4])
def test_nonfinite_loss_from_a_distribution_parameter_names_the_site_and_parameter(sync_every):
    m = NaNLoc()
    with pyro.validation_enabled(True), pytest.raises(NonFiniteLossError) as info:
        fit(m.model, m.guide, torch.randn(64), num_steps=8, batch_size=16, device="cpu",
            progress=False, sync_every=sync_every)  # fmt: skip
    assert info.value.step == 3
    assert info.value.sites == ["model:x (loc not finite)"]
    assert "non-finite log-probability at: model:x (loc not finite)" in str(info.value)
    assert "\n" not in str(info.value)  # the CLI prints it on one line


class CountingVAE(FlowVAE):
    """A Bernoulli FlowVAE that counts its data checks and the host reads of its steps."""

    def __init__(self):
        super().__init__(2, 6, hidden_dims=[8])
        self.checked_rows, self.step_reads, self.step_calls = [], 0, 0

    def check_data(self, x, num_samples=None, *, first_row=0):
        self.checked_rows.append((first_row, x.shape[0]))
        super().check_data(x, num_samples, first_row=first_row)

    def model(self, *args, **kwargs):
        with self._counting():
            return super().model(*args, **kwargs)

    def guide(self, *args, **kwargs):
        with self._counting():
            return super().guide(*args, **kwargs)

    @contextmanager
    def _counting(self):
        if not (self.training and torch.is_grad_enabled()):  # not a training step
            yield
            return
        self.step_calls += 1
        counted = {}
        for name in HOST_READS:
            real = getattr(torch.Tensor, name)

            def spy(t, *a, _real=real, **k):
                self.step_reads += 1
                return _real(t, *a, **k)

            counted[name] = real
            setattr(torch.Tensor, name, spy)
        try:
            yield
        finally:
            for name, real in counted.items():
                setattr(torch.Tensor, name, real)


HOST_READS = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__")


def test_whole_data_is_checked_once_up_front_and_the_steps_read_nothing_back():
    torch.manual_seed(0)
    vae = CountingVAE()
    x, val = (torch.rand(300, 6) < 0.5).float(), (torch.rand(70, 6) < 0.5).float()
    with pyro.validation_enabled(True), mock.patch.object(data_check, "CHUNK_ELEMENTS", 600):
        fit(vae.model, vae.guide, x, validation_data=val, num_steps=6, batch_size=32,
            device="cpu", progress=False, validate_every=3)  # fmt: skip
    # every row once, in chunks of max(batch_size, 600 // 6) = 100 rows, before step 1
    assert vae.checked_rows == [(0, 100), (100, 100), (200, 100), (0, 70)]
    assert vae.step_calls == 12  # model and guide of 6 steps
    assert vae.step_reads == 0  # the fast path's programs read nothing back


def _numpy_binarize(x):
    import numpy as np

    noise = torch.from_numpy(np.random.rand(*x.shape)).float()
    return ((x.float() / 255 > noise).float(),)


@pytest.mark.parametrize("binarize", [lambda x: (dynamic_binarize(x),), _numpy_binarize],
                         ids=["torch", "numpy"])  # fmt: skip
def test_the_check_of_a_random_transform_leaves_training_randomness_alone(binarize):
    """One draw of dynamic binarisation is checked; training draws what it would without."""
    pixels = torch.randint(0, 256, (200, 6), dtype=torch.uint8)
    ends = []
    for validate in (True, False):  # False: no whole-data check
        torch.manual_seed(0)
        vae = FlowVAE(2, 6, hidden_dims=[8])
        with pyro.validation_enabled(validate):
            fit(vae.model, vae.guide, pixels, num_steps=5, batch_size=16, device="cpu",
                progress=False, transform_batch=binarize, seed=4)  # fmt: skip
        ends.append([p.detach().clone() for p in vae.parameters()])
    for a, b in zip(*ends, strict=True):
        assert torch.equal(a, b)


def test_a_bad_row_is_refused_without_touching_an_existing_run_directory(tmp_path):
    vae = FlowVAE(2, 6, hidden_dims=[8])
    x = (torch.rand(256, 6) < 0.5).float()
    fit(vae.model, vae.guide, x, num_steps=2, batch_size=16, device="cpu", progress=False,
        run_dir=tmp_path)  # fmt: skip
    (tmp_path / ".lock").write_text('{"pid": 1, "host": "gone", "since": "then"}\n')
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert ".lock" in files
    x[255, 0] = 0.25
    with pyro.validation_enabled(True), pytest.raises(ArgumentError, match="first: row 255"):
        fit(vae.model, vae.guide, x, num_steps=4, batch_size=16, device="cpu", progress=False,
            run_dir=tmp_path)  # fmt: skip
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_a_bad_row_is_refused_before_the_run_directory_is_written(tmp_path):
    vae = FlowVAE(2, 6, hidden_dims=[8])
    x = (torch.rand(256, 6) < 0.5).float()
    x[255, 0] = 0.25
    with pyro.validation_enabled(True), pytest.raises(ArgumentError, match="first: row 255"):
        fit(vae.model, vae.guide, x, num_steps=4, batch_size=16, device="cpu", progress=False,
            run_dir=tmp_path / "run", config={"a": 1})  # fmt: skip
    assert not (tmp_path / "run").exists()


# -- late errors and refused resumes: nothing trained, nothing written ----------------------
def _flow_and_data():
    from pyro_manifold.models import Flow

    torch.manual_seed(0)
    return Flow(2, "realnvp", num_layers=1, hidden_dims=[8]), torch.randn(64, 2)


def _foreign_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    return text, other


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(validation_data=torch.randn(16, 2, dtype=torch.float64)), ValueError,
         r"validation_data: expected dtype torch\.float32 like data, got dtype torch\.float64"),
        (dict(validation_data=torch.zeros(16, 2, device="meta")), ValueError,
         "validation_data: expected a tensor that holds values"),
        (dict(resume="TEXT"), CheckpointError, r"notes\.txt: expected a checkpoint file"),
        (dict(resume="OTHER"), CheckpointError, r"other\.pt: expected format"),
    ],
)  # fmt: skip
def test_a_late_error_is_raised_before_training_or_writing(tmp_path, kwargs, error, match):
    text, other = _foreign_files(tmp_path)
    kwargs = {k: {"TEXT": text, "OTHER": other}.get(v, v) if isinstance(v, str) else v
              for k, v in kwargs.items()}  # fmt: skip
    flow, x = _flow_and_data()
    before = [t.clone() for t in flow.state_dict().values()]
    run = tmp_path / "run"
    with pytest.raises(error, match=match):
        fit(flow.model, flow.guide, x, num_steps=3, device="cpu", progress=False,
            run_dir=run, step_kwargs=_no_step_taken, **kwargs)  # fmt: skip
    assert not run.exists()
    assert all(torch.equal(a, b) for a, b in zip(before, flow.state_dict().values(), strict=True))


def _no_step_taken(t):
    raise AssertionError(f"a step was about to run (t = {t}) before the refusal")


def test_non_finite_raw_data_is_refused_with_validation_off_too():
    vae = FlowVAE(2, 6, hidden_dims=[8])
    x = (torch.rand(64, 6) < 0.5).float()
    x[63, 2] = float("nan")
    with pyro.validation_enabled(False), pytest.raises(ArgumentError, match="data"):
        fit(vae.model, vae.guide, x, num_steps=2, batch_size=16, device="cpu", progress=False)


CHECKERS = {  # every model of pyro_manifold.models, 3-d data
    "Flow": lambda: Flow(3, "realnvp", num_layers=1, hidden_dims=[8]),
    "FlowVAE": lambda: FlowVAE(2, 3, hidden_dims=[8], likelihood="gaussian"),
    "NoisyInjectiveFlow": lambda: NoisyInjectiveFlow(3, 1, top_layers=1, top_hidden_dims=[8]),
    "VariationalMixtureOfFlows": lambda: VariationalMixtureOfFlows(3, 2, "realnvp"),
    "VQFlow": lambda: VQFlow(3, num_charts=2, latent_dim=2, num_layers=1, hidden_dims=[8]),
    "VQAutoencoder": lambda: VQAutoencoder(3, 2, 2, hidden_dims=[8]),
}


def test_the_checkers_above_are_every_model_of_the_package():
    import pyro_manifold.models as models

    exported = {n for n in models.__all__ if callable(getattr(getattr(models, n), "check_data", 0))}
    assert set(CHECKERS) == exported


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", sorted(CHECKERS))
def test_every_models_check_data_names_the_first_non_finite_row(name, value):
    x = torch.zeros(10, 3)
    x[4, 1] = x[7, 0] = value
    with pyro.validation_enabled(False), pytest.raises(ArgumentError) as info:
        CHECKERS[name]().check_data(x, first_row=50)  # values checked whatever the setting
    assert str(info.value).startswith("x: expected finite values in every row, got 2 rows")
    assert "(first: row 54, value" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_check_data_names_a_non_finite_row_before_the_models_other_refusals():
    flow = CHECKERS["Flow"]()
    x = torch.zeros(10, 3, dtype=torch.float64)  # the model is float32
    with pytest.raises(ArgumentError, match=r"dtype"):
        flow.check_data(x)
    x[6, 2] = float("nan")
    with pytest.raises(ArgumentError, match=r"expected finite values in every row.*first: row 6"):
        flow.check_data(x)
    with pytest.raises(TypeError, match=r"x: expected a torch.Tensor, got list"):
        flow.check_data([[0.0, 0.0, 0.0]])
    for rowless in (torch.full((3,), float("nan")), torch.tensor(float("nan"))):  # no rows
        with pytest.raises(ArgumentError, match=r"x: expected shape \(\*, 3\)"):
            flow.check_data(rowless)


def test_a_bernoulli_vaes_check_names_a_non_finite_entry_as_such():
    vae = FlowVAE(2, 3, hidden_dims=[8])
    x = (torch.rand(10, 3) < 0.5).float()
    x[5, 1] = float("nan")
    with pytest.raises(ArgumentError, match=r"expected finite values in every row.*row 5"):
        vae.check_data(x)
    with pyro.validation_enabled(True), pytest.raises(ArgumentError, match=r"^x: expected finite"):
        vae.model(x)
    x[5, 1] = 0.25
    with pytest.raises(ArgumentError, match=r"Bernoulli likelihood expects binary data.*row 5"):
        vae.check_data(x)


@pytest.mark.parametrize("flags", ["both on", "both off", "distributions off", "infer off"])
@pytest.mark.parametrize("which", ["data", "validation_data"])
def test_fit_names_the_first_non_finite_row_of_raw_data_whatever_the_validation(which, flags):
    flow = CHECKERS["Flow"]()
    sets = {"data": torch.randn(300, 3), "validation_data": torch.randn(90, 3)}
    sets[which][77, 1] = float("inf")
    before = [p.detach().clone() for p in flow.parameters()]
    rng = torch.get_rng_state()
    on = {"both on": (True, True), "both off": (False, False),
          "distributions off": (False, True), "infer off": (True, False)}[flags]  # fmt: skip
    was = pyro.distributions.is_validation_enabled(), pyro.infer.util.is_validation_enabled()
    pyro.distributions.enable_validation(on[0])
    pyro.infer.enable_validation(on[1])
    try:
        with pytest.raises(ArgumentError) as info:
            fit(flow.model, flow.guide, sets["data"], validation_data=sets["validation_data"],
                num_steps=2, batch_size=32, device="cpu", progress=False, seed=5)  # fmt: skip
    finally:
        pyro.distributions.enable_validation(was[0])
        pyro.infer.enable_validation(was[1])
    assert str(info.value).startswith(f"{which}: expected finite values in every row, got 1 rows")
    assert "(first: row 77, value inf)" in str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(before, flow.parameters(), strict=True))
    assert torch.equal(torch.get_rng_state(), rng)  # the seeding of the set-up undone


@pytest.mark.parametrize(
    "x, expected",
    [
        (torch.tensor([0.0, 1.0, -0.0, 1.0]), True),
        (torch.zeros(0), True),
        (torch.tensor([0.0, 0.5]), False),
        (torch.tensor([0.0, 1.0 + 2**-23]), False),
        (torch.tensor([1e-30, 1.0]), False),
        (torch.tensor([0.0, 2.0]), False),
        (torch.tensor([-1.0, 1.0]), False),
        (torch.tensor([0.0, float("nan")]), False),
        (torch.tensor([0.0, float("inf")]), False),
        (torch.tensor([[0, 1], [1, 0]]), True),
        (torch.tensor([0, 2]), False),
        (torch.tensor([True, False]), True),
    ],
)
def test_is_binary_against_comparing_every_entry(x, expected):
    assert is_binary(x) is expected
    if x.is_floating_point():
        assert bool(((x == 0) | (x == 1)).all()) is expected


# -- an update that overflows: finite loss and gradient, non-finite parameter -------------
MAX32 = torch.finfo(torch.float32).max


class Pushed(nn.Module):
    """A gradient ``push`` on ``w`` at the steps that ask for it, none at the others."""

    def __init__(self, start=1.0, clamp=True):
        super().__init__()
        self.w = nn.Parameter(torch.full((1,), start))
        self.clamp = clamp

    def model(self, x, push=0.0):
        pyro.module("pushed", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)
            w = self.w.clamp(-MAX32, MAX32) if self.clamp else self.w  # 0 * clamped w is 0
            pyro.factor("push", -push * w.expand(x.shape[0]))

    def guide(self, x, push=0.0):
        pass


OVERFLOWS = [  # w becomes -inf at step 4 (3 for Adam) with finite losses and gradients
    dict(optimizer="sgd", lr=1e10, push=1e30, at=3),  # w - lr * grad
    dict(optimizer="sgd", lr=1e10, push=1e30, at=3, on_nonfinite="skip"),
    dict(lr=1e37, push=1e-6, at=2, start=-3.35e38, on_nonfinite="skip", sync_every=3),  # fused
]


@pytest.mark.parametrize("options", OVERFLOWS)
def test_an_overflowed_parameter_is_never_checkpointed(tmp_path, options):
    push, at, start = options.pop("push"), options.pop("at"), options.pop("start", 1.0)
    m = Pushed(start)
    with pytest.raises(NonFiniteLossError, match=r"in: Pushed\.w, found at step 4"):
        fit(m.model, m.guide, torch.randn(32), num_steps=8, batch_size=32, device="cpu",
            progress=False, run_dir=tmp_path, checkpoint_every=2,
            step_kwargs=lambda t: {"push": push * (t == at)}, **options)  # fmt: skip
    assert not torch.isfinite(m.w).all()  # an update overflowed ...
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 2 and torch.equal(state["modules"][0]["w"], torch.full((1,), start))


def test_an_overflowed_parameter_is_never_saved_as_the_best(tmp_path):
    """The first validation (a new best) comes right after the update that overflowed:
    best.pt is not written with it."""
    m = Pushed()
    with pytest.raises(NonFiniteLossError, match=r"in: Pushed\.w, found at step 4"):
        fit(m.model, m.guide, torch.randn(32), num_steps=8, batch_size=32, optimizer="sgd",
            lr=1e10, device="cpu", progress=False, run_dir=tmp_path, checkpoint_every=100,
            validation_data=torch.randn(8), validate_every=4,
            step_kwargs=lambda t: {"push": 1e30 * (t == 3)})  # fmt: skip
    assert not (tmp_path / "best.pt").exists()


def test_an_overflow_before_a_validation_is_named_not_scored():
    """Without the clamp the validation's 0 * w is NaN once w overflowed: the values are
    checked before the validation, so the error names the parameter (not Pyro's check of
    the factor, nor a non-finite validation loss)."""
    m = Pushed(clamp=False)
    with pytest.raises(NonFiniteLossError, match=r"in: Pushed\.w, found at step 4"):
        fit(m.model, m.guide, torch.randn(32), num_steps=8, batch_size=32, optimizer="sgd",
            lr=1e10, device="cpu", progress=False, validation_data=torch.randn(8),
            validate_every=4, step_kwargs=lambda t: {"push": 1e30 * (t == 3)})  # fmt: skip


def test_an_overflowed_parameter_at_the_last_step_is_not_returned_silently():
    m = Pushed()
    with pytest.raises(NonFiniteLossError, match=r"in: Pushed\.w, found at step 3"):
        fit(m.model, m.guide, torch.randn(32), num_steps=3, batch_size=32, optimizer="sgd",
            lr=1e10, device="cpu", progress=False,
            step_kwargs=lambda t: {"push": 1e30 * (t == 2)})  # fmt: skip
