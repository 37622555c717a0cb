r"""Pieces shared by the dataset modules: the :class:`ToyData` record and argument checks.

Every sampler builds its own :class:`torch.Generator` from ``seed`` (never the global
random state), draws in float64 on the CPU and casts at the end, so a result depends only
on its arguments: the float32 sample is the rounded float64 sample.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_manifold._validation import check_positive_int
from pyro_manifold.errors import ArgumentError, ArgumentTypeError

__all__ = ["ToyData"]


class ToyData(NamedTuple):
    r"""A data set: points and, where the data set has them, integer labels.

    Attributes:
        data: the points, :math:`(N, D)`.
        labels: int64 labels :math:`(N,)` (mixture component, wing, ring, digit, ...),
            or ``None`` for data sets without labels.

    Example:
        >>> d = ToyData(torch.zeros(3, 2), None)
        >>> d.data.shape, d.labels
        (torch.Size([3, 2]), None)
        >>> x, y = d
    """

    data: Tensor
    labels: Tensor | None


def check_seed(seed: object) -> int:
    """Check that ``seed`` is an int ``>= 0`` (a :class:`torch.Generator` seed).

    Example:
        >>> check_seed(3)
        3
    """
    return check_positive_int("seed", seed, minimum=0)


def check_dtype(dtype: object) -> torch.dtype:
    """Check that ``dtype`` is a real floating-point :class:`torch.dtype`.

    Example:
        >>> check_dtype(torch.float64)
        torch.float64
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ArgumentTypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
    return dtype


def check_real(name: str, value: object) -> float:
    """Check that ``value`` is a finite real number (any sign).

    Example:
        >>> check_real("rate", -0.5)
        -0.5
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentTypeError(
            f"{name}: expected a real number, got {type(value).__name__} {value!r}"
        )
    if not math.isfinite(value):
        raise ArgumentError(f"{name}: expected a finite real number, got {value}")
    return float(value)


def make_generator(seed: int) -> torch.Generator:
    """Return a CPU :class:`torch.Generator` seeded with ``seed``.

    Example:
        >>> g = make_generator(0)
        >>> torch.equal(torch.rand(2, generator=g), torch.rand(2, generator=make_generator(0)))
        True
    """
    return torch.Generator().manual_seed(seed)


def randn(generator: torch.Generator, *shape: int) -> Tensor:
    """Standard normal float64 draws from ``generator``.

    Example:
        >>> randn(make_generator(0), 2, 3).shape
        torch.Size([2, 3])
    """
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def rand(generator: torch.Generator, *shape: int) -> Tensor:
    """Uniform :math:`[0, 1)` float64 draws from ``generator``.

    Example:
        >>> bool((rand(make_generator(0), 5) < 1).all())
        True
    """
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def randint(generator: torch.Generator, high: int, num: int) -> Tensor:
    """Uniform int64 draws from ``{0, ..., high - 1}``.

    Example:
        >>> randint(make_generator(0), 3, 4).dtype
        torch.int64
    """
    return torch.randint(high, (num,), generator=generator, dtype=torch.int64)
