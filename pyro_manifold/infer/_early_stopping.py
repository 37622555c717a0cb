r"""Validation losses, the best state so far and early stopping for ``fit``."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pyro.infer import ELBO
from torch import Tensor, nn

from pyro_manifold.infer._batches import BatchTransform, evaluation_batches
from pyro_manifold.infer.distributed import DataParallelGroup

__all__ = ["EarlyStopping", "mean_loss"]


def mean_loss(
    elbo: ELBO,
    model: Callable,
    guide: Callable,
    data: Sequence[Tensor],
    batch_size: int,
    modules: Sequence[nn.Module],
    transform: BatchTransform | None = None,
    group: DataParallelGroup | None = None,
) -> float:
    r"""The ELBO's loss per data point over ``data``, in eval mode and without gradients.

    ``model`` and ``guide`` are called with their defaults (no per-step arguments), so
    the loss is the same objective at every step. In a data-parallel run each rank
    scores its block of rows and the sums are reduced.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer import Trace_ELBO
        >>> def model(x):
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)
        >>> round(mean_loss(Trace_ELBO(), model, lambda x: None, (torch.zeros(4),), 3, []), 4)
        0.9189
    """
    if group is not None:
        data = group.shard(data)
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in evaluation_batches(data, batch_size, transform):
                total += float(elbo.loss(model, guide, *batch))
                count += batch[0].shape[0]
    finally:
        for m, flag in zip(modules, was_training, strict=True):
            m.train(flag)
    if group is not None:
        total, count = group.sum(total, count)
    return total / count


class EarlyStopping:
    r"""Scores held-out data, keeps the best modules' states, and says when to stop.

    Everything, the best states included, is part of :meth:`state_dict`, so a run
    resumed from a checkpoint taken after its best validation ends as the uninterrupted
    run does.

    Args:
        patience: stop after this many validations in a row without a new best
            (``None``: never).
        params: the ``pyro.param`` sites trained beside the modules (name to the
            unconstrained tensor), kept and restored with them.

    Attributes:
        best: the lowest validation loss so far (``inf`` before the first).
        bad_validations: validations since the last new best.
        best_states: the modules' state dicts at the best validation.
        best_params: the ``pyro.param`` sites' (unconstrained) values there.
        stop: whether ``patience`` ran out.

    Example:
        >>> stopping = EarlyStopping(patience=2)
        >>> [stopping.update(v, []) for v in (3.0, 2.0, 2.5, 2.1)], stopping.stop
        ([True, True, False, False], True)
    """

    def __init__(
        self, patience: int | None = None, params: dict[str, Tensor] | None = None
    ) -> None:
        self.patience = patience
        self.params = dict(params or {})
        self.best, self.bad_validations = math.inf, 0
        self.best_states: list[dict[str, Any]] | None = None
        self.best_params: dict[str, Tensor] | None = None

    @property
    def stop(self) -> bool:
        """Whether ``patience`` validations in a row brought no improvement."""
        return self.patience is not None and self.bad_validations >= self.patience

    def update(self, loss: float, modules: Sequence[nn.Module]) -> bool:
        """Count a validation loss; whether it is a new best (its states are then kept).

        A loss that is not finite (NaN, or -inf from a log-density of +inf) is never a best.
        """
        improved = math.isfinite(loss) and loss < self.best
        if improved:
            self.best, self.bad_validations = loss, 0
            self.best_states = [copy.deepcopy(m.state_dict()) for m in modules]
            self.best_params = {k: p.detach().clone() for k, p in self.params.items()}
        else:
            self.bad_validations += 1
        return improved

    def restore_best(self, modules: Sequence[nn.Module]) -> None:
        """Load the best states into ``modules`` (nothing before a first validation)."""
        if self.best_states is not None:
            for m, state in zip(modules, self.best_states, strict=True):
                m.load_state_dict(state)
        with torch.no_grad():
            for name, value in (self.best_params or {}).items():
                self.params[name].copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """The best loss, the count since it and the best states (for a checkpoint)."""
        return {"best_validation_loss": self.best, "bad_validations": self.bad_validations,
                "best_states": self.best_states, "best_params": self.best_params,
                "stopped": self.stop}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's counters and best states.

        Whether to stop follows from the counters and this run's ``patience``: a run that
        stopped early stays stopped with the same patience, and trains on with more (or
        none).
        """
        self.best = float(state.get("best_validation_loss", math.inf))
        self.bad_validations = int(state.get("bad_validations", 0))
        self.best_states = state.get("best_states")
        self.best_params = state.get("best_params")
