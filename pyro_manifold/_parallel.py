r"""The data-parallel training that is running, for layers that edit parameters in place.

Data-parallel :func:`~pyro_manifold.infer.fit` keeps the ranks' parameters equal by
averaging gradients: every rank applies the same update to the same values. A layer
that writes a parameter in place outside autograd (a codebook placed by k-means on
the rank's own batch, a dead code re-seeded at a random point of it) breaks that, and
the ranks drift apart for the rest of the run. Such a layer calls
:func:`follow_main_process_` right after the edit: inside a data-parallel ``fit`` the
tensors then take rank 0's values (a collective: every rank must make the same call at
the same step, which holds when the decision to edit depends only on state that is
equal across ranks); anywhere else it does nothing.

This module sits below ``nn`` and ``infer`` so that layers need not import the
training loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor

_BROADCAST: ContextVar[Callable[[Iterable[Tensor]], None] | None] = ContextVar(
    "pyro_manifold_data_parallel_broadcast", default=None
)


@contextmanager
def data_parallel_training(broadcast: Callable[[Iterable[Tensor]], None] | None) -> Iterator[None]:
    """Within the block, :func:`follow_main_process_` calls ``broadcast`` (None: nothing).

    ``broadcast`` overwrites the tensors it is given with rank 0's values, e.g.
    :meth:`~pyro_manifold.infer.distributed.DataParallelGroup.broadcast_`.

    Example:
        >>> import torch
        >>> seen = []
        >>> with data_parallel_training(lambda ts: seen.extend(ts)):
        ...     follow_main_process_(torch.zeros(2))
        >>> len(seen)
        1
    """
    token = _BROADCAST.set(broadcast)
    try:
        yield
    finally:
        _BROADCAST.reset(token)


def follow_main_process_(*tensors: Tensor) -> None:
    """Give ``tensors`` rank 0's values inside a data-parallel ``fit``; elsewhere a no-op.

    Example:
        >>> import torch
        >>> t = torch.ones(3)
        >>> follow_main_process_(t)  # no data-parallel training running
        >>> t.tolist()
        [1.0, 1.0, 1.0]
    """
    broadcast = _BROADCAST.get()
    if broadcast is not None:
        broadcast(tensors)
