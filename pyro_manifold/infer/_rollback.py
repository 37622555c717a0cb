r"""Undo ``fit``'s set-up when it fails: modules, param store, generators, run directory."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import pyro
import torch
from torch import nn

from pyro_manifold.infer._state import rng_state, set_rng_state
from pyro_manifold.infer.rundir import RunLock

__all__ = ["SetUpRollback"]


class SetUpRollback:
    """Put things back as they were if the block fails before :meth:`done` is called.

    Restored in place: every parameter and buffer of ``modules`` (values, devices and
    dtypes; a parameter stays the same object, so an optimiser or the param store that
    holds it is not cut off) and their train/eval modes; the ``pyro.param`` sites
    (values put back, sites created by the block removed); the global random generators
    (torch's, numpy's and Python's, which the set-up seeds); and, through ``lock``, a run
    directory the block created (removed while it holds nothing but the lock file).
    After :meth:`done` a failure changes nothing here: training keeps its last good step.

    Example:
        >>> lin = nn.Linear(1, 1)
        >>> before = lin.weight.detach().clone()
        >>> try:
        ...     with SetUpRollback([lin]):
        ...         _ = lin.weight.data.fill_(3.0)
        ...         raise KeyError("set-up failed")
        ... except KeyError:
        ...     pass
        >>> torch.equal(lin.weight, before)
        True
    """

    def __init__(self, modules: Sequence[nn.Module], lock: RunLock | None = None) -> None:
        owners = [owner for m in modules for owner in m.modules()]
        self._tensors = [
            (table, name, tensor.detach().clone())
            for owner in owners
            for table in (owner._parameters, owner._buffers)
            for name, tensor in table.items()
            if tensor is not None
        ]
        self._modes = [(owner, owner.training) for owner in owners]
        self._store = pyro.get_param_store().get_state()  # the tensor objects, and values:
        self._values = {k: v.detach().clone() for k, v in self._store["params"].items()}
        self._rng: dict | None = rng_state()
        self._lock = lock
        self.finished = False

    def done(self) -> None:
        """The set-up has finished: from here a failure is training's, not set-up's.

        The copies are dropped here, so they cost memory during the set-up only.
        """
        self.finished = True
        self._tensors, self._modes, self._store, self._values = [], [], {}, {}
        self._rng = None

    def __enter__(self) -> SetUpRollback:
        return self

    def __exit__(
        self, kind: type | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None or self.finished:
            return
        store = pyro.get_param_store()
        with torch.no_grad():
            for name in [k for k in store.keys() if k not in self._values]:
                del store[name]  # a site the set-up declared
            store.set_state(self._store)  # the original objects under their names
            for name, tensor in self._store["params"].items():
                tensor.data = self._values[name]
            for table, name, value in self._tensors:  # last: a module's own tensors win
                if isinstance(table[name], nn.Parameter):
                    table[name].data = value
                else:
                    table[name] = value
        for owner, training in self._modes:
            owner.training = training
        if self._rng is not None:
            set_rng_state(self._rng)
        if self._lock is not None:
            self._lock.abandon()
