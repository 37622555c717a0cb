r"""What a :func:`~pyro_manifold.infer.fit` checkpoint holds, in one format, and how it is restored.

A checkpoint is one flat dictionary of tensors and plain data (see
:mod:`pyro_manifold.infer.checkpoint`): ``modules`` (their state dicts), ``params``
(the ``pyro.param`` sites that are not module parameters, unconstrained), ``optimizer``,
``scheduler``, ``step``, ``rng``, ``config``, the data order (``position``, ``perm``,
``order_generator``), the log (``history``, ``elapsed``), early stopping
(``best_validation_loss``, ``bad_validations``), ``skipped_steps``, ``fit_options``
(the options of :func:`~pyro_manifold.infer.fit` that a resumed run must keep, see
:func:`fit_options`) and, in a data-parallel run, ``world_size`` and ``rank_rng``. The
step is the whole state of a ``step_kwargs`` schedule, so a resumed run continues it
exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyro
import torch
from torch import Tensor, nn

from pyro_manifold.errors import CheckpointError
from pyro_manifold.infer._optim import load_optimizer_state
from pyro_manifold.infer.distributed import DataParallelGroup

__all__ = [
    "RunState",
    "check_resume",
    "fit_options",
    "param_sites",
    "rng_state",
    "set_rng_state",
]


class _Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def rng_state() -> dict[str, Any]:
    """The states of torch's (CPU and CUDA), numpy's and Python's global generators.

    They are the generators ``pyro.set_rng_seed`` seeds; the numpy state is kept as plain
    data (a tensor and numbers), so that it fits in a checkpoint.

    Example:
        >>> import numpy as np
        >>> state = rng_state(); a, b = torch.rand(1), np.random.rand()
        >>> set_rng_state(state)
        >>> torch.equal(a, torch.rand(1)), b == np.random.rand()
        (True, True)
    """
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators from :func:`rng_state` (also after a checkpoint round trip)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:  # checkpoints written before numpy's state was kept have none
        kind, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state(
            (kind, keys.numpy().astype(np.uint32), int(position), int(has_gauss), float(cached))
        )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def param_sites(names: Iterable[str], modules: Sequence[nn.Module]) -> dict[str, Tensor]:
    """The ``pyro.param`` sites among ``names`` that are not parameters of ``modules``.

    Values are the param store's unconstrained tensors (the ones an optimiser updates),
    read through its public ``named_parameters``; sorted by name.

    Example:
        >>> pyro.clear_param_store()
        >>> positive = pyro.distributions.constraints.positive
        >>> _ = pyro.param("scale", torch.ones(2), constraint=positive)
        >>> param_sites(["scale", "not_a_param"], [])["scale"]  # log(1) = 0
        tensor([0., 0.], requires_grad=True)
    """
    store = dict(pyro.get_param_store().named_parameters())
    owned = {id(p) for m in modules for p in m.parameters()}  # registered twice: saved once
    return {
        name: store[name]
        for name in sorted(set(names))
        if name in store and id(store[name]) not in owned
    }


#: The keys every checkpoint of ``fit`` holds (a resume reads them all).
_REQUIRED = ("modules", "params", "optimizer", "step", "rng", "history", "position", "perm",
             "order_generator")  # fmt: skip

#: Keys of an optimizer's parameter group that are not its settings: the parameters, and
#: ``initial_lr``, which a learning-rate scheduler adds to every group it drives (so a
#: checkpoint of a scheduled run holds it and a fresh optimizer does not, yet).
_NOT_SETTINGS = frozenset({"params", "initial_lr"})


def fit_options(
    optimizer: object, lr: float, weight_decay: float, lr_schedule: object, num_steps: int,
    seed: int, optimizer_class: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The options of ``fit`` that a checkpoint fixes, as plain data (its ``fit_options``).

    Loading a checkpoint replaces the optimiser's settings (``lr``, ``weight_decay``, Adam
    against AdamW), the schedule's state (a cosine schedule's length is ``num_steps``) and
    the generators that ``seed`` seeds, so a resumed run given others would silently
    train with the checkpoint's: :func:`check_resume` refuses it. A callable optimiser or
    schedule is recorded as ``"callable"`` (its own settings are not compared); the class
    of the optimiser it makes is ``optimizer_class`` (Adam against Adamax, say).

    Example:
        >>> fit_options("adam", 1e-3, 0, "cosine", 100, 0)["lr_schedule"]
        'cosine'
    """
    named = isinstance(optimizer, str)
    return {
        "optimizer": optimizer if named else "callable",
        "lr": float(lr) if named else None,
        "weight_decay": float(weight_decay) if named else None,
        "lr_schedule": lr_schedule if lr_schedule is None or isinstance(lr_schedule, str)
        else "callable",
        "num_steps": int(num_steps),
        "seed": int(seed),
        "optimizer_class": optimizer_class,
    }  # fmt: skip


