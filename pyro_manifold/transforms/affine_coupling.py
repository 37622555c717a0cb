r"""RealNVP affine coupling layers with a softplus scale, and their conditional twin.

The layer keeps one block of coordinates and moves the other by an affine map whose
parameters are a function of the kept block (Dinh et al. 2017):

.. math::

    x_a = u_a, \qquad x_b = \mu(u_a) + \sigma(u_a) \odot u_b, \qquad
    \sigma = \operatorname{softplus}(s(u_a) + c) + \sigma_{\min},

with :math:`c = \log(e - 1)` so that a zero network output is close to the identity.
Unlike Pyro's :class:`~pyro.distributions.transforms.AffineCoupling` the scale is a
softplus with a floor (no hard clamps, which stop gradients), ``reverse=True`` swaps the
roles of the two blocks (so stacks alternate without a permutation), and there is a
conditional twin. Both directions cost one network pass.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from pyro.nn import ConditionalDenseNN, DenseNN
from torch import Tensor
from torch.distributions import constraints

from pyro_manifold._cache import FreshCache
from pyro_manifold._math import SOFTPLUS_ONE
from pyro_manifold._validation import (
    check_bool,
    check_input,
    check_positive,
    check_positive_int,
    check_widths,
    reference_tensor,
)
from pyro_manifold.errors import ArgumentError

__all__ = [
    "AffineCoupling",
    "ConditionalAffineCoupling",
    "affine_coupling",
    "conditional_affine_coupling",
]


class AffineCoupling(FreshCache, TransformModule):
    r"""RealNVP affine coupling bijection :math:`u \mapsto x` of :math:`(*, D)` tensors.

    .. math::

        x_a = u_a,\quad x_b = \mu(u_a) + \sigma(u_a) \odot u_b,\quad
        \log\left|\det\frac{\partial x}{\partial u}\right| = \sum_j \log\sigma_j(u_a).

    The kept block :math:`a` is the first ``split_dim`` coordinates (the last
    ``split_dim`` with ``reverse=True``). Both directions are one network pass.

    Args:
        split_dim: size of the kept block :math:`a`, in ``[1, D - 1]``.
        hypernet: a callable mapping :math:`u_a` of shape :math:`(*, d_a)` to
            ``(mu, s)``, each :math:`(*, D - d_a)`.
        reverse: keep the last ``split_dim`` coordinates instead of the first.
        sigma_min: floor added to the softplus scale.
        input_dim: :math:`D`; by default read from the hypernet's ``param_dims``
            (Pyro's ``DenseNN``, :class:`~pyro_manifold.nn.BatchedDenseNN`) as
            ``split_dim + param_dims[0]``. Inputs of another size raise ``ValueError``.

    Example:
        >>> from pyro.nn import DenseNN
        >>> t = AffineCoupling(1, DenseNN(1, [8], param_dims=[2, 2]))
        >>> u = torch.randn(4, 3)
        >>> torch.allclose(t.inv(t(u)), u, atol=1e-6)
        True

    References:
        Density estimation using Real NVP. Laurent Dinh, Jascha Sohl-Dickstein,
        Samy Bengio, 2017. arXiv:1605.08803.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    _cache_slots = ("_cached_x_y", "_ladj_cache")

    def __init__(
        self,
        split_dim: int,
        hypernet: Callable[[Tensor], tuple[Tensor, Tensor]],
        reverse: bool = False,
        sigma_min: float = 1e-3,
        *,
        input_dim: int | None = None,
    ) -> None:
        self.split_dim = check_positive_int("split_dim", split_dim)
        self.input_dim = _input_dim(split_dim, hypernet, input_dim)
        sigma_min = check_positive("sigma_min", sigma_min)
        super().__init__(cache_size=1)
        self.nn = hypernet
        self.reverse = check_bool("reverse", reverse)
        self.sigma_min = sigma_min
        self._ladj_cache: tuple[Tensor, Tensor, Tensor] | None = None

    def _check(self, name: str, x: Tensor) -> Tensor:
        event = None if self.input_dim is None else (self.input_dim,)
        check_input(
            name, x, reference_tensor(self.nn), event_shape=event, min_dim=1, nonempty=False
        )
        if self.input_dim is None and x.shape[-1] <= self.split_dim:
            raise ArgumentError(
                f"{name}: expected more than split_dim = {self.split_dim} coordinates, got "
                f"shape {tuple(x.shape)}"
            )
        return x

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.reverse:
            k = x.shape[-1] - self.split_dim
            return x[..., k:], x[..., :k]
        return x[..., : self.split_dim], x[..., self.split_dim :]

    def _join(self, kept: Tensor, moved: Tensor) -> Tensor:
        return torch.cat([moved, kept] if self.reverse else [kept, moved], dim=-1)

    def _loc_and_log_scale(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        mu, s = self.nn(kept)
        return mu, (F.softplus(s + SOFTPLUS_ONE) + self.sigma_min).log()

    def _call(self, u: Tensor) -> Tensor:
        kept, moved = self._split(self._check("u", u))
        mu, log_sigma = self._loc_and_log_scale(kept)
        x = self._join(kept, mu + torch.exp(log_sigma) * moved)
        self._keep_log_det(u, x, log_sigma.sum(-1))
        return x

    def _inverse(self, x: Tensor) -> Tensor:
        kept, moved = self._split(self._check("x", x))
        mu, log_sigma = self._loc_and_log_scale(kept)
        u = self._join(kept, (moved - mu) * torch.exp(-log_sigma))
        self._keep_log_det(u, x, log_sigma.sum(-1))
        return u

    def log_abs_det_jacobian(self, u: Tensor, x: Tensor) -> Tensor:
        r"""Return :math:`\sum_j \log\sigma_j(u_a)`, shared with the last call."""
        ladj = self._kept_log_det(u, x)
        return ladj if ladj is not None else self._loc_and_log_scale(self._split(u)[0])[1].sum(-1)


class ConditionalAffineCoupling(ConditionalTransformModule):
    r"""Conditional twin of :class:`AffineCoupling`: :math:`\mu, \sigma` also see a context.

    .. math::

        x_b = \mu(u_a, h) + \sigma(u_a, h) \odot u_b.

    Args:
        split_dim: size of the kept block.
        hypernet: a :class:`~pyro.nn.ConditionalDenseNN` (or any callable taking
            ``(u_a, context=h)``) returning ``(mu, s)``.
        reverse: keep the last ``split_dim`` coordinates instead of the first.
        sigma_min: floor added to the softplus scale.
        input_dim: :math:`D`; by default ``split_dim + param_dims[0]`` of the hypernet.
        context_dim: :math:`C`; by default the hypernet's ``context_dim``. A context of
            another size raises ``ValueError``.

    Example:
        >>> t = conditional_affine_coupling(3, context_dim=2)
        >>> t.condition(torch.randn(2)).inv(torch.randn(5, 3)).shape
        torch.Size([5, 3])
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(
        self,
        split_dim: int,
        hypernet: ConditionalDenseNN,
        reverse: bool = False,
        sigma_min: float = 1e-3,
        *,
        input_dim: int | None = None,
        context_dim: int | None = None,
    ) -> None:
        self.split_dim = check_positive_int("split_dim", split_dim)
        self.input_dim = _input_dim(split_dim, hypernet, input_dim)
        if context_dim is None:
            context_dim = getattr(hypernet, "context_dim", None) or None
        self.context_dim = (
            None if context_dim is None else check_positive_int("context_dim", context_dim)
        )
        sigma_min = check_positive("sigma_min", sigma_min)
        super().__init__()
        self.nn = hypernet
        self.reverse = check_bool("reverse", reverse)
        self.sigma_min = sigma_min

    def condition(self, context: Tensor) -> AffineCoupling:
        """Bind the context :math:`h` of shape :math:`(*, C)` and return the plain transform."""
        event = None if self.context_dim is None else (self.context_dim,)
        check_input(
            "context", context, reference_tensor(self.nn), event_shape=event, nonempty=False
        )
        return AffineCoupling(
            self.split_dim,
            partial(self.nn, context=context),
            reverse=self.reverse,
            sigma_min=self.sigma_min,
            input_dim=self.input_dim,
        )


def _input_dim(split_dim: int, hypernet: object, input_dim: int | None) -> int | None:
    """``input_dim`` checked against ``split_dim``, or inferred from the hypernet."""
    if input_dim is None:
        net = hypernet.func if isinstance(hypernet, partial) else hypernet
        param_dims = getattr(net, "param_dims", None)
        if not param_dims:
            return None
        input_dim = split_dim + int(param_dims[0])
    check_positive_int("input_dim", input_dim, minimum=2)
    if split_dim > input_dim - 1:
        raise ArgumentError(
            f"split_dim: expected an int in [1, {input_dim - 1}] (input_dim = {input_dim}), "
            f"got {split_dim}"
        )
    return input_dim


def _coupling_sizes(input_dim: int, hidden_dims: list[int] | None) -> tuple[int, list[int]]:
    check_positive_int("input_dim", input_dim, minimum=2)
    if hidden_dims is None:
        hidden_dims = [max(10 * input_dim, 64)] * 2 if input_dim < 100 else [1024, 1024]
    return input_dim // 2, check_widths("hidden_dims", hidden_dims)


def affine_coupling(
    input_dim: int,
    hidden_dims: list[int] | None = None,
    reverse: bool = False,
    sigma_min: float = 1e-3,
) -> AffineCoupling:
    """Build an :class:`AffineCoupling` keeping half the coordinates, with a dense net.

    Example:
        >>> affine_coupling(5, reverse=True)(torch.randn(2, 5)).shape
        torch.Size([2, 5])
    """
    check_bool("reverse", reverse)
    split, hidden = _coupling_sizes(input_dim, hidden_dims)
    kept = split if not reverse else input_dim - split
    net = DenseNN(kept, hidden, param_dims=[input_dim - kept, input_dim - kept])
    return AffineCoupling(kept, net, reverse=reverse, sigma_min=sigma_min, input_dim=input_dim)


def conditional_affine_coupling(
    input_dim: int,
    context_dim: int,
    hidden_dims: list[int] | None = None,
    reverse: bool = False,
    sigma_min: float = 1e-3,
) -> ConditionalAffineCoupling:
    """Build a :class:`ConditionalAffineCoupling` keeping half the coordinates.

    Example:
        >>> t = conditional_affine_coupling(4, context_dim=3)
        >>> t.condition(torch.randn(6, 3))(torch.randn(6, 4)).shape
        torch.Size([6, 4])
    """
    check_positive_int("context_dim", context_dim)
    check_bool("reverse", reverse)
    split, hidden = _coupling_sizes(input_dim, hidden_dims)
    kept = split if not reverse else input_dim - split
    net = ConditionalDenseNN(
        kept, context_dim, hidden, param_dims=[input_dim - kept, input_dim - kept]
    )
    return ConditionalAffineCoupling(
        kept,
        net,
        reverse=reverse,
        sigma_min=sigma_min,
        input_dim=input_dim,
        context_dim=context_dim,
    )
