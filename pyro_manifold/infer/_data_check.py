r"""The whole-data check of :func:`~pyro_manifold.infer.fit`: every row once, before training.

Training steps on the fast path run with Pyro's validation off, so that no step reads a
value back to the host; the first evaluation checks only its own batch. So that no row
outside what the programs accept trains silently (a non-binary row for a Bernoulli
likelihood, a NaN that a batch transform made), ``fit`` checks the whole training and
validation data once, up front, in chunks, before anything trains or is written:

* every floating tensor of what the programs see is finite (for every model);
* each module that ``model`` or ``guide`` is a bound method of and that has a
  ``check_data`` method checks its values: the **data-check protocol**
  ``module.check_data(*batch, first_row=0)`` raises an
  :class:`~pyro_manifold.errors.ArgumentError` naming the row (``first_row`` plus its
  index in ``batch``) when a row of ``batch`` (the tensors the programs are called
  with) is outside what the programs accept, with Pyro's validation on; and returns
  ``None`` otherwise. Every model of :mod:`pyro_manifold.models` has one; a user's module
  may add one. ``fit`` knows no model: it only calls the method.

What the programs see is ``transform_batch(*rows)`` when a batch transform is given, so
the check runs the transform over the whole data once, chunk by chunk (one more pass of
the transform, cheap beside the epoch of training that runs it again). A random
transform (dequantisation, dynamic binarisation) is checked on one draw of its
randomness from the global generators (torch's CPU and CUDA ones and Python's), whose
states are restored afterwards, so that training draws exactly what a run without the
check draws and a resumed run stays exact; a transform that draws from a generator of
its own advances it. Transforms whose support does not depend on the draw (the usual
ones: a dequantised pixel is always in :math:`(0, 1)`, a binarised one is 0 or 1) are
thereby checked completely; the draws of a transform whose support does (a rare NaN)
are checked only in that one pass, as a check of every step's draw would need a host
read per step.

The check follows Pyro's validation, as every value check of the package does: with
:func:`pyro.enable_validation` ``(False)`` it is skipped (the metadata checks of ``fit``
and the finiteness of the raw data still run). It costs one pass of the transform and
of the modules' checks over the data, with two host reads per chunk, a small part of
one epoch of training; the steps themselves are unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from pyro.distributions.util import is_validation_enabled
from torch import Tensor, nn

from pyro_manifold._validation import check_finite_rows
from pyro_manifold.errors import ArgumentError, ArgumentTypeError
from pyro_manifold.infer._batches import BatchTransform
from pyro_manifold.infer._state import rng_state, set_rng_state

__all__ = ["CHUNK_ELEMENTS", "check_data_sets", "check_whole_data", "data_checkers"]

CHUNK_ELEMENTS = 1 << 22
"""Entries per chunk of the whole-data check (at least one batch of rows)."""


def data_checkers(modules: Sequence[nn.Module]) -> list[nn.Module]:
    """The modules among ``modules`` that follow the data-check protocol.

    Example:
        >>> from pyro_manifold.models import Flow
        >>> [type(m).__name__ for m in data_checkers([Flow(2), torch.nn.Linear(1, 1)])]
        ['Flow']
    """
    return [m for m in modules if callable(getattr(m, "check_data", None))]


def _chunk_rows(data: Sequence[Tensor], batch_size: int) -> int:
    per_row = max(sum(t[:1].numel() for t in data), 1)
    return max(batch_size, CHUNK_ELEMENTS // per_row, 1)


def _check_signatures(name: str, checkers: Sequence[nn.Module], num_tensors: int) -> None:
    for m in checkers:
        try:
            inspect.signature(m.check_data).bind(*range(num_tensors), first_row=0)
        except TypeError as e:
            raise ArgumentError(
                f"{name}: expected the tensors that {type(m).__name__}'s programs take, got "
                f"{num_tensors} per row ({type(m).__name__}.check_data: {e})"
            ) from None


def check_whole_data(
    name: str,
    data: Sequence[Tensor],
    modules: Sequence[nn.Module],
    batch_size: int,
    transform: BatchTransform | None = None,
) -> int:
    """Check every row of ``data`` once, as the programs will see it; the chunks checked.

    Raises the first module's error (or the finiteness error) with ``name:`` before its
    message, so that ``data`` and ``validation_data`` are told apart. Leaves every RNG as
    it was. Returns the number of chunks checked (0 with validation off).

    Example:
        >>> from pyro_manifold.models import FlowVAE
        >>> vae = FlowVAE(2, data_dim=3, hidden_dims=[4])
        >>> x = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.5, 0.0]])
        >>> check_whole_data("data", (x,), [vae], batch_size=1)
        Traceback (most recent call last):
        ...
        pyro_manifold.errors.ArgumentError: data: x: the Bernoulli likelihood expects ...
    """
    if not is_validation_enabled():
        return 0
    checkers = data_checkers(modules)
    n = data[0].shape[0]
    chunk = _chunk_rows(data, batch_size)
    state = rng_state() if transform is not None else None
    chunks = 0
    try:
        for start in range(0, n, chunk):
            rows = tuple(t[start : start + chunk] for t in data)
            batch = rows if transform is None else tuple(transform(*rows))
            if start == 0:
                _check_signatures(name, checkers, len(batch))
            for i, t in enumerate(batch):
                if not isinstance(t, Tensor):
                    raise ArgumentTypeError(
                        f"transform_batch: expected a sequence of tensors, got "
                        f"{type(t).__name__} at position {i}"
                    )
                label = name if len(batch) == 1 else f"{name}[{i}]"
                seen = f"{label} (as transform_batch returns it)" if transform else label
                check_finite_rows(seen, t, start)
            for m in checkers:
                try:
                    m.check_data(*batch, first_row=start)
                except (ArgumentError, ArgumentTypeError) as e:
                    raise type(e)(f"{name}: {e}") from e
            chunks += 1
    finally:
        if state is not None:
            set_rng_state(state)
    return chunks


def check_data_sets(
    data: Sequence[Tensor],
    validation_data: Sequence[Tensor] | None,
    modules: Sequence[nn.Module],
    batch_size: int,
    transform: BatchTransform | None = None,
) -> int:
    """:func:`check_whole_data` for ``data`` and ``validation_data``; the chunks checked.

    Example:
        >>> from pyro_manifold.models import Flow
        >>> check_data_sets((torch.zeros(5, 2),), (torch.zeros(2, 2),), [Flow(2)], 4)
        2
    """
    chunks = check_whole_data("data", data, modules, batch_size, transform)
    if validation_data is not None:
        chunks += check_whole_data("validation_data", validation_data, modules, batch_size,
                                   transform)  # fmt: skip
    return chunks