def _check_options(state: dict[str, Any], source: object, options: dict[str, Any]) -> None:
    """Refuse a resumed run whose ``fit`` options differ from those its checkpoint fixes."""
    step = state.get("step")
    if isinstance(step, int) and step > options["num_steps"]:
        raise CheckpointError(
            f"num_steps: expected at least the {step} steps of checkpoint {source} "
            f"(num_steps counts the resumed ones), got {options['num_steps']}"
        )
    saved = state.get("fit_options")
    if not isinstance(saved, dict):  # a checkpoint written before they were kept
        return
    named = saved.get("optimizer") == options["optimizer"] != "callable"
    keys = ["optimizer", *(["lr", "weight_decay"] if named else []),
            *(["optimizer_class"] if "optimizer_class" in saved else []),  # kept since session 17
            "lr_schedule", "seed"]  # fmt: skip
    why = {"lr_schedule": "its schedule continues", "seed": "its generators continue"}
    for key in keys:
        if saved.get(key) != options[key]:
            reason = why.get(key, "its optimiser state replaces this run's")
            raise CheckpointError(
                f"{key}: expected {saved.get(key)!r} as in checkpoint {source} ({reason}), "
                f"got {options[key]!r}"
            )
    if options["lr_schedule"] == "cosine" and saved.get("num_steps") != options["num_steps"]:
        raise CheckpointError(
            f"num_steps: expected {saved.get('num_steps')!r} as in checkpoint {source} "
            f"(lr_schedule='cosine' anneals over num_steps), got {options['num_steps']}"
        )


def check_resume(
    state: dict[str, Any],
    source: object,
    modules: Sequence[nn.Module],
    num_rows: int,
    optimizer: torch.optim.Optimizer,
    options: dict[str, Any] | None = None,
) -> None:
    """Refuse a checkpoint that does not fit this run, before anything is changed.

    Checked: the number of modules and, for each, the names, shapes and dtypes of its
    state (as ``load_state_dict`` would need them), that it holds every other part of a
    ``fit`` checkpoint, the number of data rows (the saved
    data order indexes them), the optimiser's kind (the hyper-parameters it needs, e.g.
    Adam's ``betas`` against SGD's ``momentum``; a learning-rate scheduler may have added
    others, such as ``OneCycleLR``'s ``max_lr``; Adam against Adamax by ``options``'
    ``optimizer_class``) and, given ``options``, that
    ``num_steps`` is no less than the checkpoint's step and that the options of
    :func:`fit_options` are the checkpoint's (``num_steps`` too with
    ``lr_schedule="cosine"``). The message names the option, the saved and the given
    value.

    Args:
        state: the loaded checkpoint.
        source: its path, for the message.
        modules: this run's modules.
        num_rows: the rows of this run's training data.
        optimizer: an optimiser of this run's kind (any parameters).
        options: this run's :func:`fit_options`; ``None``: not checked.

    Raises:
        CheckpointError: naming the checkpoint, the expected and the found.

    Example:
        >>> lin = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        >>> saved = {"modules": [torch.nn.Linear(3, 1).state_dict()], "perm": torch.arange(4),
        ...          "optimizer": opt.state_dict()}
        >>> check_resume(saved, "c.pt", [lin], 4, opt)
        Traceback (most recent call last):
        ...
        pyro_manifold.errors.CheckpointError: resume: checkpoint c.pt does not fit module 0
        (Linear): weight: expected shape (1, 2) float32, found (1, 3) float32
    """
    saved = state.get("modules")
    if not isinstance(saved, list) or len(saved) != len(modules):
        found = len(saved) if isinstance(saved, list) else type(saved).__name__
        raise CheckpointError(
            f"resume: checkpoint {source} holds {found} modules, expected {len(modules)} "
            f"({[type(m).__name__ for m in modules]})"
        )
    for i, (m, saved_state) in enumerate(zip(modules, saved, strict=True)):
        problem = _state_mismatch(m.state_dict(), saved_state)
        if problem:
            raise CheckpointError(
                f"resume: checkpoint {source} does not fit module {i} ({type(m).__name__}): "
                f"{problem}"
            )
    missing = sorted(k for k in _REQUIRED if k not in state)
    if missing:
        raise CheckpointError(
            f"resume: checkpoint {source} lacks {missing}, expected a checkpoint written by "
            f"fit (weights alone load with load_state_dict)"
        )
    perm = state.get("perm")
    if isinstance(perm, Tensor) and perm.shape[0] != num_rows:
        raise CheckpointError(
            f"resume: checkpoint {source} was trained on {perm.shape[0]} data rows, "
            f"expected the same number, got {num_rows}"
        )
    if options is not None:  # first: a changed option is named as such
        _check_options(state, source, options)
    groups = state.get("optimizer", {}).get("param_groups", [])
    want = {k for k in optimizer.param_groups[0] if k not in _NOT_SETTINGS}
    for group in groups:
        have = {k for k in group if k not in _NOT_SETTINGS}
        if want - have:  # more than want: what a learning-rate scheduler added
            raise CheckpointError(
                f"resume: checkpoint {source} holds the state of another optimizer "
                f"(expected the settings {sorted(want)}, found {sorted(have)})"
            )


