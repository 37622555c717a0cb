r"""A Gaussian-mixture prior on the NIF's latent space, and its EM fit.

.. math:: p(z) = \sum_{k=1}^K \pi_k\, \mathcal N(z;\, \mu_k,\, L_k L_k^\top)

The weights are :math:`\pi = \operatorname{softmax}(\text{logits})`, and :math:`L_k` is
lower-triangular with a positive diagonal (:math:`\exp` of the raw diagonal). Under a
Gaussian NIF layer the marginal of each component is Gaussian again (see
:meth:`pyro_manifold.transforms.GaussianNIF.marginal`), so a NIF with this prior keeps an
exact :math:`\log p(x)`.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import Tensor, nn

#: Added to every component covariance in the M-step, so that no component collapses.
COVARIANCE_FLOOR = 1e-3


class GaussianMixturePrior(nn.Module):
    """Weights, means and Cholesky factors of a :math:`K`-component mixture on :math:`R^d`."""

    def __init__(self, latent_dim: int, num_components: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.loc = nn.Parameter(0.5 * torch.randn(num_components, latent_dim))
        self.tril_raw = nn.Parameter(torch.zeros(num_components, latent_dim, latent_dim))

    def scale_tril(self) -> Tensor:
        """:math:`L_k`, shape :math:`(K, d, d)`."""
        raw = self.tril_raw
        return raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())

    def distribution(self, t: float = 1.0) -> dist.MixtureSameFamily:
        """The mixture, each component's covariance scaled by the temperature ``t``."""
        components = dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril() * math.sqrt(t))
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)

    @torch.no_grad()
    def start(self, z: Tensor, generator: torch.Generator) -> None:
        """Means at :math:`K` distinct rows of ``z``, unit covariances, equal weights."""
        pick = torch.randperm(z.shape[0], generator=generator, device="cpu")[: len(self.logits)]
        self.loc.copy_(z[pick.to(z.device)])
        self.logits.zero_()
        self.tril_raw.zero_()

    @torch.no_grad()
    def em_step(self, z: Tensor) -> float:
        r"""One EM iteration on the points ``z`` :math:`(N, d)`.

        Returns their mean :math:`\log p(z)` before the update (EM never lowers it).

        E-step: responsibilities :math:`r_{nk} \propto \pi_k \mathcal N(z_n; \mu_k, S_k)`.
        M-step: :math:`\pi_k = \bar r_k`, :math:`\mu_k` and :math:`S_k` the
        responsibility-weighted mean and covariance, plus
        :data:`COVARIANCE_FLOOR` :math:`\cdot I`. The component densities are evaluated in
        the dtype of ``z``, everything after them in float64.
        """
        zd = z.double()
        log_joint = self.distribution().component_distribution.log_prob(z[:, None])
        log_joint = log_joint.double() + torch.log_softmax(self.logits.double(), -1)
        log_p = log_joint.logsumexp(-1, keepdim=True)
        r = (log_joint - log_p).exp()  # (N, K)
        weight = r.sum(0).clamp_min(1e-12)
        loc = (r.T @ zd) / weight[:, None]
        centred = zd[:, None, :] - loc  # (N, K, d)
        cov = torch.einsum("nk,nki,nkj->kij", r, centred, centred) / weight[:, None, None]
        eye = torch.eye(z.shape[-1], dtype=zd.dtype, device=z.device)
        chol = torch.linalg.cholesky(cov + COVARIANCE_FLOOR * eye)
        self.logits.copy_((weight / weight.sum()).log())
        self.loc.copy_(loc)
        diag = chol.diagonal(dim1=-2, dim2=-1)
        self.tril_raw.copy_(chol.tril(-1) + torch.diag_embed(diag.log()))
        return log_p.mean().item()
