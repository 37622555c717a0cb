r"""Pyro's rational-quadratic spline coupling (Durkan et al. 2019) with :class:`FreshCache`.

Pyro's :class:`~pyro.distributions.transforms.SplineCoupling` keys its one-entry cache
on tensor identity alone, so a distribution built once and scored again on the same
tensor (after an optimiser step, a refill in place, or a backward pass that freed the
graph) would reuse the old result. :class:`FreshSplineCoupling` is the same layer, the
same parameters and the same initialisation, with the package's cache.
"""

from __future__ import annotations

from pyro.distributions.transforms import SplineCoupling, spline_coupling
from torch import Tensor

from pyro_manifold.transforms._cache import FreshCache

__all__ = ["FreshSplineCoupling", "fresh_spline_coupling"]


class FreshSplineCoupling(FreshCache, SplineCoupling):
    r"""Pyro's ``SplineCoupling``, whose cache follows the parameters and the inputs.

    .. math::

        x_{1:d} = u_{1:d}, \qquad x_{d+1:D} = g_{\theta(u_{1:d})}(u_{d+1:D}),

    with :math:`g` an element-wise monotone rational-quadratic spline (identity outside
    ``[-bound, bound]``); :math:`\log|\det J| = \sum_j \log g'_j`.

    Example:
        >>> t = fresh_spline_coupling(2, [8])
        >>> u = torch.randn(4, 2)
        >>> torch.allclose(t.inv(t(u)), u, atol=1e-5)
        True
    """

    _cache_slots = ("_cached_x_y", "_cache_log_detJ")

    def _call(self, x: Tensor) -> Tensor:
        y = super()._call(x)
        self._forget_lower_spline()
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        x = super()._inverse(y)
        self._forget_lower_spline()
        return x

    def _forget_lower_spline(self) -> None:
        # the element-wise spline of the kept half keeps its own last result; the pass
        # above has read it, and left there it would hold a graph (no deep copy) for good
        if self.lower_spline is not None:
            self.lower_spline._cached_x_y = (None, None)
            self.lower_spline._cache_log_detJ = None

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """``log |det dy/dx|`` of shape :math:`(*)`, from the last pass when it is fresh."""
        x_old, y_old = self._cached_x_y
        if not (x is x_old and y is y_old and self._fresh("x_y", self._cached_x_y)):
            self._store(x, self._call(x), key=x)
        return self._cache_log_detJ.sum(-1)


def fresh_spline_coupling(
    input_dim: int, hidden_dims: list[int] | None = None, count_bins: int = 8
) -> FreshSplineCoupling:
    """Pyro's ``spline_coupling(input_dim, hidden_dims=..., count_bins=...)`` with a fresh cache.

    The layer is built by Pyro's helper (so its initialisation and parameters are Pyro's)
    and then given :class:`FreshSplineCoupling`'s cache, which adds no state.

    Example:
        >>> fresh_spline_coupling(3, [8], count_bins=4)(torch.zeros(1, 3)).shape
        torch.Size([1, 3])
    """
    layer = spline_coupling(input_dim, hidden_dims=hidden_dims, count_bins=count_bins)
    layer.__class__ = FreshSplineCoupling
    return layer
