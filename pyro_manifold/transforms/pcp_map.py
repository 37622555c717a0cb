r"""Partially convex potential maps (PCP-Map): the gradient of a PICNN as a conditional flow.

For a context :math:`h` the layer maps base/latent :math:`z` to data :math:`y`
(Pyro's direction) by the gradient of a potential that is strictly convex in :math:`z`,

.. math::

    y = \nabla_z G(z, h), \qquad
    G(z, h) = \operatorname{softplus}(\gamma_1)\, g(z, h)
        + \big(\operatorname{relu}(\gamma_2) + \operatorname{softplus}(\gamma_3)
        + \epsilon\big)\, \tfrac12 \lVert z \rVert^2,

with :math:`g` a :class:`~pyro_manifold.nn.PICNN` (convex in :math:`z`, any function of
:math:`h`) and :math:`\epsilon` = ``min_curvature``, a small floor. The Jacobian
:math:`\nabla^2_z G \succeq (\operatorname{relu}(\gamma_2) + \operatorname{softplus}
(\gamma_3) + \epsilon) I` is symmetric positive definite, so the map is strictly
monotone, hence invertible, and

.. math::

    \log\left|\det \frac{\partial y}{\partial z}\right| = \log\det \nabla^2_z G(z, h).

**Costs** (:math:`B` points, latent size :math:`D`, PICNN width :math:`m`). The forward
map (sampling) is one network pass and one backward pass (``torch.autograd.grad`` with
``create_graph=True``, so it is trainable), :math:`O(B m^2)`. The log-determinant is
exact: the batched Hessian comes from :meth:`~pyro_manifold.nn.PICNN.derivatives`,
which carries the :math:`m \times D` Jacobian of every layer forward,
:math:`O(B m^2 D + B m D^2)` time and :math:`O(B m D)` memory per layer (about
:math:`D` gradient evaluations, as a few large matrix products), then a Cholesky
factorisation, :math:`O(B D^3)`. This is meant for small :math:`D` (tens, as VAE
latents). The inverse (data to base) solves the strictly convex problem
:math:`\min_z G(z, h) - z^\top y` by Newton's method with a backtracking line search,
a few iterations each costing one Hessian and one Cholesky solve; its gradient comes
from the implicit function theorem (one differentiable Newton step at the solution). In
a VAE guide the inverse is never solved: Pyro's transform cache returns the sampled
base point.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pyro.distributions.conditional import ConditionalTransformModule
from torch import Tensor, nn
from torch.distributions import Transform, constraints

from pyro_manifold._cache import FreshCache
from pyro_manifold._math import softplus_inverse
from pyro_manifold._validation import (
    check_broadcast,
    check_input,
    check_positive,
    check_positive_int,
)
from pyro_manifold.errors import ArgumentError, ArgumentTypeError, ComputationError
from pyro_manifold.nn.picnn import PICNN

__all__ = [
    "ConditionalPCPMap",
    "ConditionedPCPMap",
    "PCPMapInverseError",
    "conditional_pcp_map",
]

_DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


class PCPMapInverseError(ComputationError):
    r"""Newton's method did not solve :math:`\nabla_z G(z, h) = y` to the tolerance."""


