r"""VQ-Flows as a Pyro program: a VQ autoencoder atlas and chart-conditioned local flows."""

from __future__ import annotations

import pyro
import torch
from pyro.nn import DenseNN, PyroModule
from torch import Tensor, nn

from pyro_manifold._registration import parameters_registered, register_parameters
from pyro_manifold._validation import (
    check_bool,
    check_choice,
    check_data_rows,
    check_input,
    check_positive,
    check_positive_int,
    check_widths,
)
from pyro_manifold.distributions.chart_mixture import ChartMixture
from pyro_manifold.errors import ArgumentError
from pyro_manifold.metrics import SAMPLE_BATCH, sample_in_batches
from pyro_manifold.models.vq_autoencoder import VQAutoencoder
from pyro_manifold.nn import scale_output_layer
from pyro_manifold.transforms import (
    DEFAULT_FLOW,
    ConditionalConformalEmbedding,
    FlowFactory,
    Reverse,
    check_flow,
    flow_stack,
)

__all__ = ["VQFlow"]

STAGES = ("atlas", "flows")


class _ChartPlacement(nn.Module):
    r"""Hypernet of the chart embeddings: :math:`v \mapsto (s, D(v) + b(v), \Delta V(v))`.

    The shift starts at the decoded chart centre :math:`D(v_k)`, so every chart starts
    where the autoencoder puts its part of the data.
    """

    def __init__(self, owner: VQFlow, code_dim: int, data_dim: int, r: int, hidden: list[int]):
        super().__init__()
        object.__setattr__(self, "_owner", owner)  # not a submodule: no duplicate weights
        self.net = DenseNN(code_dim, hidden, param_dims=[1, data_dim, r * data_dim])
        scale_output_layer(self.net)  # start at scale 1, shift D(v), the base reflections

    @property
    def cache_depends_on(self) -> tuple[nn.Module]:
        """The decoder, not a submodule, that cached chart embeddings depend on."""
        return (self._owner.autoencoder.decoder,)

    def forward(self, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s, b, dv = self.net(context)
        return s, b + self._owner.autoencoder.decoder(context), dv


class VQFlow(PyroModule):
    r"""VQ-Flows: a learned atlas of :math:`K` overlapping charts with local flows.

    .. math::

        p(x) = \sum_{k:\, x\in U_k} p_k\,
            \bigl|\det J_{f_k}(x) J_{f_k}(x)^\top\bigr|^{1/2}\, q(f_k(x)),\qquad
        g_k = f_k^{-1} = c_k \circ g^L(\cdot\,; v_k) \circ\cdots\circ g^1(\cdot\,; v_k),

    a :class:`~pyro_manifold.distributions.ChartMixture` whose atlas is a
    :class:`VQAutoencoder` (chart centres :math:`v_k`, regions
    :math:`U_k = \{x: d_k(x) \le (1+\varepsilon)\tilde d_m(x)\}`), whose chart flows are
    conditional layers on :math:`\mathbb R^d` shared by all charts (context
    :math:`v_k`) and whose last layer :math:`c_k` is a
    :class:`~pyro_manifold.transforms.ConditionalConformalEmbedding` from
    :math:`\mathbb R^d` to :math:`\mathbb R^D` with shift :math:`D(v_k) + b(v_k)`
    (:math:`D` the decoder). Training has two stages, each one run of
    :func:`pyro_manifold.infer.fit` on ``model``/``guide`` (the guide is empty: there
    are no latent sites):

    1. ``stage="atlas"`` (the default): the VQ autoencoder loss (reconstruction,
       codebook and commitment terms; k-means start and dead-code re-seeding).
    2. :meth:`set_stage` ``("flows", x)`` freezes the atlas, sets the chart weights to
       the fraction of ``x`` nearest to each centre, and the loss becomes the negative
       log-likelihood of eq. (2) plus, for :math:`d < D`, the reconstruction term of
       conformal embedding flows
       :math:`w\,\lVert x - \sum_k p(k\mid x)\, g_k(f_k(x))\rVert^2` for data only near
       the manifold (``reconstruction_weight`` :math:`w`).

    The last layer of every chart-flow network of a named flow (and of the placement
    network) starts at a hundredth of its default initialisation, so each chart map starts close to
    :math:`c_k` at the autoencoder's decoded centre: with data of large range (logit-space
    MNIST) a random start otherwise gives log-densities of order :math:`-10^{25}`.

    Args:
        data_dim: :math:`D`.
        num_charts: :math:`K`.
        latent_dim: :math:`d \le D`, the chart dimension (default :math:`D`; at least 2).
        code_dim: dimension :math:`C` of the codes (default :math:`\min(D, 16)`).
        flow: chart flow family, a name of :data:`~pyro_manifold.transforms.FLOWS`
            (``"realnvp"`` is VQ-RealNVP, ``"maf"`` VQ-MAF), or your own flow: a callable
            ``flow(d, C)`` returning Pyro ``ConditionalTransformModule`` s on
            :math:`(*, d)` conditioned on the code :math:`v_k` (used as built, without the
            small start), see :func:`~pyro_manifold.transforms.flow_stack`.
        num_layers: chart flow layers :math:`L` (named flows).
        hidden_dims: hidden widths of each chart flow layer (named flows).
        autoencoder_hidden_dims: hidden widths of the encoder and decoder.
        num_overlap: :math:`m`.
        epsilon: :math:`\varepsilon`.
        reconstruction_weight: :math:`w \ge 0` (used only when :math:`d < D`). On
            low-noise data with :math:`d < D` the default 1 can be too weak to keep the
            charts on the data (``tutorials/vq_flows.py`` uses 100 on a sphere).
        commitment: the VQ commitment weight :math:`\beta` (0.25, VQ-VAE's value, by
            default). A larger :math:`\beta` ties the encoder to its codes; which value
            gives the better samples on MNIST is being chosen on validation data
            (``benchmarks/vq_protocol.py``; ``benchmarks/RESULTS.md``, claims table).
        restrict: eq. (2) over the charts containing :math:`x` (``False``: all charts).
        num_reflections: Householder reflections :math:`r` of the chart embeddings
            (default :math:`\min(d, D - 1, 64)`; :math:`r \ge \min(d, D-1)` reaches every
            orientation of the chart planes, fewer are cheaper for large :math:`D`).

    Example:
        >>> from pyro_manifold.infer import fit
        >>> x = torch.randn(64, 3)
        >>> vq = VQFlow(3, num_charts=4, num_layers=2, hidden_dims=[16],
        ...             autoencoder_hidden_dims=[16])
        >>> _ = fit(vq.model, vq.guide, x, num_steps=2, batch_size=32, progress=False)
        >>> vq.set_stage("flows", x)
        >>> _ = fit(vq.model, vq.guide, x, num_steps=2, batch_size=32, progress=False)
        >>> vq.log_prob(x[:5]).shape, vq.sample(7).shape
        (torch.Size([5]), torch.Size([7, 3]))

    References:
        VQ-Flows: Vector Quantized Local Normalizing Flows. Sahil Sidheekh, Chris B.
        Dock, Tushar Jain, Radu Balan, Maneesh K. Singh, 2022. arXiv:2203.11556.
        Tractable Density Estimation on Learned Manifolds with Conformal Embedding Flows.
        Brendan Leigh Ross, Jesse C. Cresswell, 2021. arXiv:2106.05275.
    """

    def __init__(
        self,
        data_dim: int,
        num_charts: int = 8,
        latent_dim: int | None = None,
        code_dim: int | None = None,
        flow: str | FlowFactory = DEFAULT_FLOW,
        num_layers: int = 4,
        hidden_dims: list[int] | None = None,
        autoencoder_hidden_dims: list[int] | None = None,
        num_overlap: int = 1,
        epsilon: float = 0.1,
        reconstruction_weight: float = 1.0,
        commitment: float = 0.25,
        restrict: bool = True,
        num_reflections: int | None = None,
    ) -> None:
        check_positive_int("data_dim", data_dim, minimum=2)
        check_positive_int("num_charts", num_charts)
        check_bool("restrict", restrict)
        latent_dim = data_dim if latent_dim is None else latent_dim
        check_positive_int("latent_dim", latent_dim, minimum=2)
        if latent_dim > data_dim:
            raise ArgumentError(
                f"latent_dim: expected an int <= data_dim = {data_dim}, got {latent_dim}"
            )
        code_dim = min(data_dim, 16) if code_dim is None else code_dim
        check_positive_int("code_dim", code_dim)
        check_flow("flow", flow)
        check_positive_int("num_layers", num_layers)
        if hidden_dims is not None:
            hidden_dims = check_widths("hidden_dims", hidden_dims)
        if autoencoder_hidden_dims is not None:
            autoencoder_hidden_dims = check_widths(
                "autoencoder_hidden_dims", autoencoder_hidden_dims
            )
        if num_reflections is not None:
            check_positive_int("num_reflections", num_reflections)
        check_positive_int("num_overlap", num_overlap)
        if num_overlap > num_charts:
            raise ArgumentError(
                f"num_overlap: expected an int <= num_charts = {num_charts}, got {num_overlap}"
            )
        self.epsilon = check_positive("epsilon", epsilon, allow_zero=True)
        self.reconstruction_weight = check_positive(
            "reconstruction_weight", reconstruction_weight, allow_zero=True
        )
        super().__init__()
        self.data_dim, self.latent_dim, self.code_dim = data_dim, latent_dim, code_dim
        self.num_charts, self.num_overlap, self.restrict = num_charts, num_overlap, restrict
        self.flow = flow
        self.autoencoder = VQAutoencoder(
            data_dim, code_dim, num_charts, autoencoder_hidden_dims, commitment
        )
        self.chart_flow = flow_stack(
            latent_dim, flow, num_layers, hidden_dims, context_dim=code_dim
        )
        if isinstance(flow, str):  # chart maps start close to the identity
            for layer in self.chart_flow:
                if not isinstance(layer, Reverse):
                    scale_output_layer(layer.nn)
        r = min(latent_dim, data_dim - 1, 64) if num_reflections is None else num_reflections
        check_positive_int("num_reflections", r)
        placement = _ChartPlacement(self, code_dim, data_dim, r, [max(4 * code_dim, 32)])
        self.embedding = ConditionalConformalEmbedding(
            latent_dim, data_dim, placement, r, context_dim=code_dim
        )
        self.chart_logits = nn.Parameter(torch.zeros(num_charts))
        self.stage = "atlas"

    def set_stage(self, stage: str, x: Tensor | None = None) -> None:
        r"""Switch the training stage (``"atlas"`` or ``"flows"``).

        ``"flows"`` freezes the autoencoder (``requires_grad=False``, eval mode) and, when
        data ``x`` :math:`(N, D)` is given, sets the chart weights :math:`p_k` to the
        fraction of points whose nearest centre is :math:`v_k` (plus one point per chart).
        ``"atlas"`` unfreezes the autoencoder.
        """
        check_choice("stage", stage, STAGES)
        if x is not None:
            self._check_x(x)
        frozen = stage == "flows"
        for p in self.autoencoder.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            self.autoencoder.eval()
            if x is not None:
                with torch.no_grad():
                    k = self.autoencoder.assign(x)
                    counts = torch.bincount(k, minlength=self.num_charts).to(x.dtype) + 1
                    self.chart_logits.copy_(counts.log())
        self.stage = stage

    def train(self, mode: bool = True) -> VQFlow:
        """Set training mode; a frozen atlas (stage ``"flows"``) stays in eval mode."""
        super().train(mode)
        if self.stage == "flows":
            self.autoencoder.eval()
        return self

    def _check_x(self, x: Tensor) -> Tensor:
        return check_input("x", x, self.chart_logits, event_shape=(self.data_dim,), min_dim=2)

    def check_data(self, x: Tensor, *, first_row: int = 0) -> None:
        r"""Check every row of ``x`` :math:`(N, D)` as :meth:`model` would, values included.

        The data-check protocol of :func:`~pyro_manifold.infer.fit`, which calls it once
        over the whole training and validation data before training (row ``i`` is
        reported as row ``first_row + i``), so that the training steps read nothing back.

        Example:
            >>> VQFlow(3, num_charts=2, num_layers=1, hidden_dims=[8]).check_data(torch.zeros(4, 3))
        """
        check_data_rows(self._check_x, x, first_row)

    def distribution(self) -> ChartMixture:
        """The current :class:`~pyro_manifold.distributions.ChartMixture` over :math:`(D,)`."""
        return ChartMixture(
            self.autoencoder,
            list(self.chart_flow),
            self.chart_logits,
            self.data_dim,
            self.latent_dim,
            self.embedding,
            self.num_overlap,
            self.epsilon,
            self.restrict,
        )

    def model(self, x: Tensor | None = None, num_samples: int | None = None) -> Tensor | None:
        r"""Observe ``x`` :math:`(N, D)`: the stage's loss as Pyro sites in a data plate.

        With ``x=None`` (stage ``"flows"``), draw ``num_samples`` new points from the
        atlas instead (site ``"x"``,
        :meth:`~pyro_manifold.distributions.ChartMixture.sample`), so that
        ``pyro.infer.Predictive`` samples the model as it does every other model's.
        The atlas stage has no density to draw from and refuses ``x=None``.

        Example:
            >>> vq = VQFlow(3, num_charts=2, num_layers=1, hidden_dims=[8])
            >>> vq.set_stage("flows")
            >>> from pyro.infer import Predictive
            >>> Predictive(vq.model, num_samples=2)(None, 5)["x"].shape
            torch.Size([2, 5, 3])
        """
        if x is None:
            if self.stage == "atlas":
                raise ArgumentError(
                    "x: the atlas stage only observes data (no density to sample); "
                    "call set_stage('flows') first, got x=None in stage 'atlas'"
                )
            n = check_positive_int("num_samples", 1 if num_samples is None else num_samples)
            register_parameters(self)
            with pyro.plate("data", n):
                return pyro.sample("x", self.distribution())
        self._check_x(x)
        register_parameters(self)
        if self.stage == "atlas":
            with parameters_registered(False):  # registered above, under this model's name
                self.autoencoder.model(x)
            return None
        mixture = self.distribution()
        with pyro.plate("data", x.shape[0]):
            observed = pyro.sample("x", mixture, obs=x)
            if self.latent_dim < self.data_dim and self.reconstruction_weight > 0:
                error = (x - mixture.reconstruct(x)).pow(2).sum(-1)
                pyro.factor("reconstruction", -self.reconstruction_weight * error)
        return observed

    def guide(self, x: Tensor | None = None, num_samples: int | None = None) -> None:
        """Empty guide: VQ-Flows has no latent sites."""

    def log_prob(self, x: Tensor) -> Tensor:
        r"""Eq. (2), :math:`\log p(x)` of shape :math:`(N,)` for ``x`` :math:`(N, D)`."""
        return self.distribution().log_prob(self._check_x(x))

    def chart_posterior(self, x: Tensor) -> Tensor:
        r""":math:`p(k \mid x)`, shape :math:`(N, K)`."""
        return self.distribution().chart_posterior(self._check_x(x))

    def encode(self, x: Tensor, stochastic: bool = False) -> Tensor:
        r"""Latent codes :math:`(N, d)`.

        See :meth:`~pyro_manifold.distributions.ChartMixture.encode`.
        """
        return self.distribution().encode(self._check_x(x), stochastic)

    def reconstruct(self, x: Tensor) -> Tensor:
        r"""Projection :math:`\sum_k p(k\mid x) g_k(f_k(x))` of ``x`` onto the charts."""
        return self.distribution().reconstruct(self._check_x(x))

    @torch.no_grad()
    def sample(
        self, num_samples: int, within_regions: bool = False, *, batch_size: int = SAMPLE_BATCH
    ) -> Tensor:
        """Draw ``num_samples`` points, shape ``(num_samples, D)``.

        ``within_regions=True`` keeps only the draws of chart :math:`k` inside
        :math:`U_k`, so that the samples follow the normalised eq. (2) that
        :meth:`log_prob` scores (see
        :meth:`~pyro_manifold.distributions.ChartMixture.sample_with_charts`).
        At most ``batch_size`` points are drawn at a time
        (:func:`~pyro_manifold.metrics.sample_in_batches`; the rejection runs per
        batch), so memory beyond the draws is that of one batch at any
        ``num_samples``. Each call draws the charts and then the points, so a batched
        draw agrees with one unbatched call in distribution, not draw by draw.
        """
        check_positive_int("num_samples", num_samples)
        atlas = self.distribution()
        return sample_in_batches(
            lambda b: atlas.sample_with_charts((b,), within_regions)[0],
            num_samples,
            batch_size,
            device=None,
        )
