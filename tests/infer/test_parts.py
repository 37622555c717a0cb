"""The parts fit is built from: batches, the non-finite guard, early stopping, run state, log."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_manifold.infer._batches import MiniBatches, as_tensors
from pyro_manifold.infer._early_stopping import EarlyStopping
from pyro_manifold.infer._guard import NonFiniteGuard
from pyro_manifold.infer._progress import TrainingLog
from pyro_manifold.infer._state import RunState, param_sites
from pyro_manifold.infer.distributed import DataParallelGroup

CPU = DataParallelGroup(torch.device("cpu"))


def test_mini_batches_cover_each_epoch_and_resume_the_same_order():
    x, y = torch.arange(10), torch.arange(10) * 2
    batches = MiniBatches((x, y), batch_size=3, seed=0, transform=lambda a, b: (a, b + 1))
    epoch = [batches.next() for _ in range(3)]  # 9 of 10 rows, then a new permutation
    rows = torch.cat([r for r, _ in epoch])
    assert len(set(rows.tolist())) == 9
    assert all(torch.equal(b, 2 * a + 1) for _, (a, b) in epoch)
    saved = batches.state_dict()
    ahead = [batches.next()[0] for _ in range(5)]
    again = MiniBatches((x, y), batch_size=3, seed=99)
    again.load_state_dict(saved)
    assert all(torch.equal(a, again.next()[0]) for a in ahead)


def test_two_ranks_take_disjoint_slices_of_one_permutation():
    x = torch.arange(12)
    ranks = [MiniBatches((x,), 3, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(2):
        a, b = (set(r.next()[0].tolist()) for r in ranks)
        assert len(a) == len(b) == 3 and not a & b
    with pytest.raises(ValueError, match=r"data\[1\]: expected 2 rows like data\[0\]"):
        as_tensors("data", (torch.zeros(2), torch.zeros(3)))


def test_guard_settles_in_step_order_and_stops_at_the_first_intolerable_step():
    guard = NonFiniteGuard("skip", max_consecutive_skips=1)
    for step, bad in [(1, True), (2, False), (3, True), (4, True), (5, True)]:
        guard.defer(step, torch.tensor(bad), torch.tensor([step]), {"t": step - 1})
    entry = guard.settle()
    assert entry.step == 4 and entry.kwargs == {"t": 3} and guard.skipped == [1, 3]
    assert guard.settle() is None and not guard.pending
    strict = NonFiniteGuard("raise", max_consecutive_skips=20)
    assert not strict.tolerates(1, True) and strict.skipped == []
    restored = NonFiniteGuard("skip", 1)
    restored.load_state_dict(guard.state_dict())
    assert restored.skipped == [1, 3]


def test_early_stopping_counts_round_trip():
    lin = torch.nn.Linear(1, 1)
    stopping = EarlyStopping(patience=3)
    stopping.update(2.0, [lin])
    with torch.no_grad():
        lin.weight.add_(1.0)
    stopping.update(2.5, [lin])
    again = EarlyStopping(patience=3)
    again.load_state_dict(stopping.state_dict())
    assert (again.best, again.bad_validations, again.stop) == (2.0, 1, False)
    best = stopping.best_states[0]["weight"]
    stopping.restore_best([lin])
    assert torch.equal(lin.weight, best)


def test_run_state_round_trips_modules_params_and_parts_through_the_public_store():
    pyro.clear_param_store()
    scale = pyro.param("scale", torch.ones(2), constraint=dist.constraints.positive)
    lin = torch.nn.Linear(2, 1)
    sites = param_sites(["scale"], [lin])
    assert list(sites) == ["scale"] and not torch.equal(sites["scale"], scale)  # unconstrained
    opt = torch.optim.Adam([*lin.parameters(), *sites.values()], lr=0.1)
    guard = NonFiniteGuard("skip", 2, skipped=[3])
    state = RunState([lin], opt, None, [guard], CPU, {"run": 1}, sites).state_dict(step=7)
    assert state["step"] == 7 and state["skipped_steps"] == [3] and state["config"] == {"run": 1}
    with torch.no_grad():
        sites["scale"].add_(1.0)
        lin.weight.zero_()
    other = NonFiniteGuard("skip", 2)
    step = RunState([lin], opt, None, [other], CPU, None, sites).load_state_dict(state, seed=0)
    assert step == 7 and other.skipped == [3]
    assert torch.equal(pyro.param("scale").detach(), torch.ones(2))
    assert torch.equal(lin.weight, state["modules"][0]["weight"])


def test_log_leaves_bad_steps_out_of_the_mean_and_keeps_its_history():
    log = TrainingLog(4, torch.device("cpu"), progress=False)
    with log.running(0):
        for value, bad in [(1.0, False), (math.nan, True), (3.0, False)]:
            log.record(torch.tensor(value), torch.tensor(bad))
        log.log(3, lr=0.5)
        log.log(4, lr=0.5)  # nothing new since the last log: no entry
    assert log.history["step"] == [3] and log.history["loss"] == [2.0]
    again = TrainingLog(4, torch.device("cpu"), progress=False)
    again.load_state_dict(log.state_dict())
    assert again.history == log.history and again.elapsed > 0


def test_the_bar_shows_on_request_or_on_a_terminal_and_never_off_rank_zero(monkeypatch):
    """README: "Process 0 ... shows the progress bar": a log built with ``show=False`` (every
    other rank) writes nothing even when asked and on a terminal; rank 0's bar shows with
    ``progress=True``, and by default only on a terminal."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    def bar_text(stream, progress, show):
        monkeypatch.setattr(sys, "stderr", stream)
        log = TrainingLog(2, torch.device("cpu"), progress=progress, show=show)
        with log.running(0):
            for step in (1, 2):
                log.record(torch.tensor(1.0), torch.tensor(False))
                log.log(step, lr=0.1)
                log.advance(0)
        return stream.getvalue()

    for stream in (io.StringIO, Terminal):
        assert "2/2" in bar_text(stream(), progress=True, show=True)
        assert bar_text(stream(), progress=True, show=False) == ""
        assert bar_text(stream(), progress=False, show=True) == ""
    assert "2/2" in bar_text(Terminal(), progress=None, show=True)
    assert bar_text(io.StringIO(), progress=None, show=True) == ""


def test_the_set_up_rollback_holds_its_copies_only_until_done():
    import gc
    import weakref

    from pyro_manifold.infer._rollback import SetUpRollback

    lin = torch.nn.Linear(64, 64)
    rollback = SetUpRollback([lin])
    copy = weakref.ref(rollback._tensors[0][2])
    rollback.done()
    gc.collect()
    assert copy() is None  # the copy of the weights is gone once training starts