class ConditionalPCPMap(ConditionalTransformModule):
    r"""PCP-Map layer: :math:`y = \nabla_z G(z, h)` with :math:`G` strictly convex in :math:`z`.

    .. math::

        G(z, h) = \operatorname{softplus}(\gamma_1)\, g(z, h)
            + \big(\operatorname{relu}(\gamma_2) + \operatorname{softplus}(\gamma_3)
            + \epsilon\big)\, \tfrac12 \lVert z \rVert^2, \qquad
        \log|\det J| = \log\det \nabla^2_z G(z, h),

    with :math:`g` a :class:`~pyro_manifold.nn.PICNN`. ``condition(h)`` binds a context
    of shape :math:`(*, C)` and returns a :class:`ConditionedPCPMap` acting on
    :math:`(*, D)`; the batch shapes broadcast. The forward map (sampling) is one
    network pass plus one backward pass; the log-determinant costs a batched Hessian
    (:meth:`~pyro_manifold.nn.PICNN.derivatives`, about :math:`D` gradient evaluations
    as a few matrix products) and a Cholesky factorisation, :math:`O(D^3)` per point;
    the inverse (scoring data) is a Newton solve (see the module docstring).

    The initial map is close to :math:`y = z`: :math:`\operatorname{softplus}(\gamma_1)
    = 0.1` and the quadratic weight is :math:`1`.

    Args:
        input_dim: :math:`D`.
        context_dim: :math:`C`.
        picnn: the network :math:`g`; default ``PICNN(input_dim, context_dim)``.
        min_curvature: :math:`\epsilon > 0`, a floor on the smallest eigenvalue of the
            Jacobian (keeps the map invertible and the Cholesky factorisation stable).
        tol: the inverse stops when :math:`\max_i |\partial_i G(z, h) - y_i| \le`
            ``tol`` :math:`\cdot (1 + \max_i |y_i|)`; default ``1e-10`` in float64,
            ``1e-4`` in float32, ``1e-3`` otherwise.
        max_iter: the most Newton iterations of the inverse.

    Example:
        >>> t = ConditionalPCPMap(3, 2, PICNN(3, 2, [16]))
        >>> h, z = torch.randn(5, 2), torch.randn(5, 3)
        >>> y = t.condition(h)(z)
        >>> torch.allclose(t.condition(h).inv(y.clone()), z, atol=1e-4)
        True
        >>> t.condition(h).log_abs_det_jacobian(z, y).shape
        torch.Size([5])

    References:
        Efficient Neural Network Approaches for Conditional Optimal Transport with
        Applications in Bayesian Inference. Zheyu Oliver Wang, Ricardo Baptista,
        Youssef Marzouk, Lars Ruthotto, Deepanshu Verma, 2023. arXiv:2310.16975.
        Input Convex Neural Networks. Brandon Amos, Lei Xu, J. Zico Kolter, 2017.
        arXiv:1609.07152.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(
        self,
        input_dim: int,
        context_dim: int,
        picnn: PICNN | None = None,
        *,
        min_curvature: float = 1e-3,
        tol: float | None = None,
        max_iter: int = 50,
    ) -> None:
        super().__init__()
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.context_dim = check_positive_int("context_dim", context_dim)
        if picnn is None:
            picnn = PICNN(input_dim, context_dim)
        if not isinstance(picnn, PICNN):
            raise ArgumentTypeError(
                f"picnn: expected a pyro_manifold.nn.PICNN, got {type(picnn).__name__}"
            )
        if (picnn.input_dim, picnn.context_dim) != (input_dim, context_dim):
            raise ArgumentError(
                f"picnn: expected input_dim={input_dim} and context_dim={context_dim}, got a "
                f"PICNN with input_dim={picnn.input_dim}, context_dim={picnn.context_dim}"
            )
        self.picnn = picnn
        self.min_curvature = check_positive("min_curvature", min_curvature)
        self.tol = None if tol is None else check_positive("tol", tol)
        self.max_iter = check_positive_int("max_iter", max_iter)
        self.gamma1 = nn.Parameter(torch.tensor(softplus_inverse(0.1)))
        self.gamma2 = nn.Parameter(torch.tensor(0.5))
        self.gamma3 = nn.Parameter(torch.tensor(softplus_inverse(0.5)))

    def potential_weights(self) -> tuple[Tensor, Tensor]:
        r"""The weights of :math:`g` and of :math:`\tfrac12\lVert z\rVert^2` in :math:`G`.

        Returns:
            :math:`\operatorname{softplus}(\gamma_1)` and :math:`\operatorname{relu}(\gamma_2)
            + \operatorname{softplus}(\gamma_3) + \epsilon`, scalar tensors.
        """
        quadratic = F.relu(self.gamma2) + F.softplus(self.gamma3) + self.min_curvature
        return F.softplus(self.gamma1), quadratic

    def potential(self, z: Tensor, context: Tensor) -> Tensor:
        r"""The potential :math:`G(z, h)`, :math:`(*)`, of ``z`` and ``context``.

        Args:
            z: :math:`(*, D)`.
            context: :math:`(*, C)`.

        Example:
            >>> t = conditional_pcp_map(2, 1, hidden_dims=[8])
            >>> t.potential(torch.zeros(4, 2), torch.zeros(4, 1)).shape
            torch.Size([4])
        """
        scale, quadratic = self.potential_weights()
        return scale * self.picnn(z, context) + quadratic * 0.5 * (z * z).sum(-1)

    def potential_derivatives(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r""":math:`G`, :math:`\nabla_z G` and :math:`\nabla^2_z G` in one pass (see the module).

        Args:
            z: :math:`(*, D)`.
            context: :math:`(*, C)`.

        Returns:
            Tensors of shapes :math:`(*)`, :math:`(*, D)` and :math:`(*, D, D)`.

        Example:
            >>> t = conditional_pcp_map(2, 1, hidden_dims=[8])
            >>> [v.shape for v in t.potential_derivatives(torch.zeros(4, 2), torch.zeros(1))]
            [torch.Size([4]), torch.Size([4, 2]), torch.Size([4, 2, 2])]
        """
        scale, quadratic = self.potential_weights()
        value, grad, hess = self.picnn.derivatives(z, context)
        eye = torch.eye(self.input_dim, dtype=hess.dtype, device=hess.device)
        return (
            scale * value + quadratic * 0.5 * (z * z).sum(-1),
            scale * grad + quadratic * z,
            scale * hess + quadratic * eye,
        )

    def condition(self, context: Tensor) -> ConditionedPCPMap:
        r"""Bind the context :math:`h` of shape :math:`(*, C)`; return the plain transform."""
        return ConditionedPCPMap(self, context)


class ConditionedPCPMap(FreshCache, Transform):
    r"""The map :math:`z \mapsto \nabla_z G(z, h)` of a :class:`ConditionalPCPMap`, :math:`h` fixed.

    .. math::

        y = \nabla_z G(z, h), \qquad z = \arg\min_{z'}\ G(z', h) - z'^\top y, \qquad
        \log|\det J| = \log\det \nabla^2_z G(z, h).

    Returned by :meth:`ConditionalPCPMap.condition`; holds no parameters of its own, so
    gradients reach the parent module. Shapes: ``z`` and ``y`` are :math:`(*, D)` and
    broadcast against the context's batch shape. The forward map is one pass; the
    inverse is a warm-started batched Newton solve (the previous solution is the
    starting point when the shapes match, else zero) that raises
    :class:`PCPMapInverseError` if it does not converge. Under autograd the inverse is
    differentiable in ``y``, the context and the parameters through one Newton step at
    the solution (the implicit function theorem). Its one-entry cache serves a result
    only for the same input while the context, the parent's parameters and buffers and
    the grad mode are unchanged (nothing is cached in ``torch.inference_mode()``); the
    forward map works under ``torch.no_grad()`` and ``torch.inference_mode()`` too.

    Example:
        >>> layer = conditional_pcp_map(2, 3, hidden_dims=[8]).double()
        >>> t = layer.condition(torch.randn(4, 3, dtype=torch.float64))
        >>> z = torch.randn(4, 2, dtype=torch.float64)
        >>> torch.allclose(t.inv(t(z).clone()), z)
        True
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, module: ConditionalPCPMap, context: Tensor) -> None:
        if not isinstance(module, ConditionalPCPMap):
            raise ArgumentTypeError(
                f"module: expected a ConditionalPCPMap, got {type(module).__name__}"
            )
        check_input(
            "context",
            context,
            module.gamma1,
            event_shape=(module.context_dim,),
            nonempty=False,
            owner="the layer's",
        )
        super().__init__(cache_size=1)
        self.module = module
        self.context = context
        self._warm_start: Tensor | None = None

    def _cache_state(self) -> tuple[list[Tensor], list[nn.Module]]:
        return [self.context], [self.module]

    # -- shapes ------------------------------------------------------------------------
    def _batch_shape(self, shape: torch.Size | tuple[int, ...]) -> torch.Size:
        return torch.broadcast_shapes(tuple(shape[:-1]), tuple(self.context.shape[:-1]))

    def forward_shape(self, shape: torch.Size | tuple[int, ...]) -> torch.Size:
        """The input's shape broadcast against the context's batch shape."""
        return torch.Size((*self._batch_shape(shape), *shape[-1:]))

    def inverse_shape(self, shape: torch.Size | tuple[int, ...]) -> torch.Size:
        """The input's shape broadcast against the context's batch shape."""
        return self.forward_shape(shape)

    # -- the potential's derivatives -------------------------------------------------------
    def _gradient(self, z: Tensor, create_graph: bool) -> Tensor:
        r""":math:`\nabla_z G(z, h)` by one backward pass, broadcast to the full batch shape.

        With ``create_graph`` the result is differentiable in ``z`` (when it requires
        grad), the context and the parameters; otherwise it carries no graph. The
        gradient is the map's value, not a training signal, so grad is enabled locally
        (under ``torch.no_grad()`` too). Autograd records nothing in
        ``torch.inference_mode()`` and cannot use inference tensors, so there (or when
        the input, the context or a parameter is an inference tensor) the gradient
        comes from :meth:`ConditionalPCPMap.potential_derivatives`, carried forward in
        closed form (the price of about :math:`D` backward passes, no graph).
        """
        shape = (*self._batch_shape(z.shape), z.shape[-1])
        tensors = (z, self.context, *self.module.parameters())
        if torch.is_inference_mode_enabled() or any(t.is_inference() for t in tensors):
            return self.module.potential_derivatives(z.expand(shape), self.context)[1]
        if create_graph and z.requires_grad:
            point = z if z.shape == shape else z.expand(shape)
        else:
            point = z.detach().expand(shape).clone().requires_grad_(True)
        with torch.enable_grad():
            potential = self.module.potential(point, self.context)
            (grad,) = torch.autograd.grad(potential.sum(), point, create_graph=create_graph)
        return grad

    @staticmethod
    def _log_det(hessian: Tensor) -> Tensor:
        """``log det`` of symmetric positive-definite matrices by Cholesky."""
        chol, info = torch.linalg.cholesky_ex(hessian)
        log_det = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        failed = info > 0
        if bool(failed.any()):  # numerically indefinite: fall back to an LU log-det
            log_det = torch.where(failed, torch.linalg.slogdet(hessian).logabsdet, log_det)
        return log_det

    # -- the Transform interface ---------------------------------------------------------
    def _check(self, name: str, x: Tensor) -> Tensor:
        module = self.module
        check_input(
            name,
            x,
            module.gamma1,
            event_shape=(module.input_dim,),
            nonempty=False,
            owner="the layer's",
        )
        check_broadcast(name, x.shape[:-1], self.context.shape[:-1], "the context")
        return x

    def _call(self, z: Tensor) -> Tensor:
        self._check("z", z)
        return self._gradient(z, create_graph=torch.is_grad_enabled())

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r""":math:`\log\det\nabla^2_z G(x, h)`, shape :math:`(*)`: exact, by Cholesky."""
        hessian = self.module.potential_derivatives(x, self.context)[2]
        return self._log_det(hessian)

    def _inverse(self, y: Tensor) -> Tensor:
        self._check("y", y)
        z_star, chol = self._newton(y)
        self._warm_start = z_star
        if not torch.is_grad_enabled():
            return z_star
        # One Newton step at the solution with a constant Hessian: its value is z_star
        # (up to the tolerance) and its derivatives are the implicit-function ones,
        # dz/dy = H^{-1}, dz/dtheta = -H^{-1} d(grad G)/dtheta.
        residual = self._gradient(z_star, create_graph=True) - y
        return z_star - torch.cholesky_solve(residual.unsqueeze(-1), chol).squeeze(-1)

    def _newton(self, y: Tensor) -> tuple[Tensor, Tensor]:
        r"""Solve :math:`\min_z G(z, h) - z^\top y` by damped Newton steps.

        Returns the solution and the Cholesky factor of the Hessian there, both
        without graph.
        """
        module = self.module
        tol = module.tol if module.tol is not None else _DEFAULT_TOL.get(y.dtype, 1e-3)
        target = y.detach().expand(*self._batch_shape(y.shape), y.shape[-1])
        z = torch.zeros_like(target)
        if self._warm_start is not None and self._warm_start.shape == target.shape:
            z = self._warm_start.detach().clone()
        threshold = tol * (1.0 + target.abs().amax(-1))
        rounding = 100.0 * torch.finfo(y.dtype).eps
        residual_max = torch.full_like(threshold, math.inf)
        failed = False
        with torch.no_grad():
            for _ in range(module.max_iter + 1):
                potential, grad, hessian = module.potential_derivatives(z, self.context)
                value = potential - (z * target).sum(-1)
                residual = grad - target
                residual_max = residual.abs().amax(-1)
                chol, info = torch.linalg.cholesky_ex(hessian)
                failed = bool((info > 0).any())
                if failed:
                    break
                converged = residual_max <= threshold
                if bool(converged.all()):
                    return z, chol
                step = -torch.cholesky_solve(residual.unsqueeze(-1), chol).squeeze(-1)
                slope = (residual * step).sum(-1)  # directional derivative, <= 0
                t = torch.ones_like(slope)
                for _ in range(40):  # backtracking (Armijo), up to rounding in the value
                    trial = z + t.unsqueeze(-1) * step
                    new = module.potential(trial, self.context) - (trial * target).sum(-1)
                    ok = new <= value + 1e-4 * t * slope + rounding * (1.0 + value.abs())
                    if bool(ok.all()):
                        break
                    t = torch.where(ok, t, 0.5 * t)
                z = torch.where(converged.unsqueeze(-1), z, z + t.unsqueeze(-1) * step)
        bad = ~(residual_max <= threshold)
        raise PCPMapInverseError(
            f"ConditionedPCPMap inverse: Newton's method did not converge in "
            f"{module.max_iter} iterations for {int(bad.sum())} of {bad.numel()} points "
            f"(largest residual max_i |dG/dz_i - y_i| = {residual_max.max().item():.3g}, "
            f"tolerance {tol:g} * (1 + max|y|)"
            + ("; the Hessian lost positive definiteness in this precision" if failed else "")
            + "); raise max_iter or tol of the ConditionalPCPMap, or check that y is of a "
            "reasonable scale."
        )


def conditional_pcp_map(
    input_dim: int,
    context_dim: int,
    hidden_dims: list[int] | tuple[int, ...] = (64, 64),
    context_hidden_dims: list[int] | tuple[int, ...] | None = None,
    **kwargs: float | int | None,
) -> ConditionalPCPMap:
    r"""Build a :class:`ConditionalPCPMap` with a :class:`~pyro_manifold.nn.PICNN` of these widths.

    Args:
        input_dim: :math:`D`.
        context_dim: :math:`C`.
        hidden_dims: widths of the PICNN's convex path.
        context_hidden_dims: widths of its context path (default ``hidden_dims``).
        **kwargs: ``min_curvature``, ``tol``, ``max_iter`` of :class:`ConditionalPCPMap`.

    Example:
        >>> t = conditional_pcp_map(4, 3, hidden_dims=[16, 16])
        >>> t.condition(torch.randn(3)).forward_shape((2, 4))
        torch.Size([2, 4])
    """
    picnn = PICNN(input_dim, context_dim, hidden_dims, context_hidden_dims)
    return ConditionalPCPMap(input_dim, context_dim, picnn, **kwargs)  # type: ignore[arg-type]
