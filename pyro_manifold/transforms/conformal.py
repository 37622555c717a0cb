r"""Conformal embeddings :math:`\mathbb R^d \to \mathbb R^D` and their conditional twin.

A conformal embedding scales every tangent vector by the same factor, so its Jacobian
satisfies :math:`J^\top J = \lambda^2 I_d` and the injective change of variables needs no
determinant of a learned matrix (Ross & Cresswell 2021). Ours pads :math:`z` with zeros,
applies an orthogonal map built from Householder reflections, scales and shifts:

.. math::

    c(z) = \lambda\, H_1 H_2 \cdots H_r \begin{pmatrix} z \\ 0 \end{pmatrix} + b,\qquad
    H_i = I_D - 2\frac{v_i v_i^\top}{\lVert v_i\rVert^2},\qquad
    \lambda = \operatorname{softplus}(s + \log(e - 1)) + \lambda_{\min},

so that :math:`\tfrac12\log\det J^\top J = d\log\lambda` exactly. Only forward calls are
cached when :math:`d < D` (the inverse of a cached output returns the cached input, but
an inverse call stores nothing, so :math:`c(c^\dagger(x))` is the projection of
:math:`x`, never a replay of :math:`x`). The left inverse
:math:`c^\dagger` is the orthogonal projection onto the embedded :math:`d`-plane written
in its coordinates, :math:`c^\dagger(x) = \lambda^{-1}[H_r\cdots H_1(x - b)]_{1:d}`, and
:math:`c(c^\dagger(c(z))) = c(z)`. Both directions cost :math:`O(rD)` per point (no
network pass for the plain transform; one pass of the context network for the
conditional one). With :math:`d = D` the map is a bijective similarity transform.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from pyro.nn import DenseNN
from torch import Tensor, nn
from torch.distributions import constraints

from pyro_manifold._cache import FreshCache
from pyro_manifold._math import SOFTPLUS_ONE
from pyro_manifold._validation import (
    check_input,
    check_positive,
    check_positive_int,
    check_widths,
)
from pyro_manifold.errors import ArgumentError, ArgumentTypeError

__all__ = [
    "ConditionalConformalEmbedding",
    "ConformalEmbedding",
    "conditional_conformal_embedding",
    "conformal_embedding",
]


def _check_dims(latent_dim: int, data_dim: int, num_reflections: int | None) -> int:
    check_positive_int("latent_dim", latent_dim)
    check_positive_int("data_dim", data_dim)
    if latent_dim > data_dim:
        raise ArgumentError(
            f"latent_dim: expected an int <= data_dim = {data_dim} (an embedding cannot "
            f"lower the dimension), got {latent_dim}"
        )
    if num_reflections is None:
        return min(latent_dim, data_dim - 1) if data_dim > 1 else 1
    return check_positive_int("num_reflections", num_reflections)


def _reflect(x: Tensor, vectors: Tensor, reverse: bool, index: Tensor | None = None) -> Tensor:
    r"""Apply :math:`H_1\cdots H_r` (``reverse=False``) or :math:`H_r\cdots H_1` to ``x``.

    ``vectors`` is :math:`(r, D)` or :math:`(*, r, D)` (broadcast against ``x``); with
    ``index``, it is :math:`(G, r, D)` and point :math:`n` uses ``vectors[index[n]]``
    (gathered one reflection at a time, so no :math:`(N, r, D)` tensor is built).
    """
    units = (vectors / vectors.norm(dim=-1, keepdim=True)).unbind(-2)  # one backward stack
    for u in units if reverse else reversed(units):
        if index is not None:
            u = u[index]
        x = torch.addcmul(x, u, torch.linalg.vecdot(x, u).unsqueeze(-1), value=-2.0)
    return x


def _distinct_rows(context: Tensor) -> tuple[Tensor, Tensor] | None:
    r"""The distinct rows :math:`(G, C)` of a context :math:`(*, C)` and each row's index.

    ``None`` when there is nothing to gain (no repeated row) or when the context needs
    gradients: rows that are equal in value may still have different derivatives.
    """
    flat = context.reshape(-1, context.shape[-1])
    if context.requires_grad or flat.shape[0] < 2:
        return None
    distinct, index = torch.unique(flat, dim=0, return_inverse=True)
    if distinct.shape[0] == flat.shape[0]:
        return None
    return distinct, index.reshape(context.shape[:-1])


class _Conformal:
    """Shared maths of the plain and conditioned embeddings (given :math:`s, b, v`)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = False

    latent_dim: int
    data_dim: int
    scale_min: float

    def _log_scale(self, s: Tensor) -> Tensor:
        return (F.softplus(s + SOFTPLUS_ONE) + self.scale_min).log()

    def _embed(self, z: Tensor, s: Tensor, b: Tensor, v: Tensor, index=None) -> Tensor:
        pad = z.new_zeros(*z.shape[:-1], self.data_dim - self.latent_dim)
        y = _reflect(torch.cat([z, pad], dim=-1), v, reverse=False, index=index)
        return torch.exp(self._log_scale(s)) * y + b

    def _project(self, x: Tensor, s: Tensor, b: Tensor, v: Tensor, index=None) -> Tensor:
        y = _reflect(x - b, v, reverse=True, index=index)[..., : self.latent_dim]
        return y * torch.exp(-self._log_scale(s))

    def _ladj(self, z: Tensor, s: Tensor) -> Tensor:
        ladj = self.latent_dim * self._log_scale(s).squeeze(-1)
        return ladj.expand(torch.broadcast_shapes(ladj.shape, z.shape[:-1]))

    def _check_z(self, z: Tensor, reference: Tensor | None) -> Tensor:
        return check_input(
            "z", z, reference, event_shape=(self.latent_dim,), nonempty=False, owner="the layer's"
        )

    def _check_x(self, x: Tensor, reference: Tensor | None) -> Tensor:
        return check_input(
            "x", x, reference, event_shape=(self.data_dim,), nonempty=False, owner="the layer's"
        )

    def _inv_call(self, x: Tensor) -> Tensor:
        # Cache forward calls only: c(c^+(x)) is the projection of x, not x itself, so a
        # cached (c^+(x), x) pair would make c(c^+(x)) replay x.
        if self.bijective:
            return super()._inv_call(x)  # type: ignore[misc]
        cached = getattr(self, "_cached_x_y", (None, None))
        if cached[1] is x and self._fresh("x_y", cached):  # type: ignore[attr-defined]
            return cached[0]
        return self._inverse(x)

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        if len(shape) < 1 or shape[-1] != self.latent_dim:
            raise ArgumentError(f"shape: expected (*, {self.latent_dim}), got {tuple(shape)}")
        return torch.Size((*shape[:-1], self.data_dim))

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        if len(shape) < 1 or shape[-1] != self.data_dim:
            raise ArgumentError(f"shape: expected (*, {self.data_dim}), got {tuple(shape)}")
        return torch.Size((*shape[:-1], self.latent_dim))


