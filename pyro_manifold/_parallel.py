r"""The training that is running, for layers that change their state in place.

Data-parallel :func:`~pyro_manifold.infer.fit` keeps the ranks' parameters equal by
averaging gradients: every rank applies the same update to the same values, and
buffers take rank 0's values after each step. Two kinds of in-place change fall
outside that and are routed through here:

* a parameter written outside autograd from the rank's own batch or random draws (a
  codebook placed by k-means, a dead code re-seeded): the layer makes the edit inside
  :func:`editing_in_place`, and every rank takes rank 0's values afterwards, so the
  ranks cannot drift apart;
* a statistic of the batch that updates a buffer (a mixture prior moved towards the
  mean responsibility): the layer passes the batch sums through :func:`sum_over_ranks_`,
  so the update uses the whole global batch, as one process would.

Both are collectives inside a data-parallel ``fit`` (every rank must make the same call
at the same step, which holds when the decision to make it depends only on state that
is equal across ranks) and do nothing anywhere else. :func:`editing_in_place` also
keeps the values from before the edit for the ``fit`` step that is running
(:func:`step_edits`), so that a step skipped for a non-finite loss is undone whole, its
parameter edits included, as its buffer updates are. This module sits below ``nn`` and
``infer`` so that layers need not import the training loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from torch import Tensor


class _Collectives(Protocol):
    def broadcast_(self, tensors: Iterable[Tensor]) -> None: ...

    def sum_(self, value: Tensor) -> Tensor: ...


_GROUP: ContextVar[_Collectives | None] = ContextVar("pyro_manifold_data_parallel", default=None)
_EDITS: ContextVar[dict[int, tuple[Tensor, Tensor]] | None] = ContextVar(
    "pyro_manifold_step_edits", default=None
)


@contextmanager
def data_parallel_training(group: _Collectives | None) -> Iterator[None]:
    """Route :func:`follow_main_process_` and :func:`sum_over_ranks_` to ``group`` in the block.

    ``group`` has ``broadcast_(tensors)`` (overwrite with rank 0's values) and
    ``sum_(tensor)`` (in-place sum over the ranks), as
    :class:`~pyro_manifold.infer.distributed.DataParallelGroup`; ``None`` turns both off.

    Example:
        >>> import torch
        >>> class Doubling:  # stands in for two ranks holding equal values
        ...     def broadcast_(self, tensors): pass
        ...     def sum_(self, value): return value.mul_(2)
        >>> with data_parallel_training(Doubling()):
        ...     sum_over_ranks_(torch.ones(2))
        tensor([2., 2.])
    """
    token = _GROUP.set(group)
    try:
        yield
    finally:
        _GROUP.reset(token)


@contextmanager
def step_edits() -> Iterator[dict[int, tuple[Tensor, Tensor]]]:
    """Collect the tensors edited by :func:`editing_in_place` in the block.

    Yields a dict, ``id(tensor) -> (tensor, value before its first edit)``, filled as
    layers edit; the caller empties it at the start of each step and copies the old
    values back when it drops the step.

    Example:
        >>> import torch
        >>> w = torch.zeros(2)
        >>> with step_edits() as edits:
        ...     with editing_in_place(w):
        ...         _ = w.fill_(5.0)
        ...     for t, old in edits.values():  # the step is dropped: undo the edit
        ...         _ = t.copy_(old)
        >>> w.tolist()
        [0.0, 0.0]
    """
    edits: dict[int, tuple[Tensor, Tensor]] = {}
    token = _EDITS.set(edits)
    try:
        yield edits
    finally:
        _EDITS.reset(token)


@contextmanager
def editing_in_place(*tensors: Tensor) -> Iterator[None]:
    """Edit ``tensors`` in place in the block: journal their old values, then follow rank 0.

    Inside :func:`step_edits` the values from before the first edit of the step are
    kept; on leaving the block :func:`follow_main_process_` gives every rank rank 0's
    values. Outside ``fit`` both do nothing.

    Example:
        >>> import torch
        >>> w = torch.zeros(2)
        >>> with editing_in_place(w):
        ...     _ = w.add_(1.0)
        >>> w.tolist()
        [1.0, 1.0]
    """
    edits = _EDITS.get()
    if edits is not None:
        for t in tensors:
            if id(t) not in edits:
                edits[id(t)] = (t, t.detach().clone())
    yield
    follow_main_process_(*tensors)


def follow_main_process_(*tensors: Tensor) -> None:
    """Give ``tensors`` rank 0's values inside a data-parallel ``fit``; elsewhere a no-op.

    Example:
        >>> import torch
        >>> t = torch.ones(3)
        >>> follow_main_process_(t)  # no data-parallel training running
        >>> t.tolist()
        [1.0, 1.0, 1.0]
    """
    group = _GROUP.get()
    if group is not None:
        group.broadcast_(tensors)


def sum_over_ranks_(value: Tensor) -> Tensor:
    """Sum ``value`` in place over the ranks inside a data-parallel ``fit``; return it.

    Example:
        >>> import torch
        >>> sum_over_ranks_(torch.tensor([1.0, 2.0]))  # one process: unchanged
        tensor([1., 2.])
    """
    group = _GROUP.get()
    return value if group is None else group.sum_(value)
