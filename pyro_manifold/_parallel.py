r"""The data-parallel training that is running, for layers that change their state in place.

Data-parallel :func:`~pyro_manifold.infer.fit` keeps the ranks' parameters equal by
averaging gradients: every rank applies the same update to the same values, and
buffers take rank 0's values after each step. Two kinds of in-place change fall
outside that and are routed through here:

* a parameter written outside autograd from the rank's own batch or random draws (a
  codebook placed by k-means, a dead code re-seeded): the layer calls
  :func:`follow_main_process_` right after the edit, and every rank takes rank 0's
  values, so the ranks cannot drift apart;
* a statistic of the batch that updates a buffer (a mixture prior moved towards the
  mean responsibility): the layer passes the batch sums through :func:`sum_over_ranks_`,
  so the update uses the whole global batch, as one process would.

Both are collectives inside a data-parallel ``fit`` (every rank must make the same call
at the same step, which holds when the decision to make it depends only on state that
is equal across ranks) and do nothing anywhere else. This module sits below ``nn`` and
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