class ConformalEmbedding(_Conformal, FreshCache, TransformModule):
    r"""Learned conformal embedding :math:`z \mapsto x` of :math:`(*, d)` into :math:`(*, D)`.

    .. math::

        x = c(z) = \lambda\, H_1\cdots H_r \begin{pmatrix} z \\ 0\end{pmatrix} + b,\qquad
        J^\top J = \lambda^2 I_d,\qquad
        \tfrac12 \log\det J^\top J = d \log\lambda.

    ``log_abs_det_jacobian(z, x)`` returns :math:`d\log\lambda` (shape :math:`(*)`), the
    term of the injective change of variables. The inverse is the left inverse
    :math:`c^\dagger` (projection onto the embedded plane), so ``bijective`` is ``False``
    unless :math:`d = D`; :math:`c(c^\dagger(c(z))) = c(z)`. Both directions are cheap
    (:math:`r` reflections, no network). :math:`r` reflections reach every orthonormal
    frame of :math:`d` columns when :math:`r \ge \min(d, D - 1)` (the default), up to
    the signs of the latent axes.

    Args:
        latent_dim: :math:`d \ge 1`.
        data_dim: :math:`D \ge d`.
        num_reflections: number :math:`r` of Householder reflections.
        scale_min: floor :math:`\lambda_{\min}` added to the softplus scale.

    Example:
        >>> c = ConformalEmbedding(2, 5)
        >>> z = torch.randn(4, 2)
        >>> x = c(z)
        >>> x.shape, c.inv(x.clone()).shape
        (torch.Size([4, 5]), torch.Size([4, 2]))
        >>> torch.allclose(c(c.inv(x.clone())), x, atol=1e-5)
        True

    References:
        Tractable Density Estimation on Learned Manifolds with Conformal Embedding Flows.
        Brendan Leigh Ross, Jesse C. Cresswell, 2021. arXiv:2106.05275.
    """

    def __init__(
        self,
        latent_dim: int,
        data_dim: int,
        num_reflections: int | None = None,
        scale_min: float = 1e-3,
    ) -> None:
        r = _check_dims(latent_dim, data_dim, num_reflections)
        self.scale_min = check_positive("scale_min", scale_min)
        super().__init__(cache_size=1)
        self.latent_dim, self.data_dim = latent_dim, data_dim
        self.bijective = latent_dim == data_dim
        self.reflections = nn.Parameter(torch.randn(r, data_dim))
        self.scale = nn.Parameter(torch.zeros(1))
        self.shift = nn.Parameter(torch.zeros(data_dim))

    def _call(self, z: Tensor) -> Tensor:
        self._check_z(z, self.shift)
        return self._embed(z, self.scale, self.shift, self.reflections)

    def _inverse(self, x: Tensor) -> Tensor:
        self._check_x(x, self.shift)
        return self._project(x, self.scale, self.shift, self.reflections)

    def log_abs_det_jacobian(self, z: Tensor, x: Tensor) -> Tensor:
        r"""Return :math:`\tfrac12\log\det J^\top J = d\log\lambda`, shape :math:`(*)`."""
        return self._ladj(z, self.scale)

    def frame(self) -> Tensor:
        r"""The :math:`D \times d` orthonormal frame :math:`H_1\cdots H_r[I_d; 0]`.

        Example:
            >>> w = ConformalEmbedding(2, 4).frame()
            >>> torch.allclose(w.T @ w, torch.eye(2), atol=1e-6)
            True
        """
        eye = torch.eye(self.data_dim, self.latent_dim, dtype=self.shift.dtype)
        return _reflect(eye.T.to(self.shift.device), self.reflections, reverse=False).T


