r"""Spline layers: Pyro's with the package's cache, and a conditional spline coupling.

All use Pyro's monotone rational-quadratic spline (Durkan et al. 2019), identity outside
``[-bound, bound]``, whose bin widths, heights, knot derivatives (and, for the linear
order, the rational-linear :math:`\lambda`) come from a network. Pyro's own layers key
their one-entry cache on tensor identity alone; the ``Fresh`` ones here are the same
layers (subclasses built by their constructors) with the package's cache:

* :class:`FreshSplineCoupling` (and :func:`fresh_spline_coupling`, built as Pyro's
  ``spline_coupling`` helper builds it): both directions one network pass.
* :class:`ConditionalSplineCoupling` keeps a block :math:`u_a` and moves the other by
  splines whose parameters are :math:`\theta(u_a, h)` for a context :math:`h`; both
  directions are one network pass.
* :class:`FreshSplineAutoregressive` is Pyro's
  :class:`~pyro.distributions.transforms.SplineAutoregressive` (IAF direction: sampling
  is one pass, scoring data is sequential, :math:`D` passes) with the package's cache;
  :class:`FreshConditionalSplineAutoregressive` is its conditional twin.
"""

from __future__ import annotations

from functools import partial

import torch
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.transforms import (
    ConditionalSpline,
    ConditionalSplineAutoregressive,
    SplineAutoregressive,
    SplineCoupling,
)
from pyro.nn import ConditionalDenseNN, DenseNN
from torch import Tensor
from torch.distributions import Transform, constraints

from pyro_manifold._cache import FreshCache
from pyro_manifold._validation import (
    check_input,
    check_positive,
    check_positive_int,
    check_widths,
)
from pyro_manifold.errors import ArgumentError

__all__ = [
    "ConditionalSplineCoupling",
    "FreshConditionalSplineAutoregressive",
    "FreshPyroSpline",
    "FreshSplineAutoregressive",
    "FreshSplineCoupling",
    "conditional_spline_coupling",
    "fresh_spline_coupling",
    "spline_param_dims",
]


def spline_param_dims(count_bins: int, moved: int = 1) -> list[int]:
    """The output blocks of a spline's network: widths, heights, derivatives, lambdas.

    ``moved`` coordinates each take ``count_bins`` widths, heights and lambdas and
    ``count_bins - 1`` derivatives (Pyro's linear-order layout).

    Example:
        >>> spline_param_dims(4, moved=2)
        [8, 8, 6, 8]
    """
    b = check_positive_int("count_bins", count_bins, minimum=2)
    return [moved * b, moved * b, moved * (b - 1), moved * b]


