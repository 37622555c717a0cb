r"""A mixture of full-covariance Gaussians whose sampler needs no per-point factor copies.

.. math:: p(x) = \sum_{k=1}^K \pi_k\, \mathcal N(x;\, \mu_k,\, L_k L_k^\top),
    \qquad \pi = \operatorname{softmax}(\text{logits}).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

from pyro_manifold._validation import check_broadcast, check_input, check_matches, check_tensor

__all__ = ["GaussianMixture"]

_OWNER = "the mixture's"


class GaussianMixture(TorchDistribution):
    r"""A mixture of :math:`K` full-covariance Gaussians on :math:`\mathbb R^d`.

    .. math::

        p(x) = \sum_{k=1}^K \pi_k\, \mathcal N(x;\, \mu_k,\, L_k L_k^\top),
        \qquad \log p(x) = \operatorname{logsumexp}_k
        \bigl[\log \pi_k + \log \mathcal N(x;\, \mu_k,\, L_k L_k^\top)\bigr],

    with :math:`\pi = \operatorname{softmax}(\text{logits})` and :math:`L_k` lower
    triangular with a positive diagonal. The same distribution as Pyro's
    ``MixtureSameFamily`` of a ``MultivariateNormal`` (``log_prob`` evaluates all
    :math:`K` components at once, as it does), with a sampler for many components in
    high dimension: that one draws every component for every point through a Cholesky
    factor broadcast to each, :math:`O(nKd^2)` memory for :math:`n` draws (24 GiB is not
    enough for 1000 draws of 10 components in 784 dimensions). Here each point draws its
    component :math:`k \sim \operatorname{Categorical}(\pi)`, then
    :math:`x = \mu_k + L_k\epsilon`, :math:`\epsilon \sim \mathcal N(0, I_d)`, is formed one
    component at a time: :math:`O(n(K + d) + Kd^2)` when the factors carry no batch
    dimensions (a factor batched beyond the :math:`K` components is gathered per point,
    :math:`O(nd^2)`). Not reparameterised: :math:`k` is discrete.

    Args:
        logits: unnormalised log-weights, shape :math:`(*, K)`.
        loc: means :math:`\mu_k`, shape :math:`(*, K, d)`.
        scale_tril: Cholesky factors :math:`L_k`, shape :math:`(*, K, d, d)`.
        validate_args: check the parameters and values against their constraints
            (Pyro's default when ``None``).

    The batch shape is the broadcast of the three :math:`(*)`; the event shape is
    :math:`(d,)`.

    Example:
        >>> mix = GaussianMixture(torch.zeros(3), torch.randn(3, 2), torch.eye(2).expand(3, 2, 2))
        >>> x = mix.expand((4,)).sample((5,))
        >>> x.shape, mix.log_prob(x).shape, mix.mean.shape
        (torch.Size([5, 4, 2]), torch.Size([5, 4]), torch.Size([2]))
    """

    arg_constraints = {
        "logits": constraints.real_vector,
        "loc": constraints.independent(constraints.real, 2),
        "scale_tril": constraints.lower_cholesky,
    }
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        logits: Tensor,
        loc: Tensor,
        scale_tril: Tensor,
        validate_args: bool | None = None,
    ) -> None:
        check_tensor("logits", logits, min_dim=1, finite=False)
        check_tensor("loc", loc, min_dim=2, finite=False)
        k, d = loc.shape[-2:]
        check_tensor("logits", logits, event_shape=(k,), finite=False)
        check_tensor("scale_tril", scale_tril, event_shape=(k, d, d), finite=False)
        check_matches("logits", logits, loc, "loc's")
        check_matches("scale_tril", scale_tril, loc, "loc's")
        batch_shape = check_broadcast("loc", loc.shape[:-2], logits.shape[:-1], "logits")
        batch_shape = check_broadcast("scale_tril", scale_tril.shape[:-3], batch_shape, "loc")
        # normalised as Categorical(logits=...) does; the factors stay unbroadcast (no copies)
        self.logits = (logits - logits.logsumexp(-1, keepdim=True)).expand(batch_shape + (k,))
        self.loc = loc.expand(batch_shape + (k, d))
        self._unbroadcasted_scale_tril = scale_tril
        super().__init__(batch_shape, torch.Size([d]), validate_args)

    @property
    def scale_tril(self) -> Tensor:
        """:math:`L_k`, shape :math:`(*, K, d, d)` (an expanded view, no copy)."""
        return self._unbroadcasted_scale_tril.expand(self.loc.shape + self.loc.shape[-1:])

    @property
    def num_components(self) -> int:
        """:math:`K`."""
        return self.loc.shape[-2]

    def expand(self, batch_shape, _instance=None):
        """Expand the batch shape (the parameters are broadcast, not copied)."""
        new = self._get_checked_instance(GaussianMixture, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.logits.shape[-1:])
        new.loc = self.loc.expand(batch_shape + self.loc.shape[-2:])
        new._unbroadcasted_scale_tril = self._unbroadcasted_scale_tril
        super(GaussianMixture, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        r""":math:`\sum_k \pi_k \mu_k`, shape :math:`(*, d)`."""
        return (self.logits.exp().unsqueeze(-1) * self.loc).sum(-2)

    @property
    def variance(self) -> Tensor:
        r"""The diagonal of the covariance, shape :math:`(*, d)`.

        .. math:: \sum_k \pi_k (L_kL_k^\top + \mu_k\mu_k^\top) - \bar\mu\bar\mu^\top,
            \qquad \bar\mu = \sum_k \pi_k\mu_k.
        """
        second = self.scale_tril.pow(2).sum(-1) + self.loc.pow(2)  # (*, K, d)
        return (self.logits.exp().unsqueeze(-1) * second).sum(-2) - self.mean.pow(2)

    def component_log_prob(self, value: Tensor) -> Tensor:
        r"""Every :math:`\log \mathcal N(x;\, \mu_k,\, L_kL_k^\top)`, shape :math:`(*, K)`."""
        check_input(
            "value", value, self.loc, event_shape=self.event_shape, nonempty=False, owner=_OWNER
        )
        if self._validate_args:
            self._validate_sample(value)
        components = dist.MultivariateNormal(
            self.loc, scale_tril=self._unbroadcasted_scale_tril, validate_args=False
        )
        return components.log_prob(value.unsqueeze(-2))

    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\log p(x)` by a log-sum-exp over the components, shape :math:`(*)`."""
        return torch.logsumexp(self.component_log_prob(value) + self.logits.log_softmax(-1), -1)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        r"""Draw :math:`k`, then :math:`\mu_k + L_k\epsilon` one component at a time."""
        tril = self._unbroadcasted_scale_tril
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.batch_shape
            k = dist.Categorical(logits=self.logits).sample(sample_shape)  # shape
            loc = self.loc.expand(shape + self.loc.shape[-2:])
            index = k[..., None, None].expand(*shape, 1, loc.shape[-1])
            x = loc.gather(-2, index).squeeze(-2).clone()
            eps = torch.randn_like(x)
            for j in range(self.num_components):
                chosen = k == j
                if tril.dim() == 3:  # one factor per component, shared by the batch
                    x[chosen] += eps[chosen] @ tril[j].T
                else:
                    factor = self.scale_tril[..., j, :, :].expand(shape + tril.shape[-2:])
                    x[chosen] += (factor[chosen] @ eps[chosen].unsqueeze(-1)).squeeze(-1)
            return x
