r"""A transform cache that is safe across training steps.

``torch.distributions.Transform`` with ``cache_size=1`` keeps the last pair
:math:`(x, y = T(x))` and returns it whenever it is called again with the *same tensor
object*. Within one ELBO evaluation that is what makes an IAF's ``log_prob`` of its own
sample free and lets a guide and a model share one inverse pass. Across evaluations it is
a trap: passing the same data tensor again after an optimiser step returns the result
computed with the old parameters (a silently wrong log-density), and after
``backward()`` the cached result's graph has been freed.

:class:`FreshCache` keeps the cache and removes the trap. An entry records the version
counters of the transform's parameters (bumped by every in-place update, such as an
optimiser step), of its own tensors (an input refilled in place) and the grad mode it
was computed in, and is used only while they are unchanged (so a value computed under
``torch.no_grad()``, as Pyro's ``SVI.evaluate_loss`` does, is never served to a training
step); an entry looked up by data (a tensor that does not require
grad, or a leaf that the user differentiates by) is also dropped as soon as a gradient
flows back through it, since the graph it belongs to is then spent. Secondary
caches (a log-determinant kept from the last call) use :meth:`FreshCache._fresh` and
:meth:`FreshCache._remember_for` in the same way.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import Transform

__all__ = ["FreshCache", "forget_cached"]


class FreshCache:
    """Mixin for ``Transform`` subclasses: Pyro's one-entry cache, valid only while fresh.

    Put it first among the bases (``class T(FreshCache, TransformModule)``). Parameters
    are found with ``self.parameters()`` when the transform is an ``nn.Module``;
    override :meth:`_cache_parameters` otherwise.

    Example:
        >>> from pyro_manifold.transforms import affine_coupling
        >>> t = affine_coupling(2, [8])
        >>> x = torch.randn(3, 2)
        >>> before = t.inv(x)
        >>> with torch.no_grad():
        ...     for p in t.parameters():
        ...         _ = p.add_(1.0)
        >>> torch.equal(t.inv(x), before)  # recomputed with the new parameters
        False
    """

    _cached_x_y: tuple
    _cache_size: int

    _cache_slots: ClassVar[tuple[str, ...]] = ("_cached_x_y",)
    """The attributes that hold cached results (a subclass adds its secondary caches)."""

    def __getstate__(self) -> dict:
        # A pickled or deep-copied transform starts with an empty cache: the cached
        # tensors carry autograd graphs (which cannot be deep-copied) and the last batch,
        # and what makes an entry fresh (weak references, version counters) is
        # bookkeeping of this process.
        state = super().__getstate__()  # type: ignore[misc]
        state = {k: v for k, v in state.items() if k != "_fresh_tokens"}
        for name in self._cache_slots:
            if name in state:
                state[name] = (None, None) if name == "_cached_x_y" else None
        return state

    def _cache_parameters(self) -> Iterable[Tensor]:
        parameters = getattr(self, "parameters", None)
        return parameters() if callable(parameters) else ()

    def _versions(self) -> tuple[int, ...]:
        return tuple(p._version for p in self._cache_parameters())

    def _fresh(self, slot: str, entry: object) -> bool:
        """Whether ``entry``, remembered in ``slot`` by :meth:`_remember_for`, is usable."""
        remembered, watched = getattr(self, "_fresh_tokens", {}).get(slot, (None, ()))
        token = self._token(entry, watched)
        return token is not None and remembered == token

    def _token(self, entry: object, watched: tuple[weakref.ref, ...]) -> tuple | None:
        """What ``entry`` is valid for, or ``None`` when it cannot be checked."""
        tensors = [ref() for ref in watched]
        # inference tensors (torch.inference_mode) keep no version counter
        if entry is None or any(t is None or t.is_inference() for t in tensors):
            return None
        # the grad mode too: a value computed without a graph (evaluate_loss, no_grad)
        # is never served to a step that differentiates through it
        versions = tuple(t._version for t in tensors)
        return (id(entry), torch.is_grad_enabled(), self._versions(), versions)

    def _remember_for(
        self, slot: str, entry: object, keys: tuple[Tensor, ...], outputs: tuple[Tensor, ...]
    ) -> None:
        """Mark ``entry`` fresh until the parameters change, its tensors do, or its graph is spent.

        ``keys`` are the tensors the entry is looked up by; an in-place change of a key or
        an output (a data buffer refilled with ``copy_``, say) makes the entry stale, as an
        optimiser step on a parameter does. When no key is the result of a computation
        that requires grad (the keys are data, or a leaf the user differentiates by), the
        entry is forgotten as soon as a gradient flows back through one of the
        ``outputs`` that are not keys. Keys computed with grad are draws of the current
        evaluation (an IAF's sample, say) and may be differentiated several times within
        it (PCP-Map's inner ``autograd.grad``), so their entries are left alone.
        """
        keys_and_outputs = [t for t in (*keys, *outputs) if isinstance(t, Tensor)]
        watched = tuple(weakref.ref(t) for t in {id(t): t for t in keys_and_outputs}.values())
        key = self._token(entry, watched)
        self.__dict__.setdefault("_fresh_tokens", {})[slot] = (key, watched)
        if any(k.requires_grad and not k.is_leaf for k in keys):
            return
        # The hook holds the transform weakly: the transform holds the outputs (its cache)
        # and the outputs hold the hook, a cycle that passes through the autograd graph,
        # where Python's garbage collector cannot see it. A strong reference would keep
        # every transform built per step (conditioned chart maps) alive with its graph.
        # No hook goes on a key: a user's tensor would gather one at every call.
        owner = weakref.ref(self)
        for t in outputs:
            if isinstance(t, Tensor) and t.requires_grad and not any(t is k for k in keys):
                t.register_hook(partial(_forget, owner, slot, key))

    def __call__(self, x: Tensor) -> Tensor:
        if self._cache_size == 0:
            return self._call(x)  # type: ignore[attr-defined]
        x_old, y_old = self._cached_x_y
        if x is x_old and self._fresh("x_y", self._cached_x_y):
            return y_old
        y = self._call(x)  # type: ignore[attr-defined]
        self._store(x, y, key=x)
        return y

    def _inv_call(self, y: Tensor) -> Tensor:
        if self._cache_size == 0:
            return self._inverse(y)  # type: ignore[attr-defined]
        x_old, y_old = self._cached_x_y
        if y is y_old and self._fresh("x_y", self._cached_x_y):
            return x_old
        x = self._inverse(y)  # type: ignore[attr-defined]
        self._store(x, y, key=y)
        return x

    def _store(self, x: Tensor, y: Tensor, key: Tensor) -> None:
        self._cached_x_y = (x, y)
        self._remember_for("x_y", self._cached_x_y, (key,), (x, y))


def _forget(owner: weakref.ref, slot: str, key: tuple, grad: Tensor) -> None:
    """Gradient hook: the entry remembered in ``slot`` under ``key`` is spent."""
    transform = owner()
    tokens = getattr(transform, "_fresh_tokens", {})
    if tokens.get(slot, (None,))[0] == key:
        del tokens[slot]


def forget_cached(transforms: Iterable[Transform]) -> None:
    """Empty the one-entry caches of ``transforms`` (e.g. Pyro's own layers in a flow).

    Models call it where a new evaluation starts, so that Pyro's transforms (which key
    their cache on tensor identity alone) never return a result from an earlier step.

    Example:
        >>> from pyro.distributions.transforms import spline_coupling
        >>> t = spline_coupling(2)
        >>> x = torch.randn(3, 2)
        >>> _ = t.inv(x)
        >>> forget_cached([t]); t._cached_x_y
        (None, None)
    """
    for t in transforms:
        if getattr(t, "_cache_size", 0):
            t._cached_x_y = (None, None)