class FreshPyroSpline(FreshCache):
    """The fresh cache for Pyro's spline layers, which keep their last log-determinant.

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
    check_positive_int("count_bins", count_bins, minimum=2)
    split = input_dim // 2
    hidden = (
        [10 * input_dim] * 2 if hidden_dims is None else check_widths("hidden_dims", hidden_dims)
    )
    m = input_dim - split
    hypernet = DenseNN(split, hidden, param_dims=spline_param_dims(count_bins, m))
    return FreshSplineCoupling(input_dim, split, hypernet, count_bins=count_bins)


class _ConditionedSplineCoupling(FreshCache, Transform):
    r"""A :class:`ConditionalSplineCoupling` with its context bound: :math:`u \mapsto x`."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    _cache_slots = ("_cached_x_y", "_ladj_cache")

    def __init__(self, owner: ConditionalSplineCoupling, context: Tensor) -> None:
        super().__init__(cache_size=1)
        self.split_dim, self.input_dim = owner.split_dim, owner.input_dim
        self.spline = ConditionalSpline(
            partial(owner.nn, context=context),
            owner.input_dim - owner.split_dim,
            owner.count_bins,
            owner.bound,
        )
        self._ladj_cache: tuple[Tensor, Tensor, Tensor] | None = None

    def _cache_state(self) -> tuple[list[Tensor], list[torch.nn.Module]]:
        # the hypernetwork and the context sit inside the element-wise spline's partial
        bound = self.spline.nn
        return [bound.keywords["context"]], [bound.func]

    def _pass(self, z: Tensor, forward: bool) -> Tensor:
        check_input("x" if not forward else "u", z, event_shape=(self.input_dim,), nonempty=False)
        kept, moved = z[..., : self.split_dim], z[..., self.split_dim :]
        spline = self.spline.condition(kept)
        out = spline(moved) if forward else spline.inv(moved)
        inp, res = (moved, out) if forward else (out, moved)
        ladj = spline.log_abs_det_jacobian(inp, res).sum(-1)
        joined = torch.cat([kept, out], dim=-1)
        u, x = (z, joined) if forward else (joined, z)
        self._keep_log_det(u, x, ladj)
        return joined

    def _call(self, u: Tensor) -> Tensor:
        return self._pass(u, forward=True)

    def _inverse(self, x: Tensor) -> Tensor:
        return self._pass(x, forward=False)

    def log_abs_det_jacobian(self, u: Tensor, x: Tensor) -> Tensor:
        r"""Return :math:`\sum_j \log g_j'(u_{b,j})`, shape :math:`(*)`, as last computed."""
        ladj = self._kept_log_det(u, x)
        if ladj is None:
            self._pass(u, forward=True)
            ladj = self._ladj_cache[2]
        return ladj


