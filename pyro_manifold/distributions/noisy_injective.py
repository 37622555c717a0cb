r"""The noisy injective likelihood :math:`p(x|z)` and its stochastic inverse :math:`q(z|x)`.

Cunningham et al. (2020) embed a latent :math:`z \in \mathbb R^d` in
:math:`\mathbb R^D` (:math:`d < D`) with Gaussian noise,

.. math::

    p(x|z) = \mathcal N(x; Az + b, \Sigma), \qquad \Sigma = \operatorname{diag}(\sigma^2).

As a function of :math:`z` this is an unnormalised Gaussian; normalising it gives the
*stochastic inverse*

.. math::

    q(z|x) = \mathcal N(z; \Lambda^{-1}u, \Lambda^{-1}), \qquad
    \Lambda = A^\top\Sigma^{-1}A, \quad u = A^\top\Sigma^{-1}(x - b),

whose mean is the pseudo-inverse :math:`z^+ = \Lambda^{-1}u`, and the normaliser is
the *manifold term* (their eq. 9)

.. math::

    \log \int p(x|z)\,dz = -\tfrac{D-d}{2}\log 2\pi - \sum_i \log\sigma_i
        - \tfrac12 \log\det\Lambda - \tfrac12 \lVert x - b - Az^+ \rVert^2_{\Sigma^{-1}},

so that :math:`\log p(x|z) = \log\int p(x|z')dz' + \log q(z|x)` for every :math:`z`.
Everything is computed with Cholesky factors of the :math:`k \times k` blocks of
:math:`\Lambda` (:class:`~pyro_manifold.distributions.BlockLinear`), never an explicit
inverse, and batched over :math:`x`.

References:
    Normalizing Flows Across Dimensions. Edmond Cunningham, Renos Zabounidis, Abhinav
    Agrawal, Ina Fiterau, Daniel Sheldon, 2020. arXiv:2006.13070.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.util import is_validation_enabled
from torch import Tensor
from torch.distributions import constraints
from torch.distributions.utils import _standard_normal

from pyro_manifold._validation import check_input, check_positive
from pyro_manifold.distributions.block_linear import BlockLinear
from pyro_manifold.errors import ArgumentError, ArgumentTypeError

__all__ = ["NoisyInjective", "StochasticInverse", "log_manifold_term"]

_LOG_2PI = math.log(2 * math.pi)
_OWNER = "the linear map's"


def _check_common(linear: BlockLinear, bias: Tensor, noise_scale: Tensor) -> None:
    if not isinstance(linear, BlockLinear):
        raise ArgumentTypeError(f"linear: expected a BlockLinear, got {type(linear).__name__}")
    check_input("bias", bias, linear.weight, event_shape=(linear.data_dim,), owner=_OWNER)
    check_input(
        "noise_scale", noise_scale, linear.weight, event_shape=(linear.data_dim,), owner=_OWNER
    )
    if is_validation_enabled() and not noise_scale.is_meta and not bool((noise_scale > 0).all()):
        raise ArgumentError(
            f"noise_scale: expected positive values, got min {noise_scale.min().item():g}"
        )


def _check_value(value: Tensor, linear: BlockLinear, size: int) -> Tensor:
    """Metadata of a ``log_prob`` argument; its values are checked by ``validate_args``."""
    return check_input(
        "value",
        value,
        linear.weight,
        event_shape=(size,),
        nonempty=False,
        finite=False,
        owner=_OWNER,
    )


def _precision_cholesky(linear: BlockLinear, noise_scale: Tensor) -> Tensor:
    r"""Cholesky factors :math:`L_p` of the blocks of :math:`\Lambda`, shape :math:`(P, k, k)`."""
    lam = linear.gram(noise_scale.pow(-2))
    chol, info = torch.linalg.cholesky_ex(lam)
    # checked under validation (a host read); without it a singular block gives NaN,
    # which fit reports as a non-finite loss
    if is_validation_enabled() and bool((info > 0).any()):
        raise ArgumentError(
            "weight: A^T Sigma^-1 A is not positive definite, i.e. A is (numerically) rank "
            f"deficient; expected full column rank {linear.latent_dim}, got a singular block "
            f"(block {int((info > 0).nonzero()[0])})"
        )
    return chol


def _pseudo_inverse(
    linear: BlockLinear, chol: Tensor, bias: Tensor, noise_scale: Tensor, x: Tensor
) -> Tensor:
    r"""Blocks of :math:`z^+ = \Lambda^{-1} A^\top \Sigma^{-1}(x - b)`, shape :math:`(*, P, k)`."""
    u = linear.latent_to_blocks(linear.rmatvec((x - bias) * noise_scale.pow(-2)))
    return torch.cholesky_solve(u.unsqueeze(-1), chol).squeeze(-1)


def log_manifold_term(x: Tensor, linear: BlockLinear, bias: Tensor, noise_scale: Tensor) -> Tensor:
    r"""The manifold term :math:`\log \int \mathcal N(x; Az + b, \Sigma)\, dz` (eq. 9).

    .. math::

        -\tfrac{D-d}{2}\log 2\pi - \sum_i \log\sigma_i - \tfrac12\log\det\Lambda
        - \tfrac12 \lVert x - b - Az^+\rVert^2_{\Sigma^{-1}}

    Args:
        x: :math:`(*, D)`.
        linear: :math:`A`.
        bias: :math:`b`, :math:`(D,)`.
        noise_scale: :math:`\sigma`, :math:`(D,)`, positive.

    Returns:
        :math:`(*)`; differentiable in every argument.

    Example:
        >>> A = BlockLinear(torch.tensor([[[1.0], [0.0]]]))
        >>> log_manifold_term(torch.tensor([3.0, 0.0]), A, torch.zeros(2), torch.ones(2))
        tensor(-0.9189)
    """
    _check_common(linear, bias, noise_scale)
    check_input("x", x, linear.weight, event_shape=(linear.data_dim,), owner=_OWNER)
    chol = _precision_cholesky(linear, noise_scale)
    return _log_manifold_term(x, linear, chol, bias, noise_scale)


def _log_manifold_term(x, linear, chol, bias, noise_scale) -> Tensor:
    z_plus = linear.blocks_to_latent(_pseudo_inverse(linear, chol, bias, noise_scale, x))
    residual = (x - bias - linear.matvec(z_plus)) / noise_scale
    log_det_lambda = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum()
    return (
        -0.5 * (linear.data_dim - linear.latent_dim) * _LOG_2PI
        - noise_scale.log().sum()
        - 0.5 * log_det_lambda
        - 0.5 * residual.pow(2).sum(-1)
    )


class NoisyInjective(TorchDistribution):
    r"""The likelihood :math:`p(x|z) = \mathcal N(x; Az + b, s\,\Sigma)` of a noisy injective layer.

    .. math::

        x = Az + b + \sqrt{s}\,\sigma \odot \epsilon, \qquad \epsilon \sim \mathcal N(0, I_D).

    The noise multiplier :math:`s \geq 0` scales the covariance at sampling time:
    :math:`s = 0` samples exactly on the manifold :math:`\{Az + b\}` (and has no density),
    :math:`s = 1` is the trained model.

    Args:
        latent: :math:`z`, shape :math:`(*, d)`; the batch shape is :math:`(*)`.
        linear: :math:`A` as a :class:`~pyro_manifold.distributions.BlockLinear`.
        bias: :math:`b`, :math:`(D,)`.
        noise_scale: :math:`\sigma`, :math:`(D,)`, positive.
        noise_multiplier: :math:`s \geq 0`.

    Example:
        >>> from pyro_manifold.distributions import BlockLinear
        >>> A = BlockLinear(torch.randn(1, 3, 2))
        >>> p = NoisyInjective(torch.zeros(4, 2), A, torch.zeros(3), torch.ones(3))
        >>> p.batch_shape, p.event_shape, p.log_prob(p.sample()).shape
        (torch.Size([4]), torch.Size([3]), torch.Size([4]))
    """

    arg_constraints = {
        "latent": constraints.real_vector,
        "bias": constraints.real_vector,
        "noise_scale": constraints.independent(constraints.positive, 1),
    }
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        latent: Tensor,
        linear: BlockLinear,
        bias: Tensor,
        noise_scale: Tensor,
        noise_multiplier: float = 1.0,
        validate_args: bool | None = None,
    ) -> None:
        _check_common(linear, bias, noise_scale)
        check_input(
            "latent",
            latent,
            linear.weight,
            event_shape=(linear.latent_dim,),
            finite=False,  # checked by validate_args (arg_constraints)
            owner=_OWNER,
        )
        self.noise_multiplier = check_positive(
            "noise_multiplier", noise_multiplier, allow_zero=True
        )
        self.latent, self.linear, self.bias, self.noise_scale = latent, linear, bias, noise_scale
        self.loc = linear.matvec(latent) + bias
        super().__init__(latent.shape[:-1], torch.Size([linear.data_dim]), validate_args)

    def expand(self, batch_shape, _instance=None):
        """Expand the batch shape (the latent and the mean are broadcast)."""
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(NoisyInjective, _instance)
        new.latent = self.latent.expand(batch_shape + (self.linear.latent_dim,))
        new.linear, new.bias, new.noise_scale = self.linear, self.bias, self.noise_scale
        new.noise_multiplier = self.noise_multiplier
        new.loc = self.loc.expand(batch_shape + (self.linear.data_dim,))
        super(NoisyInjective, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        """:math:`Az + b`, shape :math:`(*, D)`."""
        return self.loc

    @property
    def variance(self) -> Tensor:
        r""":math:`s\sigma^2`, broadcast to :math:`(*, D)`."""
        return (self.noise_multiplier * self.noise_scale.pow(2)).expand(self.loc.shape)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        r"""Reparameterised sample :math:`Az + b + \sqrt{s}\sigma\epsilon`."""
        shape = self._extended_shape(sample_shape)
        loc = self.loc.expand(shape)
        if self.noise_multiplier == 0:
            return loc
        eps = _standard_normal(shape, dtype=loc.dtype, device=loc.device)
        return loc + math.sqrt(self.noise_multiplier) * self.noise_scale * eps

    def log_prob(self, value: Tensor) -> Tensor:
        r"""The log-density :math:`\log\mathcal N(x; Az+b, s\Sigma)`, shape :math:`(*)`.

        There is no density at :math:`s = 0` (a ``ValueError`` is raised).
        """
        _check_value(value, self.linear, self.linear.data_dim)
        if self._validate_args:
            self._validate_sample(value)
        if self.noise_multiplier == 0:
            raise ArgumentError("noise_multiplier: s = 0 puts all mass on the manifold; no density")
        scale = math.sqrt(self.noise_multiplier) * self.noise_scale
        z = (value - self.loc) / scale
        return -0.5 * z.pow(2).sum(-1) - scale.log().sum() - 0.5 * self.linear.data_dim * _LOG_2PI


class StochasticInverse(TorchDistribution):
    r"""The stochastic inverse :math:`q(z|x) = \mathcal N(z; \Lambda^{-1}u, \Lambda^{-1})`.

    .. math::

        \Lambda = A^\top\Sigma^{-1}A, \quad u = A^\top\Sigma^{-1}(x - b), \qquad
        z = \Lambda^{-1}u + L^{-\top}\epsilon, \quad \Lambda = LL^\top.

    It is :math:`p(x|z)` normalised in :math:`z`:
    :math:`\log q(z|x) = \log p(x|z) - \log\int p(x|z')dz'`. Used as a guide it makes the
    manifold term of the ELBO exact (zero variance). ``mean`` is the pseudo-inverse
    :math:`z^+`, the least-squares solution of :math:`Az + b \approx x` in the
    :math:`\Sigma^{-1}` norm. Sampling and scoring cost one Cholesky factorisation of
    the :math:`k \times k` blocks of :math:`\Lambda` (shared by the whole batch).

    Args:
        x: shape :math:`(*, D)`; the batch shape is :math:`(*)`.
        linear: :math:`A` as a :class:`~pyro_manifold.distributions.BlockLinear`.
        bias: :math:`b`, :math:`(D,)`.
        noise_scale: :math:`\sigma`, :math:`(D,)`, positive.

    Example:
        >>> from pyro_manifold.distributions import BlockLinear
        >>> A = BlockLinear(torch.tensor([[[1.0], [0.0]]]))
        >>> q = StochasticInverse(torch.tensor([[3.0, 5.0]]), A, torch.zeros(2), torch.ones(2))
        >>> q.mean, q.covariance_matrix
        (tensor([[3.]]), tensor([[[1.]]]))
    """

    arg_constraints = {
        "x": constraints.real_vector,
        "bias": constraints.real_vector,
        "noise_scale": constraints.independent(constraints.positive, 1),
    }
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        x: Tensor,
        linear: BlockLinear,
        bias: Tensor,
        noise_scale: Tensor,
        validate_args: bool | None = None,
    ) -> None:
        _check_common(linear, bias, noise_scale)
        check_input("x", x, linear.weight, event_shape=(linear.data_dim,), owner=_OWNER)
        self.x, self.linear, self.bias, self.noise_scale = x, linear, bias, noise_scale
        self._chol = _precision_cholesky(linear, noise_scale)
        self._loc_blocks = _pseudo_inverse(linear, self._chol, bias, noise_scale, x)
        super().__init__(x.shape[:-1], torch.Size([linear.latent_dim]), validate_args)

    def expand(self, batch_shape, _instance=None):
        r"""Expand the batch shape; the factorisation of :math:`\Lambda` is shared.

        ``x`` and the pseudo-inverse are broadcast, not recomputed.
        """
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(StochasticInverse, _instance)
        new.x = self.x.expand(batch_shape + (self.linear.data_dim,))
        new.linear, new.bias, new.noise_scale = self.linear, self.bias, self.noise_scale
        new._chol = self._chol
        new._loc_blocks = self._loc_blocks.expand(batch_shape + self._loc_blocks.shape[-2:])
        super(StochasticInverse, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        r"""The pseudo-inverse :math:`z^+ = \Lambda^{-1}u`, shape :math:`(*, d)`."""
        return self.linear.blocks_to_latent(self._loc_blocks)

    @property
    def mode(self) -> Tensor:
        """Equal to :attr:`mean`."""
        return self.mean

    @property
    def covariance_matrix(self) -> Tensor:
        r""":math:`\Lambda^{-1}` as a dense :math:`(d, d)` matrix (built for small :math:`d`)."""
        eye = torch.eye(self.linear.block_cols, dtype=self._chol.dtype, device=self._chol.device)
        blocks = torch.cholesky_solve(eye.expand_as(self._chol), self._chol)
        dense = torch.block_diag(*blocks)
        perm = self.linear.blocks_to_latent(
            torch.arange(self.linear.latent_dim, device=dense.device)
            .reshape(self.linear.num_blocks, self.linear.block_cols)
            .to(dense.dtype)
        ).long()
        return dense[perm][:, perm].expand(self.batch_shape + dense.shape)

    @property
    def variance(self) -> Tensor:
        r"""Diagonal of :math:`\Lambda^{-1}`, shape :math:`(*, d)`."""
        return self.covariance_matrix.diagonal(dim1=-2, dim2=-1)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        r"""Reparameterised sample :math:`z^+ + L^{-\top}\epsilon`."""
        shape = torch.Size(sample_shape) + self._loc_blocks.shape
        eps = _standard_normal(shape, dtype=self._chol.dtype, device=self._chol.device)
        noise = torch.linalg.solve_triangular(self._chol.mT, eps.unsqueeze(-1), upper=True)
        return self.linear.blocks_to_latent(self._loc_blocks + noise.squeeze(-1))

    def log_prob(self, value: Tensor) -> Tensor:
        r"""The log-density :math:`\log q(z|x)`, shape :math:`(*)`.

        .. math::

            -\tfrac d2\log 2\pi + \tfrac12\log\det\Lambda - \tfrac12\lVert L^\top(z - z^+)\rVert^2
        """
        _check_value(value, self.linear, self.linear.latent_dim)
        if self._validate_args:
            self._validate_sample(value)
        delta = self.linear.latent_to_blocks(value) - self._loc_blocks
        y = (self._chol.mT @ delta.unsqueeze(-1)).squeeze(-1)
        half_log_det = self._chol.diagonal(dim1=-2, dim2=-1).log().sum()
        return (
            -0.5 * self.linear.latent_dim * _LOG_2PI + half_log_det - 0.5 * y.pow(2).sum((-1, -2))
        )

    def log_manifold_term(self) -> Tensor:
        r""":math:`\log\int p(x|z)dz` for this distribution's :math:`x`, shape :math:`(*)`."""
        return _log_manifold_term(self.x, self.linear, self._chol, self.bias, self.noise_scale)

    def entropy(self) -> Tensor:
        r""":math:`\tfrac d2(1 + \log 2\pi) - \tfrac12\log\det\Lambda`, shape :math:`(*)`."""
        half_log_det = self._chol.diagonal(dim1=-2, dim2=-1).log().sum()
        value = 0.5 * self.linear.latent_dim * (1 + _LOG_2PI) - half_log_det
        return value.expand(self.batch_shape)
