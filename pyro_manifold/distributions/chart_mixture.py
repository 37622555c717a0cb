r"""``ChartMixture``: the VQ-Flows density, a mixture of local flows over an atlas of charts.

Each chart :math:`k` has a region :math:`U_k` (from the atlas: the code distances of the
VQ autoencoder) and a chart map :math:`g_k = c_k \circ g_k^L \circ\cdots\circ g_k^1`
from :math:`\mathbb R^d` to :math:`\mathbb R^D` whose layers depend on :math:`k` only
through the chart centre :math:`v_k` (conditional transforms with context :math:`v_k`,
so the :math:`K` charts share one set of weights); :math:`c_k` is a (conditional)
dimension-raising embedding such as
:class:`~pyro_manifold.transforms.ConditionalConformalEmbedding`. With
:math:`f_k = g_k^{-1}` computed through the left inverse :math:`c_k^\dagger`, the density
is eq. (2) of the paper:

.. math::

    p(x) = \sum_{k:\, x \in U_k} p_k\,
        \bigl|\det J_{f_k}(x) J_{f_k}(x)^\top\bigr|^{1/2}\, q(f_k(x)),\qquad
    \tfrac12\log\bigl|\det J_{f_k} J_{f_k}^\top\bigr|
        = -\sum_{l=1}^{L}\log|\det J_{g_k^l}| - \tfrac12\log\det J_{c_k}^\top J_{c_k},

the second identity holding because the dimension-raising map comes last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.conditional import ConditionalTransform
from torch import Tensor
from torch.distributions import Transform, constraints

from pyro_manifold._cache import FreshMemo
from pyro_manifold._validation import (
    check_bool,
    check_input,
    check_positive,
    check_positive_int,
    check_tensor,
)
from pyro_manifold.errors import ArgumentError, ComputationError
from pyro_manifold.nn.vector_quantizer import chart_membership

__all__ = ["Atlas", "ChartMixture"]


class Atlas(Protocol):
    r"""What :class:`ChartMixture` needs of an atlas (e.g. a ``VQAutoencoder``).

    Attributes:
        centres: the chart centres :math:`v_k`, shape :math:`(K, C)`, used as contexts.

    Example:
        >>> class Nearest:  # the encoder is the identity
        ...     centres = torch.eye(3)
        ...     def chart_distances(self, x):
        ...         return torch.cdist(x, self.centres)
        >>> Nearest().chart_distances(torch.zeros(2, 3)).shape
        torch.Size([2, 3])
    """

    centres: Tensor

    def chart_distances(self, x: Tensor) -> Tensor:
        r"""Distances :math:`d_k(x)` of points :math:`(N, D)` to the charts, :math:`(N, K)`."""
        ...


class ChartMixture(FreshMemo, TorchDistribution):
    r"""VQ-Flows density on :math:`\mathbb R^D`: chart-conditioned flows mixed over an atlas.

    .. math::

        \log p(x) = \log \sum_{k:\, x\in U_k} \exp\Bigl(\log p_k + \log q(f_k(x))
            - \tfrac12 \log\det J_{g_k}^\top J_{g_k}\big|_{f_k(x)}\Bigr),\qquad
        U_k = \{x : d_k(x) \le (1+\varepsilon)\,\tilde d_m(x)\},

    with :math:`q = \mathcal N(0, I_d)`, :math:`p_k = \operatorname{softmax}(\ell)_k` and
    :math:`\tilde d_m(x)` the :math:`m`-th smallest chart distance. ``log_prob`` is sparse
    over charts: it runs the chart flows only on the (point, chart) pairs with
    :math:`x \in U_k` (all pairs in one batched pass), so its cost grows with the
    overlap :math:`m`, not with :math:`K`. Scoring data uses the inverse direction of
    every layer and the left inverse :math:`c_k^\dagger` of the embedding (one pass per
    layer for couplings and MAF layers); sampling uses the forward direction. The last
    pass is kept for its input tensor: ``log_prob(x)``, ``reconstruct(x)``,
    ``encode(x)`` and ``chart_posterior(x)`` on the same ``x`` share one pass through the
    chart maps, until ``x``, a parameter, buffer, module mode or the grad mode changes or
    a gradient has flowed back through it (the package's one cache rule,
    ``FreshMemo`` (``pyro_manifold._cache``); nothing is kept in
    ``torch.inference_mode()``).

    **Normalisation.** Eq. (2) integrates to one over the manifold only when every chart
    map sends the support of :math:`q` onto its region (:math:`g_k(\mathbb R^d) = U_k`
    on the manifold, so each chart's mass lies inside :math:`U_k` and :math:`f_k` inverts
    :math:`g_k` there). Learned charts satisfy this only approximately; then eq. (2) is
    the paper's unnormalised model. ``restrict=False`` gives the unrestricted sum over all
    charts, :math:`\sum_k p_k\,|\det J_{f_k}J_{f_k}^\top|^{1/2} q(f_k(x))`, the exact
    density of :meth:`sample` when :math:`d = D` (for :math:`d < D`, of its projection).
    ``sample_within_regions=True`` makes :meth:`sample` draw from the normalised eq. (2)
    instead, by rejecting the draws of chart :math:`k` that fall outside :math:`U_k`.

    Args:
        atlas: an :class:`Atlas` (``chart_distances(x)`` and ``centres`` :math:`(K, C)`).
        chart_flow: layers :math:`g^1, \dots, g^L` on :math:`\mathbb R^d`, ordered base to
            data: :class:`~pyro.distributions.conditional.ConditionalTransform`\ s
            (conditioned on :math:`v_k`) or plain transforms shared by all charts.
        chart_logits: :math:`\ell`, shape :math:`(K,)`; the chart weights are
            :math:`p = \operatorname{softmax}(\ell)`.
        data_dim: :math:`D`.
        latent_dim: :math:`d \le D` (default :math:`D`).
        embedding: the last layer :math:`c` from :math:`\mathbb R^d` to :math:`\mathbb R^D`
            (conditional or plain; its ``log_abs_det_jacobian`` must be
            :math:`\tfrac12\log\det J_c^\top J_c`); ``None`` when :math:`d = D`.
        num_overlap: :math:`m`, every point lies in at least :math:`m` charts.
        epsilon: :math:`\varepsilon \ge 0`, the overlap margin.
        restrict: sum over the charts containing :math:`x` (eq. 2) or over all charts.
        sample_within_regions: :meth:`sample` keeps only the draws of chart :math:`k`
            inside :math:`U_k` (rejection), so that samples follow the normalised eq. (2)
            even where the charts spill outside their regions (default: the paper's
            sampler, every draw).

    Example:
        >>> from pyro_manifold.models import VQAutoencoder
        >>> from pyro_manifold.transforms import (
        ...     conditional_affine_coupling, conditional_conformal_embedding)
        >>> atlas = VQAutoencoder(3, code_dim=2, num_charts=4, hidden_dims=[8])
        >>> p = ChartMixture(atlas, [conditional_affine_coupling(2, 2, [8])],
        ...                  torch.zeros(4), data_dim=3, latent_dim=2,
        ...                  embedding=conditional_conformal_embedding(2, 3, 2),
        ...                  num_overlap=2, epsilon=0.1)
        >>> x = p.sample((5,))
        >>> x.shape, p.log_prob(x).shape, p.chart_posterior(x).sum(-1).shape
        (torch.Size([5, 3]), torch.Size([5]), torch.Size([5]))

    References:
        VQ-Flows: Vector Quantized Local Normalizing Flows. Sahil Sidheekh, Chris B.
        Dock, Tushar Jain, Radu Balan, Maneesh K. Singh, 2022. arXiv:2203.11556.
        Tractable Density Estimation on Learned Manifolds with Conformal Embedding Flows.
        Brendan Leigh Ross, Jesse C. Cresswell, 2021. arXiv:2106.05275.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False
    _cache_slots = ("_memo",)

    def __init__(
        self,
        atlas: Atlas,
        chart_flow: Sequence[Transform | ConditionalTransform],
        chart_logits: Tensor,
        data_dim: int,
        latent_dim: int | None = None,
        embedding: Transform | ConditionalTransform | None = None,
        num_overlap: int = 1,
        epsilon: float = 0.0,
        restrict: bool = True,
        sample_within_regions: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        check_positive_int("data_dim", data_dim)
        latent_dim = data_dim if latent_dim is None else latent_dim
        check_positive_int("latent_dim", latent_dim)
        if latent_dim > data_dim:
            raise ArgumentError(
                f"latent_dim: expected an int <= data_dim = {data_dim}, got {latent_dim}"
            )
        if embedding is None and latent_dim != data_dim:
            raise ArgumentError(
                f"embedding: expected a dimension-raising transform from R^{latent_dim} to "
                f"R^{data_dim}, got None"
            )
        centres = check_tensor("atlas.centres", atlas.centres, min_dim=2)
        if centres.dim() != 2:
            raise ArgumentError(f"atlas.centres: expected shape (K, C), got {tuple(centres.shape)}")
        num_charts = centres.shape[0]
        check_input(
            "chart_logits",
            chart_logits,
            centres,
            event_shape=(num_charts,),
            owner="the atlas centres'",
        )
        if chart_logits.dim() != 1:
            raise ArgumentError(
                f"chart_logits: expected shape ({num_charts},), got {tuple(chart_logits.shape)}"
            )
        check_positive_int("num_overlap", num_overlap)
        if num_overlap > num_charts:
            raise ArgumentError(
                f"num_overlap: expected an int <= the number of charts K = {num_charts}, "
                f"got {num_overlap}"
            )
        self.epsilon = check_positive("epsilon", epsilon, allow_zero=True)
        self.atlas, self.chart_flow, self.embedding = atlas, list(chart_flow), embedding
        self.chart_logits = chart_logits
        self.data_dim, self.latent_dim, self.num_charts = data_dim, latent_dim, num_charts
        self.num_overlap, self.restrict = num_overlap, check_bool("restrict", restrict)
        self.sample_within_regions = check_bool("sample_within_regions", sample_within_regions)
        self._memo: tuple[Tensor, tuple[Tensor, ...]] | None = None
        super().__init__(torch.Size(), torch.Size((data_dim,)), validate_args=validate_args)

    # ------------------------------------------------------------------ helpers
    @property
    def chart_weights(self) -> Tensor:
        r"""The chart weights :math:`p_k`, shape :math:`(K,)`."""
        return self.chart_logits.softmax(-1)

    def _transforms(self, context: Tensor) -> list[Transform]:
        """Chart-map layers (base to data) conditioned afresh on ``context`` :math:`(P, C)`."""
        layers = [*self.chart_flow, *([self.embedding] if self.embedding is not None else [])]
        return [t.condition(context) if isinstance(t, ConditionalTransform) else t for t in layers]

    def _check_x(self, x: Tensor, name: str = "x") -> Tensor:
        return check_input(
            name, x, self.atlas.centres, event_shape=(self.data_dim,), owner="the atlas centres'"
        )

    def _regions(self, x: Tensor) -> Tensor:
        """Region mask :math:`(N, K)` of points :math:`(N, D)`."""
        return chart_membership(self.atlas.chart_distances(x), self.num_overlap, self.epsilon)

    def _log_base(self, z: Tensor) -> Tensor:
        return -0.5 * z.pow(2).sum(-1) - 0.5 * self.latent_dim * math.log(2 * math.pi)

    def _cache_state(self) -> tuple[list[Tensor], list[torch.nn.Module]]:
        """The chart logits and the modules (atlas, chart flow, embedding) the terms use."""
        layers = (self.atlas, *self.chart_flow, self.embedding)
        return [self.chart_logits], [m for m in layers if isinstance(m, torch.nn.Module)]

    def _terms_of(self, value: Tensor, flat: Tensor, project: bool = False) -> tuple[Tensor, ...]:
        """:meth:`_chart_terms` of ``flat`` (``value`` reshaped), kept for ``value``.

        One model step scores the data (``log_prob``) and reconstructs it: the second call
        reuses the first's pass through the chart maps. The entry is the last call's,
        looked up by the identity of ``value`` and valid while fresh (see the class), so
        a distribution held across optimizer steps recomputes.
        """
        memo = self._memo
        if memo is not None and memo[0] is value and (len(memo[1]) == 3 or not project):
            if self._fresh("terms", memo):
                return memo[1]
        out = self._chart_terms(flat, project=project)
        self._memo = (value, out)
        self._remember_for("terms", self._memo, (value,), out)
        return out

    def _chart_terms(self, x: Tensor, project: bool = False) -> tuple[Tensor, ...]:
        """Chart log terms :math:`(N, K)` (``-inf`` outside :math:`U_k`), latents, images."""
        n, big_k = x.shape[0], self.num_charts
        if self.restrict:
            mask = self._regions(x)
        else:
            mask = torch.ones(n, big_k, dtype=torch.bool, device=x.device)
        point, chart = mask.nonzero(as_tuple=True)
        transforms = self._transforms(self.atlas.centres[chart])
        y = x[point]
        ladj = x.new_zeros(len(point))
        embedded = y
        for i, t in enumerate(reversed(transforms)):
            u = t.inv(y)
            ladj = ladj + t.log_abs_det_jacobian(u, y)
            y = u
            if i == 0:
                embedded = u
        log_p = self.chart_logits.log_softmax(-1)
        term = log_p[chart] + self._log_base(y) - ladj
        terms = x.new_full((n, big_k), -math.inf).index_put((point, chart), term)
        z = x.new_zeros(n, big_k, self.latent_dim).index_put((point, chart), y)
        if not project:
            return terms, z
        # g_k(f_k(x)) = c_k(c_k^+(x)): the flow layers cancel, so only the embedding runs
        proj = x[point] if self.embedding is None else transforms[-1](embedded.clone())
        full = x.new_zeros(n, big_k, self.data_dim).index_put((point, chart), proj)
        return terms, z, full

    def _flat(self, x: Tensor, name: str = "x") -> tuple[Tensor, torch.Size]:
        self._check_x(x, name)
        return x.reshape(-1, self.data_dim), x.shape[:-1]

    # ------------------------------------------------------------------ public API
    def log_prob(self, value: Tensor) -> Tensor:
        r"""Eq. (2): :math:`\log p(x)`, shape :math:`(*)`, for ``value`` :math:`(*, D)`."""
        x, batch = self._flat(value, "value")
        return self._terms_of(value, x)[0].logsumexp(-1).reshape(batch)

    def chart_log_terms(self, x: Tensor) -> Tensor:
        r"""The terms :math:`\log p_k + \log|\det J_{f_k}J_{f_k}^\top|^{1/2} + \log q(f_k(x))`.

        Shape :math:`(*, K)`; ``-inf`` for the charts whose region does not contain ``x``.
        """
        flat, batch = self._flat(x)
        return self._terms_of(x, flat)[0].reshape(*batch, self.num_charts)

    def chart_posterior(self, x: Tensor) -> Tensor:
        r""":math:`p(k \mid x)`, shape :math:`(*, K)`: the terms normalised over :math:`k`.

        Sums to one over the charts containing :math:`x` and is zero for the others.
        """
        return self.chart_log_terms(x).softmax(-1)

    def encode(self, x: Tensor, stochastic: bool = False) -> Tensor:
        r"""Latent code :math:`(*, d)` of :math:`x`.

        ``stochastic=False``: :math:`z = \sum_k p(k\mid x) f_k(x)`; ``stochastic=True``:
        draw :math:`k \sim p(k\mid x)` and return :math:`f_k(x)`.
        """
        check_bool("stochastic", stochastic)
        flat, batch = self._flat(x)
        terms, z = self._terms_of(x, flat)[:2]
        post = terms.softmax(-1)
        if stochastic:
            k = torch.multinomial(post.detach(), 1).squeeze(-1)
            out = z[torch.arange(len(flat), device=flat.device), k]
        else:
            out = (post.unsqueeze(-1) * z).sum(-2)
        return out.reshape(*batch, self.latent_dim)

    def reconstruct(self, x: Tensor) -> Tensor:
        r""":math:`\hat x = \sum_k p(k\mid x)\, g_k(f_k(x))`, the projection onto the charts.

        Shape :math:`(*, D)`. With a conformal embedding last,
        :math:`g_k(f_k(x)) = c_k(c_k^\dagger(x))`; for :math:`d = D` it returns :math:`x`.
        """
        flat, batch = self._flat(x)
        terms, _, proj = self._terms_of(x, flat, project=True)
        post = terms.softmax(-1)
        return (post.unsqueeze(-1) * proj).sum(-2).reshape(*batch, self.data_dim)

    def region_mask(self, x: Tensor) -> Tensor:
        r"""Boolean :math:`(*, K)` mask of the regions containing ``x``: :math:`x \in U_k`."""
        flat, batch = self._flat(x)
        return self._regions(flat).reshape(*batch, self.num_charts)

    def _draw(self, n: int) -> tuple[Tensor, Tensor]:
        centres = self.atlas.centres
        weights = self.chart_weights.detach()  # multinomial refuses n = 0
        k = torch.multinomial(weights, n, True) if n else weights.new_zeros(0, dtype=torch.long)
        x = torch.randn(n, self.latent_dim, dtype=centres.dtype, device=centres.device)
        for t in self._transforms(centres[k]):
            x = t(x)
        return x, k

    def sample_with_charts(
        self,
        sample_shape: tuple[int, ...] = (),
        within_regions: bool | None = None,
        max_draws: int = 100,
    ) -> tuple[Tensor, Tensor]:
        r"""Draw :math:`k \sim p`, :math:`z \sim q`, :math:`x = g_k(z)`; return ``(x, k)``.

        ``within_regions=True`` keeps only the draws with :math:`x \in U_k` (rejection).
        The kept draws follow the normalised eq. (2),
        :math:`\propto \sum_k p_k\,|\det J_{f_k}J_{f_k}^\top|^{1/2} q(f_k(x))\,
        \mathbb 1[x\in U_k]`, i.e. exactly the density that :meth:`log_prob` scores when
        ``restrict=True``, also when learned charts spill outside their regions (each
        draw of chart :math:`k` is kept with probability
        :math:`\Pr_{z\sim q}[g_k(z) \in U_k]`, the chart's mass inside its region).
        ``None`` takes the distribution's ``sample_within_regions``. Rejection gives up
        with a ``RuntimeError`` after drawing ``max_draws`` times the requested number.
        """
        sample_shape = torch.Size(sample_shape)
        check_positive_int("max_draws", max_draws)
        check_bool("within_regions", within_regions, allow_none=True)
        within = self.sample_within_regions if within_regions is None else within_regions
        n = sample_shape.numel()
        with torch.no_grad():
            if not within or n == 0:
                x, k = self._draw(n)
            else:
                xs, ks, kept, drawn = [], [], 0, 0
                while kept < n:
                    if drawn >= max_draws * n:
                        raise ComputationError(
                            f"sample_with_charts: kept {kept} of {drawn} draws inside their "
                            f"charts' regions, fewer than the {n} requested within "
                            f"max_draws = {max_draws} times as many draws; the chart maps "
                            "put little mass inside their regions"
                        )
                    rate = max(kept, 1) / drawn if drawn else 1.0
                    size = min(max(int(1.2 * (n - kept) / rate) + 1, 16), max_draws * n - drawn)
                    x, k = self._draw(size)
                    keep = self._regions(x)[torch.arange(size, device=x.device), k]
                    xs.append(x[keep])
                    ks.append(k[keep])
                    kept, drawn = kept + int(keep.sum()), drawn + size
                x, k = torch.cat(xs)[:n], torch.cat(ks)[:n]
        return x.reshape(*sample_shape, self.data_dim), k.reshape(sample_shape)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        r"""Draw :math:`x = g_k(z)`, :math:`k \sim p`, :math:`z \sim q`: ``(*sample_shape, D)``.

        Kept only inside :math:`U_k` when ``sample_within_regions`` (see
        :meth:`sample_with_charts`). Without gradients (the chart index is discrete).
        """
        return self.sample_with_charts(sample_shape)[0]

    def expand(self, batch_shape: torch.Size, _instance: object = None) -> TorchDistribution:
        """Expand the (empty) batch shape, e.g. under a ``pyro.plate``."""
        if torch.Size(batch_shape) == self.batch_shape:
            return self
        return super().expand(batch_shape, _instance)
