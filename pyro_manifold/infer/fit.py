r"""``fit``: stochastic variational inference over mini-batches, with safe checkpoints.

``fit`` is a short loop over parts, each in its own module of :mod:`pyro_manifold.infer`:
the data order (``_batches``), the whole-data check (``_data_check``), the per-step
keyword arguments (:mod:`~pyro_manifold.infer.schedule`), the step itself, eager, on
the device or replayed from a CUDA graph (``_step``), the non-finite guard (``_guard``), the
optimiser (``_optim``), the checkpoint state (``_state``), validation and early
stopping (``_early_stopping``) and the history and progress bar (``_progress``).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.distributions.util import is_validation_enabled
from pyro.infer import ELBO, Trace_ELBO
from torch import Tensor, nn

from pyro_manifold._validation import (
    check_bool,
    check_choice,
    check_positive,
    check_positive_int,
    resolve_device,
)
from pyro_manifold.errors import ArgumentError, ArgumentTypeError
from pyro_manifold.infer._batches import BatchTransform, MiniBatches, as_tensors
from pyro_manifold.infer._data_check import check_data_sets
from pyro_manifold.infer._early_stopping import EarlyStopping, mean_loss
from pyro_manifold.infer._guard import NonFiniteGuard, NonFiniteLossError, parameter_names
from pyro_manifold.infer._optim import OPTIMIZERS, OptimizerChoice, make_optimizer, make_scheduler
from pyro_manifold.infer._progress import TrainingLog, write_json
from pyro_manifold.infer._rollback import SetUpRollback
from pyro_manifold.infer._state import (
    RunState,
    check_resume,
    fit_options,
    param_sites,
    rng_state,
    set_rng_state,
)
from pyro_manifold.infer._step import TrainingStep, check_graphable
from pyro_manifold.infer.checkpoint import plain_data
from pyro_manifold.infer.distributed import DataParallelGroup, data_parallel_group
from pyro_manifold.infer.elbo import fast_elbo
from pyro_manifold.infer.rundir import RunLock, check_run_dir
from pyro_manifold.infer.schedule import StepKwargs, evaluate_step_kwargs, resolve_step_kwargs

__all__ = ["FitResult", "NonFiniteLossError", "fit", "resolve_device"]

#: The files ``fit`` writes (atomically, by replacing them) in its ``run_dir``.
_RUN_FILES = ("checkpoint.pt", "best.pt", "history.json", "config.json")


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: lists keyed by ``"step"``, ``"loss"`` (mean loss per data point over the
            last ``log_every`` steps), ``"lr"``, ``"time"``, ``"val_step"`` and ``"val_loss"``.
        step: the number of optimisation steps taken in total (including resumed ones).
        best_validation_loss: the lowest finite validation loss seen (``inf`` when none
            was finite; ``restore_best`` then has no best state and keeps the last
            parameters), or ``None`` without validation data.
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


def _owner_modules(*fns: Callable, extra: Sequence[nn.Module] = ()) -> list[nn.Module]:
    found: list[nn.Module] = []
    for obj in [*(getattr(f, "__self__", f) for f in fns), *extra]:
        if isinstance(obj, nn.Module) and all(obj is not m for m in found):
            found.append(obj)
    return found


def _parameters(modules: Sequence[nn.Module], sites: dict[str, Tensor]) -> list[Tensor]:
    params: list[Tensor] = []
    seen: set[int] = set()
    for p in [*(p for m in modules for p in m.parameters()), *sites.values()]:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    return params


def _discover_param_sites(
    elbo: ELBO, model: Callable, guide: Callable, batch: tuple, kwargs: dict,
    modules: Sequence[nn.Module],
) -> dict[str, Tensor]:  # fmt: skip
    """The ``pyro.param`` sites of one evaluation that leaves RNGs and modules as they were.

    A site that ``pyro.module`` declared for a parameter of ``modules`` (unconstrained, its
    initial value that parameter) is the module's, saved with it, even where the param
    store still holds an earlier instance's tensor under that name (no
    ``clear_param_store``). A constrained site initialised from a module's parameter is a
    tensor of its own (the store keeps its unconstrained value) and stays a site.
    """
    rng = rng_state()
    for m in modules:
        m.eval()
    with poutine.trace(param_only=True) as capture:
        elbo.differentiable_loss(model, guide, *batch, **kwargs)
    set_rng_state(rng)
    owned = {id(p) for m in modules for p in m.parameters()}

    def declared_by_module(site: dict) -> bool:
        constraint = site["kwargs"].get("constraint", constraints.real)
        return (
            len(site["args"]) > 1
            and id(site["args"][1]) in owned
            and constraint is constraints.real
        )

    names = [name for name, site in capture.trace.nodes.items() if not declared_by_module(site)]
    return param_sites(names, modules)


def _data_tensors(
    name: str, data: object, transform_batch: BatchTransform | None
) -> tuple[Tensor, ...]:
    """``data`` as tensors with the same rows, on a device that holds values.

    Their finiteness is checked here only when the whole-data check will not read these
    very tensors (it does, row by row, under the validation flag it reads itself, without
    a ``transform_batch``), so that no pass over the data is made twice. Either check
    names the first bad row.
    """
    if not isinstance(data, Tensor | list | tuple):
        raise ArgumentTypeError(
            f"{name}: expected a tensor or a tuple of tensors with the same number of rows, "
            f"got {type(data).__name__}"
        )
    rows_checked_later = is_validation_enabled() and transform_batch is None
    tensors = as_tensors(name, data, finite=not rows_checked_later)
    for i, t in enumerate(tensors):
        if t.is_meta:
            label = name if len(tensors) == 1 else f"{name}[{i}]"
            raise ArgumentError(f"{label}: expected a tensor that holds values, got one on meta")
    return tensors


def _check_data(
    data: Tensor | Sequence[Tensor],
    validation_data: Tensor | Sequence[Tensor] | None,
    transform_batch: BatchTransform | None = None,
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...] | None]:
    data = _data_tensors("data", data, transform_batch)
    if validation_data is None:
        return data, None
    val = _data_tensors("validation_data", validation_data, transform_batch)
    if len(data) != len(val):
        raise ArgumentError(
            f"validation_data: expected {len(data)} tensors like data, got {len(val)}"
        )
    for i, (a, b) in enumerate(zip(data, val, strict=True)):
        label = "validation_data" if len(val) == 1 else f"validation_data[{i}]"
        if a.shape[1:] != b.shape[1:]:
            raise ArgumentError(
                f"{label}: expected the structure of data (shape (*, "
                f"{tuple(a.shape[1:])})), got shape {tuple(b.shape)}"
            )
        # else refused by the model only when validation runs (a transform_batch may map
        # both to the model's dtype, as raw uint8 pixels beside preprocessed ones)
        if transform_batch is None and a.dtype != b.dtype:
            raise ArgumentError(f"{label}: expected dtype {a.dtype} like data, got dtype {b.dtype}")
    return data, val


def _check_programs(model, guide, modules, transform_batch, resume, config) -> list[nn.Module]:
    """Check fit's callables, ``modules``, ``resume`` and ``config`` (before anything changes)."""
    for name, fn in (("model", model), ("guide", guide)):
        if not callable(fn):
            raise ArgumentTypeError(f"{name}: expected a callable Pyro program, got {fn!r}")
    if transform_batch is not None and not callable(transform_batch):
        raise ArgumentTypeError(
            f"transform_batch: expected a callable (*batch) -> batch or None, got "
            f"{type(transform_batch).__name__}"
        )
    if isinstance(modules, nn.Module) and not isinstance(modules, nn.ModuleList):
        raise ArgumentTypeError(
            f"modules: expected a list of nn.Modules, got one {type(modules).__name__} "
            f"(write modules=[module])"
        )
    if isinstance(modules, str | bytes) or not hasattr(modules, "__iter__"):
        raise ArgumentTypeError(f"modules: expected a list of nn.Modules, got {modules!r}")
    modules = list(modules)
    for i, m in enumerate(modules):
        if not isinstance(m, nn.Module):
            raise ArgumentTypeError(
                f"modules[{i}]: expected an nn.Module, got {type(m).__name__} {m!r}"
            )
    if resume is not None and not isinstance(resume, str | os.PathLike):
        raise ArgumentTypeError(
            f"resume: expected a path to a checkpoint or None, got {type(resume).__name__}"
        )
    if config is not None and not isinstance(config, dict):
        raise ArgumentTypeError(
            f"config: expected a dict of plain data or None, got {type(config).__name__}"
        )
    return modules


