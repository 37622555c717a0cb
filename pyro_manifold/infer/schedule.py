r"""Per-step keyword arguments for model and guide: annealing schedules, passed in by ``fit``.

A schedule is a function of the step, ``step_kwargs(step) -> dict``, where ``step`` is
the number of optimisation steps taken before the one about to run (0 for the first).
:func:`~pyro_manifold.infer.fit` evaluates it before each step and calls
``model(*batch, **kwargs)`` and ``guide(*batch, **kwargs)`` with its result, as Pyro's
own examples pass an annealing factor into both programs. The programs keep no step
counters: the step lives in ``fit`` alone, is saved in its checkpoints and restored on
resume, and a skipped (non-finite) step consumes its step number as it does for a
learning-rate schedule, so a resumed or a skipping run sees the schedule an
uninterrupted one would. Values are plain Python numbers, so nothing is read back from
the device for them.

A model class offers its default schedule as a method ``step_kwargs(self, step)``
(e.g. :meth:`~pyro_manifold.models.VariationalMixtureOfFlows.step_kwargs`, the
temperature; :meth:`~pyro_manifold.models.FlowVAE.step_kwargs`, the KL warm-up);
``fit(model.model, model.guide, ...)`` uses it unless given ``step_kwargs=``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from numbers import Real
from typing import Any

from torch import nn

from pyro_manifold.errors import ArgumentError, ArgumentTypeError

__all__ = ["StepKwargs", "default_step_kwargs", "evaluate_step_kwargs", "resolve_step_kwargs"]

#: The type of a schedule ``step_kwargs(step) -> {name: value}`` (the keyword arguments of
#: that step).
StepKwargs = Callable[[int], Mapping[str, Any]]


def _no_kwargs(step: int) -> dict[str, Any]:
    return {}


def default_step_kwargs(*programs: Callable) -> StepKwargs | None:
    """The ``step_kwargs`` method of the module that ``programs`` are bound methods of.

    Returns ``None`` when no such module defines one.

    Example:
        >>> from pyro_manifold.models import FlowVAE
        >>> vae = FlowVAE(2, data_dim=4, hidden_dims=[8], kl_warmup_steps=10)
        >>> default_step_kwargs(vae.model, vae.guide)(4)
        {'kl_weight': 0.5}
    """
    owners: list[nn.Module] = []
    for program in programs:
        owner = getattr(program, "__self__", None)
        if callable(getattr(owner, "step_kwargs", None)) and all(owner is not o for o in owners):
            owners.append(owner)
    if len(owners) > 1:
        names = ", ".join(type(o).__name__ for o in owners)
        raise ArgumentError(
            f"step_kwargs: model and guide belong to different modules that each define a "
            f"schedule ({names}); pass step_kwargs= to say which to use"
        )
    return owners[0].step_kwargs if owners else None


def resolve_step_kwargs(
    step_kwargs: StepKwargs | None, model: Callable, guide: Callable
) -> StepKwargs:
    """``step_kwargs`` itself, else the programs' default schedule, else no arguments.

    Example:
        >>> resolve_step_kwargs(None, lambda x: None, lambda x: None)(5)
        {}
    """
    if step_kwargs is None:
        return default_step_kwargs(model, guide) or _no_kwargs
    if not callable(step_kwargs):
        raise ArgumentTypeError(
            f"step_kwargs: expected a callable step -> dict of keyword arguments, or None, "
            f"got {type(step_kwargs).__name__} {step_kwargs!r}"
        )
    return step_kwargs


def evaluate_step_kwargs(step_kwargs: StepKwargs, step: int) -> dict[str, Any]:
    """Call ``step_kwargs(step)`` and check its result: a dict of names to values.

    Keys must be strings (keyword names); numbers must be finite (a tensor is passed as
    it is, unread). The error names ``step_kwargs``, the step, what was expected and
    what was returned.

    Example:
        >>> evaluate_step_kwargs(lambda step: {"beta": min(1.0, step / 10)}, 5)
        {'beta': 0.5}
        >>> evaluate_step_kwargs(lambda step: {"beta": float("nan")}, 5)
        Traceback (most recent call last):
        ...
        pyro_manifold.errors.ArgumentError: step_kwargs: expected finite numbers, got beta=nan ...
    """
    try:
        value = step_kwargs(step)
    except Exception as e:
        e.add_note(f"pyro_manifold.fit: raised by step_kwargs({step})")
        raise
    if not isinstance(value, Mapping):
        raise ArgumentTypeError(
            f"step_kwargs: expected a dict of keyword arguments (name -> value) at step "
            f"{step}, got {type(value).__name__} {value!r}"
        )
    for key, item in value.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ArgumentTypeError(
                f"step_kwargs: expected keyword names (identifiers) as keys at step {step}, "
                f"got {key!r}"
            )
        number = isinstance(item, Real) and not isinstance(item, bool)
        if number and not math.isfinite(item):
            raise ArgumentError(
                f"step_kwargs: expected finite numbers, got {key}={item} at step {step}"
            )
    return dict(value)
