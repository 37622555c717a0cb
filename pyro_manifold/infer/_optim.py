r"""The optimiser and learning-rate schedule of :func:`~pyro_manifold.infer.fit`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pyro_manifold._validation import check_choice

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
        return optimizer(params)
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
    """``None``, cosine annealing over ``num_steps``, or ``lr_schedule(opt)``."""
    if lr_schedule is None:
        return None
    if callable(lr_schedule):
        return lr_schedule(opt)
    check_choice("lr_schedule", lr_schedule, ("cosine",))
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=num_steps)