def _plain_config(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """``config`` as the checkpoints and ``config.json`` will hold it, refused now if they can't.

    Numpy scalars and paths become plain values (as :func:`save_checkpoint` makes them);
    anything a checkpoint or JSON cannot hold is refused before the first step, not at
    the first checkpoint.
    """
    if config is None:
        return None
    plain = plain_data(config, "config")
    try:
        json.dumps(plain)
    except (TypeError, ValueError) as e:
        raise ArgumentTypeError(f"config: expected values that JSON can hold ({e})") from None
    return plain


def _check_options(
    *, num_steps, batch_size, optimizer, lr, weight_decay, lr_schedule, clip_norm,
    on_nonfinite, max_consecutive_skips, sync_every, validate_every, patience,
    checkpoint_every, log_every, cuda_graph, restore_best, fast, progress, distributed, seed,
) -> None:  # fmt: skip
    """Check fit's scalar options (before anything changes)."""
    for name, value in [("restore_best", restore_best), ("fast", fast),
                        ("cuda_graph", cuda_graph)]:  # fmt: skip
        check_bool(name, value)
    for name, value in [("progress", progress), ("distributed", distributed)]:
        check_bool(name, value, allow_none=True)
    if check_positive_int("seed", seed, minimum=0) > 2**32 - 1:
        raise ArgumentError(f"seed: expected an int in [0, 2**32 - 1], got {seed}")
    for name, value in [("num_steps", num_steps), ("batch_size", batch_size),
                        ("validate_every", validate_every),
                        ("checkpoint_every", checkpoint_every), ("log_every", log_every),
                        ("max_consecutive_skips", max_consecutive_skips),
                        ("sync_every", sync_every)]:  # fmt: skip
        check_positive_int(name, value)
    check_positive("lr", lr)
    check_positive("weight_decay", weight_decay, allow_zero=True)
    if clip_norm is not None:
        check_positive("clip_norm", clip_norm)
    check_choice("on_nonfinite", on_nonfinite, ("raise", "skip"))
    if cuda_graph:
        check_graphable(optimizer, lr_schedule)
    if (sync_every > 1 or cuda_graph) and (
        callable(optimizer) or optimizer not in ("adam", "adamw")
    ):
        raise ArgumentError(
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


def fit(
    model: Callable,
    guide: Callable,
    data: Tensor | Sequence[Tensor],
    *,
    loss: ELBO | None = None,
    num_steps: int = 1000,
    batch_size: int = 128,
    optimizer: OptimizerChoice = "adam",
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
    transform_batch: BatchTransform | None = None,
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
    step_kwargs: StepKwargs | None = None,
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
    as ``model(*batch, **step_kwargs(t))`` for the step that follows :math:`t` steps
    taken; for a flow without latent sites the guide is empty and the loss is the
    negative log-likelihood.

    **Per-step arguments** (annealing): ``step_kwargs(t)`` returns the keyword arguments
    of the step after :math:`t` steps (a dict of plain numbers, e.g. ``{"kl_weight":
    min(1.0, (t + 1) / 1000)}``), evaluated before the step draws its batch; both
    programs receive them, as Pyro's examples pass an annealing factor. By default it is
    the ``step_kwargs`` method of the module the programs are bound methods of, the
    model's own schedule (:meth:`VariationalMixtureOfFlows.step_kwargs
    <pyro_manifold.models.VariationalMixtureOfFlows.step_kwargs>`: the temperature;
    :meth:`FlowVAE.step_kwargs <pyro_manifold.models.FlowVAE.step_kwargs>`: the KL
    warm-up), and none for programs without one; ``step_kwargs=lambda t: {}`` turns a
    model's schedule off. It must be a function of :math:`t` alone: :math:`t` is the
    schedule's whole state, saved with the step in checkpoints, so a resumed run sees
    the uninterrupted run's arguments, and a skipped step consumes its :math:`t` as it
    does for ``lr_schedule``. Validation losses call the programs with their defaults
    (no per-step arguments), so they measure one objective at every step. A result that
    is not a dict of keyword names or holds a non-finite number raises before the step
    (for the first step, before anything changes). See :mod:`pyro_manifold.infer.schedule`.

    **The fast path** (``fast=True``, the default): ``Trace_ELBO`` and ``TraceEnum_ELBO``
    are replaced by their twins from ``pyro_manifold.infer.elbo`` (same value and
    gradients, no host synchronisation), Pyro's validation is switched off inside the
    training steps (it stays as set for the first evaluation, which checks the programs'
    shapes and supports on the first batch, and for validation losses), the data stay on
    the device and are shuffled there, losses are read back every ``log_every`` steps, and
    all parameters go into one ``torch.optim`` optimiser (fused Adam on CUDA), not one
    per tensor as ``pyro.optim`` does. The one read-back left per step is the finiteness
    check below. ``fast=False`` runs the ELBO exactly as given, with validation as set.

    **The data** are checked whole, once, before anything trains or is written (while
    Pyro's validation is on, as every value check): every row of ``data`` and
    ``validation_data``, in chunks and after ``transform_batch``, must be finite and pass
    the ``check_data(*batch, first_row=...)`` method of the module the programs are
    bound to, where it has one (every model of :mod:`pyro_manifold.models` does; a
    Bernoulli :class:`~pyro_manifold.models.FlowVAE` refuses a non-binary row). The
    error names the data set and the row. See ``pyro_manifold.infer._data_check``.

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
    whose log-probability is not finite (with the distribution parameters that are not
    finite) and the parameter with the largest gradient; the
    step is not applied and no checkpoint is written after it, so the last good one
    survives. With ``on_nonfinite="skip"`` such a batch is dropped instead (no update;
    module buffers such as batch-norm statistics are restored, and so are parameters a
    layer edited in place during the step, such as a re-seeded VQ code), counted in
    :attr:`FitResult.skipped_steps` and reported with a warning at the end; more than
    ``max_consecutive_skips`` in a row still raise. An update can overflow although its
    loss and gradient are finite (a huge ``lr``): the trained values are checked before
    every validation and checkpoint and at the end (one read-back each), and non-finite
    ones raise
    :class:`NonFiniteLossError` naming the parameters (``nonfinite_values``), with that
    checkpoint unwritten.

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
            once per step, without arguments: ``ReduceLROnPlateau`` is refused). With a
            ``run_dir``, its ``state_dict()`` (and a callable optimizer's) must hold what a
            checkpoint can; checked before the first step.
        clip_norm: clip the global gradient norm to this value.
        on_nonfinite: ``"raise"`` (default) or ``"skip"``, what to do with a step whose
            loss or gradient is not finite.
        max_consecutive_skips: with ``"skip"``, raise after this many skipped steps in a
            row.
        sync_every: steps between reads of the finiteness flags (1: every step); more
            than 1 needs ``optimizer="adam"`` or ``"adamw"`` (made fused).
        validation_data: held-out data with the same structure as ``data``.
        validate_every: steps between validation losses.
        patience: stop after this many validations without improvement (a non-finite
            validation loss counts as none, with a ``RuntimeWarning``; a resumed run
            counts on from its checkpoint, with this patience: more lets a stopped run
            train on).
        restore_best: with validation data, end with the parameters of the best
            validation loss (when ``fit`` returns; an error leaves the model as it was
            when the error was found).
        transform_batch: applied to each batch (e.g. dequantisation, binarisation),
            ``transform_batch(*batch) -> batch``.
        modules: further modules whose parameters are trained.
        device: default CUDA when available.
        seed: seeds Pyro, torch and Python RNGs and the data order.
        run_dir: where to write ``checkpoint.pt``, ``best.pt`` and ``history.json``.
        checkpoint_every: steps between checkpoints.
        resume: a checkpoint to continue from. Its ``optimizer``, ``lr``,
            ``weight_decay``, ``lr_schedule`` and ``seed`` (and, with ``"cosine"``,
            ``num_steps``) must be given again, as loading it would override them, and
            ``num_steps`` may not be below its step: a resume that differs is refused
            (:class:`~pyro_manifold.errors.CheckpointError` naming the option) before
            anything changes. Other options (``batch_size``, ``sync_every``, ...) may change.
        log_every: steps between loss read-backs (history and progress bar).
        progress: show a tqdm bar; default only on a terminal.
        config: plain data describing the run, stored in checkpoints and, with a
            ``run_dir``, written to ``run_dir/config.json`` once every check has passed
            and the run directory is held (never by a refused call).
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
        step_kwargs: ``t -> dict`` of keyword arguments for ``model`` and ``guide`` at
            the step after :math:`t` steps (see above); default the programs' own schedule.
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
    data, val = _check_data(data, validation_data, transform_batch)
    _check_options(
        num_steps=num_steps, batch_size=batch_size, optimizer=optimizer, lr=lr,
        weight_decay=weight_decay, lr_schedule=lr_schedule, clip_norm=clip_norm,
        on_nonfinite=on_nonfinite, max_consecutive_skips=max_consecutive_skips,
        sync_every=sync_every, validate_every=validate_every, patience=patience,
        checkpoint_every=checkpoint_every, log_every=log_every, cuda_graph=cuda_graph,
        restore_best=restore_best, fast=fast, progress=progress, distributed=distributed,
        seed=seed,
    )  # fmt: skip
    modules = _check_programs(model, guide, modules, transform_batch, resume, config)
    config = _plain_config(config)
    deferred = sync_every > 1 or cuda_graph
    group: DataParallelGroup = data_parallel_group(distributed, resolve_device(device))
    device = group.device
    if cuda_graph:
        check_graphable(optimizer, lr_schedule, device, group.distributed)
    run_dir = check_run_dir(run_dir, files=_RUN_FILES) if run_dir is not None else None
    state = group.load_checkpoint(resume) if resume is not None else None
    elbo = loss if loss is not None else Trace_ELBO()
    if not isinstance(elbo, ELBO):
        raise ArgumentTypeError(f"loss: expected a pyro.infer.ELBO, got {type(elbo).__name__}")
    elbo = fast_elbo(elbo) if fast else elbo
    mods = _owner_modules(model, guide, extra=modules)
    options = partial(fit_options, optimizer, lr, weight_decay, lr_schedule, num_steps, seed)
    if state is not None:
        kind = make_optimizer(optimizer, [torch.zeros(1, requires_grad=True)], lr, weight_decay)
        check_resume(state, resume, mods, data[0].shape[0], kind, options(type(kind).__qualname__))
    schedule = resolve_step_kwargs(step_kwargs, model, guide)
    first_kwargs = evaluate_step_kwargs(schedule, int(state["step"]) if state is not None else 0)

    # -- set up: a failure here leaves the modules as they were -------------------------
    lock = RunLock(run_dir) if run_dir is not None and group.is_main else None
    with ExitStack() as holding, SetUpRollback(mods, lock) as setting_up:
        pyro.set_rng_seed(seed + group.rank)
        for m in mods:
            m.to(device)
        data = tuple(t.to(device) for t in data)
        val = tuple(t.to(device) for t in val) if val is not None else None
        check_data_sets(data, val, _owner_modules(model, guide), batch_size, transform_batch)
        if lock is not None:  # the run directory is touched from here on, checks passed
            holding.enter_context(lock)
        batch_size = group.local_batch_size(batch_size, data[0].shape[0])  # per rank
        batches = MiniBatches(data, batch_size, seed, transform_batch, group.rank, group.world_size)
        sites = _discover_param_sites(elbo, model, guide, batches.first(), first_kwargs, mods)
        params = _parameters(mods, sites)
        if not params:
            raise ArgumentError(
                "model/guide: no parameters to fit (no modules and no pyro.param sites)"
            )
        opt = make_optimizer(
            optimizer, params, lr, weight_decay, fused=deferred, capturable=cuda_graph
        )
        scheduler = make_scheduler(lr_schedule, opt, num_steps)
        if run_dir is not None:  # refused now, not at the first checkpoint
            for name, part in (("optimizer", opt), ("lr_schedule", scheduler)):
                if part is not None:
                    plain_data(part.state_dict(), f"{name}'s state")
        guard = NonFiniteGuard(on_nonfinite, max_consecutive_skips)
        log = TrainingLog(num_steps, device, progress, show=group.is_main)
        stopping = EarlyStopping(patience, params=sites)
        parts = [batches, log, stopping, guard]
        kept = options(type(opt).__qualname__)
        run = RunState(mods, opt, scheduler, parts, group, config, sites, kept)
        step = run.load_state_dict(state, seed) if state is not None else 0
        group.broadcast_state_(mods, params)
        trainer = TrainingStep(
            model, guide, elbo, batch_size, opt, params, mods, group, guard,
            parameter_names(mods, sites), clip_norm=clip_norm, fast=fast,
            keep_buffers=on_nonfinite == "skip" or deferred, deferred=deferred,
            cuda_graph=cuda_graph,
        )  # fmt: skip
        history_dir = run_dir if group.is_main else None
        checkpoint: Path | None = None

        setting_up.done()  # from here a failure leaves the last good step's state
        if config is not None and history_dir is not None:
            write_json(history_dir / "config.json", run.config)

        # -- train ---------------------------------------------------------------------
        for m in mods:
            m.train()
        with trainer.running(), log.running(step):
            while step < num_steps and not stopping.stop:
                kwargs = evaluate_step_kwargs(schedule, step)  # before the step changes anything
                rows, batch = batches.next()
                step += 1
                log.record(*trainer(step, rows, batch, kwargs))
                if scheduler is not None:
                    scheduler.step()
                log_now = step % log_every == 0 or step == num_steps
                val_now = val is not None and (step % validate_every == 0 or step == num_steps)
                save_now = run_dir is not None and (
                    step % checkpoint_every == 0 or step == num_steps
                )
                if deferred and (step % sync_every == 0 or log_now or val_now or save_now):
                    trainer.settle(batches)  # never a checkpoint after an unnoticed bad step
                if log_now:
                    log.log(step, opt.param_groups[0]["lr"])
                log.advance(len(guard.skipped))
                if val_now or (run_dir is not None and (save_now or stopping.stop)):
                    trainer.check_values(step)  # an overflow is named, not scored or saved
                if val_now:
                    trainer.refresh_versions()
                    v = mean_loss(elbo, model, guide, val, batch_size, mods, transform_batch, group)
                    log.validation(step, v)
                    if not math.isfinite(v):
                        warnings.warn(
                            f"fit: the validation loss at step {step} is {v}, not finite: the "
                            "programs give some validation rows a non-finite log-density; it "
                            "counts as no improvement",
                            RuntimeWarning,
                            stacklevel=2,
                        )
                    if stopping.update(v, mods) and run_dir is not None:
                        run.save(run_dir / "best.pt", step)
                if run_dir is not None and (save_now or stopping.stop):
                    checkpoint = run.save(run_dir / "checkpoint.pt", step)
                    log.write(history_dir)
                if stopping.stop:
                    break
            trainer.check_values(step)  # nor a model of them
        if restore_best and val is not None:
            stopping.restore_best(mods)
        for m in mods:
            m.eval()
        log.write(history_dir)
        skipped = guard.skipped
        if skipped:
            warnings.warn(
                f"fit: skipped {len(skipped)} of {step} steps whose loss or gradient was not "
                f"finite (steps {skipped[:10]}{' ...' if len(skipped) > 10 else ''})",
                RuntimeWarning,
                stacklevel=2,
            )
    return FitResult(
        history=log.history, step=step, stopped_early=stopping.stop, checkpoint=checkpoint,
        best_validation_loss=stopping.best if val is not None else None,
        skipped_steps=skipped, graphed_steps=trainer.graphed_steps,
    )  # fmt: skip
