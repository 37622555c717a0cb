r"""Make a model's parameters visible to Pyro's own ``SVI``.

Our models are ``PyroModule`` s whose networks are ordinary ``nn.Module`` s (transforms,
linear layers), so their parameters are not ``pyro.param`` sites by themselves, and
``pyro.infer.SVI`` (which optimises the parameters it sees in the trace) would train
nothing. Each model's ``model()`` therefore starts with :func:`register_parameters`,
which does what ``pyro.module(name, self)`` does: every trainable parameter becomes a
``pyro.param`` site named ``NAME$$$path.to.param``, with ``NAME`` the module's Pyro name
(its attribute path inside a parent ``PyroModule``) or, at the top level, its class
name. The module is the source of truth: an entry of the param store under the same name
that holds another tensor (left by an earlier instance of the same class) is replaced,
so a new model never trains, or is scored with, an old model's parameters.

:func:`~pyro_manifold.infer.fit` already optimises the modules' parameters directly, so
its fast path switches registration off inside the training steps
(:func:`parameters_registered`): a ``pyro.param`` message per parameter per step is
overhead it does not need (``fast=False`` runs the programs exactly as given).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import pyro
from pyro.params import param_with_module_name
from torch import nn

from pyro_manifold.errors import ArgumentError

__all__ = ["parameters_registered", "register_parameters"]

_REGISTER = contextvars.ContextVar("pyro_manifold_register_parameters", default=True)


def register_parameters(module: nn.Module) -> None:
    """Register the trainable parameters as ``pyro.param`` sites (as ``pyro.module`` does).

    Skipped inside :func:`parameters_registered` ``(False)``; frozen parameters are left
    out.

    Example:
        >>> from pyro_manifold.models import Flow
        >>> flow = Flow(2, "realnvp", num_layers=1)
        >>> with pyro.poutine.trace(param_only=True) as tr:
        ...     _ = flow.model(torch.zeros(3, 2))
        >>> any(name.startswith("Flow$$$layers.0") for name in tr.trace.nodes)
        True
    """
    if not _REGISTER.get():
        return
    name = getattr(module, "_pyro_name", "") or type(module).__name__
    store = pyro.get_param_store()
    for path, parameter in module.named_parameters():
        if not parameter.requires_grad:  # frozen (e.g. VQFlow's atlas in stage 2)
            continue
        if not parameter.is_contiguous():
            raise ArgumentError(  # the param store would hold a contiguous copy, not it
                f"{type(module).__name__}.{path}: expected a contiguous parameter to register "
                f"with Pyro's param store, got strides {parameter.stride()}"
            )
        full = param_with_module_name(name, path)
        stale = store._params.get(full, parameter)
        if stale is not parameter:  # left by an older instance
            _remove_entry(store, full, stale)
        pyro.param(full, parameter)


def _remove_entry(store, name: str, value) -> None:
    """Remove ``name`` from the param store, even when ``value`` is also stored elsewhere.

    ``ParamStoreDict.__delitem__`` assumes a tensor is stored under one name only; a
    tensor registered under two names (once through its parent model and once by a
    nested model called on its own) would make it fail.
    """
    del store._params[name]
    store._constraints.pop(name, None)
    if store._param_to_name.get(value) == name:
        del store._param_to_name[value]


@contextlib.contextmanager
def parameters_registered(enabled: bool) -> Iterator[None]:
    """Switch :func:`register_parameters` on or off inside the ``with`` block.

    Example:
        >>> from pyro_manifold.models import Flow
        >>> flow = Flow(2, "realnvp", num_layers=1)
        >>> with parameters_registered(False), pyro.poutine.trace(param_only=True) as tr:
        ...     _ = flow.model(torch.zeros(3, 2))
        >>> len(tr.trace.nodes)
        0
    """
    token = _REGISTER.set(enabled)
    try:
        yield
    finally:
        _REGISTER.reset(token)
