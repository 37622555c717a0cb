r"""Data-parallel training with ``torch.distributed``: what :func:`~pyro_manifold.infer.fit` needs.

Every process (a *rank*) holds the same model, guide and data. Each step the ranks draw
the same permutation (same seed), each takes its own slice of the global batch, runs
the ELBO's backward pass on it, and the gradients are averaged across the ranks with
one ``all_reduce`` per dtype before the optimiser step. Because
:func:`~pyro_manifold.infer.fit`'s loss is the ELBO divided by the batch size, the
average of the ranks' gradients is the gradient of one process holding the union of
their batches (up to rounding):

.. math::

    \frac{1}{W}\sum_{r=1}^{W} \nabla\Bigl(-\frac{1}{B}\widehat{\mathrm{ELBO}}(x_{B_r})\Bigr)
      = \nabla\Bigl(-\frac{1}{WB}\widehat{\mathrm{ELBO}}\bigl(x_{B_1\cup\dots\cup B_W}\bigr)\Bigr).

This is an all-reduce of gradients after the backward pass rather than
:class:`~torch.nn.parallel.DistributedDataParallel`: Pyro programs are not ``forward``
calls of one module and ``pyro.param`` sites live outside modules, and the explicit
reduction covers both, including enumerated guides (``TraceEnum_ELBO``). Floating-point
buffers (batch-norm statistics, moving averages) follow rank 0 after every step, as
with ``DistributedDataParallel(broadcast_buffers=True)``; they ride in the same
``all_reduce`` (the other ranks add zeros), so a step costs one collective per dtype
plus one scalar for the loss. Layers that normalise by batch statistics (batch norm in
training mode) see each rank's slice only, so such models match one process only
approximately. Parameters that a layer edits in place outside autograd (the VQ
codebook's k-means start and dead-code re-seeding) take rank 0's values right after the
edit, and statistics that a layer gathers from its batch to update a buffer (VMoNF's
prior from the responsibilities) are summed over the ranks first, so the update is the
one of the whole global batch (``pyro_manifold._parallel``).

Backends: NCCL for CUDA tensors, gloo on the CPU. Under ``torchrun`` let
:func:`~pyro_manifold.infer.fit` join the group, or hold it with
:func:`torchrun_process_group` (the command line does).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pyro_manifold.errors import ArgumentError, ComputationError
from pyro_manifold.infer.checkpoint import load_checkpoint, save_checkpoint

__all__ = [
    "DataParallelGroup",
    "data_parallel_group",
    "init_process_group_from_env",
    "is_main_process",
    "launched_by_torchrun",
    "torchrun_process_group",
]

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """Whether the environment names a process group (``torchrun`` sets these variables).

    True when ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` are all set.

    Example:
        >>> import os
        >>> launched_by_torchrun() == all(v in os.environ for v in _TORCHRUN_VARIABLES)
        True
    """
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


def is_main_process() -> bool:
    """True outside a process group and on rank 0 inside one.

    Example:
        >>> is_main_process()
        True
    """
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _wants_cuda(device: str | torch.device | None) -> bool:
    if device is None:
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def init_process_group_from_env(
    device: str | torch.device | None = None, timeout: timedelta | None = None
) -> bool:
    """Join the process group that ``torchrun`` describes in the environment.

    Uses NCCL when training on CUDA (``device`` ``"cuda"``, or ``None`` with a GPU) and
    gloo otherwise; on CUDA it first selects the GPU ``LOCAL_RANK``. Does nothing when a
    group is already initialized or the environment names none.

    Args:
        device: the training device, which decides the backend; default CUDA if available.
        timeout: how long a collective may wait (the backend's default if ``None``).

    Returns:
        Whether this call initialized the group (the caller then owns
        :func:`torch.distributed.destroy_process_group`).

    Example:
        >>> import os
        >>> init_process_group_from_env("cpu") if "WORLD_SIZE" not in os.environ else False
        False
    """
    if not dist.is_available() or dist.is_initialized() or not launched_by_torchrun():
        return False
    cuda = _wants_cuda(device)
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", **kwargs)
    return True


@contextmanager
def torchrun_process_group(
    device: str | torch.device | None = None, timeout: timedelta | None = None
) -> Iterator[bool]:
    """Join ``torchrun``'s process group for the ``with`` block, leaving it afterwards.

    Yields whether a group is in use; outside ``torchrun`` it does nothing. When the
    block ends normally the ranks meet at a barrier before they destroy the group, so
    no rank closes its connections while another (rank 0 evaluating and plotting) still
    holds the group: a gloo peer whose connection closes under it aborts the process.
    After an exception the group is destroyed at once, since the other ranks may never
    reach the barrier.

    Example:
        >>> with torchrun_process_group("cpu") as joined:
        ...     pass
    """
    started = init_process_group_from_env(device, timeout)
    try:
        yield started or (dist.is_available() and dist.is_initialized())
    except BaseException:
        if started:
            dist.destroy_process_group()
        raise
    if started:
        dist.barrier()
        dist.destroy_process_group()


def _by_dtype(tensors: Iterable[Tensor]) -> dict[torch.dtype, list[Tensor]]:
    groups: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return groups


def _unique(tensors: Iterable[Tensor]) -> list[Tensor]:
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


class DataParallelGroup:
    r"""The ranks that train one model together, and the collectives ``fit`` runs.

    Built by :func:`data_parallel_group`. Outside a process group it is the trivial
    group of one process (rank 0 of 1) whose operations change nothing, so
    :func:`~pyro_manifold.infer.fit` runs the same code either way.

    Attributes:
        rank: this process's rank.
        world_size: the number of ranks :math:`W`.
        device: the training device (on CUDA: this rank's GPU).
        distributed: whether collectives run (a process group is in use).
    """

    def __init__(self, device: torch.device, distributed: bool = False) -> None:
        self.distributed = distributed
        self.rank = dist.get_rank() if distributed else 0
        self.world_size = dist.get_world_size() if distributed else 1
        if distributed and device.type == "cuda" and device.index is None:
            local = os.environ.get("LOCAL_RANK")
            device = torch.device("cuda", int(local) if local else torch.cuda.current_device())
        if distributed and device.type == "cuda":
            torch.cuda.set_device(device)
        self.device = device
        self._comm = torch.device("cpu")
        if distributed:
            backend = str(dist.get_backend())
            if device.type == "cuda" and "nccl" in backend:
                self._comm = device
            elif "gloo" not in backend and "mpi" not in backend:
                raise ArgumentError(
                    f"distributed: the {backend} backend needs CUDA tensors but the device is "
                    f"{device}; train on cuda or initialize the group with gloo for the CPU"
                )

    def __repr__(self) -> str:
        return (
            f"DataParallelGroup(rank={self.rank}, world_size={self.world_size}, "
            f"device={self.device}, distributed={self.distributed})"
        )

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes files and shows progress."""
        return self.rank == 0

    # -- data ----------------------------------------------------------------------------
    def local_batch_size(self, batch_size: int, num_rows: int) -> int:
        r"""This rank's batch size: ``batch_size`` capped at :math:`\lfloor N / W\rfloor`.

        The global batch is :math:`W` times this; each rank takes its slice of it.

        Example:
            >>> DataParallelGroup(torch.device("cpu")).local_batch_size(128, 100)
            100
        """
        if num_rows < self.world_size:
            raise ArgumentError(
                f"data: {num_rows} rows cannot be shared by {self.world_size} processes"
            )
        return min(batch_size, num_rows // self.world_size)

    def shard(self, tensors: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """This rank's contiguous block of rows of each tensor (for evaluation).

        Example:
            >>> DataParallelGroup(torch.device("cpu")).shard((torch.arange(4),))
            (tensor([0, 1, 2, 3]),)
        """
        if not self.distributed:
            return tuple(tensors)
        return tuple(torch.tensor_split(t, self.world_size)[self.rank] for t in tensors)

    # -- collectives ---------------------------------------------------------------------
    def mean(self, value: Tensor) -> Tensor:
        """The mean of a scalar tensor over the ranks (``value`` itself in one process).

        Example:
            >>> DataParallelGroup(torch.device("cpu")).mean(torch.tensor(2.0))
            tensor(2.)
        """
        if not self.distributed:
            return value
        return self.sum_(value.detach().clone()) / self.world_size

    def sum(self, *values: float) -> tuple[float, ...]:
        """Sums of Python numbers over the ranks (in float64).

        Example:
            >>> DataParallelGroup(torch.device("cpu")).sum(1.5, 2.0)
            (1.5, 2.0)
        """
        if not self.distributed:
            return tuple(float(v) for v in values)
        flat = torch.tensor(values, dtype=torch.float64, device=self._comm)
        dist.all_reduce(flat)
        return tuple(flat.tolist())

    @torch.no_grad()
    def sum_(self, value: Tensor) -> Tensor:
        """Replace ``value`` in place by its sum over the ranks (itself in one process).

        Example:
            >>> DataParallelGroup(torch.device("cpu")).sum_(torch.ones(2))
            tensor([1., 1.])
        """
        if self.distributed:
            flat = value.detach().reshape(-1).to(self._comm, copy=True)
            dist.all_reduce(flat)
            value.copy_(flat.view(value.shape).to(value.device))
        return value

    @torch.no_grad()
    def broadcast_(self, tensors: Iterable[Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's values (one broadcast per dtype)."""
        if not self.distributed:
            return
        for group in _by_dtype(_unique(tensors)).values():
            flat = torch.cat([t.detach().reshape(-1).to(self._comm) for t in group])
            if flat.dtype == torch.bool:
                flat = flat.to(torch.uint8)
            dist.broadcast(flat, src=0)
            for t, piece in zip(group, flat.split([t.numel() for t in group]), strict=True):
                t.copy_(piece.view(t.shape).to(t.dtype))

    def broadcast_state_(self, modules: Sequence[nn.Module], params: Sequence[Tensor]) -> None:
        """Give every rank rank 0's parameters and buffers (at the start of training)."""
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
        self.broadcast_(tensors + list(params))

    @torch.no_grad()
    def synchronize_(self, params: Sequence[Tensor], modules: Sequence[nn.Module]) -> None:
        r"""Average the gradients of ``params`` over the ranks; buffers take rank 0's values.

        One ``all_reduce`` (sum) per dtype carries the gradients (divided by :math:`W`
        afterwards), a has-gradient flag per parameter (a parameter no rank reached keeps
        ``grad = None``) and the floating-point buffers of ``modules`` (the other ranks
        contribute zeros, so the sum is rank 0's value, exactly).
        """
        if not self.distributed:
            return
        buffers = _unique(b for m in modules for b in m.buffers() if b.is_floating_point())
        dtypes = {t.dtype for t in (*params, *buffers)}
        for dtype in sorted(dtypes, key=str):
            ps = [p for p in params if p.dtype == dtype]
            bs = [b for b in buffers if b.dtype == dtype]
            pieces = [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(self._comm)
                for p in ps
            ]
            pieces.append(
                torch.tensor([p.grad is not None for p in ps], dtype=dtype, device=self._comm)
            )
            pieces += [
                (b if self.is_main else torch.zeros_like(b)).reshape(-1).to(self._comm) for b in bs
            ]
            flat = torch.cat(pieces)
            dist.all_reduce(flat)
            sizes = [p.numel() for p in ps] + [len(ps)] + [b.numel() for b in bs]
            chunks = flat.split(sizes)
            flags = chunks[len(ps)]
            for p, g, flag in zip(ps, chunks[: len(ps)], flags.tolist(), strict=True):
                if flag == 0:
                    p.grad = None
                    continue
                g = (g / self.world_size).view(p.shape).to(p.device)
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.copy_(g)
            for b, v in zip(bs, chunks[len(ps) + 1 :], strict=True):
                b.copy_(v.view(b.shape))

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order.

        Example:
            >>> DataParallelGroup(torch.device("cpu")).gather({"a": 1})
            [{'a': 1}]
        """
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    # -- checkpoints ---------------------------------------------------------------------
    def load_checkpoint(self, path: str | os.PathLike) -> dict[str, Any]:
        """Rank 0 reads the checkpoint (weights only) and sends it to the other ranks.

        Only rank 0 needs the file, so a run resumes on nodes without a shared disk.
        An error reading it is raised on every rank.
        """
        if not self.distributed:
            return load_checkpoint(path)
        payload: list[Any] = [None]
        if self.is_main:
            try:
                payload[0] = load_checkpoint(path)
            except Exception as e:  # every rank must leave the collective and raise
                payload[0] = e
        dist.broadcast_object_list(payload, src=0)
        if isinstance(payload[0], BaseException):
            raise payload[0]
        return payload[0]

    def save_checkpoint(self, state: dict[str, Any], path: str | os.PathLike) -> Path:
        """Rank 0 writes ``state`` atomically; every rank waits and gets the path.

        A failure on rank 0 is raised on every rank, so no rank trains on after it.
        """
        if not self.distributed:
            return save_checkpoint(state, path)
        error: BaseException | None = None
        if self.is_main:
            try:
                save_checkpoint(state, path)
            except BaseException as e:  # report it to the other ranks first
                error = e
        (failed,) = self.sum(float(error is not None))
        if error is not None:
            raise error
        if failed:
            raise ComputationError(f"checkpoint: rank 0 failed to write {path}")
        return Path(path)

    def checkpoint_extras(self, rng_state: dict[str, Any]) -> dict[str, Any]:
        """Keys a distributed checkpoint adds: ``world_size`` and every rank's RNG state.

        A single process ignores them; a resumed run on the same number of ranks gives
        each rank its own random stream back (:meth:`rng_state`).
        """
        if not self.distributed:
            return {}
        return {"world_size": self.world_size, "rank_rng": self.gather(rng_state)}

    def rng_state(self, state: dict[str, Any], seed: int) -> dict[str, Any]:
        """The RNG state this rank resumes with from a checkpoint ``state``.

        Rank :math:`r`'s saved state when the checkpoint holds :math:`W` of them, else
        rank 0's (``state["rng"]``) on rank 0 and a fresh stream seeded from ``seed``,
        the rank and the step on the others (their streams stay distinct).
        """
        if not self.distributed:
            return state["rng"]
        saved = state.get("rank_rng")
        if saved is not None and len(saved) == self.world_size:
            return saved[self.rank]
        if self.is_main:
            return state["rng"]
        derived = hash((seed, self.rank, int(state["step"]))) % 2**63
        return {
            "torch": torch.Generator().manual_seed(derived).get_state(),
            "python": random.Random(derived).getstate(),
        }


def data_parallel_group(
    distributed: bool | None, device: torch.device, timeout: timedelta | None = None
) -> DataParallelGroup:
    """The :class:`DataParallelGroup` for ``fit(..., distributed=...)``.

    Args:
        distributed: ``True`` trains data-parallel (joining the group from ``torchrun``'s
            environment if none is initialized yet), ``False`` trains in this process
            alone, ``None`` decides automatically: data-parallel when a process group is
            initialized or ``torchrun`` started more than one process.
        device: the training device; under NCCL a bare ``"cuda"`` becomes this rank's
            GPU (``LOCAL_RANK``).
        timeout: passed to :func:`torch.distributed.init_process_group`.

    Example:
        >>> data_parallel_group(False, torch.device("cpu"))
        DataParallelGroup(rank=0, world_size=1, device=cpu, distributed=False)
    """
    if distributed is None:
        initialized = dist.is_available() and dist.is_initialized()
        many = launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1
        distributed = initialized or many
    if not distributed:
        return DataParallelGroup(device)
    if not dist.is_available():
        raise ComputationError("distributed: this build of torch has no torch.distributed")
    if not dist.is_initialized():
        if not launched_by_torchrun():
            raise ArgumentError(
                "distributed: no process group is initialized and the environment names "
                f"none (expected {', '.join(_TORCHRUN_VARIABLES)}); launch with torchrun or "
                "call torch.distributed.init_process_group first"
            )
        init_process_group_from_env(device, timeout)
    return DataParallelGroup(device, distributed=True)
