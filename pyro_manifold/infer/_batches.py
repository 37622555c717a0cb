r"""Mini-batches for :func:`~pyro_manifold.infer.fit`: one shuffled pass over the data per epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from pyro_manifold._validation import check_finite_rows, check_tensor
from pyro_manifold.errors import ArgumentError

__all__ = ["MiniBatches", "as_tensors", "evaluation_batches"]

BatchTransform = Callable[..., Sequence[Tensor]]


def as_tensors(
    name: str, data: Tensor | Sequence[Tensor], finite: bool = True
) -> tuple[Tensor, ...]:
    """Return ``data`` as a non-empty tuple of tensors with the same number of rows.

    ``finite``: also refuse a floating tensor with a NaN or infinite entry, naming its
    first such row.

    Example:
        >>> [tuple(t.shape) for t in as_tensors("data", (torch.zeros(3, 2), torch.zeros(3)))]
        [(3, 2), (3,)]
    """
    tensors = (data,) if isinstance(data, Tensor) else tuple(data)
    if not tensors:
        raise ArgumentError(
            f"{name}: expected a tensor or a non-empty tuple of tensors, got {data!r}"
        )
    for i, t in enumerate(tensors):
        label = name if len(tensors) == 1 else f"{name}[{i}]"
        check_tensor(label, t, min_dim=1, floating=False, finite=False)
        if finite:
            check_finite_rows(label, t)
        if t.shape[0] != tensors[0].shape[0]:
            raise ArgumentError(
                f"{label}: expected {tensors[0].shape[0]} rows like {name}[0], got shape "
                f"{tuple(t.shape)}"
            )
    return tensors


def _transformed(batch: tuple[Tensor, ...], transform: BatchTransform | None) -> tuple:
    return batch if transform is None else tuple(transform(*batch))


def evaluation_batches(
    data: Sequence[Tensor], batch_size: int, transform: BatchTransform | None = None
) -> Iterator[tuple[Tensor, ...]]:
    """Consecutive batches of ``data`` in order (for validation losses).

    Example:
        >>> [b[0].tolist() for b in evaluation_batches((torch.arange(5),), 2)]
        [[0, 1], [2, 3], [4]]
    """
    n = data[0].shape[0]
    for start in range(0, n, batch_size):
        yield _transformed(tuple(t[start : start + batch_size] for t in data), transform)


class MiniBatches:
    r"""Rows drawn without replacement, reshuffled on the data's device at each epoch.

    Every rank of a data-parallel run draws the same permutation (same ``seed``) and
    takes its own slice of each global batch of ``batch_size * world_size`` rows; a
    permutation is drawn afresh when fewer than a global batch of its rows are left.
    The order (permutation, position and generator) is part of a checkpoint, so a
    resumed run draws the batches the uninterrupted one would.

    Args:
        data: tensors with :math:`N` rows each, on the training device.
        batch_size: rows per batch on this rank.
        seed: seeds the order's generator.
        transform: applied to each batch, ``transform(*batch) -> batch``.
        rank: this rank's index.
        world_size: the number of ranks.

    Example:
        >>> batches = MiniBatches((torch.arange(6),), batch_size=4, seed=0)
        >>> rows, (x,) = batches.next()
        >>> sorted(x.tolist()) == sorted(rows.tolist()) and len(x) == 4
        True
    """

    def __init__(
        self,
        data: Sequence[Tensor],
        batch_size: int,
        seed: int,
        transform: BatchTransform | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.data, self.batch_size, self.transform = tuple(data), batch_size, transform
        self.rank, self.global_batch = rank, batch_size * world_size
        self.num_rows = self.data[0].shape[0]
        self.generator = torch.Generator(device=self.data[0].device)
        self.generator.manual_seed(seed)
        self.position = 0
        self.perm = self._permutation()

    def _permutation(self) -> Tensor:
        return torch.randperm(self.num_rows, generator=self.generator, device=self.data[0].device)

    def first(self) -> tuple[Tensor, ...]:
        """The first ``batch_size`` rows, transformed (for a trial evaluation)."""
        return self.rows(slice(0, self.batch_size))

    def rows(self, index: Tensor | slice) -> tuple[Tensor, ...]:
        """The rows ``index`` of every tensor, transformed (e.g. to re-run a bad step)."""
        return _transformed(tuple(t[index] for t in self.data), self.transform)

    def next(self) -> tuple[Tensor, tuple[Tensor, ...]]:
        """This rank's next batch: its row indices and the transformed tensors."""
        if self.position + self.global_batch > self.num_rows:
            self.perm, self.position = self._permutation(), 0
        start = self.position + self.rank * self.batch_size
        index = self.perm[start : start + self.batch_size]
        self.position += self.global_batch
        return index, self.rows(index)

    def state_dict(self) -> dict[str, Any]:
        """The order as plain data and CPU tensors (for a checkpoint)."""
        return {
            "position": self.position,
            "perm": self.perm.cpu(),
            "order_generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the order saved by :meth:`state_dict`."""
        self.position = int(state["position"])
        self.perm = state["perm"].to(self.data[0].device)
        self.generator.set_state(state["order_generator"])
