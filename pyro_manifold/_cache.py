r"""The package's one cache mechanism: results reused only while what they depend on holds.

``torch.distributions.Transform`` with ``cache_size=1`` keeps the last pair
:math:`(x, y = T(x))` and returns it whenever it is called again with the *same tensor
object*. Within one ELBO evaluation that is what makes an IAF's ``log_prob`` of its own
sample free and lets a guide and a model share one inverse pass. Across evaluations it is
a trap: passing the same data tensor again after an optimiser step returns the result
computed with the old parameters (a silently wrong log-density), a result computed under
``torch.no_grad()`` (Pyro's ``SVI.evaluate_loss``) is served to a step that needs its
graph (the loss never moves), and after ``backward()`` the cached result's graph has
been freed.

One rule closes the trap, for every cached result in the package (the transforms'
one-entry caches, their secondary caches such as a log-determinant kept from the last
call, a conditioned layer's network outputs, ``ChartMixture``'s chart terms): an entry
is served only for the same input tensor and the same :func:`state_token`,

.. math::

    \text{token} = \bigl(\text{grad mode},\ \text{versions of the inputs, outputs,
    parameters and buffers},\ \text{train/eval modes of the modules}\bigr),

and an entry looked up by data (a tensor that does not require grad, or a leaf the user
differentiates by) is dropped as soon as a gradient flows back through it, since the
graph it belongs to is then spent. Nothing computed in ``torch.inference_mode()`` or from
an inference tensor is cached (such tensors keep no version counter), so nothing has to
be cleared by hand. :class:`FreshMemo` is the bookkeeping (for any object: a transform, a
distribution); :class:`FreshCache` applies it to ``Transform``'s own cache.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor, nn

__all__ = ["FreshCache", "FreshMemo", "state_token"]


def state_token(tensors: Iterable[Tensor], modules: Iterable[nn.Module] = ()) -> tuple | None:
    r"""What a result computed now from ``tensors`` and ``modules`` depends on.

    .. math::

        \bigl(\text{grad mode},\ (v_t)_{t},\ (\text{training}_m)_{m}\bigr)

    with :math:`v_t` the version counter of every tensor in ``tensors`` and of every
    parameter and buffer of ``modules`` (an optimiser step or any in-place update bumps
    it), and the train/eval mode of every submodule. A module that computes with modules
    it does not own (so that their weights are not saved twice) names them in a class
    attribute or property ``cache_depends_on``; they count as its submodules here. Two
    equal tokens mean that nothing the result depends on has changed.

    Args:
        tensors: the tensors the result was computed from (inputs, outputs, contexts).
        modules: the modules whose parameters, buffers and modes the result depends on.

    Returns:
        The token, or ``None`` when the result must not be cached: inference mode is on,
        or one of the tensors is an inference tensor (it keeps no version counter).

    Example:
        >>> layer = torch.nn.Linear(2, 2)
        >>> x = torch.zeros(3, 2)
        >>> before = state_token([x], [layer])
        >>> with torch.no_grad():
        ...     _ = layer.weight.add_(1.0)
        >>> state_token([x], [layer]) == before
        False
        >>> with torch.inference_mode():
        ...     state_token([x], [layer]) is None
        True
    """
    if torch.is_inference_mode_enabled():
        return None
    watched = list(tensors)
    modes = []
    stack, seen = list(modules), set()
    while stack:  # the module trees, read directly: this runs at every cached call
        sub = stack.pop()
        if id(sub) in seen:
            continue
        seen.add(id(sub))
        modes.append(sub.training)
        watched.extend(t for t in sub._parameters.values() if t is not None)
        watched.extend(t for t in sub._buffers.values() if t is not None)
        stack.extend(m for m in sub._modules.values() if m is not None)
        if hasattr(type(sub), "cache_depends_on"):  # a class attribute: no Module lookup
            stack.extend(sub.cache_depends_on)
    if any(t.is_inference() for t in watched):
        return None
    return torch.is_grad_enabled(), tuple(t._version for t in watched), tuple(modes)


class FreshMemo:
    """Mixin: cached results kept in attributes ("slots"), each valid only while fresh.

    An owner (a transform, a distribution) stores a result in one of its
    :attr:`_cache_slots` and marks it with :meth:`_remember_for`; before reusing it, it
    asks :meth:`_fresh`. What the results depend on besides their own tensors is
    :meth:`_cache_state`: by default the owner's own parameters, buffers and modes when
    it is an ``nn.Module``, the tensors held as its attributes (a bound context), and the
    network and tensors of any ``functools.partial`` attribute (a conditioned layer's
    ``partial(net, context=h)``, as Pyro's ``ConditionalTransformModule.condition`` builds
    them). A pickled or deep-copied owner
    starts with its slots empty.

    Example:
        >>> class Squares(FreshMemo):
        ...     _cache_slots = ("_last",)
        ...     _last = None
        ...     def __call__(self, x):
        ...         last = self._last
        ...         if last is not None and last[0] is x and self._fresh("sq", last):
        ...             return last[1]
        ...         self._last = (x, x * x)
        ...         self._remember_for("sq", self._last, (x,), self._last[1:])
        ...         return self._last[1]
        >>> f, x = Squares(), torch.ones(2)
        >>> f(x) is f(x)
        True
        >>> _ = x.mul_(3.0)  # refilled in place: recomputed
        >>> f(x)
        tensor([9., 9.])
    """

    _cache_slots: ClassVar[tuple[str, ...]] = ()
    """The attributes that hold cached results; emptied (``None``) in a copy."""

    def __getstate__(self) -> dict:
        # A pickled or deep-copied owner starts empty: the cached tensors carry autograd
        # graphs (which cannot be deep-copied) and the last batch, and what makes an entry
        # fresh (weak references, version counters) is bookkeeping of this process.
        state = super().__getstate__()  # type: ignore[misc]
        state = {k: v for k, v in state.items() if k != "_fresh_tokens"}
        for name in self._cache_slots:
            if name in state:
                state[name] = None
        return state

    def _cache_state(self) -> tuple[list[Tensor], list[nn.Module]]:
        """The tensors and modules that every cached result of this owner depends on."""
        modules = [self] if isinstance(self, nn.Module) else []
        tensors: list[Tensor] = []
        for value in vars(self).values():
            if isinstance(value, Tensor):  # a context or a parameter held as an attribute
                tensors.append(value)
            elif isinstance(value, partial):
                if isinstance(value.func, nn.Module):
                    modules.append(value.func)
                bound = (*value.args, *value.keywords.values())
                tensors.extend(t for t in bound if isinstance(t, Tensor))
        return tensors, modules

    def _fresh(self, slot: str, entry: object) -> bool:
        """Whether ``entry``, remembered in ``slot`` by :meth:`_remember_for`, is usable."""
        remembered, watched = getattr(self, "_fresh_tokens", {}).get(slot, (None, ()))
        token = self._token(entry, watched)
        return token is not None and remembered == token

    def _token(self, entry: object, watched: tuple[weakref.ref, ...]) -> tuple | None:
        """What ``entry`` is valid for, or ``None`` when it cannot be checked."""
        tensors = [ref() for ref in watched]
        if entry is None or any(t is None for t in tensors):
            return None
        state_tensors, modules = self._cache_state()
        token = state_token([*tensors, *state_tensors], modules)
        return None if token is None else (id(entry), token)

    def _remember_for(
        self, slot: str, entry: object, keys: tuple[Tensor, ...], outputs: tuple[Tensor, ...]
    ) -> None:
        """Mark ``entry`` fresh until the state changes, its tensors do, or its graph is spent.

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
        if key is None or any(k.requires_grad and not k.is_leaf for k in keys):
            return
        # The hook holds the owner weakly: the owner holds the outputs (its cache) and the
        # outputs hold the hook, a cycle that passes through the autograd graph, where
        # Python's garbage collector cannot see it. A strong reference would keep every
        # transform built per step (conditioned chart maps) alive with its graph. No hook
        # goes on a key: a user's tensor would gather one at every call.
        owner = weakref.ref(self)
        for t in outputs:
            if isinstance(t, Tensor) and t.requires_grad and not any(t is k for k in keys):
                t.register_hook(partial(_forget, owner, slot, key))


