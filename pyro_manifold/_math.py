"""Small numerical helpers shared across the package."""

from __future__ import annotations

import math

__all__ = ["SOFTPLUS_ONE", "softplus_inverse"]


def softplus_inverse(y: float) -> float:
    r"""The :math:`x` with :math:`\log(1 + e^x) = y`, for :math:`y > 0`, computed stably.

    Example:
        >>> round(softplus_inverse(math.log(2.0)), 12)
        0.0
    """
    return y + math.log(-math.expm1(-y))


#: :math:`\operatorname{softplus}^{-1}(1) = \log(e - 1)`: a zero network output maps to scale 1.
SOFTPLUS_ONE = softplus_inverse(1.0)
