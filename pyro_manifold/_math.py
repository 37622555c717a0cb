"""Small numerical helpers shared across the package."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["SOFTPLUS_ONE", "softplus_inverse"]


def softplus_inverse(y: float | Tensor) -> float | Tensor:
    r"""The :math:`x` with :math:`\log(1 + e^x) = y`, for :math:`y > 0`, computed stably.

    Takes a number or a tensor (elementwise).

    Example:
        >>> round(softplus_inverse(math.log(2.0)), 12)
        0.0
        >>> softplus_inverse(torch.nn.functional.softplus(torch.tensor([-3.0, 20.0])))
        tensor([-3., 20.])
    """
    if isinstance(y, Tensor):
        return y + torch.log(-torch.expm1(-y))
    return y + math.log(-math.expm1(-y))


#: :math:`\operatorname{softplus}^{-1}(1) = \log(e - 1)`: a zero network output maps to scale 1.
SOFTPLUS_ONE = softplus_inverse(1.0)
