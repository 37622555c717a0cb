r"""The optimiser and learning-rate schedule of :func:`~pyro_manifold.infer.fit`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pyro_manifold._validation import check_choice
from pyro_manifold.errors import ArgumentTypeError

__all__ = ["OPTIMIZERS", "load_optimizer_state", "make_optimizer", "make_scheduler"]

OPTIMIZERS = ("adam", "adamw", "sgd")

OptimizerChoice = str | Callable[[list[Tensor]], torch.optim.Optimizer]


def make_optimizer(
    optimizer: OptimizerChoice, params: list[Tensor], lr: float, weight_decay: float,
    fused: bool = False, capturable: bool = False,
) -> torch.optim.Optimizer:  # fmt: skip
    """One ``torch.optim`` optimiser for all ``params``: by name, or ``optimizer(params)``.

    Named optimisers are fused (one kernel for all tensors) on CUDA and wherever a step
    must be skippable on the device (``fused``); ``capturable`` keeps Adam's step
    count on the device, so that a CUDA graph can replay the update.

    Example:
        >>> make_optimizer("sgd", [torch.zeros(2, requires_grad=True)], 0.1, 0.0)
        SGD (...
    """
    if callable(optimizer):
        made = optimizer(params)
        if not isinstance(made, torch.optim.Optimizer):
            raise ArgumentTypeError(
                f"optimizer: expected a callable params -> torch.optim.Optimizer, got one that "
                f"returned {type(made).__name__} {made!r:.80}"
            )
        return made
    name = check_choice("optimizer", optimizer, OPTIMIZERS)
    flags = {"fused": True} if fused or all(p.is_cuda for p in params) else {}
    if capturable:
        flags["capturable"] = True
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **flags)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **flags)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def load_optimizer_state(opt: torch.optim.Optimizer, state_dict: dict) -> None:
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


def make_scheduler(lr_schedule: str | Callable | None, opt: torch.optim.Optimizer, num_steps: int):
    """``None``, cosine annealing over ``num_steps``, or ``lr_schedule(opt)``.

    What ``lr_schedule(opt)`` returns must be a ``torch.optim.lr_scheduler.LRScheduler``
    that ``fit`` can step without arguments once per step (not ``ReduceLROnPlateau``,
    which needs a metric); anything else is refused here, before the first step.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> make_scheduler(lambda o: None, opt, 10)
        Traceback (most recent call last):
        ...
        pyro_manifold.errors.ArgumentTypeError: lr_schedule: expected a callable ...
    """
    if lr_schedule is None:
        return None
    if callable(lr_schedule):
        made = lr_schedule(opt)
        if isinstance(made, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ArgumentTypeError(
                "lr_schedule: expected a scheduler stepped without arguments once per step, "
                "got ReduceLROnPlateau (it needs a metric)"
            )
        if not isinstance(made, torch.optim.lr_scheduler.LRScheduler):
            raise ArgumentTypeError(
                f"lr_schedule: expected a callable optimizer -> "
                f"torch.optim.lr_scheduler.LRScheduler, got one that returned "
                f"{type(made).__name__} {made!r:.80}"
            )
        return made
    check_choice("lr_schedule", lr_schedule, ("cosine",))
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=num_steps)
