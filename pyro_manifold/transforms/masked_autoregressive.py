r"""Masked autoregressive flow (MAF) layers: scoring data is one network pass.

The layer maps base/latent :math:`u` to data :math:`x` (Pyro's direction):

.. math::

    x_i = \mu_i(x_{<i}) + \sigma_i(x_{<i})\, u_i, \qquad
    \sigma_i = \operatorname{softplus}(s_i(x_{<i}) + c) + \sigma_{\min},

where :math:`(\mu, s)` come from a MADE network (Germain et al. 2015) run on the data
side and :math:`c = \log(e - 1)` makes :math:`\sigma = 1 + \sigma_{\min}` at zero output.
The inverse :math:`u = (x - \mu(x)) / \sigma(x)` and the log-determinant
:math:`\log|\det \partial x / \partial u| = \sum_i \log \sigma_i(x)` need one pass of the
network over the data, so ``log_prob`` of a :class:`~pyro.distributions.TransformedDistribution`
is cheap; sampling is sequential (``D`` passes). This is the reverse of Pyro's
:class:`~pyro.distributions.transforms.AffineAutoregressive` (IAF direction).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from torch import Tensor
from torch.distributions import constraints

from pyro_manifold._cache import FreshCache
from pyro_manifold._math import SOFTPLUS_ONE
from pyro_manifold._validation import (
    check_input,
    check_positive,
    check_positive_int,
    check_widths,
    reference_tensor,
)
from pyro_manifold.errors import ArgumentTypeError

__all__ = [
    "ConditionalMaskedAutoregressive",
    "MaskedAutoregressive",
    "conditional_masked_autoregressive",
    "masked_autoregressive",
]


class MaskedAutoregressive(FreshCache, TransformModule):
    r"""Affine autoregressive bijection in the MAF direction.

    .. math::

        x = \mu(x) + \sigma(x) \odot u, \qquad
        \log\left|\det \frac{\partial x}{\partial u}\right| = \sum_i \log \sigma_i(x).

    Shapes: ``u`` and ``x`` are :math:`(*, D)`. The inverse (data to base) and the
    log-determinant are one network pass; the forward map (sampling) is sequential,
    one pass per dimension.

    Args:
        autoregressive_nn: a MADE-like callable returning ``(mu, s)`` of shape
            :math:`(*, D)` each, with a ``permutation`` attribute giving the order
            (its length is :math:`D`; inputs of another size raise ``ValueError``).
        sigma_min: floor added to the softplus scale.

    Example:
        >>> from pyro.nn import AutoRegressiveNN
        >>> t = MaskedAutoregressive(AutoRegressiveNN(3, [8]))
        >>> x = torch.randn(5, 3)
        >>> u = t.inv(x)
        >>> torch.allclose(t(u), x, atol=1e-5)
        True

    References:
        Masked Autoregressive Flow for Density Estimation. George Papamakarios,
        Theo Pavlakou, Iain Murray, 2017. arXiv:1705.07057.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    autoregressive = True

    _cache_slots = ("_cached_x_y", "_ladj_cache")

    def __init__(
        self, autoregressive_nn: Callable[[Tensor], tuple[Tensor, Tensor]], sigma_min: float = 1e-3
    ) -> None:
        self.input_dim = _order_length(autoregressive_nn)
        sigma_min = check_positive("sigma_min", sigma_min)
        super().__init__(cache_size=1)
        self.arn = autoregressive_nn
        self.sigma_min = sigma_min
        self._ladj_cache: tuple[Tensor, Tensor] | None = None

    def _check(self, name: str, x: Tensor) -> Tensor:
        return check_input(
            name, x, reference_tensor(self.arn), event_shape=(self.input_dim,), nonempty=False
        )

    def _loc_and_log_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, s = self.arn(x)
        sigma = F.softplus(s + SOFTPLUS_ONE) + self.sigma_min
        return mu, sigma.log()

    def _inverse_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data to base in one pass, with the forward log-determinant."""
        mu, log_sigma = self._loc_and_log_scale(x)
        return (x - mu) * torch.exp(-log_sigma), log_sigma.sum(-1)

    def _call(self, u: Tensor) -> Tensor:
        """Base to data: sequential over the autoregressive order."""
        self._check("u", u)
        x = torch.zeros_like(u)
        log_sigma = torch.zeros_like(u)
        for idx in self.arn.permutation.tolist():
            mu, log_sigma = self._loc_and_log_scale(x)
            x = x.clone()
            x[..., idx] = mu[..., idx] + torch.exp(log_sigma[..., idx]) * u[..., idx]
        # After the last step every coordinate's scale depends only on earlier ones.
        self._ladj_cache = (x, log_sigma.sum(-1))
        self._remember_for("ladj", self._ladj_cache, (u, x), self._ladj_cache[1:])
        return x

    def _inverse(self, x: Tensor) -> Tensor:
        u, ladj = self._inverse_and_ladj(self._check("x", x))
        self._ladj_cache = (x, ladj)
        self._remember_for("ladj", self._ladj_cache, (x,), (ladj,))
        return u

    def log_abs_det_jacobian(self, u: Tensor, x: Tensor) -> Tensor:
        r"""Return :math:`\sum_i \log\sigma_i(x)`, reusing the value from the last call."""
        cache = self._ladj_cache
        if cache is not None and cache[0] is x and self._fresh("ladj", cache):
            return cache[1]
        return self._inverse_and_ladj(x)[1]


class ConditionalMaskedAutoregressive(ConditionalTransformModule):
    r"""Conditional twin of :class:`MaskedAutoregressive`: :math:`\mu, \sigma` see a context.

    .. math::

        x = \mu(x, h) + \sigma(x, h) \odot u.

    ``condition(h)`` returns a :class:`MaskedAutoregressive` whose network has the
    context :math:`h` of shape :math:`(*, C)` bound in.

    Args:
        autoregressive_nn: a :class:`~pyro.nn.ConditionalAutoRegressiveNN` with
            ``param_dims=[1, 1]``.
        sigma_min: floor added to the softplus scale.

    Example:
        >>> from pyro.nn import ConditionalAutoRegressiveNN
        >>> t = ConditionalMaskedAutoregressive(ConditionalAutoRegressiveNN(3, 2, [8]))
        >>> h, x = torch.randn(5, 2), torch.randn(5, 3)
        >>> t.condition(h).inv(x).shape
        torch.Size([5, 3])

    References:
        Masked Autoregressive Flow for Density Estimation. George Papamakarios,
        Theo Pavlakou, Iain Murray, 2017. arXiv:1705.07057.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, autoregressive_nn: ConditionalAutoRegressiveNN, sigma_min: float = 1e-3):
        self.input_dim = _order_length(autoregressive_nn)
        self.context_dim = getattr(autoregressive_nn, "context_dim", None) or None
        sigma_min = check_positive("sigma_min", sigma_min)
        super().__init__()
        self.nn = autoregressive_nn
        self.sigma_min = sigma_min

    def condition(self, context: Tensor) -> MaskedAutoregressive:
        """Bind the context :math:`h` of shape :math:`(*, C)` and return the plain transform."""
        event = None if self.context_dim is None else (self.context_dim,)
        check_input(
            "context", context, reference_tensor(self.nn), event_shape=event, nonempty=False
        )
        cond_nn = partial(self.nn, context=context)
        cond_nn.permutation = self.nn.permutation  # type: ignore[attr-defined]
        return MaskedAutoregressive(cond_nn, sigma_min=self.sigma_min)


