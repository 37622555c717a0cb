r"""Coordinate reversal, the parameter-free permutation placed between coupling layers."""

from __future__ import annotations

from pyro.distributions.torch_transform import TransformModule
from torch import Tensor
from torch.distributions import constraints

from pyro_manifold._cache import FreshCache
from pyro_manifold._validation import check_input

__all__ = ["Reverse"]


class Reverse(FreshCache, TransformModule):
    r"""Reverse the order of the last dimension: :math:`x_i = u_{D+1-i}`.

    .. math::

        \log\left|\det \frac{\partial x}{\partial u}\right| = 0.

    Shapes :math:`(*, D)`. Both directions are a ``flip``; having no index tensor, it
    needs nothing moved with ``.to(device)``.

    Example:
        >>> Reverse()(torch.tensor([[1.0, 2.0, 3.0]]))
        tensor([[3., 2., 1.]])
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    volume_preserving = True

    def __init__(self) -> None:
        super().__init__(cache_size=1)

    def _call(self, u: Tensor) -> Tensor:
        return check_input("u", u, min_dim=1, nonempty=False).flip(-1)

    def _inverse(self, x: Tensor) -> Tensor:
        return check_input("x", x, min_dim=1, nonempty=False).flip(-1)

    def log_abs_det_jacobian(self, u: Tensor, x: Tensor) -> Tensor:
        """Zero, of shape :math:`(*)`."""
        return u.new_zeros(u.shape[:-1])