class ConditionedConformalEmbedding(_Conformal, FreshCache, TransformModule):
    r"""A :class:`ConformalEmbedding` whose :math:`\lambda, b, v_i` are computed from a context.

    .. math::

        x = c(z; h) = \lambda(h)\, H_1(h)\cdots H_r(h)\begin{pmatrix} z\\0\end{pmatrix} + b(h),
        \qquad \tfrac12\log\det J^\top J = d\log\lambda(h).

    Built by :meth:`ConditionalConformalEmbedding.condition` from the parent ``module``
    and a ``context`` :math:`(*, C)`; holds no parameters of its own, so gradients reach
    the parent. Inputs :math:`(*, d)` or :math:`(*, D)` broadcast against the context's
    batch shape, and so do :meth:`forward_shape` and :meth:`inverse_shape`. The
    parent's network runs lazily, on the first use, and its outputs are reused while
    the context, the parent's parameters and the grad mode are unchanged (the package's
    one cache rule, :class:`~pyro_manifold._cache.FreshMemo`).

    Example:
        >>> c = conditional_conformal_embedding(2, 4, context_dim=3)
        >>> t = c.condition(torch.randn(5, 3))
        >>> t(torch.randn(2)).shape, t.forward_shape((2,))
        (torch.Size([5, 4]), torch.Size([5, 4]))
    """

    _cache_slots = ("_cached_x_y", "_params")

    def __init__(self, module: ConditionalConformalEmbedding, context: Tensor) -> None:
        if not isinstance(module, ConditionalConformalEmbedding):
            raise ArgumentTypeError(
                f"module: expected a ConditionalConformalEmbedding, got {type(module).__name__}"
            )
        super().__init__(cache_size=1)
        self.latent_dim, self.data_dim = module.latent_dim, module.data_dim
        self.scale_min, self.bijective = module.scale_min, module.bijective
        # the parent, not a submodule: its parameters stay its own (as with a partial)
        object.__setattr__(self, "module", module)
        self.context = context
        self._params: tuple[Tensor, Tensor, Tensor, Tensor | None] | None = None

    def _cache_state(self) -> tuple[list[Tensor], list[nn.Module]]:
        return [self.context], [self.module]

    def _get(self) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        if self._params is None or not self._fresh("params", self._params):
            self._params = self.module._params(self.context)
            self._remember_for("params", self._params, (self.context,), self._params[:3])
        return self._params

    def _call(self, z: Tensor) -> Tensor:
        return self._embed(self._check_z(z, self.module.reflections), *self._get())

    def _inverse(self, x: Tensor) -> Tensor:
        return self._project(self._check_x(x, self.module.reflections), *self._get())

    def log_abs_det_jacobian(self, z: Tensor, x: Tensor) -> Tensor:
        r"""Return :math:`d\log\lambda(h)` broadcast to the batch shape :math:`(*)`."""
        return self._ladj(z, self._get()[0])

    def forward_shape(self, shape: torch.Size | tuple[int, ...]) -> torch.Size:
        """The shape :math:`(*, D)` of the image of a :math:`(*, d)` tensor and the context."""
        out = _Conformal.forward_shape(self, torch.Size(shape))
        return torch.Size((*torch.broadcast_shapes(out[:-1], self.context.shape[:-1]), out[-1]))

    def inverse_shape(self, shape: torch.Size | tuple[int, ...]) -> torch.Size:
        """The shape :math:`(*, d)` of the left inverse of a :math:`(*, D)` tensor."""
        out = _Conformal.inverse_shape(self, torch.Size(shape))
        return torch.Size((*torch.broadcast_shapes(out[:-1], self.context.shape[:-1]), out[-1]))