def _order_length(autoregressive_nn: object) -> int:
    """:math:`D`, the length of the network's autoregressive order."""
    permutation = getattr(autoregressive_nn, "permutation", None)
    if permutation is None:
        raise ArgumentTypeError(
            "autoregressive_nn: expected a MADE network with a permutation attribute, got "
            f"{type(autoregressive_nn).__name__}"
        )
    return len(permutation)


def _hidden_dims(input_dim: int, hidden_dims: list[int] | None) -> list[int]:
    if hidden_dims is None:
        return [max(10 * input_dim, 32)] if input_dim < 100 else [1024]
    return check_widths("hidden_dims", hidden_dims, minimum=input_dim)


def masked_autoregressive(
    input_dim: int, hidden_dims: list[int] | None = None, sigma_min: float = 1e-3, **kwargs
) -> MaskedAutoregressive:
    r"""Build a :class:`MaskedAutoregressive` layer with a MADE network.

    Args:
        input_dim: the event size :math:`D` (at least 2).
        hidden_dims: MADE hidden widths, each at least ``input_dim``; default
            ``[max(10 D, 32)]`` (``[1024]`` for :math:`D \geq 100`).
        sigma_min: floor of the scale.
        **kwargs: passed to :class:`~pyro.nn.AutoRegressiveNN` (e.g. ``permutation``).

    Example:
        >>> masked_autoregressive(4).inv(torch.randn(2, 4)).shape
        torch.Size([2, 4])
    """
    check_positive_int("input_dim", input_dim, minimum=2)
    arn = AutoRegressiveNN(input_dim, _hidden_dims(input_dim, hidden_dims), **kwargs)
    return MaskedAutoregressive(arn, sigma_min=sigma_min)


def conditional_masked_autoregressive(
    input_dim: int,
    context_dim: int,
    hidden_dims: list[int] | None = None,
    sigma_min: float = 1e-3,
    **kwargs,
) -> ConditionalMaskedAutoregressive:
    """Build a :class:`ConditionalMaskedAutoregressive` layer.

    Example:
        >>> t = conditional_masked_autoregressive(4, 3)
        >>> t.condition(torch.randn(3)).inv(torch.randn(2, 4)).shape
        torch.Size([2, 4])
    """
    check_positive_int("input_dim", input_dim, minimum=2)
    check_positive_int("context_dim", context_dim)
    arn = ConditionalAutoRegressiveNN(
        input_dim, context_dim, _hidden_dims(input_dim, hidden_dims), **kwargs
    )
    return ConditionalMaskedAutoregressive(arn, sigma_min=sigma_min)