def _state_mismatch(mine: dict[str, Any], saved: object) -> str | None:
    """What stops ``saved`` from loading into a module whose state is ``mine``, if anything."""
    if not isinstance(saved, dict):
        return f"expected a state dict, found {type(saved).__name__}"
    missing = sorted(set(mine) - set(saved))
    unexpected = sorted(set(saved) - set(mine))
    if missing or unexpected:
        return f"expected this model's keys; missing {missing[:5]}, unexpected {unexpected[:5]}"
    for key, value in mine.items():
        other = saved[key]
        if isinstance(value, Tensor):
            if (
                not isinstance(other, Tensor)
                or other.shape != value.shape
                or (other.dtype != value.dtype)
            ):
                found = (
                    f"{tuple(other.shape)} {str(other.dtype).removeprefix('torch.')}"
                    if isinstance(other, Tensor) else type(other).__name__
                )  # fmt: skip
                return (
                    f"{key}: expected shape {tuple(value.shape)} "
                    f"{str(value.dtype).removeprefix('torch.')}, found {found}"
                )
    return None


class RunState:
    r"""Writes and restores every piece of a run's state as one checkpoint dictionary.

    Args:
        modules: the trained modules (their state dicts, in order).
        optimizer: the run's optimiser.
        scheduler: its learning-rate scheduler, or ``None``.
        parts: objects with ``state_dict()``/``load_state_dict()`` whose flat
            dictionaries are merged into the checkpoint (the data order, the log,
            early stopping, the non-finite guard).
        group: the data-parallel group (its extra keys; rank RNG states).
        config: plain data describing the run.
        params: the ``pyro.param`` sites trained beside the modules.
        options: the run's :func:`fit_options`, saved for :func:`check_resume`.

    Example:
        >>> lin = torch.nn.Linear(1, 1)
        >>> opt = torch.optim.SGD(lin.parameters(), lr=0.1)
        >>> state = RunState([lin], opt, None, [], DataParallelGroup(torch.device("cpu")))
        >>> sorted(state.state_dict(step=3))[:4]
        ['config', 'modules', 'optimizer', 'params']
    """

    def __init__(
        self,
        modules: Sequence[nn.Module],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        parts: Sequence[_Stateful],
        group: DataParallelGroup,
        config: dict[str, Any] | None = None,
        params: dict[str, Tensor] | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.modules, self.optimizer, self.scheduler = list(modules), optimizer, scheduler
        self.parts, self.group, self.config = list(parts), group, dict(config or {})
        self.params, self.options = dict(params or {}), options

    def state_dict(self, step: int) -> dict[str, Any]:
        """The checkpoint dictionary at ``step`` (a collective in a data-parallel run)."""
        state: dict[str, Any] = {
            "modules": [m.state_dict() for m in self.modules],
            "params": {name: p.detach().clone() for name, p in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "step": step,
            "rng": rng_state(),
            "config": self.config,
        }
        if self.options is not None:
            state["fit_options"] = dict(self.options)
        for part in self.parts:
            state.update(part.state_dict())
        state.update(self.group.checkpoint_extras(rng_state()))
        return state

    def save(self, path: Path, step: int) -> Path:
        """Write the checkpoint at ``step`` to ``path`` atomically (rank 0 writes)."""
        return self.group.save_checkpoint(self.state_dict(step), path)

    def load_state_dict(self, state: dict[str, Any], seed: int) -> int:
        """Restore everything from a checkpoint; returns its step.

        The ``pyro.param`` sites and the optimiser's parameter count are checked first
        (:class:`~pyro_manifold.errors.CheckpointError`), before any tensor is loaded.
        """
        saved_params = sorted(state.get("params", {}))
        if saved_params != sorted(self.params):
            raise CheckpointError(
                f"resume: expected the checkpoint's pyro.param sites {saved_params}, "
                f"this run has {sorted(self.params)}"
            )
        saved_counts = [len(g["params"]) for g in state["optimizer"]["param_groups"]]
        counts = [len(g["params"]) for g in self.optimizer.param_groups]
        if saved_counts != counts:
            raise CheckpointError(
                f"resume: expected optimiser groups of {counts} tensors as in this run, "
                f"the checkpoint has {saved_counts} (it trained other parameters: another "
                f"model, or one in another stage, as a VQFlow before set_stage)"
            )
        for m, saved in zip(self.modules, state["modules"], strict=True):
            m.load_state_dict(saved)
        store = dict(pyro.get_param_store().named_parameters())
        with torch.no_grad():
            for name, value in state["params"].items():
                if name in store:
                    store[name].copy_(value)
        load_optimizer_state(self.optimizer, state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        for part in self.parts:
            part.load_state_dict(state)
        set_rng_state(self.group.rng_state(state, seed))
        return int(state["step"])
