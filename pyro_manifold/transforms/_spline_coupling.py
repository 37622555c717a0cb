r"""Pyro's rational-quadratic spline coupling (Durkan et al. 2019) with :class:`FreshCache`.

Pyro's :class:`~pyro.distributions.transforms.SplineCoupling` keys its one-entry cache
on tensor identity alone, so a distribution built once and scored again on the same
tensor (after an optimiser step, under another grad mode, after a refill in place, or
after a backward pass that freed the graph) would reuse the old result.
:class:`FreshSplineCoupling` is a subclass with the package's cache, built by its own
constructor; :func:`fresh_spline_coupling` builds it with the architecture and the
initialisation of Pyro's ``spline_coupling`` helper.
"""

from __future__ import annotations

from pyro.distributions.transforms import SplineCoupling
from pyro.nn import DenseNN
from torch import Tensor

from pyro_manifold._cache import FreshCache
from pyro_manifold._validation import check_positive_int, check_widths

__all__ = ["FreshSplineCoupling", "fresh_spline_coupling"]


class FreshPyroSpline(FreshCache):
    """:class:`FreshCache` for Pyro's spline layers, which keep their last log-determinant.

    Pyro's ``SplineCoupling`` and ``SplineAutoregressive`` leave the element-wise
    log-derivatives of their last pass in ``_cache_log_detJ``; it is reused only while
    that pass's entry is fresh. Put it first among the bases.
    """

    _cache_slots = ("_cached_x_y", "_cache_log_detJ")

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """``log |det dy/dx|`` of shape :math:`(*)`, from the last pass when it is fresh."""
        x_old, y_old = self._cached_x_y
        if not (x is x_old and y is y_old and self._fresh("x_y", self._cached_x_y)):
            self._store(x, self._call(x), key=x)  # type: ignore[attr-defined]
        return self._cache_log_detJ.sum(-1)  # type: ignore[attr-defined]


class FreshSplineCoupling(FreshPyroSpline, SplineCoupling):
    r"""Pyro's ``SplineCoupling``, whose cache follows the parameters and the inputs.

    .. math::

        x_{1:d} = h(u_{1:d}), \qquad x_{d+1:D} = g_{\theta(u_{1:d})}(u_{d+1:D}),

    with :math:`g` an element-wise monotone rational-quadratic spline (identity outside
    ``[-bound, bound]``) whose knots come from the hypernetwork, and :math:`h` a learned
    element-wise spline (the identity with ``identity=True``);
    :math:`\log|\det J| = \sum_j \log g'_j + \sum_i \log h'_i`. Both directions are one
    network pass. The arguments are those of Pyro's ``SplineCoupling``:
    ``(input_dim, split_dim, hypernet, count_bins=8, bound=3.0, order="linear",
    identity=False)``.

    Example:
        >>> t = fresh_spline_coupling(2, [8])
        >>> u = torch.randn(4, 2)
        >>> torch.allclose(t.inv(t(u)), u, atol=1e-5)
        True

    References:
        Neural Spline Flows. Conor Durkan, Artur Bekasov, Iain Murray, George
        Papamakarios, 2019. arXiv:1906.04032.
    """

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


def fresh_spline_coupling(
    input_dim: int, hidden_dims: list[int] | None = None, count_bins: int = 8
) -> FreshSplineCoupling:
    r"""A :class:`FreshSplineCoupling` on :math:`\mathbb R^D`, built as Pyro's ``spline_coupling``.

    The first :math:`d = \lfloor D/2 \rfloor` coordinates are kept (through a learned
    element-wise spline) and feed a :class:`~pyro.nn.DenseNN` of widths ``hidden_dims``
    (default ``[10 D, 10 D]``) that outputs the widths, heights, derivatives and
    slopes of the :math:`D - d` splines of the other coordinates, on
    ``[-3, 3]``. For the same seed the parameters equal those of
    ``pyro.distributions.transforms.spline_coupling(input_dim, hidden_dims=hidden_dims,
    count_bins=count_bins)``.

    Args:
        input_dim: :math:`D \ge 2`.
        hidden_dims: hidden widths of the hypernetwork.
        count_bins: spline bins.

    Example:
        >>> fresh_spline_coupling(3, [8], count_bins=4)(torch.zeros(1, 3)).shape
        torch.Size([1, 3])
    """
    check_positive_int("input_dim", input_dim, minimum=2)
    check_positive_int("count_bins", count_bins)
    split = input_dim // 2
    hidden = (
        [10 * input_dim] * 2 if hidden_dims is None else check_widths("hidden_dims", hidden_dims)
    )
    m = input_dim - split
    hypernet = DenseNN(
        split,
        hidden,
        param_dims=[m * count_bins, m * count_bins, m * (count_bins - 1), m * count_bins],
    )
    return FreshSplineCoupling(input_dim, split, hypernet, count_bins=count_bins)