class ConditionalConformalEmbedding(ConditionalTransformModule):
    r"""Conditional twin of :class:`ConformalEmbedding`: :math:`\lambda, b, v_i` depend on context.

    .. math::

        x = c(z; h) = \lambda(h)\, H_1(h)\cdots H_r(h)\begin{pmatrix} z\\0\end{pmatrix} + b(h),
        \qquad v_i(h) = v_i^{0} + \Delta v_i(h),

    with one network pass :math:`h \mapsto (s, b, \Delta v)` per distinct context (per row
    when the context needs gradients; finding the distinct rows costs one host
    synchronisation on a GPU) and learned base reflection vectors :math:`v^0` (so a zero
    network output is a fixed orthogonal frame).
    Used as the last layer :math:`c_k` of VQ-Flows chart maps with :math:`h = v_k`.

    Args:
        latent_dim: :math:`d \ge 1`.
        data_dim: :math:`D \ge d`.
        hypernet: callable mapping a context :math:`(*, C)` to ``(s, b, dv)`` of shapes
            :math:`(*, 1)`, :math:`(*, D)`, :math:`(*, rD)` (e.g. a
            :class:`~pyro.nn.DenseNN` with ``param_dims=[1, D, r * D]``).
        num_reflections: :math:`r` (must match the network's last output).
        scale_min: floor :math:`\lambda_{\min}` added to the softplus scale.
        context_dim: :math:`C`; by default the hypernet's ``input_dim`` (as for a
            :class:`~pyro.nn.DenseNN`), if it has one. A context of another size raises
            ``ValueError``.

    Example:
        >>> c = conditional_conformal_embedding(2, 3, context_dim=4)
        >>> h = torch.randn(5, 4)
        >>> c.condition(h)(torch.randn(5, 2)).shape
        torch.Size([5, 3])

    References:
        Tractable Density Estimation on Learned Manifolds with Conformal Embedding Flows.
        Brendan Leigh Ross, Jesse C. Cresswell, 2021. arXiv:2106.05275.
        VQ-Flows: Vector Quantized Local Normalizing Flows. Sahil Sidheekh, Chris B.
        Dock, Tushar Jain, Radu Balan, Maneesh K. Singh, 2022. arXiv:2203.11556.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = False

    def __init__(
        self,
        latent_dim: int,
        data_dim: int,
        hypernet: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]],
        num_reflections: int | None = None,
        scale_min: float = 1e-3,
        *,
        context_dim: int | None = None,
    ) -> None:
        r = _check_dims(latent_dim, data_dim, num_reflections)
        self.scale_min = check_positive("scale_min", scale_min)
        if context_dim is None:
            context_dim = getattr(hypernet, "input_dim", None)
        self.context_dim = (
            None if context_dim is None else check_positive_int("context_dim", context_dim)
        )
        super().__init__()
        self.latent_dim, self.data_dim = latent_dim, data_dim
        self.bijective = latent_dim == data_dim
        self.nn = hypernet
        self.reflections = nn.Parameter(torch.randn(r, data_dim))

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        """The shape :math:`(*, D)` of the image of a :math:`(*, d)` tensor."""
        return _Conformal.forward_shape(self, shape)  # type: ignore[arg-type]

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        """The shape :math:`(*, d)` of the left inverse of a :math:`(*, D)` tensor."""
        return _Conformal.inverse_shape(self, shape)  # type: ignore[arg-type]

    def _params(self, context: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        # Contexts repeat in VQ-Flows (one chart centre per point): the network and the
        # (r, D) reflections then run once per distinct context, not once per point.
        distinct = _distinct_rows(context)
        s, b, dv = self.nn(context if distinct is None else distinct[0])
        v = self.reflections + dv.reshape(*dv.shape[:-1], *self.reflections.shape)
        if distinct is None:
            return s, b, v, None
        index = distinct[1]
        return s[index], b[index], v, index

    def condition(self, context: Tensor) -> ConditionedConformalEmbedding:
        """Bind the context :math:`h` of shape :math:`(*, C)` and return the plain transform.

        The network runs lazily, on the first use of the returned transform, and again
        only when the parameters, the context or the grad mode have changed.
        """
        event = None if self.context_dim is None else (self.context_dim,)
        check_input(
            "context",
            context,
            self.reflections,
            event_shape=event,
            nonempty=False,
            owner="the layer's",
        )
        return ConditionedConformalEmbedding(self, context)


def conformal_embedding(
    latent_dim: int, data_dim: int, num_reflections: int | None = None
) -> ConformalEmbedding:
    """Build a :class:`ConformalEmbedding` at a random orthogonal frame, scale 1, shift 0.

    Example:
        >>> conformal_embedding(1, 3)(torch.zeros(2, 1)).shape
        torch.Size([2, 3])
    """
    return ConformalEmbedding(latent_dim, data_dim, num_reflections)


def conditional_conformal_embedding(
    latent_dim: int,
    data_dim: int,
    context_dim: int,
    hidden_dims: list[int] | None = None,
    num_reflections: int | None = None,
) -> ConditionalConformalEmbedding:
    """Build a :class:`ConditionalConformalEmbedding` whose parameters come from a dense net.

    Example:
        >>> c = conditional_conformal_embedding(3, 3, context_dim=2, hidden_dims=[8])
        >>> c.condition(torch.randn(2)).bijective
        True
    """
    r = _check_dims(latent_dim, data_dim, num_reflections)
    check_positive_int("context_dim", context_dim)
    hidden = [max(4 * context_dim, 32)] if hidden_dims is None else hidden_dims
    hidden = check_widths("hidden_dims", hidden)
    net = DenseNN(context_dim, hidden, param_dims=[1, data_dim, r * data_dim])
    return ConditionalConformalEmbedding(latent_dim, data_dim, net, r, context_dim=context_dim)
