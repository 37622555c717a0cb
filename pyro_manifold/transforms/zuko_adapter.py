r"""Zuko flows as Pyro transforms: bring a zuko flow into any model of the package.

Pyro's own flows are frozen and Pyro points to zuko for new ones. A zuko flow
(``zuko.flows.MAF``, ``NSF``, ...) is a module whose ``transform(c)`` builds a
``torch.distributions.Transform`` from data to noise; a Pyro flow maps noise to data.
:class:`ZukoTransform` wraps the zuko transform the other way round as a Pyro
``TransformModule`` (parameters registered, one-entry cache, the log-determinant
computed with the map by zuko's ``call_and_ladj``), :class:`ConditionalZukoTransform`
as a ``ConditionalTransformModule``. zuko is an optional dependency
(``pip install -e .[zuko]``); this module does not import it.
"""

from __future__ import annotations

from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn
from torch.distributions import constraints

from pyro_manifold._cache import FreshCache
from pyro_manifold._validation import check_input
from pyro_manifold.errors import ArgumentTypeError

__all__ = ["ConditionalZukoTransform", "ZukoTransform"]


def _lazy_transform(flow: object) -> nn.Module:
    """The lazy transform of a zuko ``Flow`` (its ``transform``), or a lazy transform itself."""
    if not isinstance(flow, nn.Module) or not callable(flow):
        raise ArgumentTypeError(
            f"flow: expected a zuko Flow or LazyTransform (an nn.Module whose call with a "
            f"context returns a transform), got {type(flow).__name__}"
        )
    if isinstance(getattr(flow, "transform", None), nn.Module) and hasattr(flow, "base"):
        return flow.transform  # a zuko Flow: its base is replaced by the model's
    return flow


class ZukoTransform(FreshCache, TransformModule):
    r"""A zuko flow's transform :math:`f` as a Pyro transform :math:`x = f^{-1}(u)`.

    .. math::

        x = f^{-1}(u \mid c), \qquad
        \log\left|\det\frac{\partial x}{\partial u}\right|
            = -\log\left|\det\frac{\partial f}{\partial x}(x \mid c)\right|.

    zuko's transform :math:`f` maps data to noise, Pyro's transforms noise to data, so
    zuko's cheap direction is here the inverse: for ``zuko.flows.MAF`` scoring data
    (:math:`x \to u`) is one pass and sampling is sequential; for coupling flows
    (``NSF``, ``RealNVP``) both are one pass. Shapes :math:`(*, D)`; the zuko flow's
    base distribution is not used (the model's base replaces it). The zuko module is a
    submodule, so its parameters are registered (``pyro.module``, ``.to(device)``,
    state dicts).

    Args:
        flow: a zuko ``Flow`` (e.g. ``zuko.flows.NSF(D, transforms=3)``) or a zuko
            ``LazyTransform``, without a context.
        context: the context :math:`c` bound by :meth:`ConditionalZukoTransform.condition`
            (``None`` for an unconditional flow).

    Example:
        >>> import pytest; zuko = pytest.importorskip("zuko")
        >>> t = ZukoTransform(zuko.flows.NSF(2, transforms=2, hidden_features=[8]))
        >>> u = torch.randn(5, 2)
        >>> x = t(u)
        >>> t.log_abs_det_jacobian(u, x).shape, torch.allclose(t.inv(x.clone()), u, atol=1e-4)
        (torch.Size([5]), True)
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    _cache_slots = ("_cached_x_y", "_ladj_cache")

    def __init__(self, flow: nn.Module, context: Tensor | None = None) -> None:
        lazy = _lazy_transform(flow)
        super().__init__(cache_size=1)
        self.flow = lazy
        self.context = context
        self._ladj_cache: tuple[Tensor, Tensor, Tensor] | None = None

    def _call(self, u: Tensor) -> Tensor:
        check_input("u", u, min_dim=1, nonempty=False)
        x, ladj = self.flow(self.context).inv.call_and_ladj(u)
        self._keep_log_det(u, x, ladj)
        return x

    def _inverse(self, x: Tensor) -> Tensor:
        check_input("x", x, min_dim=1, nonempty=False)
        u, ladj = self.flow(self.context).call_and_ladj(x)
        self._keep_log_det(u, x, -ladj)
        return u

    def log_abs_det_jacobian(self, u: Tensor, x: Tensor) -> Tensor:
        r"""Return :math:`\log|\det \partial x/\partial u|`, shape :math:`(*)`, as last computed."""
        ladj = self._kept_log_det(u, x)
        return ladj if ladj is not None else -self.flow(self.context).call_and_ladj(x)[1]


class ConditionalZukoTransform(ConditionalTransformModule):
    r"""A conditional zuko flow as a Pyro ``ConditionalTransformModule``.

    .. math::

        x = f^{-1}(u \mid h),

    ``condition(h)`` with :math:`h` of shape :math:`(*, C)` returns a
    :class:`ZukoTransform` with the context bound (broadcast against the inputs
    :math:`(*, D)` as zuko does). Directions and costs as for :class:`ZukoTransform`.

    Args:
        flow: a zuko ``Flow`` or ``LazyTransform`` built with ``context=C``.

    Example:
        >>> import pytest; zuko = pytest.importorskip("zuko")
        >>> t = ConditionalZukoTransform(zuko.flows.MAF(2, context=3, hidden_features=[8]))
        >>> t.condition(torch.randn(5, 3))(torch.randn(5, 2)).shape
        torch.Size([5, 2])
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, flow: nn.Module) -> None:
        lazy = _lazy_transform(flow)
        super().__init__()
        self.flow = lazy

    def condition(self, context: Tensor) -> ZukoTransform:
        """Bind the context :math:`h` of shape :math:`(*, C)` and return the plain transform."""
        check_input("context", context, nonempty=False)
        return ZukoTransform(self.flow, context)