class FreshCache(FreshMemo):
    """Mixin for ``Transform`` subclasses: Pyro's one-entry cache, valid only while fresh.

    Put it first among the bases (``class T(FreshCache, TransformModule)``). The entry
    :math:`(x, y)` is served for the same input tensor while :class:`FreshMemo`'s rule
    holds; override :meth:`~FreshMemo._cache_state` when the transform depends on
    modules it does not own (a conditioned layer's parent).

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

    _cache_slots = ("_cached_x_y",)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        if "_cached_x_y" in state:
            state["_cached_x_y"] = (None, None)
        return state

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

    def _keep_log_det(self, u: Tensor, x: Tensor, ladj: Tensor) -> None:
        """Keep ``ladj``, the log-determinant of the pass ``u -> x``, for that pair of tensors.

        A transform that computes its value and log-determinant together (one pass)
        keeps the latter here and lists ``"_ladj_cache"`` in ``_cache_slots``.
        """
        self._ladj_cache = (u, x, ladj)
        self._remember_for("ladj", self._ladj_cache, (u, x), (ladj,))

    def _kept_log_det(self, u: Tensor, x: Tensor) -> Tensor | None:
        """The log-determinant kept for exactly ``(u, x)`` while it is fresh, else ``None``."""
        cache = getattr(self, "_ladj_cache", None)
        if cache is not None and cache[0] is u and cache[1] is x and self._fresh("ladj", cache):
            return cache[2]
        return None


def _forget(owner: weakref.ref, slot: str, key: tuple, grad: Tensor) -> None:
    """Gradient hook: the entry remembered in ``slot`` under ``key`` is spent."""
    tokens = getattr(owner(), "_fresh_tokens", {})
    if tokens.get(slot, (None,))[0] == key:
        del tokens[slot]
