r"""``fit``: stochastic variational inference over mini-batches, with safe checkpoints."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import is_validation_enabled
from pyro.infer import ELBO, Trace_ELBO
from torch import Tensor, nn
from torch.autograd.graph import increment_version
from tqdm.auto import tqdm

from pyro_manifold._parallel import data_parallel_training, step_edits
from pyro_manifold._registration import parameters_registered
from pyro_manifold._validation import (
    check_choice,
    check_positive,
    check_positive_int,
    check_tensor,
)
from pyro_manifold.infer._buffers import BufferSnapshot
from pyro_manifold.infer.distributed import DataParallelGroup, data_parallel_group
from pyro_manifold.infer.elbo import fast_elbo
from pyro_manifold.infer.graphs import CapturedStep, capture_step, extra_states, same_state

__all__ = ["FitResult", "NonFiniteLossError", "fit", "resolve_device"]

OPTIMIZERS = ("adam", "adamw", "sgd")
GRAPH_WARMUP = 3  # eager steps before fit(cuda_graph=True) captures the step


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss or gradient; names the step, sites and parameter.

    Attributes:
        step: the 1-based optimisation step whose loss or gradient was not finite.
        sites: ``"model:NAME"`` / ``"guide:NAME"`` for every sample site whose
            log-probability (or value) was not finite when the step was re-run.
        loss: the loss of that step (per data point).
        parameter: the parameter with the largest gradient norm (a non-finite norm
            counts as the largest), e.g. ``"Flow.layers.0.weight"`` or ``"param:loc"``.
        grad_norm: that parameter's gradient norm.
        nonfinite_parameters: every parameter whose gradient was not finite.

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
        note: str = "",
    ) -> None:
        self.step, self.sites, self.loss = step, sites, loss
        self.parameter, self.grad_norm = parameter, grad_norm
        self.nonfinite_parameters = list(nonfinite_parameters)
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


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: lists keyed by ``"step"``, ``"loss"`` (mean loss per data point over the
            last ``log_every`` steps), ``"lr"``, ``"time"``, ``"val_step"`` and ``"val_loss"``.
        step: the number of optimisation steps taken in total (including resumed ones).
        best_validation_loss: the lowest validation loss seen, or ``None``.
        stopped_early: whether early stopping ended the run.
        checkpoint: the last checkpoint written, or ``None``.
        skipped_steps: the steps skipped because their loss or gradient was not finite
            (with ``on_nonfinite="skip"``).
        graphed_steps: the steps run by replaying a captured CUDA graph
            (``cuda_graph=True``); 0 when every step ran eagerly.

    Example:
        >>> FitResult(step=3).step
        3
    """

    history: dict[str, list[float]] = field(default_factory=dict)
    step: int = 0
    best_validation_loss: float | None = None
    stopped_early: bool = False
    checkpoint: Path | None = None
    skipped_steps: list[int] = field(default_factory=list)
    graphed_steps: int = 0


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device``, or CUDA when available and the CPU otherwise.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _as_tuple(name: str, data: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    tensors = (data,) if isinstance(data, Tensor) else tuple(data)
    if not tensors:
        raise ValueError(f"{name}: expected a tensor or a non-empty tuple of tensors, got {data!r}")
    for i, t in enumerate(tensors):
        label = name if len(tensors) == 1 else f"{name}[{i}]"
        check_tensor(label, t, min_dim=1, floating=False)
        if t.shape[0] != tensors[0].shape[0]:
            raise ValueError(
                f"{label}: expected {tensors[0].shape[0]} rows like {name}[0], got shape "
                f"{tuple(t.shape)}"
            )
    return tensors


def _owner_modules(*fns: Callable, extra: Sequence[nn.Module] = ()) -> list[nn.Module]:
    found: list[nn.Module] = []
    for obj in [*(getattr(f, "__self__", f) for f in fns), *extra]:
        if isinstance(obj, nn.Module) and all(obj is not m for m in found):
            found.append(obj)
    return found


def _parameters(modules: Sequence[nn.Module], param_sites: list[Tensor]) -> list[Tensor]:
    params: list[Tensor] = []
    seen: set[int] = set()
    for p in [*(p for m in modules for p in m.parameters()), *param_sites]:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    return params


def _make_optimizer(
    optimizer, params, lr: float, weight_decay: float, fused: bool = False,
    capturable: bool = False,
) -> torch.optim.Optimizer:  # fmt: skip
    if callable(optimizer):
        return optimizer(params)
    name = check_choice("optimizer", optimizer, OPTIMIZERS)
    # one fused kernel for all tensors on CUDA (and wherever a step must be skippable on
    # the device); torch's multi-tensor (foreach) path elsewhere; capturable: its step
    # count lives on the device, so that a CUDA graph can replay the update
    fused = {"fused": True} if fused or all(p.is_cuda for p in params) else {}
    if capturable:
        fused["capturable"] = True
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **fused)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def _check_graphable(
    optimizer, lr_schedule, device: torch.device | None = None, distributed: bool = False
) -> None:
    """Refuse ``cuda_graph=True`` where a graph cannot replay the step (before any change)."""
    problems = []
    if callable(optimizer) or optimizer not in ("adam", "adamw"):
        problems.append(f"optimizer 'adam' or 'adamw' (got {optimizer!r})")
    if lr_schedule is not None:
        problems.append(f"no lr_schedule (got {lr_schedule!r}; a replayed step keeps its lr)")
    if device is not None and device.type != "cuda":
        problems.append(f"a CUDA device (got device {device})")
    if distributed:
        problems.append("no distributed training")
    if problems:
        raise ValueError("cuda_graph=True needs " + "; ".join(problems))


