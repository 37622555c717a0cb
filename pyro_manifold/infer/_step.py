r"""One optimisation step of :func:`~pyro_manifold.infer.fit`: eager, on the device, or replayed.

Three ways to run a step, with the same arithmetic:

* **eager** (``sync_every=1``): loss, backward pass, one read of the finiteness flag;
  a bad step is undone (buffers, in-place parameter edits) or reported at once;
* **on the device** (``sync_every > 1``): the fused Adam skips a bad step there
  (``found_inf``) and buffers are restored where the flag is set; flags are read back
  later by :meth:`TrainingStep.settle`;
* **replayed** (``cuda_graph=True``): after ``GRAPH_WARMUP`` device steps the device
  step is captured once as a CUDA graph (:mod:`pyro_manifold.infer.graphs`) and
  replayed while the batches and the per-step keyword arguments stay as captured.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import pyro
import torch
from pyro.distributions.util import is_validation_enabled
from pyro.infer import ELBO
from torch import Tensor, nn
from torch.autograd.graph import increment_version

from pyro_manifold._parallel import data_parallel_training, step_edits
from pyro_manifold._registration import parameters_registered
from pyro_manifold.errors import ArgumentError
from pyro_manifold.infer._batches import MiniBatches
from pyro_manifold.infer._buffers import BufferSnapshot
from pyro_manifold.infer._guard import (
    NonFiniteGuard,
    NonFiniteLossError,
    gradient_report,
    nonfinite_sites,
    nonfinite_values,
    total_norm_of,
)
from pyro_manifold.infer.distributed import DataParallelGroup
from pyro_manifold.infer.graphs import CapturedStep, capture_step, extra_states, same_state

__all__ = ["GRAPH_WARMUP", "TrainingStep", "check_graphable"]

GRAPH_WARMUP = 3  # eager steps before fit(cuda_graph=True) captures the step
PYTHON_STATE_CHANGED = (
    "a module's Python-side state (extra state) or a parameter edited in place from "
    "Python changed during a step"
)
KWARGS_CHANGED = "the per-step keyword arguments (step_kwargs) change from step to step"


def check_graphable(
    optimizer: object, lr_schedule: object, device: torch.device | None = None,
    distributed: bool = False,
) -> None:  # fmt: skip
    """Refuse ``cuda_graph=True`` where a graph cannot replay the step (before any change).

    Example:
        >>> check_graphable("sgd", None)
        Traceback (most recent call last):
        ...
        pyro_manifold.errors.ArgumentError: cuda_graph=True needs optimizer 'adam' or ...
    """
    problems = []
    if callable(optimizer) or optimizer not in ("adam", "adamw"):
        problems.append(f"optimizer 'adam' or 'adamw' (got {optimizer!r})")
    if lr_schedule is not None:
        problems.append(f"no lr_schedule (got {lr_schedule!r}; a replayed step keeps its lr)")
    if device is not None and device.type != "cuda":
        problems.append(f"a CUDA device (got device {device})")
    if distributed:
        problems.append("no distributed training")
    if problems:
        raise ArgumentError("cuda_graph=True needs " + "; ".join(problems))


class TrainingStep:
    r"""Runs :func:`fit`'s steps: loss, gradients, finiteness flag, update or undo.

    Call it inside :meth:`running`, once per step, with the batch and the step's keyword
    arguments for ``model`` and ``guide``.

    Args:
        model: the Pyro model.
        guide: the guide.
        elbo: the ELBO whose ``differentiable_loss`` is minimised (per data point).
        batch_size: the rows per batch (the loss is divided by it).
        optimizer: one optimiser over ``params`` (fused Adam/AdamW when ``deferred``).
        params: every trained tensor.
        modules: the trained modules (buffers, extra state).
        group: the data-parallel group (gradients averaged over its ranks).
        guard: counts bad steps and says when to stop.
        names: ``id(tensor) -> name`` for error messages.
        clip_norm: clip the global gradient norm to this value.
        fast: Pyro's validation off and parameters not re-registered inside steps.
        keep_buffers: keep what a bad step must undo (with ``on_nonfinite="skip"``).
        deferred: keep the finiteness flag on the device (``sync_every > 1``).
        cuda_graph: capture and replay the device step.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        elbo: ELBO,
        batch_size: int,
        optimizer: torch.optim.Optimizer,
        params: list[Tensor],
        modules: Sequence[nn.Module],
        group: DataParallelGroup,
        guard: NonFiniteGuard,
        names: dict[int, str],
        *,
        clip_norm: float | None = None,
        fast: bool = True,
        keep_buffers: bool = False,
        deferred: bool = False,
        cuda_graph: bool = False,
    ) -> None:
        self.model, self.guide, self.elbo, self.opt = model, guide, elbo, optimizer
        self.batch_size = batch_size
        self.params, self.modules, self.group, self.guard = params, list(modules), group, guard
        self.names, self.clip_norm, self.fast = names, clip_norm, fast
        self.keep_buffers, self.deferred, self.cuda_graph = keep_buffers, deferred, cuda_graph
        self.snapshot = BufferSnapshot(self.modules if keep_buffers else [])
        self.total_norm = total_norm_of(params)
        self.edits: dict[int, tuple[Tensor, Tensor]] = {}
        # cuda_graph: the warm-up steps' reasons not to capture (None: fine), the graph
        self.graph: CapturedStep | None = None
        self.graph_kwargs: dict[str, Any] = {}
        self.graph_note: str | None = None if cuda_graph else "off"
        self.graphed_steps = 0
        self.capturing = False  # inside capture_step: device_step copies every buffer
        self.extra0 = copy.deepcopy(extra_states(self.modules)) if cuda_graph else []
        self.warm: list[str | None] = []
        self.warm_kwargs: dict[str, Any] | None = None

    @contextmanager
    def running(self) -> Iterator[None]:
        """The block in which steps run: in-place edits journaled, ranks kept in step."""
        distributed = self.group if self.group.distributed else None
        # layers' in-place parameter edits follow rank 0 (see pyro_manifold._parallel)
        # and a skipped step undoes them (pyro_manifold._parallel.step_edits)
        journal = step_edits() if self.keep_buffers else nullcontext({})
        with data_parallel_training(distributed), journal as edits:
            self.edits = edits
            try:
                yield
            finally:
                if self.graph is not None:
                    self.bump_versions()
                    self.opt.zero_grad(set_to_none=True)  # the gradients live in the graph's pool

    # -- the step ----------------------------------------------------------------------
    def loss_and_flag(self, step: int, batch: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
        """Loss per point, gradients, and the flag "loss or gradient not finite"."""
        try:
            with (
                pyro.validation_enabled(not self.fast and is_validation_enabled()),
                parameters_registered(not self.fast),
            ):
                loss = self.elbo.differentiable_loss(self.model, self.guide, *batch, **kwargs)
                value = loss / self.batch_size
        except Exception as e:
            e.add_note(f"pyro_manifold.fit: raised at step {step}")
            raise
        mean_value = self.group.mean(value.detach())
        self.opt.zero_grad(set_to_none=True)
        value.backward()
        self.group.synchronize_(self.params, self.modules)
        if self.clip_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        else:
            grads = [p.grad for p in self.params if p.grad is not None]
            grad_norm = self.total_norm(grads) if grads else mean_value * 0
        return mean_value, ~torch.isfinite(mean_value + grad_norm)

    def device_step(self, step: int, batch: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
        """One step that reads nothing back; a non-finite one is undone on the device.

        Inside a graph capture every buffer is copied and restored (the replay runs no
        Python to choose); eagerly only those that may have changed.
        """
        self.snapshot.take(everything=self.capturing)
        mean_value, bad = self.loss_and_flag(step, batch, kwargs)
        self.opt.found_inf = bad.to(torch.float32)
        self.opt.step()
        self.snapshot.restore_where(bad, everything=self.capturing)
        with torch.no_grad():
            for t, old in self.edits.values():
                t.copy_(torch.where(bad, old, t))
        return mean_value, bad

    def eager_step(self, step: int, batch: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
        """One step with one read of its flag: applied, undone, or reported."""
        self.snapshot.take()
        mean_value, bad = self.loss_and_flag(step, batch, kwargs)
        flag = bool(bad)  # the one sync per step
        if not self.guard.tolerates(step, flag):
            raise self.nonfinite_error(step, batch, kwargs, float(mean_value), rerun=False)
        if flag:
            self.snapshot.restore()
            with torch.no_grad():
                for t, old in self.edits.values():
                    t.copy_(old)
            self.opt.zero_grad(set_to_none=True)
        else:
            self.opt.step()
        return mean_value, bad

    def __call__(
        self, step: int, rows: Tensor, batch: tuple, kwargs: dict
    ) -> tuple[Tensor, Tensor]:
        """Run step ``step`` on ``batch`` (rows ``rows`` of the data); its loss and flag."""
        self.edits.clear()
        if not self.deferred:
            return self.eager_step(step, batch, kwargs)
        if self.graph is None and self._graph_ready():
            self.graph, self.graph_kwargs = self._capture(step, batch, kwargs), kwargs
        if self.graph is not None and not self.graph.accepts(batch):
            self._drop_graph("a batch differs in shape, dtype or device from the captured one")
        elif self.graph is not None and not same_state(kwargs, self.graph_kwargs):
            self._drop_graph(KWARGS_CHANGED)
        if self.graph is not None:
            mean_value, bad = self.graph(*batch)
            self.graphed_steps += 1
        else:  # no read: the fused optimiser skips the update on the device
            mean_value, bad = self.device_step(step, batch, kwargs)
            if self.cuda_graph:
                self._warm_up(kwargs)
        self.guard.defer(step, bad, rows, kwargs)
        return mean_value, bad

    def settle(self, batches: MiniBatches) -> None:
        """Read the pending flags (one sync); raise for the first intolerable step."""
        entry = self.guard.settle()
        if entry is not None:
            bad_batch = batches.rows(entry.rows)
            raise self.nonfinite_error(entry.step, bad_batch, entry.kwargs, math.nan, rerun=True)

    def check_values(self, step: int) -> None:
        """Raise if a trained value is not finite (before a checkpoint, and at the end).

        A step's loss and gradient norm are checked every step; an update can still
        overflow (a finite gradient times a huge ``lr``), which only the values show.
        """
        bad = nonfinite_values(self.params, self.names)
        if bad:
            raise NonFiniteLossError(step, [], math.nan, nonfinite_values=bad)

    def nonfinite_error(
        self, step: int, batch: tuple, kwargs: dict, loss: float, rerun: bool
    ) -> NonFiniteLossError:
        """The error for a bad step, with its sites and its largest gradient."""
        self.refresh_versions()
        if rerun:  # recompute that batch's gradients for the report
            self.opt.zero_grad(set_to_none=True)
            with pyro.validation_enabled(False), parameters_registered(False):
                again = self.elbo.differentiable_loss(self.model, self.guide, *batch, **kwargs)
                again = again / batch[0].shape[0]
            again.backward()
            loss = float(again.detach())
        report = gradient_report(self.params, self.names)
        sites = nonfinite_sites(self.model, self.guide, batch, kwargs)
        return self.guard.error(step, sites, loss, report)

    # -- cuda_graph: eager warm-up steps, then one capture of device_step ---------------
    def _warm_up(self, kwargs: dict) -> None:
        if self.warm_kwargs is None:
            self.warm_kwargs = kwargs
        if self.edits or not same_state(extra_states(self.modules), self.extra0):
            self.warm.append(PYTHON_STATE_CHANGED)
        elif not same_state(kwargs, self.warm_kwargs):
            self.warm.append(KWARGS_CHANGED)
        else:
            self.warm.append(None)

    def _graph_ready(self) -> bool:
        if self.graph_note is not None or len(self.warm) < GRAPH_WARMUP:
            return False
        reasons = [r for r in self.warm if r is not None]
        if reasons:
            self._give_up(reasons[0])
            return False
        return True

    def _give_up(self, reason: str) -> None:
        self.graph_note = reason
        warnings.warn(f"fit: cuda_graph: {reason}; training goes on eagerly",
                      RuntimeWarning, stacklevel=5)  # fmt: skip

    def _drop_graph(self, reason: str) -> None:
        self.graph = None
        self._give_up(reason)
        self.bump_versions()

    def _capture(self, step: int, batch: tuple, kwargs: dict) -> CapturedStep | None:
        self.capturing = True
        try:
            captured = capture_step(lambda *b: self.device_step(step, b, kwargs), batch)
        finally:
            self.capturing = False
            self.bump_versions()  # caches filled during the capture hold values never computed
        changed = self.edits or not same_state(extra_states(self.modules), self.extra0)
        if not isinstance(captured, str) and changed:
            captured = "the captured step changed Python-side state or edited a parameter"
        if isinstance(captured, str):
            self._give_up(captured)
            return None
        return captured

    def bump_versions(self) -> None:
        """Move every parameter's and buffer's version counter (a replay moves none).

        So no cache keyed on versions serves a value from before the replayed updates.
        """
        increment_version([*self.params, *self.snapshot.buffers])

    def refresh_versions(self) -> None:
        """Before anything reads the parameters outside the graph: bump their versions."""
        if self.graph is not None:
            self.bump_versions()
