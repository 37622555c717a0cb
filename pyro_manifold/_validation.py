"""Argument checks shared by the whole package.

Every public entry point checks its inputs with these helpers before it changes any
state, so that an error always names the argument, what was expected and what was
given.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "check_choice",
    "check_finite",
    "check_matches",
    "check_positive",
    "check_positive_int",
    "check_probability",
    "check_tensor",
]


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"
    return f"{type(x).__name__} {x!r}"


def check_tensor(
    name: str,
    x: object,
    *,
    event_shape: tuple[int, ...] | None = None,
    min_dim: int | None = None,
    floating: bool = True,
    finite: bool = True,
    nonempty: bool = True,
    device: torch.device | None = None,
) -> Tensor:
    r"""Check that ``x`` is a tensor fit to be passed as argument ``name``.

    Args:
        name: the argument's name, used in the error message.
        x: the value given.
        event_shape: required trailing shape, e.g. ``(D,)``; ``None`` skips the check.
        min_dim: smallest number of dimensions; defaults to ``len(event_shape)``.
        floating: require a floating-point dtype.
        finite: require every entry to be finite.
        nonempty: require at least one element.
        device: required device (compared by type and index).

    Returns:
        ``x`` unchanged.

    Raises:
        TypeError: ``x`` is not a tensor or has the wrong dtype.
        ValueError: wrong shape, device, an empty batch or non-finite values.

    Example:
        >>> check_tensor("x", torch.zeros(3, 2), event_shape=(2,)).shape
        torch.Size([3, 2])
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {_describe(x)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {_describe(x)}")
    if event_shape is not None:
        k = len(event_shape)
        need = k if min_dim is None else min_dim
        if x.dim() < need or tuple(x.shape[x.dim() - k :]) != tuple(event_shape):
            raise ValueError(
                f"{name}: expected shape (*, {', '.join(map(str, event_shape))})"
                f" (at least {need} dims), got {_describe(x)}"
            )
    elif min_dim is not None and x.dim() < min_dim:
        raise ValueError(f"{name}: expected at least {min_dim} dims, got {_describe(x)}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got {_describe(x)}")
    if device is not None:
        want = torch.device(device)
        if x.device.type != want.type or (want.index is not None and x.device.index != want.index):
            raise ValueError(f"{name}: expected a tensor on device {want}, got {_describe(x)}")
    if finite and x.is_floating_point():
        check_finite(name, x)
    return x


def check_finite(name: str, x: Tensor) -> Tensor:
    """Raise ``ValueError`` naming ``name`` if ``x`` holds NaN or infinite values.

    Example:
        >>> check_finite("x", torch.ones(2)).tolist()
        [1.0, 1.0]
    """
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name}: expected finite values, got {int(bad.sum())} non-finite "
            f"entries (first at index {idx}: {x[idx].item()}) in a tensor of shape "
            f"{tuple(x.shape)}"
        )
    return x


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Check that ``value`` is an integer ``>= minimum``.

    Example:
        >>> check_positive_int("num_layers", 3)
        3
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {_describe(value)}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def check_positive(name: str, value: object, allow_zero: bool = False) -> float:
    """Check that ``value`` is a finite real number ``> 0`` (or ``>= 0``).

    Example:
        >>> check_positive("lr", 1e-3)
        0.001
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: expected a real number, got {_describe(value)}")
    ok = value >= 0 if allow_zero else value > 0
    if not ok or not math.isfinite(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a finite number {bound}, got {value}")
    return float(value)


def check_probability(name: str, value: object) -> float:
    """Check that ``value`` lies in ``[0, 1]``.

    Example:
        >>> check_probability("fraction", 0.25)
        0.25
    """
    value = check_positive(name, value, allow_zero=True)
    if value > 1:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value}")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...] | list[str]) -> str:
    """Check that ``value`` is one of ``choices``.

    Example:
        >>> check_choice("flow", "maf", ("maf", "realnvp"))
        'maf'
    """
    if value not in choices:
        raise ValueError(f"{name}: expected one of {sorted(choices)}, got {value!r}")
    return value  # type: ignore[return-value]


def check_matches(name: str, x: Tensor, reference: Tensor, owner: str = "the model's") -> Tensor:
    """Check that ``x`` has the dtype and device of ``reference`` (e.g. a model's buffer).

    Example:
        >>> check_matches("x", torch.zeros(2), torch.ones(3)).shape
        torch.Size([2])
    """
    if x.dtype != reference.dtype or x.device != reference.device:
        raise ValueError(
            f"{name}: expected dtype {reference.dtype} on device {reference.device} ({owner}), "
            f"got dtype {x.dtype} on device {x.device}"
        )
    return x