def _load_optimizer_state(opt: torch.optim.Optimizer, state_dict: dict) -> None:
    """Load a checkpoint's optimiser state, keeping this run's implementation flags.

    ``load_state_dict`` would bring back the saved run's ``fused``/``capturable``/
    ``foreach`` choices with its hyperparameters; a run resumed with another
    ``sync_every`` or ``cuda_graph`` keeps its own, and each step count is moved to
    where that implementation keeps it (the device for fused or capturable, else the CPU).
    """
    keys = ("fused", "capturable", "foreach")
    mine = [{k: g[k] for k in keys if k in g} for g in opt.param_groups]
    opt.load_state_dict(state_dict)
    for group, flags in zip(opt.param_groups, mine, strict=True):
        group.update(flags)
        on_device = bool(flags.get("fused") or flags.get("capturable"))
        for p in group["params"]:
            step = opt.state.get(p, {}).get("step")
            if isinstance(step, Tensor):
                where = p.device if on_device else torch.device("cpu")
                opt.state[p]["step"] = step.to(device=where, dtype=torch.float32)


def _make_scheduler(lr_schedule, opt: torch.optim.Optimizer, num_steps: int):
    if lr_schedule is None:
        return None
    if callable(lr_schedule):
        return lr_schedule(opt)
    check_choice("lr_schedule", lr_schedule, ("cosine",))
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=num_steps)