class ConditionalSplineCoupling(ConditionalTransformModule):
    r"""Spline coupling conditioned on a context :math:`h`: :math:`x_b = g_{\theta(u_a, h)}(u_b)`.

    .. math::

        x_a = u_a, \qquad x_b = g_{\theta(u_a, h)}(u_b), \qquad
        \log\left|\det\frac{\partial x}{\partial u}\right| = \sum_j \log g_j'(u_{b,j}),

    :math:`g` an element-wise monotone rational-quadratic spline on
    ``[-bound, bound]`` (identity outside), :math:`a` the first ``split_dim``
    coordinates. ``condition(h)`` binds :math:`h` of shape :math:`(*, C)` and returns a
    plain transform on :math:`(*, D)`; both directions are one network pass.

    Args:
        input_dim: :math:`D \ge 2`.
        split_dim: size of the kept block :math:`a`, in ``[1, D - 1]``.
        hypernet: a :class:`~pyro.nn.ConditionalDenseNN` (or a callable taking
            ``(u_a, context=h)``) returning the four blocks of
            :func:`spline_param_dims` ``(count_bins, D - split_dim)``.
        count_bins: spline bins, at least 2.
        bound: half-width of the spline's interval.

    Example:
        >>> t = conditional_spline_coupling(3, context_dim=2, hidden_dims=[8])
        >>> h, u = torch.randn(5, 2), torch.randn(5, 3)
        >>> x = t.condition(h)(u)
        >>> torch.allclose(t.condition(h).inv(x), u, atol=1e-5)
        True

    References:
        Neural Spline Flows. Conor Durkan, Artur Bekasov, Iain Murray, George
        Papamakarios, 2019. arXiv:1906.04032.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(
        self,
        input_dim: int,
        split_dim: int,
        hypernet: ConditionalDenseNN,
        count_bins: int = 8,
        bound: float = 3.0,
    ) -> None:
        self.input_dim = check_positive_int("input_dim", input_dim, minimum=2)
        self.split_dim = check_positive_int("split_dim", split_dim)
        if split_dim > input_dim - 1:
            raise ArgumentError(
                f"split_dim: expected an int in [1, {input_dim - 1}], got {split_dim}"
            )
        self.count_bins = check_positive_int("count_bins", count_bins, minimum=2)
        self.bound = check_positive("bound", bound)
        super().__init__()
        self.nn = hypernet

    def condition(self, context: Tensor) -> _ConditionedSplineCoupling:
        """Bind the context :math:`h` of shape :math:`(*, C)` and return the plain transform."""
        context_dim = getattr(self.nn, "context_dim", None)
        check_input("context", context, event_shape=(context_dim,) if context_dim else None)
        return _ConditionedSplineCoupling(self, context)


def conditional_spline_coupling(
    input_dim: int,
    context_dim: int,
    hidden_dims: list[int] | None = None,
    count_bins: int = 8,
    bound: float = 3.0,
) -> ConditionalSplineCoupling:
    """Build a :class:`ConditionalSplineCoupling` keeping the first half, with a dense net.

    ``hidden_dims`` defaults to ``[max(10 D, 64)] * 2``.

    Example:
        >>> t = conditional_spline_coupling(4, context_dim=3)
        >>> t.condition(torch.randn(6, 3))(torch.randn(6, 4)).shape
        torch.Size([6, 4])
    """
    check_positive_int("input_dim", input_dim, minimum=2)
    check_positive_int("context_dim", context_dim)
    hidden = [max(10 * input_dim, 64)] * 2 if hidden_dims is None else hidden_dims
    split = input_dim // 2
    net = ConditionalDenseNN(
        split, context_dim, hidden, param_dims=spline_param_dims(count_bins, input_dim - split)
    )
    return ConditionalSplineCoupling(input_dim, split, net, count_bins, bound)


class FreshSplineAutoregressive(FreshPyroSpline, SplineAutoregressive):
    r"""Pyro's ``SplineAutoregressive``, whose cache follows the parameters and the inputs.

    .. math::

        x_i = g_{\theta_i(u_{<i})}(u_i), \qquad
        \log\left|\det\frac{\partial x}{\partial u}\right| = \sum_i \log g_i'(u_i),

    :math:`\theta` from a MADE network on the base side (the IAF direction): sampling
    (:math:`u \to x`) is one network pass, scoring (:math:`x \to u`) is sequential,
    :math:`D` passes. Build it as Pyro's class,
    ``FreshSplineAutoregressive(input_dim, autoregressive_nn, count_bins, bound)``, with
    a network whose ``param_dims`` are :func:`spline_param_dims` ``(count_bins)``.

    Example:
        >>> from pyro.nn import AutoRegressiveNN
        >>> net = AutoRegressiveNN(3, [8], param_dims=spline_param_dims(8))
        >>> t = FreshSplineAutoregressive(3, net)
        >>> u = torch.randn(4, 3)
        >>> torch.allclose(t.inv(t(u)), u, atol=1e-5)
        True

    References:
        Neural Spline Flows. Conor Durkan, Artur Bekasov, Iain Murray, George
        Papamakarios, 2019. arXiv:1906.04032.
    """


class FreshConditionalSplineAutoregressive(ConditionalSplineAutoregressive):
    r"""Pyro's ``ConditionalSplineAutoregressive`` whose conditioned layers keep a fresh cache.

    ``condition(h)`` returns a :class:`FreshSplineAutoregressive` on the network with the
    context bound, so a conditioned layer held across optimiser steps (or a context
    refilled in place) recomputes, as every other cached transform of the package does.
    The map is Pyro's: :math:`x_i = g_{\theta_i(u_{<i}, h)}(u_i)`.

    Example:
        >>> from pyro.nn import ConditionalAutoRegressiveNN
        >>> net = ConditionalAutoRegressiveNN(2, 3, [8], param_dims=spline_param_dims(8))
        >>> t = FreshConditionalSplineAutoregressive(2, net).condition(torch.randn(3))
        >>> u = torch.randn(4, 2)
        >>> torch.allclose(t.inv(t(u)), u, atol=1e-5)
        True
    """

    def condition(self, context: Tensor) -> FreshSplineAutoregressive:
        """The layer at ``context`` (network shared, weights not copied)."""
        bound = partial(self.nn, context=context)
        bound.permutation = bound.func.permutation
        bound.get_permutation = bound.func.get_permutation
        return FreshSplineAutoregressive(self.input_dim, bound, **self.kwargs)
