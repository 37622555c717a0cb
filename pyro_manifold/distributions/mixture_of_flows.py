r"""A finite mixture whose :math:`K` components are normalizing flows evaluated together.

.. math::

    p(x) = \sum_{k=1}^{K} \pi_k\, p_k(x), \qquad
    \log p(x) = \operatorname{logsumexp}_k \left(\log \pi_k + \log p_k(x)\right).

The components are *one* distribution whose last batch dimension is :math:`K` (for
example a :class:`~pyro.distributions.TransformedDistribution` whose transforms use the
batched networks of :mod:`pyro_manifold.nn.batched`), so the :math:`K` log-densities of a
point are one batched computation. :meth:`MixtureOfFlows.component` gives the
conditional :math:`p(x \mid k)` for given component indices, the site a Pyro model
observes after drawing :math:`k \sim \operatorname{Categorical}(\pi)`; with the guide's
:math:`k` enumerated in parallel (``TraceEnum_ELBO``), its log-density is one gather from
the :math:`(N, K)` table of component log-densities, which is computed once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.distributions import Categorical, TorchDistribution
from pyro.distributions.util import is_validation_enabled
from torch import Tensor
from torch.distributions import Distribution, constraints

from pyro_manifold._math import broadcast_shapes
from pyro_manifold._validation import check_input, check_tensor
from pyro_manifold.errors import ArgumentError, ArgumentTypeError

__all__ = ["MixtureOfFlows", "SelectedComponent"]


def _check_indices(name: str, k: object, num_components: int, device: torch.device) -> Tensor:
    if (
        not isinstance(k, Tensor)
        or k.is_floating_point()
        or k.is_complex()
        or k.dtype == torch.bool
    ):
        got = f"tensor of dtype {k.dtype}" if isinstance(k, Tensor) else type(k).__name__
        raise ArgumentTypeError(
            f"{name}: expected an integer tensor of component indices, got {got}"
        )
    check_tensor(name, k, floating=False, finite=False, nonempty=False, device=device)
    if (
        is_validation_enabled()
        and k.numel()
        and (bool((k < 0).any()) or bool((k >= num_components).any()))
    ):
        raise ArgumentError(
            f"{name}: expected component indices in [0, {num_components - 1}], got values in "
            f"[{int(k.min())}, {int(k.max())}]"
        )
    return k


class MixtureOfFlows(TorchDistribution):
    r"""Mixture :math:`p(x) = \sum_k \pi_k p_k(x)` of :math:`K` flows held as one distribution.

    .. math::

        \log p(x) = \operatorname{logsumexp}_k\bigl(\log\pi_k + \log p_k(x)\bigr),\qquad
        p(k \mid x) = \frac{\pi_k p_k(x)}{\sum_j \pi_j p_j(x)}.

    Shapes: ``mixture_logits`` is :math:`(*B_1, K)` (unnormalised :math:`\log\pi`),
    ``component_distribution`` has batch shape :math:`(*B_2, K)` and event shape
    :math:`E` (:math:`(D,)` for a flow); the mixture has batch shape
    :math:`\operatorname{broadcast}(B_1, B_2)` and event shape :math:`E`.
    :meth:`component_log_prob` returns :math:`(*, K)`, :meth:`log_prob` :math:`(*)`.

    Sampling draws :math:`k \sim \pi` and then :math:`x \sim p_k`. When the components'
    batch shape is just :math:`(K,)`, the :math:`N` points come from one call of the
    batched components on :math:`\max_k N_k \approx N/K` rows (not :math:`N` rows for
    each of the :math:`K` components), see :meth:`sample_with_components`. The choice of
    :math:`k` is discrete, so there is no ``rsample``; :meth:`component` gives a
    reparameterisable :math:`p(x \mid k)` when the components have one.

    Args:
        mixture_logits: :math:`(*B_1, K)`, unnormalised log-weights.
        component_distribution: a distribution of batch shape :math:`(*B_2, K)`.
        validate_args: as for every torch distribution.

    Example:
        >>> import pyro.distributions as dist
        >>> components = dist.Normal(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), 1.0).to_event(1)
        >>> p = MixtureOfFlows(torch.zeros(2), components)
        >>> p.batch_shape, p.event_shape
        (torch.Size([]), torch.Size([2]))
        >>> x, k = p.sample_with_components((5,))
        >>> x.shape, k.shape, p.component_log_prob(x).shape
        (torch.Size([5, 2]), torch.Size([5]), torch.Size([5, 2]))
        >>> p.posterior_log_prob(torch.tensor([-2.0, 0.0])).exp().round(decimals=3)
        tensor([1., 0.])

    References:
        Variational Mixture of Normalizing Flows. Guilherme G. P. Freitas Pires, Mário
        A. T. Figueiredo, 2020. arXiv:2009.00585.
    """

    arg_constraints = {"mixture_logits": constraints.real_vector}
    has_rsample = False

    def __init__(
        self,
        mixture_logits: Tensor,
        component_distribution: Distribution,
        validate_args: bool | None = None,
    ) -> None:
        check_input("mixture_logits", mixture_logits, min_dim=1)
        if not isinstance(component_distribution, Distribution):
            raise ArgumentTypeError(
                "component_distribution: expected a torch Distribution with batch shape "
                f"(*, K), got {type(component_distribution).__name__}"
            )
        comp_batch = component_distribution.batch_shape
        num_components = mixture_logits.shape[-1]
        if len(comp_batch) == 0 or comp_batch[-1] != num_components:
            raise ArgumentError(
                f"component_distribution: expected batch shape (*, {num_components}) to match "
                f"mixture_logits of shape {tuple(mixture_logits.shape)}, got batch shape "
                f"{tuple(comp_batch)}"
            )
        try:
            batch_shape = broadcast_shapes(mixture_logits.shape[:-1], comp_batch[:-1])
        except RuntimeError as e:
            raise ArgumentError(
                f"mixture_logits: batch shape {tuple(mixture_logits.shape[:-1])} does not "
                f"broadcast with the components' {tuple(comp_batch[:-1])}"
            ) from e
        self.mixture_logits = mixture_logits
        self.component_distribution = component_distribution
        self.num_components = num_components
        super().__init__(batch_shape, component_distribution.event_shape, validate_args)

    @property
    def support(self) -> constraints.Constraint:
        """The components' support."""
        return self.component_distribution.support

    @property
    def mixture_log_weights(self) -> Tensor:
        r""":math:`\log\pi`, the normalised log-weights, shape :math:`(*B_1, K)`."""
        return F.log_softmax(self.mixture_logits, dim=-1)

    def expand(self, batch_shape, _instance=None) -> MixtureOfFlows:
        """Expand the batch shape; the components are expanded to ``batch_shape + (K,)``."""
        batch_shape = torch.Size(batch_shape)
        logits = self.mixture_logits.expand(batch_shape + (self.num_components,))
        comp = self.component_distribution.expand(batch_shape + (self.num_components,))
        return type(self)(logits, comp, validate_args=False)

    def component_log_prob(self, value: Tensor) -> Tensor:
        r"""Return :math:`\log p_k(x)` for every component, shape :math:`(*, K)`.

        ``value`` has shape :math:`(*, E)`; the result's leading dimensions are those of
        ``value`` broadcast with the batch shape.
        """
        event = tuple(self.event_shape)
        check_input(
            "value",
            value,
            self.mixture_logits,
            event_shape=event,
            min_dim=len(event),
            nonempty=False,
            finite=False,  # values: validate_args checks the components' support
            owner="the mixture's",
        )
        if self._validate_args:
            self._validate_sample(value)
        comp = self.component_distribution
        x = value.unsqueeze(-1 - len(self.event_shape))
        # expand (a view) so that batched components see every row K times
        x = x.expand(broadcast_shapes(x.shape, comp.batch_shape + self.event_shape))
        return comp.log_prob(x)

    def log_prob(self, value: Tensor) -> Tensor:
        r"""Exact :math:`\log \sum_k \pi_k p_k(x)` by a log-sum-exp, shape :math:`(*)`."""
        return torch.logsumexp(self.component_log_prob(value) + self.mixture_log_weights, -1)

    def posterior_log_prob(self, value: Tensor) -> Tensor:
        r"""Return :math:`\log p(k \mid x)`, the exact log-responsibilities, :math:`(*, K)`."""
        joint = self.component_log_prob(value) + self.mixture_log_weights
        return joint - torch.logsumexp(joint, -1, keepdim=True)

    def component(self, k: Tensor) -> SelectedComponent:
        r"""Return :math:`p(x \mid k)` for integer component indices ``k``.

        The result has batch shape ``k.shape`` broadcast with the mixture's batch shape.
        """
        return SelectedComponent(self, k)

    def sample_with_components(
        self, sample_shape: torch.Size | tuple[int, ...] = ()
    ) -> tuple[Tensor, Tensor]:
        r"""Draw :math:`k \sim \pi`, then :math:`x \sim p_k`; return ``(x, k)``.

        Shapes: ``x`` is :math:`(*S, *B, *E)`, ``k`` is :math:`(*S, *B)` (int64).
        """
        with torch.no_grad():
            k = (
                Categorical(logits=self.mixture_logits)
                .expand(self.batch_shape)
                .sample(torch.Size(sample_shape))
            )
            return self._draw(k, reparameterized=False), k

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Draw :math:`x`, shape :math:`(*S, *B, *E)` (see :meth:`sample_with_components`)."""
        return self.sample_with_components(sample_shape)[0]

    def _draw(self, k: Tensor, reparameterized: bool) -> Tensor:
        r"""One draw of :math:`x \sim p_k` for each entry of ``k`` (broadcast with the batch)."""
        comp = self.component_distribution
        draw = comp.rsample if reparameterized else comp.sample
        shape = broadcast_shapes(k.shape, self.batch_shape)
        k = k.expand(shape)
        event = self.event_shape
        if len(comp.batch_shape) == 1:
            # Run the K components once on max_k (count of k) rows each, then give the
            # r-th point with component k the r-th draw of component k.
            flat = k.reshape(-1)
            counts = torch.bincount(flat, minlength=self.num_components)
            rows = int(counts.max()) if flat.numel() else 0
            draws = draw((max(rows, 1),))  # (rows, K, *E)
            order = torch.argsort(flat, stable=True)
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.empty_like(flat)
            rank[order] = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]
            return draws[rank, flat].reshape(shape + event)
        # general batch shapes: draw every component for every point and pick one
        comp = comp.expand(shape + (self.num_components,))
        draws = (comp.rsample if reparameterized else comp.sample)()  # (*shape, K, *E)
        idx = k.reshape(shape + (1,) + (1,) * len(event)).expand(shape + (1,) + event)
        return draws.gather(len(shape), idx).squeeze(len(shape))


class SelectedComponent(TorchDistribution):
    r"""The component :math:`p(x \mid k) = p_k(x)` of a :class:`MixtureOfFlows` for given :math:`k`.

    .. math::

        \log p(x \mid k) = \bigl[\log p_1(x), \dots, \log p_K(x)\bigr]_k.

    ``log_prob`` computes the :math:`K` component log-densities of ``value`` in one
    batched call and gathers entry :math:`k`, broadcasting ``k`` against ``value``'s
    batch dimensions. In a Pyro model whose guide enumerates :math:`k` in parallel,
    ``k`` has shape :math:`(K, 1)` and ``value`` :math:`(N, D)`: the result is the
    :math:`(K, N)` table of :math:`\log p(x_n \mid k)` at the cost of one evaluation of
    the batched flows on :math:`N` points.

    Args:
        mixture: the :class:`MixtureOfFlows`.
        k: integer component indices; the batch shape is ``k.shape`` broadcast with the
            mixture's batch shape.

    Example:
        >>> import pyro.distributions as dist
        >>> comps = dist.Normal(torch.tensor([[-2.0], [2.0]]), 1.0).to_event(1)
        >>> p_x_given_k = MixtureOfFlows(torch.zeros(2), comps).component(torch.tensor([0, 1, 1]))
        >>> p_x_given_k.batch_shape, p_x_given_k.sample().shape
        (torch.Size([3]), torch.Size([3, 1]))
        >>> p_x_given_k.log_prob(torch.tensor([[-2.0], [2.0], [-2.0]])).round(decimals=3)
        tensor([-0.9190, -0.9190, -8.9190])
    """

    arg_constraints: dict = {}

    def __init__(self, mixture: MixtureOfFlows, k: Tensor, validate_args: bool | None = None):
        if not isinstance(mixture, MixtureOfFlows):
            raise ArgumentTypeError(
                f"mixture: expected a MixtureOfFlows, got {type(mixture).__name__}"
            )
        k = _check_indices("k", k, mixture.num_components, mixture.mixture_logits.device)
        try:
            batch_shape = broadcast_shapes(k.shape, mixture.batch_shape)
        except RuntimeError as e:
            raise ArgumentError(
                f"k: expected a shape that broadcasts with the mixture's batch shape "
                f"{tuple(mixture.batch_shape)}, got {tuple(k.shape)}"
            ) from e
        self.mixture, self.k = mixture, k
        super().__init__(batch_shape, mixture.event_shape, validate_args)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        """Whether the components have a reparameterised sampler."""
        return self.mixture.component_distribution.has_rsample

    @property
    def support(self) -> constraints.Constraint:
        """The components' support."""
        return self.mixture.support

    def expand(self, batch_shape, _instance=None) -> SelectedComponent:
        """Expand ``k`` to ``batch_shape``."""
        batch_shape = torch.Size(batch_shape)
        return type(self)(self.mixture, self.k.expand(batch_shape), validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\log p_k(x)`, shape: ``value``'s batch dimensions broadcast with ``k``'s."""
        table = self.mixture.component_log_prob(value)  # (*, K)
        shape = broadcast_shapes(self.k.shape, table.shape[:-1])
        idx = self.k.expand(shape).unsqueeze(-1)
        return table.expand(shape + table.shape[-1:]).gather(-1, idx).squeeze(-1)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        r"""Draw :math:`x \sim p_k`, shape :math:`(*S, *B, *E)`."""
        with torch.no_grad():
            return self.rsample(sample_shape) if self.has_rsample else self._draw(sample_shape)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Reparameterised draw (when the components allow it)."""
        if not self.has_rsample:
            raise NotImplementedError("the components of this mixture have no rsample")
        return self._draw(sample_shape, reparameterized=True)

    def _draw(self, sample_shape: torch.Size, reparameterized: bool = False) -> Tensor:
        k = self.k.expand(torch.Size(sample_shape) + self.batch_shape)
        return self.mixture._draw(k, reparameterized)