def _nonfinite_sites(model: Callable, guide: Callable, args: tuple) -> list[str]:
    """Re-run guide and model and list the sites whose log-probability is not finite.

    The re-run draws fresh randomness: a non-finite value caused by the parameters shows
    up again, one caused by a single unlucky draw may not.
    """
    bad: list[str] = []
    try:
        with torch.no_grad():
            guide_trace = poutine.trace(guide).get_trace(*args)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    except Exception as e:  # the re-run itself may fail on non-finite parameters
        return [f"(re-running the program failed: {type(e).__name__}: {e})"]
    for prefix, trace in (("guide", guide_trace), ("model", model_trace)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            value = site["value"]
            if (
                isinstance(value, Tensor)
                and value.is_floating_point()
                and not torch.isfinite(value).all()
            ):
                bad.append(f"{prefix}:{name} (value)")
                continue
            try:
                with torch.no_grad():
                    lp = site["fn"].log_prob(value)
            except Exception as e:
                bad.append(f"{prefix}:{name} ({type(e).__name__})")
                continue
            if not torch.isfinite(torch.as_tensor(lp)).all():
                bad.append(f"{prefix}:{name}")
    return bad


def _parameter_names(modules: Sequence[nn.Module], param_names: list[str], store) -> dict:
    """``id(tensor) -> readable name`` for every trainable tensor (for error messages)."""
    names: dict[int, str] = {}
    for name in param_names:
        if name in store._params:
            names[id(store._params[name])] = f"param:{name}"
    for m in modules:
        for name, p in m.named_parameters():
            names.setdefault(id(p), f"{type(m).__name__}.{name}")
    return names


def _gradient_report(params: list[Tensor], names: dict) -> tuple[str | None, float, list[str]]:
    """The largest gradient (non-finite first): its parameter, its norm, and all non-finite ones."""
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


def _total_norm_of(params: Sequence[Tensor]) -> Callable[[list[Tensor]], Tensor]:
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
        >>> _total_norm_of(params)(grads)
        tensor(4.)
    """
    kinds = {(p.device, p.dtype) for p in params}
    if len(kinds) != 1 or next(iter(kinds))[0].type not in ("cpu", "cuda"):
        return torch.nn.utils.get_total_norm

    def total_norm(grads: list[Tensor]) -> Tensor:
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    return total_norm


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _mean_loss(elbo, model, guide, data, batch_size, transform_batch, modules, group=None) -> float:
    if group is not None:  # each rank scores its block of rows; the sums are reduced
        data = group.shard(data)
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            n = data[0].shape[0]
            for start in range(0, n, batch_size):
                batch = tuple(t[start : start + batch_size] for t in data)
                if transform_batch is not None:
                    batch = tuple(transform_batch(*batch))
                total += float(elbo.loss(model, guide, *batch))
                count += batch[0].shape[0]
    finally:
        for m, flag in zip(modules, was_training, strict=True):
            m.train(flag)
    if group is not None:
        total, count = group.sum(total, count)
    return total / count


def fit(
    model: Callable,
    guide: Callable,
    data: Tensor | Sequence[Tensor],
    *,
    loss: ELBO | None = None,
    num_steps: int = 1000,
    batch_size: int = 128,
    optimizer: str | Callable[[list[Tensor]], torch.optim.Optimizer] = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    lr_schedule: str | Callable | None = None,
    clip_norm: float | None = None,
    on_nonfinite: str = "raise",
    max_consecutive_skips: int = 20,
    sync_every: int = 1,
    validation_data: Tensor | Sequence[Tensor] | None = None,
    validate_every: int = 100,
    patience: int | None = None,
    restore_best: bool = True,
    transform_batch: Callable[..., Sequence[Tensor]] | None = None,
    modules: Sequence[nn.Module] = (),
    device: str | torch.device | None = None,
    seed: int = 0,
    run_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    resume: str | os.PathLike | None = None,
    log_every: int = 10,
    progress: bool | None = None,
    config: dict[str, Any] | None = None,
    distributed: bool | None = None,
    fast: bool = True,
    cuda_graph: bool = False,
) -> FitResult:
    r"""Fit the parameters of ``model`` and ``guide`` by stochastic variational inference.

    Each step draws a mini-batch :math:`B` (shuffled on the data's device, one pass over
    the data per epoch), evaluates the ELBO estimator and takes one optimiser step on

    .. math::

        \mathcal L(\theta, \phi) = -\frac{1}{|B|}\,
            \widehat{\mathrm{ELBO}}(\theta, \phi; x_B), \qquad
        \widehat{\mathrm{ELBO}} = \mathbb E_{q_\phi(z|x)}
            [\log p_\theta(x, z) - \log q_\phi(z|x)],

    i.e. the negative ELBO per data point, with any Pyro ELBO (``Trace_ELBO``,
    ``TraceEnum_ELBO``, ``TraceMeanField_ELBO``, ...). ``model`` and ``guide`` are called
    as ``model(*batch)``; for a flow without latent sites the guide is empty and the loss
    is the negative log-likelihood.

    **The fast path** (``fast=True``, the default): ``Trace_ELBO`` and ``TraceEnum_ELBO``
    are replaced by their twins from :mod:`pyro_manifold.infer.elbo` (same value and
    gradients, no host synchronisation), Pyro's validation is switched off inside the
    training steps (it stays as set for the first evaluation, which checks the programs'
    shapes and supports on the first batch, and for validation losses), the data stay on
    the device and are shuffled there, losses are read back every ``log_every`` steps, and
    all parameters go into one ``torch.optim`` optimiser (fused Adam on CUDA), not one
    per tensor as ``pyro.optim`` does. The one read-back left per step is the finiteness
    check below. ``fast=False`` runs the ELBO exactly as given, with validation as set.

    Parameters optimised: every parameter of the ``nn.Module`` that ``model`` and
    ``guide`` are bound methods of, of each module in ``modules``, and of every
    ``pyro.param`` site the programs declare (discovered by one evaluation before
    training). They all go into one ``torch.optim`` optimiser.

    Checkpoints (``run_dir/checkpoint.pt``, every ``checkpoint_every`` steps and at the
    end) hold module and optimiser states, ``pyro.param`` values, the step, the data
    order, the RNG states, the history and ``config``, are written atomically and load
    with ``torch.load(weights_only=True)``. ``resume=path`` continues such a run: on the
    CPU the result equals an uninterrupted run with the same seed. A non-finite loss
    or gradient raises :class:`NonFiniteLossError` naming the step, the sample sites
    whose log-probability is not finite and the parameter with the largest gradient; the
    step is not applied and no checkpoint is written after it, so the last good one
    survives. With ``on_nonfinite="skip"`` such a batch is dropped instead (no update;
    module buffers such as batch-norm statistics are restored, and so are parameters a
    layer edited in place during the step, such as a re-seeded VQ code), counted in
    :attr:`FitResult.skipped_steps` and reported with a warning at the end; more than
    ``max_consecutive_skips`` in a row still raise.

    The finiteness check costs one device-to-host read per step (of the loss plus the
    global gradient norm together). With ``sync_every=N > 1`` it stays on the device:
    the fused Adam/AdamW step is skipped there when the flag is set (``found_inf``, as
    mixed-precision training does; no update, no step count, buffers and in-place
    parameter edits restored), and the
    flags are read back every ``N`` steps and at every log, validation and checkpoint, so
    a checkpoint is never written after an unnoticed bad step. The error then names the
    first bad step since the last read; its sites and largest gradient come from
    re-running that step's batch with the parameters of the time of the read.

    Args:
        model: a Pyro model, called as ``model(*batch)``.
        guide: the matching guide.
        data: a tensor of shape :math:`(N, \dots)` or a tuple of tensors with :math:`N`
            rows each (e.g. ``(x, y)``); moved to ``device``.
        loss: a Pyro ELBO; default ``Trace_ELBO()``.
        num_steps: total number of optimisation steps (including resumed ones).
        batch_size: mini-batch size (capped at :math:`N`).
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"``, or a callable ``params -> Optimizer``.
        lr: learning rate for the named optimisers.
        weight_decay: weight decay for the named optimisers.
        lr_schedule: ``"cosine"`` or a callable ``optimizer -> LRScheduler`` (stepped
            once per step).
        clip_norm: clip the global gradient norm to this value.
        on_nonfinite: ``"raise"`` (default) or ``"skip"``, what to do with a step whose
            loss or gradient is not finite.
        max_consecutive_skips: with ``"skip"``, raise after this many skipped steps in a
            row.
        sync_every: steps between reads of the finiteness flags (1: every step); more
            than 1 needs ``optimizer="adam"`` or ``"adamw"`` (made fused).
        validation_data: held-out data with the same structure as ``data``.
        validate_every: steps between validation losses.
        patience: stop after this many validations without improvement.
        restore_best: with validation data, end with the parameters of the best
            validation loss.
        transform_batch: applied to each batch (e.g. dequantisation, binarisation),
            ``transform_batch(*batch) -> batch``.
        modules: further modules whose parameters are trained.
        device: default CUDA when available.
        seed: seeds Pyro, torch and Python RNGs and the data order.
        run_dir: where to write ``checkpoint.pt``, ``best.pt`` and ``history.json``.
        checkpoint_every: steps between checkpoints.
        resume: a checkpoint to continue from.
        log_every: steps between loss read-backs (history and progress bar).
        progress: show a tqdm bar; default only on a terminal.
        config: plain data describing the run, stored in checkpoints.
        fast: take the fast path described above.
        cuda_graph: on a CUDA device, capture the step as a CUDA graph after
            ``GRAPH_WARMUP`` eager steps and replay it for every later step (see
            :mod:`pyro_manifold.infer.graphs`): one launch per step instead of one per
            operation, with the same arithmetic. The step is always the device-side one of
            ``sync_every > 1`` (a fused, capturable Adam/AdamW that skips a non-finite step
            on the device; flags read every ``sync_every`` steps). Where the step cannot be
            captured (Python state that changes every step, an in-place parameter edit
            from Python, a host read inside the model), training goes on eagerly with a
            ``RuntimeWarning`` that says why. Needs ``optimizer="adam"`` or ``"adamw"``,
            no ``lr_schedule`` and no ``distributed``; a ``transform_batch`` runs outside
            the graph. Not checked to be bit-identical to eager training (the capturable
            Adam's arithmetic differs in the last bits), so ``resume`` is promised exact
            only without it. Not yet run on a GPU: its tests in
            ``tests/test_device.py`` wait for a session lent one.
        distributed: train data-parallel over the ranks of a ``torch.distributed``
            process group (see :mod:`pyro_manifold.infer.distributed`); ``None``: when a
            group is initialized or ``torchrun`` started several processes. Then
            ``batch_size`` is per rank (the global batch is ``world_size`` times it, cut
            from one shared permutation), gradients are averaged over the ranks (one step
            equals one step on the global batch in one process), rank 0 writes the
            checkpoints (resumable by a single process) and shows the bar, validation
            losses are reduced over the ranks, and rank :math:`r` seeds its model
            randomness with ``seed + r``.

    Returns:
        A :class:`FitResult`.

    Example:
        >>> from pyro_manifold.models import Flow
        >>> flow = Flow(2, "realnvp", num_layers=2)
        >>> x = torch.randn(256, 2) * 0.5 + 1.0
        >>> result = fit(flow.model, flow.guide, x, num_steps=50, batch_size=64,
        ...              device="cpu", progress=False)
        >>> result.history["loss"][-1] < result.history["loss"][0]
        True
    """
    # -- check everything before touching any state ------------------------------------
    data = _as_tuple("data", data)
    val = _as_tuple("validation_data", validation_data) if validation_data is not None else None
    if val is not None:
        for i, (a, b) in enumerate(zip(data, val, strict=False)):
            if a.shape[1:] != b.shape[1:] or len(data) != len(val):
                raise ValueError(
                    f"validation_data[{i}]: expected the structure of data (shape (*, "
                    f"{tuple(a.shape[1:])})), got shape {tuple(b.shape)}"
                )
    check_positive_int("num_steps", num_steps)
    check_positive_int("batch_size", batch_size)
    check_positive("lr", lr)
    check_positive("weight_decay", weight_decay, allow_zero=True)
    check_positive_int("validate_every", validate_every)
    check_positive_int("checkpoint_every", checkpoint_every)
    check_positive_int("log_every", log_every)
    if clip_norm is not None:
        check_positive("clip_norm", clip_norm)
    check_choice("on_nonfinite", on_nonfinite, ("raise", "skip"))
    check_positive_int("max_consecutive_skips", max_consecutive_skips)
    check_positive_int("sync_every", sync_every)
    if not isinstance(cuda_graph, bool):
        raise TypeError(f"cuda_graph: expected True or False, got {cuda_graph!r}")
    deferred = sync_every > 1 or cuda_graph
    if cuda_graph:
        _check_graphable(optimizer, lr_schedule)
    if deferred and (callable(optimizer) or optimizer not in ("adam", "adamw")):
        raise ValueError(
            f"sync_every: values above 1 need optimizer 'adam' or 'adamw' (fused, so that a "
            f"bad step is skipped on the device), got sync_every={sync_every} with "
            f"optimizer={optimizer!r}"
        )
    if patience is not None:
        check_positive_int("patience", patience)
    if not callable(optimizer):
        check_choice("optimizer", optimizer, OPTIMIZERS)
    if lr_schedule is not None and not callable(lr_schedule):
        check_choice("lr_schedule", lr_schedule, ("cosine",))
    group: DataParallelGroup = data_parallel_group(distributed, resolve_device(device))
    device = group.device
    if cuda_graph:
        _check_graphable(optimizer, lr_schedule, device, group.distributed)
    state = group.load_checkpoint(resume) if resume is not None else None
    elbo = loss if loss is not None else Trace_ELBO()
    if not isinstance(elbo, ELBO):
        raise TypeError(f"loss: expected a pyro.infer.ELBO, got {type(elbo).__name__}")
    if fast:
        elbo = fast_elbo(elbo)
    mods = _owner_modules(model, guide, extra=modules)
    if state is not None:
        names = [type(m).__name__ for m in mods]
        if len(state["modules"]) != len(mods):
            raise ValueError(
                f"resume: checkpoint {resume} holds {len(state['modules'])} modules, "
                f"expected {len(mods)} ({names})"
            )

    # -- set up ------------------------------------------------------------------------
    run_dir = Path(run_dir) if run_dir is not None else None
    pyro.set_rng_seed(seed + group.rank)
    for m in mods:
        m.to(device)
    data = tuple(t.to(device) for t in data)
    val = tuple(t.to(device) for t in val) if val is not None else None
    n = data[0].shape[0]
    batch_size = group.local_batch_size(batch_size, n)  # per rank
    global_batch = batch_size * group.world_size
    order_gen = torch.Generator(device=device)
    order_gen.manual_seed(seed)

    # Discover pyro.param sites with one evaluation that leaves RNGs and modules as they were.
    rng = _rng_state()
    for m in mods:
        m.eval()
    first = tuple(t[:batch_size] for t in data)
    if transform_batch is not None:
        first = tuple(transform_batch(*first))
    with poutine.trace(param_only=True) as capture:
        elbo.differentiable_loss(model, guide, *first)
    _set_rng_state(rng)
    store = pyro.get_param_store()
    owned = {id(p) for m in mods for p in m.parameters()}  # module parameters that the
    param_names = sorted(  # models also register as pyro.param sites are saved once
        name
        for name in capture.trace.nodes
        if name in store._params and id(store._params[name]) not in owned
    )
    param_sites = [store._params[name] for name in param_names]
    params = _parameters(mods, param_sites)
    if not params:
        raise ValueError("model/guide: no parameters to fit (no modules and no pyro.param sites)")
    names = _parameter_names(mods, param_names, store)
    opt = _make_optimizer(
        optimizer, params, lr, weight_decay, fused=deferred, capturable=cuda_graph
    )
    total_norm = _total_norm_of(params)
    scheduler = _make_scheduler(lr_schedule, opt, num_steps)

    history: dict[str, list[float]] = {
        k: [] for k in ("step", "loss", "lr", "time", "val_step", "val_loss")
    }
    step, position, perm = 0, 0, torch.randperm(n, generator=order_gen, device=device)
    best_val, best_states, bad_validations = math.inf, None, 0
    elapsed = 0.0
    skipped: list[int] = []
    if state is not None:
        for m, sd in zip(mods, state["modules"], strict=True):
            m.load_state_dict(sd)
        with torch.no_grad():
            for name, value in state["params"].items():
                if name in store._params:
                    store._params[name].copy_(value)
        _load_optimizer_state(opt, state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        step, position = int(state["step"]), int(state["position"])
        perm = state["perm"].to(device)
        order_gen.set_state(state["order_generator"])
        _set_rng_state(group.rng_state(state, seed))
        history = {k: list(v) for k, v in state["history"].items()}
        best_val = float(state.get("best_validation_loss", math.inf))
        bad_validations = int(state.get("bad_validations", 0))
        elapsed = float(state.get("elapsed", 0.0))
        skipped = [int(k) for k in state.get("skipped_steps", [])]
    group.broadcast_state_(mods, params)

    def checkpoint_state() -> dict[str, Any]:
        return {
            "modules": [m.state_dict() for m in mods],
            "params": {name: store._params[name].detach().clone() for name in param_names},
            "optimizer": opt.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "step": step,
            "position": position,
            "perm": perm.cpu(),
            "order_generator": order_gen.get_state(),
            "rng": _rng_state(),
            "history": history,
            "best_validation_loss": best_val,
            "bad_validations": bad_validations,
            "elapsed": elapsed,
            "skipped_steps": list(skipped),
            "config": dict(config or {}),
            **group.checkpoint_extras(_rng_state()),
        }

    def write_history() -> None:
        if run_dir is not None and group.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            tmp = run_dir / ".history.json.tmp"
            tmp.write_text(json.dumps(history, indent=1))
            os.replace(tmp, run_dir / "history.json")

    # -- train -------------------------------------------------------------------------
    result = FitResult(history=history, skipped_steps=skipped)
    keep_buffers = on_nonfinite == "skip" or deferred
    snapshot = BufferSnapshot(mods if keep_buffers else [])  # to undo a skipped step
    buffers = snapshot.buffers
    consecutive = 0
    pending: list[tuple[int, Tensor, Tensor]] = []  # (step, flag, batch rows) not yet read
    for m in mods:
        m.train()
    window = torch.zeros((), device=device)
    window_count = torch.zeros((), device=device)
    recent: list[tuple[Tensor, Tensor]] = []  # (loss, flag) of steps not yet in the window

    def fold_window() -> None:
        """Add the recent steps' losses (bad steps left out) to the window: a few kernels."""
        nonlocal window, window_count
        if not recent:
            return
        values = torch.stack([value for value, _ in recent])
        flags = torch.stack([flag for _, flag in recent])
        recent.clear()
        window = window + torch.where(flags, 0.0, values).sum()
        window_count = window_count + (~flags).sum()

    def loss_and_flag(batch: tuple) -> tuple[Tensor, Tensor]:
        """Loss per point, gradients, and the flag "loss or gradient not finite"."""
        try:
            with (
                pyro.validation_enabled(not fast and is_validation_enabled()),
                parameters_registered(not fast),
            ):
                value = elbo.differentiable_loss(model, guide, *batch) / batch_size
        except Exception as e:
            e.add_note(f"pyro_manifold.fit: raised at step {step}")
            raise
        mean_value = group.mean(value.detach())
        opt.zero_grad(set_to_none=True)
        value.backward()
        group.synchronize_(params, mods)
        if clip_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)
        else:
            grads = [p.grad for p in params if p.grad is not None]
            grad_norm = total_norm(grads) if grads else mean_value * 0
        return mean_value, ~torch.isfinite(mean_value + grad_norm)

    def device_step(*batch: Tensor) -> tuple[Tensor, Tensor]:
        """One step that reads nothing back; a non-finite one is undone on the device.

        Inside a graph capture every buffer is copied and restored (the replay runs no
        Python to choose); eagerly only those that may have changed.
        """
        snapshot.take(everything=capturing)
        mean_value, bad = loss_and_flag(batch)
        opt.found_inf = bad.to(torch.float32)
        opt.step()
        snapshot.restore_where(bad, everything=capturing)
        with torch.no_grad():
            for t, old in edits.values():
                t.copy_(torch.where(bad, old, t))
        return mean_value, bad

    # -- cuda_graph: eager warm-up steps, then one capture of device_step ---------------
    graph: CapturedStep | None = None
    capturing = False  # inside capture_step: device_step copies every buffer
    graph_note: str | None = None if cuda_graph else "off"
    extra0 = copy.deepcopy(extra_states(mods)) if cuda_graph else []
    warm: list[bool] = []  # per eager device step: no Python-side state changed

    def graph_ready() -> bool:
        if graph_note is not None or len(warm) < GRAPH_WARMUP:
            return False
        if not all(warm):
            give_up("a module's Python-side state (extra state) or a parameter edited in "
                    "place from Python changed during a step")  # fmt: skip
            return False
        return True

    def give_up(reason: str) -> None:
        nonlocal graph_note
        graph_note = reason
        warnings.warn(f"fit: cuda_graph: {reason}; training goes on eagerly",
                      RuntimeWarning, stacklevel=4)  # fmt: skip

    def capture(batch: tuple) -> CapturedStep | None:
        nonlocal capturing
        capturing = True
        try:
            captured = capture_step(device_step, batch)
        finally:
            capturing = False
            bump_versions()  # caches filled during the capture hold values never computed
        if not isinstance(captured, str) and (edits or not same_state(extra_states(mods), extra0)):
            captured = "the captured step changed Python-side state or edited a parameter"
        if isinstance(captured, str):
            give_up(captured)
            return None
        return captured

    def bump_versions() -> None:
        """Move every parameter's and buffer's version counter (a replay moves none).

        So no cache keyed on versions serves a value from before the replayed updates.
        """
        increment_version([*params, *buffers])

    def refresh_versions() -> None:
        if graph is not None:
            bump_versions()

    def raise_nonfinite(bad_step: int, bad_batch: tuple, loss_value: float, rerun: bool):
        refresh_versions()
        if rerun:  # recompute that batch's gradients for the report
            opt.zero_grad(set_to_none=True)
            with pyro.validation_enabled(False), parameters_registered(False):
                again = elbo.differentiable_loss(model, guide, *bad_batch) / bad_batch[0].shape[0]
            again.backward()
            loss_value = float(again.detach())
        parameter, norm, bad = _gradient_report(params, names)
        note = (
            ""
            if on_nonfinite == "raise"
            else f"More than max_consecutive_skips={max_consecutive_skips} steps in a row "
            "were skipped. "
        )
        raise NonFiniteLossError(
            bad_step,
            _nonfinite_sites(model, guide, bad_batch),
            loss_value,
            parameter=parameter,
            grad_norm=norm,
            nonfinite_parameters=bad,
            note=note,
        )

    def settle() -> None:
        """Read the pending finiteness flags (one sync) and act on them in step order."""
        nonlocal consecutive
        if not pending:
            return
        flags = torch.stack([flag for _, flag, _ in pending]).tolist()
        entries = list(pending)
        pending.clear()
        for (at, _, rows), flag in zip(entries, flags, strict=True):
            if not flag:
                consecutive = 0
                continue
            consecutive += 1
            if on_nonfinite == "raise" or consecutive > max_consecutive_skips:
                bad_batch = tuple(t[rows] for t in data)
                if transform_batch is not None:
                    bad_batch = tuple(transform_batch(*bad_batch))
                raise_nonfinite(at, bad_batch, math.nan, rerun=True)
            skipped.append(at)
        if skipped:
            bar.set_postfix(skipped=len(skipped))

    t0 = time.perf_counter() - elapsed
    bar = tqdm(
        total=num_steps,
        initial=step,
        disable=(None if progress is None else not progress) if group.is_main else True,
        desc="fit",
        dynamic_ncols=True,
    )
    # layers' in-place parameter edits follow rank 0 (see pyro_manifold._parallel)
    # and a skipped step undoes them (pyro_manifold._parallel.step_edits)
    with (
        data_parallel_training(group if group.distributed else None),
        step_edits() if keep_buffers else nullcontext({}) as edits,
    ):
        try:
            while step < num_steps:
                if position + global_batch > n:
                    perm = torch.randperm(n, generator=order_gen, device=device)
                    position = 0
                start = position + group.rank * batch_size  # this rank's slice of the global batch
                idx = perm[start : start + batch_size]
                position += global_batch
                batch = tuple(t[idx] for t in data)
                if transform_batch is not None:
                    batch = tuple(transform_batch(*batch))
                step += 1
                edits.clear()
                if graph is None and graph_ready():
                    graph = capture(batch)
                if graph is not None and not graph.accepts(batch):
                    graph = None  # a batch unlike the captured one (transform_batch)
                    give_up("a batch differs in shape, dtype or device from the captured one")
                    bump_versions()
                if graph is not None:
                    mean_value, bad = graph(*batch)
                    pending.append((step, bad, idx))
                    result.graphed_steps += 1
                elif deferred:  # no read: the fused optimiser skips the update on the device
                    mean_value, bad = device_step(*batch)
                    pending.append((step, bad, idx))
                    if cuda_graph:
                        warm.append(not edits and same_state(extra_states(mods), extra0))
                else:
                    snapshot.take()
                    mean_value, bad = loss_and_flag(batch)
                    if bool(bad):  # the one sync per step
                        consecutive += 1
                        if on_nonfinite == "raise" or consecutive > max_consecutive_skips:
                            raise_nonfinite(step, batch, float(mean_value), rerun=False)
                        snapshot.restore()
                        with torch.no_grad():
                            for t, old in edits.values():
                                t.copy_(old)
                        opt.zero_grad(set_to_none=True)
                        skipped.append(step)
                        bar.set_postfix(skipped=len(skipped))
                    else:
                        consecutive = 0
                        opt.step()
                recent.append((mean_value, bad))
                if scheduler is not None:
                    scheduler.step()
                log_now = step % log_every == 0 or step == num_steps
                val_now = val is not None and (step % validate_every == 0 or step == num_steps)
                save_now = run_dir is not None and (
                    step % checkpoint_every == 0 or step == num_steps
                )
                if deferred and (step % sync_every == 0 or log_now or val_now or save_now):
                    settle()
                if log_now or len(recent) >= 64:  # bounded: 64 scalars at most
                    fold_window()
                if log_now and int(window_count):
                    mean = float(window) / int(window_count)
                    window.zero_()
                    window_count.zero_()
                    history["step"].append(step)
                    history["loss"].append(mean)
                    history["lr"].append(opt.param_groups[0]["lr"])
                    history["time"].append(time.perf_counter() - t0)
                    bar.set_postfix(loss=f"{mean:.4g}")
                bar.update(1)
                if val_now:
                    refresh_versions()
                    v = _mean_loss(
                        elbo, model, guide, val, batch_size, transform_batch, mods, group
                    )
                    history["val_step"].append(step)
                    history["val_loss"].append(v)
                    if v < best_val:
                        best_val, bad_validations = v, 0
                        best_states = [copy.deepcopy(m.state_dict()) for m in mods]
                        if run_dir is not None:
                            elapsed = time.perf_counter() - t0
                            group.save_checkpoint(checkpoint_state(), run_dir / "best.pt")
                    else:
                        bad_validations += 1
                    if patience is not None and bad_validations >= patience:
                        result.stopped_early = True
                if run_dir is not None and (
                    step % checkpoint_every == 0 or step == num_steps or result.stopped_early
                ):
                    elapsed = time.perf_counter() - t0
                    result.checkpoint = group.save_checkpoint(
                        checkpoint_state(), run_dir / "checkpoint.pt"
                    )
                    write_history()
                if result.stopped_early:
                    break
        finally:
            if graph is not None:
                bump_versions()
                opt.zero_grad(set_to_none=True)  # the gradients live in the graph's pool
            bar.close()
    if val is not None and restore_best and best_states is not None:
        for m, sd in zip(mods, best_states, strict=True):
            m.load_state_dict(sd)
    for m in mods:
        m.eval()
    write_history()
    if skipped:
        warnings.warn(
            f"fit: skipped {len(skipped)} of {step} steps whose loss or gradient was not "
            f"finite (steps {skipped[:10]}{' ...' if len(skipped) > 10 else ''})",
            RuntimeWarning,
            stacklevel=2,
        )
    result.step = step
    result.best_validation_loss = best_val if val is not None else None
    return result
