"""Faults: SIGKILL in the middle of writing a checkpoint, then resume; errors that come late."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from pyro_manifold.errors import CheckpointError
from pyro_manifold.infer import fit, load_checkpoint

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


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
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
