r"""The deep noisy injective flow (Cunningham et al. 2020, appendix B.5) as a Pyro program."""

from __future__ import annotations

import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from pyro_manifold._registration import register_parameters
from pyro_manifold._validation import (
    check_bool,
    check_data_rows,
    check_finite,
    check_input,
    check_positive,
    check_positive_int,
    check_widths,
)
from pyro_manifold.distributions import GaussianNIF
from pyro_manifold.errors import ArgumentError
from pyro_manifold.infer import FitResult, fit
from pyro_manifold.metrics import SAMPLE_BATCH, sample_in_batches
from pyro_manifold.models._mixture_prior import GaussianMixturePrior
from pyro_manifold.transforms import DEFAULT_FLOW, FlowFactory, check_flow, flow_stack

__all__ = ["NoisyInjectiveFlow"]


class NoisyInjectiveFlow(PyroModule):
    r"""Deep NIF: a low-dimensional prior, a Gaussian NIF layer and a data-dimensional flow.

    Generative model (``model``), with temperature :math:`t` and noise multiplier :math:`s`:

    .. math::

        z \sim p_t(z), \qquad
        y \,|\, z \sim \mathcal N(Az + b, s\Sigma), \qquad x = f(y),

    where :math:`f` is the top flow on :math:`\mathbb R^D` and the prior :math:`p_t` is
    the unit normal :math:`\mathcal N(0, tI_d)`, that pushed through an optional prior
    flow :math:`g` (:math:`g_\#\mathcal N(0, tI_d)`), or a Gaussian mixture
    :math:`\sum_k \pi_k \mathcal N(\mu_k, tS_k)` (``prior_components``). ``guide``
    inverts the top flow deterministically, :math:`y = f^{-1}(x)`, then samples the
    stochastic inverse :math:`z \sim q(z|y) = \mathcal N(\Lambda^{-1}u, \Lambda^{-1})`.
    Pyro's ``Trace_ELBO`` of this pair is the NIF bound (their eq. 7 with the top flow's
    change of variables):

    .. math::

        \mathbb E_{q(z|y)}[\log p(z)] + \log\int p(y|z)\,dz
        - \log\left|\det J_f(y)\right|,

    whose manifold term has zero variance. With a unit-normal prior :meth:`log_prob` is
    exact: :math:`p(y) = \mathcal N(b, AA^\top + \Sigma)` pushed through :math:`f`; with
    a Gaussian-mixture prior too, :math:`p(y) = \sum_k \pi_k \mathcal N(A\mu_k + b,
    AS_kA^\top + \Sigma)`. With a prior flow, bound :math:`\log p(x)` with
    :func:`pyro_manifold.metrics.importance_log_likelihood` on ``model``/``guide``.

    Args:
        data_dim: :math:`D`.
        latent_dim: :math:`d < D`.
        top_flow: a name of :data:`~pyro_manifold.transforms.FLOWS`, your own flow (a
            callable ``top_flow(D)`` returning Pyro ``TransformModule`` s, see
            :func:`~pyro_manifold.transforms.flow_stack`) or ``None`` (no top flow).
        top_layers: layers of the top flow.
        top_hidden_dims: hidden widths of the top flow's networks.
        prior_flow: ``None`` (unit-normal prior), a name of
            :data:`~pyro_manifold.transforms.FLOWS` or a callable ``prior_flow(d)``, for
            :math:`g` (a named family needs :math:`d \geq 2`).
        prior_layers: layers of the prior flow.
        prior_hidden_dims: hidden widths of the prior flow's networks.
        prior_components: ``None``, or the number :math:`K` of components of a
            Gaussian-mixture prior (full covariances; not with ``prior_flow``). Fit it to
            the data with :meth:`fit_prior` (EM), or train it with the rest by SVI.
        batch_norm: batch norm between top-flow layers.
        image_shape: ``(C, H, W)`` for the structured image NIF (see
            :class:`~pyro_manifold.distributions.GaussianNIF`).
        factor: upsampling factor of the image NIF.
        init_noise_scale: initial :math:`\sigma` of the NIF layer.

    Attributes:
        nif: the NIF layer, a :class:`~pyro_manifold.distributions.GaussianNIF` (holds
            :math:`A`, :math:`b`, :math:`\sigma`; builds the likelihood and the
            stochastic inverse).
        top_layers: the top flow :math:`f`'s ``TransformModule``\ s, from :math:`y`
            to :math:`x` (an ``nn.ModuleList``, empty without a top flow).
        prior_layers: the prior flow :math:`g`'s layers (empty for a unit-normal prior).
        prior_mixture: the Gaussian-mixture prior, or ``None``.

    Example:
        >>> nif = NoisyInjectiveFlow(3, 1, top_flow="realnvp", top_layers=2)
        >>> x = torch.randn(8, 3)
        >>> nif.log_prob(x).shape, nif.encode(x).shape, nif.sample(5, s=0.0).shape
        (torch.Size([8]), torch.Size([8, 1]), torch.Size([5, 3]))

    References:
        Normalizing Flows Across Dimensions. Edmond Cunningham, Renos Zabounidis, Abhinav
        Agrawal, Ina Fiterau, Daniel Sheldon, 2020. arXiv:2006.13070.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        *,
        top_flow: str | FlowFactory | None = DEFAULT_FLOW,
        top_layers: int = 5,
        top_hidden_dims: list[int] | None = None,
        prior_flow: str | FlowFactory | None = None,
        prior_layers: int = 3,
        prior_hidden_dims: list[int] | None = None,
        prior_components: int | None = None,
        batch_norm: bool = False,
        image_shape: tuple[int, int, int] | None = None,
        factor: int | None = None,
        init_noise_scale: float = 0.1,
    ) -> None:
        if top_flow is not None:
            check_flow("top_flow", top_flow)
        check_positive_int("top_layers", top_layers)
        if prior_flow is not None:
            check_flow("prior_flow", prior_flow)
        check_positive_int("prior_layers", prior_layers)
        for label, widths in (("top_hidden_dims", top_hidden_dims),
                              ("prior_hidden_dims", prior_hidden_dims)):  # fmt: skip
            if widths is not None:
                check_widths(label, widths)
        check_bool("batch_norm", batch_norm)
        if prior_components is not None:
            check_positive_int("prior_components", prior_components)
            if prior_flow is not None:
                raise ArgumentError(
                    f"prior_components: expected None with prior_flow={prior_flow!r} (one "
                    f"prior: a flow or a mixture), got {prior_components}"
                )
        super().__init__()
        self.nif = GaussianNIF(
            latent_dim,
            data_dim,
            image_shape=image_shape,
            factor=factor,
            init_noise_scale=init_noise_scale,
        )
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.top_layers = (
            flow_stack(
                data_dim,
                top_flow,
                top_layers,
                top_hidden_dims,
                batch_norm=batch_norm,
                name="top_flow",
            )
            if top_flow is not None
            else nn.ModuleList()
        )
        if isinstance(prior_flow, str) and latent_dim < 2:
            raise ArgumentError(f"prior_flow: needs latent_dim >= 2, got latent_dim={latent_dim}")
        self.prior_layers = (
            flow_stack(latent_dim, prior_flow, prior_layers, prior_hidden_dims, name="prior_flow")
            if prior_flow is not None
            else nn.ModuleList()
        )
        self.prior_mixture = (
            None if prior_components is None else GaussianMixturePrior(latent_dim, prior_components)
        )
        self.register_buffer("prior_loc", torch.zeros(latent_dim))

    # -- pieces -------------------------------------------------------------------------
    def prior(self, t: float = 1.0) -> dist.TorchDistribution:
        r""":math:`p_t(z)`: the unit normal, through the prior flow, or the mixture.

        The temperature :math:`t` scales :math:`I` in :math:`\mathcal N(0, tI)`, or every
        component covariance of the mixture.
        """
        check_positive("t", t)
        if self.prior_mixture is not None:
            return self.prior_mixture.distribution(t)
        base = dist.Normal(self.prior_loc, math.sqrt(t)).to_event(1)
        return (
            dist.TransformedDistribution(base, list(self.prior_layers))
            if len(self.prior_layers)
            else base
        )

    def _check_x(self, x: Tensor) -> Tensor:
        return check_input("x", x, self.prior_loc, event_shape=(self.data_dim,), min_dim=2)

    def check_data(self, x: Tensor, num_samples: int | None = None, *, first_row: int = 0) -> None:
        r"""Check every row of ``x`` :math:`(N, D)` as :meth:`model` would, values included.

        The data-check protocol of :func:`~pyro_manifold.infer.fit`, which calls it once
        over the whole training and validation data before training (row ``i`` is
        reported as row ``first_row + i``), so that the training steps read nothing back.

        Example:
            >>> NoisyInjectiveFlow(3, 1, top_flow=None).check_data(torch.zeros(4, 3))
        """
        check_data_rows(self._check_x, x, first_row)

    def top_inverse(self, x: Tensor) -> Tensor:
        r""":math:`y = f^{-1}(x)`, one pass per layer for MAF and couplings.

        The top layers' caches then hold :math:`(y, x)`, so that the model's likelihood
        in the same ELBO reuses this pass.
        """
        y = x
        for t in reversed(self.top_layers):
            y = t.inv(y)
        return y

    def _observation(self, z: Tensor, s: float) -> dist.TorchDistribution:
        likelihood = self.nif.likelihood(z, s)
        return (
            dist.TransformedDistribution(likelihood, list(self.top_layers))
            if len(self.top_layers)
            else likelihood
        )

    # -- the Pyro program ---------------------------------------------------------------
    def model(
        self,
        x: Tensor | None = None,
        num_samples: int | None = None,
        *,
        t: float = 1.0,
        s: float = 1.0,
    ) -> Tensor:
        """Observe ``x`` :math:`(N, D)`, or draw ``num_samples`` new points.

        New points are drawn at temperature ``t`` and noise multiplier ``s``.

        Example:
            >>> NoisyInjectiveFlow(3, 1, top_flow=None).model(num_samples=2).shape
            torch.Size([2, 3])
        """
        register_parameters(self)
        if x is not None:
            n = self._check_x(x).shape[0]
            check_positive("s", s)
        else:
            n = check_positive_int("num_samples", 1 if num_samples is None else num_samples)
        with pyro.plate("data", n):
            z = pyro.sample("z", self.prior(t))
            return pyro.sample("x", self._observation(z, s), obs=x)

    def guide(
        self,
        x: Tensor | None = None,
        num_samples: int | None = None,
        *,
        t: float = 1.0,
        s: float = 1.0,
    ) -> Tensor | None:
        r"""Sample :math:`z \sim q(z | f^{-1}(x))`; nothing is drawn when ``x`` is ``None``.

        Example:
            >>> NoisyInjectiveFlow(3, 1, top_flow=None).guide(torch.zeros(4, 3)).shape
            torch.Size([4, 1])
        """
        if x is None:  # generating new data: the model's prior draws z
            return None
        y = self.top_inverse(self._check_x(x))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.nif.stochastic_inverse(y))

    # -- evaluation and sampling --------------------------------------------------------
    def log_prob(self, x: Tensor) -> Tensor:
        r"""Exact :math:`\log p(x)`, shape :math:`(N,)`, for a unit-normal or mixture prior.

        Raises:
            ValueError: with a prior flow, where no closed form exists (use
                :func:`pyro_manifold.metrics.importance_log_likelihood`).
        """
        if len(self.prior_layers):
            raise ArgumentError(
                "prior_flow: log p(x) has no closed form with a prior flow; bound it with "
                "pyro_manifold.metrics.importance_log_likelihood(model.model, model.guide, x)"
            )
        self._check_x(x)
        if self.prior_mixture is None:
            marginal = self.nif.marginal()
        else:
            mix = self.prior_mixture
            marginal = dist.MixtureSameFamily(
                dist.Categorical(logits=mix.logits), self.nif.marginal(mix.loc, mix.scale_tril())
            )
        if not len(self.top_layers):
            return marginal.log_prob(x)
        return dist.TransformedDistribution(marginal, list(self.top_layers)).log_prob(x)

    @torch.no_grad()
    def sample(
        self, num_samples: int, t: float = 1.0, s: float = 1.0, *, batch_size: int = SAMPLE_BATCH
    ) -> Tensor:
        r"""Draw ``(num_samples, D)`` points at temperature ``t`` and noise multiplier ``s``.

        ``s = 0`` puts the samples on the learned manifold :math:`f(\{Az + b\})`. The
        model program runs on at most ``batch_size`` points at a time, without gradients
        (:func:`~pyro_manifold.metrics.sample_in_batches`), so memory beyond the draws is
        that of one batch at any ``num_samples``. Each call draws the latents and then
        the noise, so a batched draw agrees with one unbatched call in distribution,
        not draw by draw.
        """
        check_positive_int("num_samples", num_samples)
        return sample_in_batches(
            lambda b: self.model(None, b, t=t, s=s), num_samples, batch_size, device=None
        )

    def fit_prior(
        self,
        x: Tensor,
        num_steps: int = 3000,
        batch_size: int = 256,
        lr: float = 1e-3,
        *,
        validation_data: Tensor | None = None,
        chunk_size: int = 1000,
        **fit_options: Any,
    ) -> FitResult:
        r"""Fit the prior flow :math:`g` to the stochastic inverse of ``x``; nothing else moves.

        With the NIF layer and the top flow held fixed, the prior enters the NIF bound
        (see the class) only through :math:`\mathbb E_{q(z|y)}[\log p_g(z)]`, so

        .. math::

            \max_g\; \frac1N \sum_{n=1}^N \mathbb E_{q(z \mid y_n)}\big[\log p_g(z)\big],
            \qquad y_n = f^{-1}(x_n),

        is coordinate ascent on the bound: maximum likelihood of :math:`g` on the
        aggregate stochastic inverse :math:`\frac1N\sum_n q(z \mid y_n)`, the prior
        that best fits where the data sit on the manifold. After training with a
        unit-normal prior, it fills in what that prior gets wrong (the regions of
        :math:`\mathbb R^d` it weights but no data map to, whose samples are the
        blurred, in-between images of :meth:`sample` at :math:`s = 0`); this is the
        two-stage "ex-post density estimation" of Ghosh et al. (2020), and here it
        raises the bound too.

        The :math:`y_n` are computed once (evaluation mode, no gradient, ``chunk_size``
        rows at a time); each step draws a fresh :math:`z \sim q(z \mid y_n)` for every
        point of its batch (an unbiased estimate of the objective) and runs
        :func:`pyro_manifold.infer.fit` on the program :math:`z \sim p_g` (observed) with
        an empty guide, on the prior flow's parameters only; ``fit_options`` go to
        :func:`~pyro_manifold.infer.fit` (``seed``, ``progress``, ``validate_every``,
        ``patience``, ``run_dir``, ...). The model's training/evaluation mode is
        restored afterwards.

        A Gaussian-mixture prior (``prior_components``) is fitted by EM instead, whose
        M-step maximises the same objective in closed form: one draw
        :math:`z_n \sim q(z \mid y_n)` per point (and per validation point), means started
        at :math:`K` of them (``seed`` seeds the draws and the pick), unit covariances and equal
        weights, then up to ``num_steps`` EM iterations over all the draws, stopping once
        the mean :math:`\log p(z_n)` rises by less than ``1e-4`` nats per point. With
        ``validation_data`` the iterate with the lowest validation loss is kept.
        ``batch_size``, ``lr`` and the other ``fit_options`` do not apply. The returned
        history holds ``step``, ``loss`` (mean :math:`-\log p(z_n)` before each update),
        ``val_step`` and ``val_loss``.

        Args:
            x: data :math:`(N, D)`, as the model sees it (e.g. logit space).
            num_steps: optimisation steps.
            batch_size: points per step.
            lr: Adam learning rate.
            validation_data: held-out data :math:`(M, D)` for ``fit``'s validation loss
                (mean :math:`-\log p_g(z)` over fresh draws).
            chunk_size: rows per pass of the top flow's inverse.
            **fit_options: further keyword arguments of :func:`~pyro_manifold.infer.fit`.

        Returns:
            ``fit``'s :class:`~pyro_manifold.infer.FitResult`.

        Raises:
            ValueError: when the model has a unit-normal prior (nothing to fit), or a
                mixture prior and fewer points than components.
            FloatingPointError: when an EM step gives a non-finite fit (the error names
                the step; the mixture keeps its last good iterate).

        Example:
            >>> nif = NoisyInjectiveFlow(3, 2, top_flow=None, prior_flow="realnvp",
            ...                          prior_layers=1, prior_hidden_dims=[8])
            >>> x = torch.randn(64, 3)
            >>> result = nif.fit_prior(x, num_steps=20, batch_size=16, progress=False)
            >>> result.step
            20
        """
        if not len(self.prior_layers) and self.prior_mixture is None:
            raise ArgumentError(
                "prior_flow: fit_prior needs a prior flow or a mixture prior, got a model "
                "built with prior_flow=None and prior_components=None (a unit-normal prior "
                "has nothing to fit)"
            )
        for name, data in (("x", x), ("validation_data", validation_data)):
            if data is not None:
                shape = (self.data_dim,)
                check_input(name, data, self.prior_loc, event_shape=shape, min_dim=2, finite=False)
                check_finite(name, data)
        check_positive_int("num_steps", num_steps)
        check_positive_int("batch_size", batch_size)
        check_positive("lr", lr)
        check_positive_int("chunk_size", chunk_size)
        k = 0 if self.prior_mixture is None else len(self.prior_mixture.logits)
        if x.shape[0] < k:
            raise ArgumentError(
                f"x: expected at least prior_components={k} points to start the mixture's "
                f"means at, got {x.shape[0]}"
            )

        def model(z: Tensor) -> None:
            with pyro.plate("data", z.shape[0]):
                pyro.sample("z", self.prior(), obs=z)

        def guide(z: Tensor) -> None:
            """No latent sites: z is observed."""

        def draw(y_batch: Tensor) -> tuple[Tensor]:
            return (self.nif.stochastic_inverse(y_batch).sample(),)

        fit_options.setdefault("device", self.prior_loc.device)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                y, y_val = (
                    None
                    if data is None
                    else torch.cat([self.top_inverse(c) for c in data.split(chunk_size)])
                    for data in (x, validation_data)
                )
            if self.prior_mixture is not None:
                return self._fit_mixture_prior(
                    y, y_val, num_steps, chunk_size, fit_options.get("seed")
                )
            return fit(
                model,
                guide,
                y,
                num_steps=num_steps,
                batch_size=batch_size,
                lr=lr,
                validation_data=y_val,
                transform_batch=draw,
                modules=[self.prior_layers],
                **fit_options,
            )
        finally:
            self.train(was_training)

    @torch.no_grad()
    def _fit_mixture_prior(
        self, y: Tensor, y_val: Tensor | None, num_steps: int, chunk_size: int, seed: int | None
    ) -> FitResult:
        if seed is not None:
            pyro.set_rng_seed(seed)

        def draws(data: Tensor) -> Tensor:
            inverse = self.nif.stochastic_inverse
            return torch.cat([inverse(c).sample() for c in data.split(chunk_size)])

        z = draws(y)
        z_val = None if y_val is None else draws(y_val)
        history = self.prior_mixture.fit_em(z, z_val, max_steps=num_steps, seed=seed)
        best = min(history["val_loss"], default=None)
        return FitResult(history=history, step=len(history["step"]), best_validation_loss=best)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        r"""The pseudo-inverse latent :math:`z^+ = \Lambda^{-1}A^\top\Sigma^{-1}(f^{-1}(x) - b)`."""
        return self.nif.pseudo_inverse(self.top_inverse(self._check_x(x)))
