r"""The non-finite guard of :func:`~pyro_manifold.infer.fit`: find, skip or report a bad step.

A step is bad when its loss or its global gradient norm is not finite. The guard counts
bad steps, keeps the skipped ones, holds the flags of steps not yet read back (with
``sync_every > 1`` they stay on the device until :meth:`NonFiniteGuard.settle`) and
builds the :class:`NonFiniteLossError` that names the step, the sample sites whose
log-probability is not finite and the parameter with the largest gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor, nn
from torch.distributions.utils import lazy_property

from pyro_manifold.errors import ComputationError

__all__ = [
    "NonFiniteGuard",
    "NonFiniteLossError",
    "nonfinite_parameters",
    "nonfinite_sites",
    "nonfinite_values",
    "total_norm_of",
]


class NonFiniteLossError(ComputationError):
    """Training produced a non-finite loss or gradient; names the step, sites and parameter.

    Attributes:
        step: the 1-based optimisation step whose loss or gradient was not finite.
        sites: ``"model:NAME"`` / ``"guide:NAME"`` for every sample site whose
            log-probability (or value) was not finite when the step was re-run, with the
            distribution's parameters that were not finite or broke their constraint
            where there are any (``"model:x (loc not finite)"``).
        loss: the loss of that step (per data point).
        parameter: the parameter with the largest gradient norm (a non-finite norm
            counts as the largest), e.g. ``"Flow.layers.0.weight"`` or ``"param:loc"``.
        grad_norm: that parameter's gradient norm.
        nonfinite_parameters: every parameter whose gradient was not finite.
        nonfinite_values: every parameter whose value was not finite when it was about to
            be validated, checkpointed or returned (an update that overflowed although its loss and
            gradient were finite, e.g. with a huge ``lr``); empty otherwise.

    Example:
        >>> err = NonFiniteLossError(7, ["model:obs"], float("nan"), parameter="param:loc")
        >>> print(str(err).split("; ")[0], "|", err.parameter)
        non-finite loss nan at step 7 | param:loc
    """

    def __init__(
        self,
        step: int,
        sites: list[str],
        loss: float,
        *,
        parameter: str | None = None,
        grad_norm: float | None = None,
        nonfinite_parameters: Sequence[str] = (),
        nonfinite_values: Sequence[str] = (),
        note: str = "",
    ) -> None:
        self.step, self.sites, self.loss = step, sites, loss
        self.parameter, self.grad_norm = parameter, grad_norm
        self.nonfinite_parameters = list(nonfinite_parameters)
        self.nonfinite_values = list(nonfinite_values)
        if self.nonfinite_values:
            shown = ", ".join(self.nonfinite_values[:5])
            more = len(self.nonfinite_values) - 5
            super().__init__(
                f"non-finite values in: {shown}"
                + (f" (+{more} more)" if more > 0 else "")
                + f", found at step {step}: an update overflowed although its loss and "
                "gradient were finite (lower lr); the values are checked before each "
                "validation, checkpoint and best.pt and at the end, so it was one of the "
                "updates since the previous of these (or since the start). They were not "
                "checkpointed; the last good checkpoint (if any) is unchanged."
            )
            return
        what = f"non-finite loss {loss}" if not math.isfinite(loss) else "non-finite gradient"
        where = ", ".join(sites) if sites else "no single site (check the parameters)"
        msg = f"{what} at step {step}; non-finite log-probability at: {where}"
        if self.nonfinite_parameters:
            shown = ", ".join(self.nonfinite_parameters[:5])
            more = len(self.nonfinite_parameters) - 5
            msg += f"; non-finite gradient in: {shown}" + (f" (+{more} more)" if more > 0 else "")
        if parameter is not None:
            norm = "" if grad_norm is None else f" (norm {grad_norm:.4g})"
            msg += f"; largest gradient: {parameter}{norm}"
        super().__init__(
            f"{msg}. {note}Training stopped; the last good checkpoint (if any) is unchanged."
        )


def nonfinite_parameters(fn: object) -> list[str]:
    """The parameters of a site's distribution that are not finite or break their constraint.

    Looks through wrappers (``Independent``, ``Masked``, ``Expanded``, transformed and
    mixture distributions) at every ``arg_constraints`` parameter the distribution holds
    (a lazily derived one, such as ``probs`` of a ``Bernoulli`` given ``logits``, only
    where it was computed). Names are prefixed by the path from the outer distribution.

    Example:
        >>> import pyro.distributions as dist
        >>> with pyro.validation_enabled(False):
        ...     d = dist.Normal(torch.tensor([0.0, float("nan")]), -1.0).to_event(1)
        >>> nonfinite_parameters(d)
        ['base_dist.loc not finite', 'base_dist.scale outside GreaterThan(lower_bound=0.0)']
    """
    found: list[str] = []
    seen: set[int] = set()

    def visit(d: object, path: str) -> None:
        if not isinstance(d, torch.distributions.Distribution) or id(d) in seen:
            return
        seen.add(id(d))
        for name, constraint in getattr(d, "arg_constraints", {}).items():
            if name in vars(d):
                value = vars(d)[name]
            elif isinstance(getattr(type(d), name, None), lazy_property):
                continue  # derived lazily and never asked for
            else:
                try:
                    value = getattr(d, name)
                except Exception:  # a parameter that cannot even be computed
                    continue
            if not isinstance(value, Tensor) or not value.is_floating_point():
                continue
            label = path + name
            if not bool(torch.isfinite(value).all()):
                found.append(f"{label} not finite")
                continue
            try:
                inside = bool(torch.as_tensor(constraint.check(value)).all())
            except Exception:  # a constraint that cannot check this value (shapes)
                inside = True
            if not inside:
                found.append(f"{label} outside {constraint}")
        for inner in ("base_dist", "mixture_distribution", "component_distribution"):
            visit(getattr(d, inner, None), f"{path}{inner}.")

    with torch.no_grad():
        visit(fn, "")
    return found


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def nonfinite_sites(
    model: Callable, guide: Callable, args: tuple, kwargs: dict[str, Any] | None = None
) -> list[str]:
    """Re-run guide and model and list the sites whose log-probability is not finite.

    The re-run draws fresh randomness: a non-finite value caused by the parameters shows
    up again, one caused by a single unlucky draw may not. It runs with Pyro's
    validation off (as the fast training step does), so that a distribution built from a
    non-finite parameter is traced rather than refused, and the site names the
    parameter: ``"model:x (loc not finite)"``, ``"guide:z (scale outside
    GreaterThan(lower_bound=0.0))"``; otherwise ``"model:x"`` (its log-probability) or
    ``"model:x (value)"`` (its value).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x):
        ...     pyro.sample("x", dist.Uniform(0.0, 1.0), obs=x)
        >>> nonfinite_sites(model, lambda x: None, (torch.tensor(2.0),))
        ['model:x']
        >>> def model(x):
        ...     pyro.sample("x", dist.Normal(0.0, torch.tensor(0.0)), obs=x)
        >>> nonfinite_sites(model, lambda x: None, (torch.tensor(1.0),))
        ['model:x (scale outside GreaterThan(lower_bound=0.0))']
        >>> def model(x):
        ...     pyro.sample("x", dist.Normal(torch.tensor(float("nan")), 1.0), obs=x)
        >>> nonfinite_sites(model, lambda x: None, (torch.tensor(1.0),))
        ['model:x (loc not finite)']
    """
    kwargs = kwargs or {}
    bad: list[str] = []
    try:
        with torch.no_grad(), pyro.validation_enabled(False):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            replayed = poutine.replay(model, trace=guide_trace)
            model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    except Exception as e:  # the re-run itself may fail on non-finite parameters
        return [f"(re-running the program failed: {_one_line(e)})"]
    for prefix, trace in (("guide", guide_trace), ("model", model_trace)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            value = site["value"]
            parameters = nonfinite_parameters(site["fn"])
            if parameters:
                bad.append(f"{prefix}:{name} ({', '.join(parameters)})")
                continue
            if (
                isinstance(value, Tensor)
                and value.is_floating_point()
                and not torch.isfinite(value).all()
            ):
                bad.append(f"{prefix}:{name} (value)")
                continue
            try:
                with torch.no_grad(), pyro.validation_enabled(False):
                    lp = site["fn"].log_prob(value)
            except Exception as e:
                bad.append(f"{prefix}:{name} ({type(e).__name__})")
                continue
            if not torch.isfinite(torch.as_tensor(lp)).all():
                bad.append(f"{prefix}:{name}")
    return bad


def parameter_names(modules: Sequence[nn.Module], param_sites: dict[str, Tensor]) -> dict[int, str]:
    """``id(tensor) -> readable name`` for every trainable tensor (for error messages).

    Example:
        >>> parameter_names([torch.nn.Linear(1, 1)], {"loc": torch.zeros(1)}).values()
        dict_values(['param:loc', 'Linear.weight', 'Linear.bias'])
    """
    names = {id(value): f"param:{name}" for name, value in param_sites.items()}
    for m in modules:
        for name, p in m.named_parameters():
            names.setdefault(id(p), f"{type(m).__name__}.{name}")
    return names


def nonfinite_values(params: Sequence[Tensor], names: dict[int, str]) -> list[str]:
    """The names of the parameters holding a value that is not finite (one read-back).

    Example:
        >>> p, q = torch.ones(2), torch.tensor([1.0, float("inf")])
        >>> nonfinite_values([p, q], {id(p): "p", id(q): "q"})
        ['q']
    """
    if not params:
        return []
    with torch.no_grad():
        flags = torch.stack([torch.isfinite(p).all() for p in params]).tolist()
    pairs = enumerate(zip(params, flags, strict=True))
    return [names.get(id(p), f"parameter {i}") for i, (p, finite) in pairs if not finite]


def gradient_report(params: list[Tensor], names: dict) -> tuple[str | None, float, list[str]]:
    """The largest gradient (non-finite first): its parameter, its norm, and all non-finite ones.

    Example:
        >>> p = torch.zeros(2, requires_grad=True); p.grad = torch.tensor([3.0, 4.0])
        >>> gradient_report([p], {id(p): "p"})
        ('p', 5.0, [])
    """
    norms = [
        (names.get(id(p), f"parameter {i}"), float(p.grad.norm()))
        for i, p in enumerate(params)
        if p.grad is not None
    ]
    bad = [name for name, norm in norms if not math.isfinite(norm)]
    if not norms:
        return None, math.nan, bad
    name, norm = max(norms, key=lambda t: (not math.isfinite(t[1]), t[1]))
    return name, norm, bad


def total_norm_of(params: Sequence[Tensor]) -> Callable[[list[Tensor]], Tensor]:
    """``torch.nn.utils.get_total_norm`` (2-norm) for the gradients of ``params``.

    When all parameters share one dtype and one CPU or CUDA device (where torch has
    multi-tensor kernels), the returned function computes the same value as ``get_total_norm`` (one
    ``torch._foreach_norm`` over the gradients, then the 2-norm of those norms) without
    its per-call grouping by device and dtype and its per-tensor ``.to(device)``, which
    cost more than the norms themselves for a model of small tensors; otherwise it is
    ``get_total_norm``.

    Example:
        >>> params = [torch.ones(3, requires_grad=True), torch.ones(4, requires_grad=True)]
        >>> grads = [torch.full((3,), 2.0), torch.full((4,), -1.0)]
        >>> total_norm_of(params)(grads)
        tensor(4.)
    """
    kinds = {(p.device, p.dtype) for p in params}
    if len(kinds) != 1 or next(iter(kinds))[0].type not in ("cpu", "cuda"):
        return torch.nn.utils.get_total_norm

    def total_norm(grads: list[Tensor]) -> Tensor:
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    return total_norm


@dataclass
class PendingStep:
    """A step whose finiteness flag is still on the device."""

    step: int
    flag: Tensor
    rows: Tensor
    kwargs: dict[str, Any]


class NonFiniteGuard:
    r"""Counts bad steps: skips them (``on_nonfinite="skip"``) or says when to stop.

    Args:
        on_nonfinite: ``"raise"`` (stop at the first bad step) or ``"skip"``.
        max_consecutive_skips: with ``"skip"``, stop after more bad steps than this in a row.
        skipped: the steps skipped so far (a resumed run's list).

    Example:
        >>> guard = NonFiniteGuard("skip", max_consecutive_skips=1)
        >>> [guard.tolerates(step, bad) for step, bad in [(1, True), (2, False), (3, True)]]
        [True, True, True]
        >>> guard.tolerates(4, True), guard.skipped
        (False, [1, 3])
    """

    def __init__(
        self, on_nonfinite: str, max_consecutive_skips: int, skipped: Sequence[int] = ()
    ) -> None:
        self.on_nonfinite, self.max_consecutive_skips = on_nonfinite, max_consecutive_skips
        self.skipped = list(skipped)
        self.consecutive = 0
        self.pending: list[PendingStep] = []

    def state_dict(self) -> dict[str, Any]:
        """The skipped steps (for a checkpoint)."""
        return {"skipped_steps": list(self.skipped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a checkpoint's list of skipped steps and its run of bad steps.

        The run in progress is the skipped steps that end at the checkpoint's step, so a
        resumed run stops where the uninterrupted one would.
        """
        self.skipped = [int(k) for k in state.get("skipped_steps", [])]
        done, bad = int(state.get("step", 0)), set(self.skipped)
        self.consecutive = 0
        while done - self.consecutive in bad:
            self.consecutive += 1

    def tolerates(self, step: int, bad: bool) -> bool:
        """Count ``step``'s flag; ``False`` when training must stop at it."""
        if not bad:
            self.consecutive = 0
            return True
        self.consecutive += 1
        if self.on_nonfinite == "raise" or self.consecutive > self.max_consecutive_skips:
            return False
        self.skipped.append(step)
        return True

    def defer(self, step: int, flag: Tensor, rows: Tensor, kwargs: dict[str, Any]) -> None:
        """Keep a step's flag on the device until the next :meth:`settle`."""
        self.pending.append(PendingStep(step, flag, rows, kwargs))

    def settle(self) -> PendingStep | None:
        """Read the pending flags (one sync) in step order; the first intolerable step, if any."""
        if not self.pending:
            return None
        flags = torch.stack([p.flag for p in self.pending]).tolist()
        entries, self.pending = self.pending, []
        for entry, flag in zip(entries, flags, strict=True):
            if not self.tolerates(entry.step, flag):
                return entry
        return None

    def error(self, step: int, sites: list[str], loss: float, report: tuple) -> NonFiniteLossError:
        """The error for ``step``, with its sites and the :func:`gradient_report`."""
        parameter, norm, bad = report
        note = (
            ""
            if self.on_nonfinite == "raise"
            else f"More than max_consecutive_skips={self.max_consecutive_skips} steps in a row "
            "were skipped. "
        )
        return NonFiniteLossError(
            step, sites, loss, parameter=parameter, grad_norm=norm,
            nonfinite_parameters=bad, note=note,
        )  # fmt: skip
