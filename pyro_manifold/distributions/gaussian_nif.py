r"""The Gaussian noisy injective flow layer (NIF) of Cunningham et al. (2020).

It maps a latent :math:`z \in \mathbb R^d` to data :math:`x \in \mathbb R^D` (:math:`d < D`)

.. math::

    x = Az + b + \sigma \odot \epsilon, \qquad \epsilon \sim \mathcal N(0, I_D),

and is inverted stochastically by :math:`q(z|x) = \mathcal N(\Lambda^{-1}u, \Lambda^{-1})`
(see :mod:`pyro_manifold.distributions.noisy_injective`). It is a module holding the
parameters, not a bijective transform: its two directions are distributions.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_manifold._math import softplus_inverse
from pyro_manifold._validation import (
    check_input,
    check_positive,
    check_positive_int,
    check_tensor,
)
from pyro_manifold.distributions.block_linear import BlockLinear
from pyro_manifold.distributions.noisy_injective import (
    NoisyInjective,
    StochasticInverse,
    _log_manifold_term,
    _precision_cholesky,
)
from pyro_manifold.errors import ArgumentError, ArgumentTypeError

__all__ = ["GaussianNIF"]


class GaussianNIF(nn.Module):
    r"""A noisy injective layer :math:`p(x|z) = \mathcal N(Az + b, \Sigma)` and its inverse.

    .. math::

        \Lambda = A^\top\Sigma^{-1}A,\quad u = A^\top\Sigma^{-1}(x - b),\quad
        q(z|x) = \mathcal N(\Lambda^{-1}u, \Lambda^{-1}),\quad
        p(x) = \mathcal N(b, AA^\top + \Sigma) \text{ under } z \sim \mathcal N(0, I).

    Parameters: :math:`A` (dense :math:`(D, d)`, or per-patch blocks for images), the
    bias :math:`b` and :math:`\sigma = \operatorname{softplus}(\rho) + \sigma_{\min}`.
    :math:`A` starts with orthonormal columns (dense) or orthonormal blocks (images), so
    it has full column rank; a rank-deficient :math:`A` raises a clear error wherever
    :math:`\Lambda` is factorised. Costs: :math:`O(N D d + d^3)` dense, and
    :math:`O(N D k + P k^3)` with image blocks of :math:`k` latent channels, i.e. linear
    in the latent size (:math:`\Lambda` is block diagonal).

    Args:
        latent_dim: :math:`d`, at least 1 and less than ``data_dim``.
        data_dim: :math:`D`.
        image_shape: ``(C, H, W)`` to use the structured image map: nearest-neighbour
            upsampling by ``factor`` followed by a per-patch linear map (appendix A.6);
            ``latent_dim`` must then be ``k * (H / factor) * (W / factor)``.
        factor: upsampling factor for ``image_shape``.
        init_noise_scale: initial :math:`\sigma`.
        min_noise_scale: the floor :math:`\sigma_{\min}`.
        weight: an explicit initial :math:`A`, shape :math:`(D, d)` (dense only).

    Example:
        >>> nif = GaussianNIF(2, 5)
        >>> x = torch.randn(10, 5)
        >>> q = nif.stochastic_inverse(x)
        >>> z = q.rsample()
        >>> lp = nif.likelihood(z).log_prob(x)
        >>> torch.allclose(lp, q.log_prob(z) + nif.log_manifold_term(x), atol=1e-4)
        True

    References:
        Normalizing Flows Across Dimensions. Edmond Cunningham, Renos Zabounidis, Abhinav
        Agrawal, Ina Fiterau, Daniel Sheldon, 2020. arXiv:2006.13070.
    """

    def __init__(
        self,
        latent_dim: int,
        data_dim: int,
        *,
        image_shape: tuple[int, int, int] | None = None,
        factor: int | None = None,
        init_noise_scale: float = 0.1,
        min_noise_scale: float = 1e-3,
        weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("latent_dim", latent_dim)
        check_positive_int("data_dim", data_dim)
        if latent_dim >= data_dim:
            raise ArgumentError(
                f"latent_dim: expected less than data_dim={data_dim} (a NIF lowers the "
                f"dimension), got {latent_dim}"
            )
        check_positive("init_noise_scale", init_noise_scale)
        self.min_noise_scale = check_positive("min_noise_scale", min_noise_scale)
        if init_noise_scale <= min_noise_scale:
            raise ArgumentError(
                f"init_noise_scale: expected more than min_noise_scale={min_noise_scale}, "
                f"got {init_noise_scale}"
            )
        if image_shape is not None:
            if not isinstance(image_shape, list | tuple) or len(image_shape) != 3:
                raise ArgumentTypeError(
                    f"image_shape: expected a tuple (C, H, W) of three ints, got {image_shape!r}"
                )
            for size in image_shape:
                check_positive_int("image_shape", size)
        elif factor is not None:
            raise ArgumentError(
                f"factor: expected None without image_shape (it sets the upsampling of an "
                f"image's latent grid), got {factor!r}"
            )
        self.latent_dim, self.data_dim = latent_dim, data_dim
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        self.factor = factor
        if image_shape is not None:
            c, h, w = image_shape
            f = check_positive_int("factor", factor)
            if c * h * w != data_dim:
                raise ArgumentError(
                    f"image_shape: expected C*H*W = data_dim = {data_dim}, got {tuple(image_shape)}"
                )
            if h % f or w % f:
                raise ArgumentError(f"factor: expected a divisor of H={h} and W={w}, got {f}")
            positions = (h // f) * (w // f)
            if latent_dim % positions:
                raise ArgumentError(
                    f"latent_dim: expected a multiple of the {positions} latent positions "
                    f"of image_shape {tuple(image_shape)} with factor {f}, got {latent_dim}"
                )
            k, m = latent_dim // positions, c * f * f
            init = torch.linalg.qr(torch.randn(positions, m, k)).Q
        elif weight is not None:
            check_tensor("weight", weight, event_shape=(data_dim, latent_dim))
            if weight.dim() != 2:
                raise ArgumentError(
                    f"weight: expected shape ({data_dim}, {latent_dim}), got {tuple(weight.shape)}"
                )
            init = weight.detach().clone().unsqueeze(0)
        else:
            init = torch.linalg.qr(torch.randn(data_dim, latent_dim)).Q.unsqueeze(0)
        self.weight = nn.Parameter(init.contiguous())  # QR's Q is column-major
        self.bias = nn.Parameter(torch.zeros(data_dim))
        raw = softplus_inverse(init_noise_scale - min_noise_scale)
        self.noise_raw = nn.Parameter(torch.full((data_dim,), raw))
        if weight is not None:
            _precision_cholesky(self.linear, self.noise_scale.detach())  # rank check

    @property
    def linear(self) -> BlockLinear:
        """:math:`A` as a :class:`~pyro_manifold.distributions.BlockLinear`."""
        return BlockLinear(self.weight, self.image_shape, self.factor)

    @property
    def noise_scale(self) -> Tensor:
        r""":math:`\sigma = \operatorname{softplus}(\rho) + \sigma_{\min}`, shape :math:`(D,)`."""
        return F.softplus(self.noise_raw) + self.min_noise_scale

    def _check_x(self, x: Tensor) -> Tensor:
        return check_input("x", x, self.weight, event_shape=(self.data_dim,), owner="the layer's")

    def likelihood(self, z: Tensor, s: float = 1.0) -> NoisyInjective:
        r""":math:`p(x|z) = \mathcal N(Az + b, s\Sigma)`; ``s=0`` samples on the manifold.

        Args:
            z: :math:`(*, d)`.
            s: noise multiplier :math:`s \geq 0`.
        """
        check_input("z", z, self.weight, event_shape=(self.latent_dim,), owner="the layer's")
        check_positive("s", s, allow_zero=True)
        return NoisyInjective(z, self.linear, self.bias, self.noise_scale, noise_multiplier=s)

    def stochastic_inverse(self, x: Tensor) -> StochasticInverse:
        r"""The stochastic inverse :math:`q(z|x) = \mathcal N(\Lambda^{-1}u, \Lambda^{-1})`.

        Args:
            x: :math:`(*, D)`.
        """
        return StochasticInverse(self._check_x(x), self.linear, self.bias, self.noise_scale)

    def log_manifold_term(self, x: Tensor) -> Tensor:
        r""":math:`\log\int p(x|z)dz` (eq. 9), shape :math:`(*)`, differentiable."""
        self._check_x(x)
        scale = self.noise_scale
        chol = _precision_cholesky(self.linear, scale)
        return _log_manifold_term(x, self.linear, chol, self.bias, scale)

    def pseudo_inverse(self, x: Tensor) -> Tensor:
        r"""The pseudo-inverse :math:`z^+ = \Lambda^{-1}u`, shape :math:`(*, d)`."""
        return self.stochastic_inverse(x).mean

    def marginal(
        self, loc: Tensor | None = None, scale_tril: Tensor | None = None
    ) -> dist.LowRankMultivariateNormal:
        r"""The closed-form marginal of :math:`x` under a Gaussian :math:`z` (eq. 41).

        Under :math:`z \sim \mathcal N(0, I)` (the default),

        .. math:: p(x) = \mathcal N(b, AA^\top + \Sigma),

        and under :math:`z \sim \mathcal N(\mu, LL^\top)`,
        :math:`p(x) = \mathcal N(A\mu + b, (AL)(AL)^\top + \Sigma)`.

        Args:
            loc: :math:`\mu`, shape :math:`(*, d)` (batch dimensions give a batch of
                marginals, e.g. one per mixture component).
            scale_tril: :math:`L`, shape :math:`(*, d, d)`, lower-triangular.

        Example:
            >>> nif = GaussianNIF(2, 5)
            >>> nif.marginal(torch.zeros(3, 2), torch.eye(2).expand(3, 2, 2)).batch_shape
            torch.Size([3])
        """
        dense = self.linear.dense()
        if loc is None and scale_tril is None:
            return dist.LowRankMultivariateNormal(self.bias, dense, self.noise_scale.pow(2))
        d = self.latent_dim
        loc = torch.zeros(d, dtype=dense.dtype, device=dense.device) if loc is None else loc
        check_input("loc", loc, self.weight, event_shape=(d,), owner="the layer's")
        if scale_tril is None:
            scale_tril = torch.eye(d, dtype=dense.dtype, device=dense.device)
        check_input("scale_tril", scale_tril, self.weight, event_shape=(d, d), owner="the layer's")
        return dist.LowRankMultivariateNormal(
            self.bias + loc @ dense.T, dense @ scale_tril, self.noise_scale.pow(2)
        )
