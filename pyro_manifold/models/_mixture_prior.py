r"""A Gaussian-mixture prior on the NIF's latent space, and its EM fit.

.. math:: p(z) = \sum_{k=1}^K \pi_k\, \mathcal N(z;\, \mu_k,\, L_k L_k^\top)

The weights are :math:`\pi = \operatorname{softmax}(\text{logits})`, and :math:`L_k` is
lower-triangular with a positive diagonal (:math:`\operatorname{softplus}` of the raw
diagonal plus :data:`SCALE_FLOOR`). Under a Gaussian NIF layer the marginal of each
component is Gaussian again (see :meth:`pyro_manifold.distributions.GaussianNIF.marginal`),
so a NIF with this prior keeps an exact :math:`\log p(x)`.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_manifold._math import softplus_inverse
from pyro_manifold._validation import check_finite, check_input
from pyro_manifold.distributions.gaussian_mixture import GaussianMixture
from pyro_manifold.errors import ArgumentError

#: Added to every component covariance in the M-step, so that no component collapses.
COVARIANCE_FLOOR = 1e-3
#: The least diagonal entry of every Cholesky factor :math:`L_k`.
SCALE_FLOOR = 1e-4


class GaussianMixturePrior(nn.Module):
    """Weights, means and Cholesky factors of a :math:`K`-component mixture on :math:`R^d`.

    Example:
        >>> prior = GaussianMixturePrior(2, 3)
        >>> z = torch.cat([torch.randn(200, 2) - 3, torch.randn(200, 2) + 3])
        >>> history = prior.fit_em(z, max_steps=50, seed=0)
        >>> prior.distribution().log_prob(z).mean().item() > -4.0
        True
    """

    def __init__(self, latent_dim: int, num_components: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.loc = nn.Parameter(0.5 * torch.randn(num_components, latent_dim))
        diag = torch.full((num_components, latent_dim), softplus_inverse(1.0 - SCALE_FLOOR))
        self.tril_raw = nn.Parameter(torch.diag_embed(diag))

    def scale_tril(self) -> Tensor:
        """:math:`L_k`, shape :math:`(K, d, d)`."""
        raw = self.tril_raw
        diag = F.softplus(raw.diagonal(dim1=-2, dim2=-1)) + SCALE_FLOOR
        return raw.tril(-1) + torch.diag_embed(diag)

    def distribution(self, t: float = 1.0) -> GaussianMixture:
        """The mixture, each component's covariance scaled by the temperature ``t``."""
        return GaussianMixture(self.logits, self.loc, self.scale_tril() * math.sqrt(t))

    def component_log_prob(self, z: Tensor) -> Tensor:
        r"""Each component's :math:`\log \mathcal N(z_n; \mu_k, L_kL_k^\top)`, shape :math:`(N, K)`.

        One component at a time, so memory stays :math:`O(N(K + d) + Kd^2)` where
        ``distribution().component_log_prob`` takes :math:`O(NKd)`.
        """
        pairs = zip(self.loc, self.scale_tril(), strict=True)
        return torch.stack(
            [dist.MultivariateNormal(mu, scale_tril=tril).log_prob(z) for mu, tril in pairs], -1
        )

    @torch.no_grad()
    def _set(self, weight: Tensor, loc: Tensor, chol: Tensor) -> None:
        self.logits.copy_((weight / weight.sum()).log())
        self.loc.copy_(loc)
        diag = chol.diagonal(dim1=-2, dim2=-1)
        raw_diag = softplus_inverse((diag - SCALE_FLOOR).clamp_min(1e-12))
        self.tril_raw.copy_(chol.tril(-1) + torch.diag_embed(raw_diag))

    @torch.no_grad()
    def start(self, z: Tensor, generator: torch.Generator) -> None:
        """Means at :math:`K` distinct rows of ``z``, unit covariances, equal weights."""
        k, d = self.loc.shape
        pick = torch.randperm(z.shape[0], generator=generator, device="cpu")[:k]
        eye = torch.eye(d, dtype=z.dtype, device=z.device).expand(k, d, d)
        self._set(torch.ones_like(self.logits), z[pick.to(z.device)], eye)

    @torch.no_grad()
    def em_step(self, z: Tensor) -> float:
        r"""One EM iteration on the points ``z`` :math:`(N, d)`.

        Returns their mean :math:`\log p(z)` before the update (EM never lowers it).

        E-step: responsibilities :math:`r_{nk} \propto \pi_k \mathcal N(z_n; \mu_k, S_k)`.
        M-step: :math:`\pi_k = \bar r_k`, :math:`\mu_k` and :math:`S_k` the
        responsibility-weighted mean and covariance, plus
        :data:`COVARIANCE_FLOOR` :math:`\cdot I`. The component densities are evaluated in
        the dtype of ``z``, everything after them in float64, one component at a time
        (memory :math:`O(N(K + d) + Kd^2)`).

        Raises:
            FloatingPointError: when :math:`\log p(z)` or the new covariances are not
                finite; the mixture is then left as it was.
        """
        zd = z.double()
        log_joint = self.component_log_prob(z).double()
        log_joint = log_joint + torch.log_softmax(self.logits.double(), -1)
        log_p = log_joint.logsumexp(-1, keepdim=True)
        mean_log_p = log_p.mean().item()
        if not math.isfinite(mean_log_p):
            raise FloatingPointError(
                f"z: expected a finite mean log p(z) in the E-step, got {mean_log_p}"
            )
        r = (log_joint - log_p).exp()  # (N, K)
        weight = r.sum(0).clamp_min(1e-12)
        loc = (r.T @ zd) / weight[:, None]
        eye = torch.eye(z.shape[-1], dtype=zd.dtype, device=z.device)
        cov = torch.empty(len(loc), *eye.shape, dtype=zd.dtype, device=z.device)
        for k, mu in enumerate(loc):  # one (N, d) centred copy at a time
            centred = zd - mu
            cov[k] = (r[:, k, None] * centred).T @ centred / weight[k]
        chol, info = torch.linalg.cholesky_ex(cov + COVARIANCE_FLOOR * eye)
        if bool(info.any()) or not bool(torch.isfinite(chol).all()):
            raise FloatingPointError(
                "z: the M-step's covariances are not positive definite "
                f"(components {info.nonzero().flatten().tolist()})"
            )
        self._set(weight, loc, chol)
        return mean_log_p

    @torch.no_grad()
    def fit_em(
        self,
        z: Tensor,
        z_val: Tensor | None = None,
        *,
        max_steps: int = 500,
        tol: float = 1e-4,
        seed: int | None = None,
    ) -> dict[str, list[float]]:
        r"""Fit the mixture to the points ``z`` :math:`(N, d)` by EM, started by :meth:`start`.

        Runs up to ``max_steps`` :meth:`em_step` iterations and stops once the mean
        :math:`\log p(z)` rises by less than ``tol`` nats per point. With ``z_val``
        :math:`(M, d)`, the iterate with the lowest validation loss
        :math:`-\frac1M\sum_m \log p(z_m)` is kept. ``seed`` picks the starting means
        (a random pick when ``None``). If a step fails (:class:`FloatingPointError`), the
        error names the step and the mixture keeps its last good iterate.

        Returns:
            History lists ``step``, ``loss`` (mean :math:`-\log p(z)` before each update),
            ``val_step`` and ``val_loss``.

        Raises:
            ValueError: when ``z`` or ``z_val`` is not a finite :math:`(\cdot, d)` tensor
                of the mixture's dtype and device, or ``z`` has fewer rows than the
                mixture has components (checked before anything changes).
        """
        k, d = self.loc.shape
        for name, points in (("z", z), ("z_val", z_val)):
            if points is not None:
                check_input(name, points, self.loc, event_shape=(d,), min_dim=2, finite=False)
                check_finite(name, points)
        if z.shape[0] < k:
            raise ArgumentError(
                f"z: expected at least {k} points to start the mixture's means at, got {z.shape[0]}"
            )
        seed = int(torch.randint(2**62, ())) if seed is None else seed
        self.start(z, torch.Generator().manual_seed(seed))
        history: dict[str, list[float]] = {"step": [], "loss": [], "val_step": [], "val_loss": []}
        best, best_state, previous = math.inf, None, -math.inf
        for step in range(1, max_steps + 1):
            try:
                log_p = self.em_step(z)
            except FloatingPointError as error:
                raise FloatingPointError(f"EM step {step}: {error}") from error
            history["step"].append(step - 1)
            history["loss"].append(-log_p)
            if z_val is not None:
                val = -self.distribution().log_prob(z_val).mean().item()
                history["val_step"].append(step)
                history["val_loss"].append(val)
                if val < best:
                    best = val
                    best_state = {n: v.clone() for n, v in self.state_dict().items()}
            if log_p - previous < tol:
                break
            previous = log_p
        if best_state is not None:
            self.load_state_dict(best_state)
        return history
