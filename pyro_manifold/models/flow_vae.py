r"""Variational autoencoders whose encoder is a conditional normalizing flow."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.distributions.util import is_validation_enabled
from pyro.infer import Predictive
from pyro.nn import ConditionalAutoRegressiveNN, PyroModule
from torch import Tensor, nn

from pyro_manifold._math import softplus_inverse
from pyro_manifold._registration import register_parameters
from pyro_manifold._validation import (
    check_bool,
    check_choice,
    check_data_rows,
    check_finite,
    check_input,
    check_positive,
    check_positive_int,
    check_tensor,
    check_widths,
    is_binary,
)
from pyro_manifold.errors import ArgumentError, ArgumentTypeError
from pyro_manifold.metrics import SAMPLE_BATCH, sample_in_batches
from pyro_manifold.transforms import FlowFactory, flow_stack
from pyro_manifold.transforms.pcp_map import conditional_pcp_map

__all__ = ["ENCODER_FLOWS", "LIKELIHOODS", "FlowVAE"]

#: The named flows of the encoder (``encoder_flow=``): IAF and PCP-Map.
ENCODER_FLOWS = ("iaf", "pcp")
#: The decoder's likelihoods (``likelihood=``): binary or continuous data.
LIKELIHOODS = ("bernoulli", "gaussian")
ACTIVATIONS = {"tanh": torch.tanh, "relu": F.relu, "elu": F.elu, "softplus": F.softplus}


class FlowVAE(PyroModule):
    r"""A VAE with a Gaussian, IAF or PCP-Map encoder, as a Pyro ``model``/``guide`` pair.

    Model (decoder), for each data point :math:`x \in \mathbb R^D`:

    .. math::

        z \sim \mathcal N(0, I_L), \qquad
        x \mid z \sim \mathrm{Bernoulli}(\operatorname{sigmoid}(f_\theta(z)))
        \ \text{or}\ \mathcal N(f_\theta(z), \operatorname{diag}\sigma^2).

    Guide (encoder), a conditional flow on top of a diagonal Gaussian: an MLP gives
    :math:`(\mu, s, h) = e_\phi(x)`, the features :math:`h` being its last hidden layer
    (``x`` itself when there is none), and

    .. math::

        z_0 \sim \mathcal N(\mu, \operatorname{diag} s^2), \qquad
        z = T_K(\cdot\,; h) \circ \dots \circ T_1(z_0; h), \qquad
        \log q(z \mid x) = \log \mathcal N(z_0; \mu, s^2)
            - \sum_{k} \log\left|\det \frac{\partial T_k}{\partial z_{k-1}}\right|,

    where the layers :math:`T_k` are (``encoder_flow``):

    * ``None``: none (the standard VAE);
    * ``"iaf"``: Pyro's :class:`~pyro.distributions.transforms.ConditionalAffineAutoregressive`
      in its numerically stable form :math:`z_k = \sigma_k \odot z_{k-1} + (1 - \sigma_k)
      \odot m_k`, :math:`(m_k, \operatorname{logit}\sigma_k) = \mathrm{MADE}_k(z_{k-1}, h)`
      (one network pass per layer; the autoregressive order alternates between layers);
    * ``"pcp"``: :class:`~pyro_manifold.transforms.ConditionalPCPMap` layers,
      :math:`z_k = \nabla_z G_k(z_{k-1}, h)` with :math:`G_k` convex in :math:`z`
      (one pass per layer plus an exact :math:`O(L^3)` Hessian log-determinant);
    * your own flow: a callable ``encoder_flow(L, C)`` returning Pyro
      ``ConditionalTransformModule`` s on :math:`(*, L)` conditioned on :math:`h` of
      size :math:`C` (e.g. a conditional zuko flow in
      :class:`~pyro_manifold.transforms.ConditionalZukoTransform`), base to latent; see
      :func:`~pyro_manifold.transforms.flow_stack`.

    Sampling in the guide uses ``rsample`` (reparameterised), and every guide call
    builds fresh conditioned transforms, so nothing is replayed from a previous step's
    transform cache; within a call ``log q`` of the sample reuses the forward pass.
    The ELBO :math:`\mathbb E_q[\log p(x \mid z) + \log p(z) - \log q(z \mid x)]` is
    estimated by any Pyro ELBO; :func:`pyro_manifold.metrics.iwae_log_likelihood`
    gives the importance-weighted bound on :math:`\log p(x)`.

    Shapes: ``x`` is :math:`(N, D)` inside ``pyro.plate("data", N)``; the latent site
    ``"z"`` has event shape :math:`(L,)`; both programs broadcast over extra particle
    dimensions on the left (vectorised ELBO particles, IWAE). The model also records
    the decoder mean as ``pyro.deterministic("x_mean")``, so
    :class:`~pyro.infer.Predictive` returns reconstructions (with the guide) and new
    samples (without); see :meth:`reconstruct` and :meth:`sample`. It does so whenever
    gradients are off or the module is in eval mode, and leaves it out of training steps
    (train mode with gradients), where nothing reads it: at 784 pixels and batch 1024 the
    site's Delta log-density alone cost a tenth of a CPU training step.

    **KL warm-up.** ``model`` and ``guide`` take ``kl_weight=β`` (default 1, the ELBO),
    which scales the latent terms :math:`\log p(z) - \log q(z|x)`; the module keeps no
    step counter. With ``kl_warmup_steps = W > 0`` the schedule :meth:`step_kwargs` gives
    :math:`\beta_t = \min(1, (t + 1) / W)` to the step that follows :math:`t` steps, which
    :func:`~pyro_manifold.infer.fit` passes in before each step (validation losses and
    evaluation use the default :math:`\beta = 1`). With Pyro's own ``SVI``, pass it
    yourself::

        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        for t in range(num_steps):
            svi.step(x, **vae.step_kwargs(t))

    Args:
        latent_dim: :math:`L \ge 1`.
        data_dim: :math:`D` (784 for MNIST).
        encoder_flow: ``None``, ``"iaf"``, ``"pcp"`` or a callable (see above).
        num_flows: the number of flow layers :math:`K` (``"iaf"`` and ``"pcp"``).
        hidden_dims: hidden widths of both MLPs (encoder and decoder mirrored).
        encoder_hidden_dims: encoder widths, overriding ``hidden_dims``.
        decoder_hidden_dims: decoder widths, overriding ``hidden_dims``; ``[]`` makes
            the decoder affine (the linear-Gaussian model).
        flow_hidden_dims: widths of each flow layer's network (MADE for IAF, the PICNN
            for PCP-Map); default ``[4 L, 4 L]`` (at least 32 each).
        likelihood: ``"bernoulli"`` (binary data) or ``"gaussian"`` (continuous data,
            a learned per-dimension scale).
        activation: ``"tanh"``, ``"relu"``, ``"elu"`` or ``"softplus"`` for the MLPs.
        min_scale: floor added to the softplus scales of the encoder and decoder.
        decoder_scale: initial :math:`\sigma` of the Gaussian likelihood.
        kl_warmup_steps: :math:`W`, 0 for no warm-up (the schedule of :meth:`step_kwargs`).

    Attributes:
        encoder_layers: the encoder MLP's hidden ``nn.Linear`` layers; their output is the
            feature :math:`h(x)` that conditions the flow layers.
        encoder_head: ``nn.Linear`` from :math:`h` to the Gaussian's location and raw scale.
        decoder_layers: the decoder MLP's hidden ``nn.Linear`` layers.
        decoder_head: ``nn.Linear`` to the likelihood's logits (or means).
        flows: the encoder's conditional flow layers (an ``nn.ModuleList``, empty for
            the Gaussian encoder), base to latent, each conditioned on :math:`h`.

    Example:
        >>> vae = FlowVAE(4, data_dim=12, encoder_flow="iaf", num_flows=2, hidden_dims=[16])
        >>> x = torch.randint(0, 2, (5, 12)).float()
        >>> from pyro.infer import Trace_ELBO
        >>> loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
        >>> loss.shape, vae.reconstruct(x).shape, vae.sample(3).shape
        (torch.Size([]), torch.Size([5, 12]), torch.Size([3, 12]))

    References:
        Auto-Encoding Variational Bayes. Diederik P. Kingma, Max Welling, 2014.
        arXiv:1312.6114.
        Improving Variational Inference with Inverse Autoregressive Flow. Diederik P.
        Kingma, Tim Salimans, Rafal Jozefowicz, Xi Chen, Ilya Sutskever, Max Welling,
        2016. arXiv:1606.04934.
        Efficient Neural Network Approaches for Conditional Optimal Transport with
        Applications in Bayesian Inference. Zheyu Oliver Wang, Ricardo Baptista,
        Youssef Marzouk, Lars Ruthotto, Deepanshu Verma, 2023. arXiv:2310.16975.
    """

    def __init__(
        self,
        latent_dim: int,
        data_dim: int = 784,
        encoder_flow: str | FlowFactory | None = None,
        num_flows: int = 2,
        hidden_dims: list[int] | tuple[int, ...] = (300, 300),
        *,
        encoder_hidden_dims: list[int] | tuple[int, ...] | None = None,
        decoder_hidden_dims: list[int] | tuple[int, ...] | None = None,
        flow_hidden_dims: list[int] | tuple[int, ...] | None = None,
        likelihood: str = "bernoulli",
        activation: str = "tanh",
        min_scale: float = 1e-4,
        decoder_scale: float = 1.0,
        kl_warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.data_dim = check_positive_int("data_dim", data_dim)
        if isinstance(encoder_flow, str):
            check_choice("encoder_flow", encoder_flow, ENCODER_FLOWS)
        elif encoder_flow is not None and (
            isinstance(encoder_flow, nn.Module) or not callable(encoder_flow)
        ):
            raise ArgumentTypeError(
                f"encoder_flow: expected None, one of {sorted(ENCODER_FLOWS)} or a callable "
                f"returning Pyro ConditionalTransformModules, got {type(encoder_flow).__name__}"
            )
        self.encoder_flow = encoder_flow
        self.num_flows = check_positive_int("num_flows", num_flows)
        hidden = check_widths("hidden_dims", hidden_dims, allow_empty=True)
        enc = (
            hidden
            if encoder_hidden_dims is None
            else check_widths("encoder_hidden_dims", encoder_hidden_dims, allow_empty=True)
        )
        dec = (
            hidden[::-1]
            if decoder_hidden_dims is None
            else check_widths("decoder_hidden_dims", decoder_hidden_dims, allow_empty=True)
        )
        self.likelihood = check_choice("likelihood", likelihood, LIKELIHOODS)
        self.activation = check_choice("activation", activation, tuple(ACTIVATIONS))
        self.min_scale = check_positive("min_scale", min_scale)
        check_positive("decoder_scale", decoder_scale)
        self.kl_warmup_steps = check_positive_int("kl_warmup_steps", kl_warmup_steps, minimum=0)

        widths = [data_dim, *enc]
        self.encoder_layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths, widths[1:], strict=False)
        )
        self.encoder_head = nn.Linear(widths[-1], 2 * latent_dim)
        self.context_dim = widths[-1]
        widths = [latent_dim, *dec]
        self.decoder_layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths, widths[1:], strict=False)
        )
        self.decoder_head = nn.Linear(widths[-1], data_dim)
        if likelihood == "gaussian":
            raw = softplus_inverse(max(decoder_scale - min_scale, 1e-6))
            self.decoder_scale_raw = nn.Parameter(torch.full((data_dim,), raw))

        self.flows = nn.ModuleList()
        if callable(encoder_flow):
            self.flows = flow_stack(
                latent_dim, encoder_flow, context_dim=self.context_dim, name="encoder_flow"
            )
        elif encoder_flow is not None:
            default = [max(4 * latent_dim, 32)] * 2
            flow_hidden = (
                default
                if flow_hidden_dims is None
                else check_widths("flow_hidden_dims", flow_hidden_dims, allow_empty=True)
            )
            for k in range(num_flows):
                if encoder_flow == "iaf":
                    for h in flow_hidden:
                        if h < latent_dim:
                            raise ArgumentError(
                                f"flow_hidden_dims: expected widths >= latent_dim = {latent_dim} "
                                f"for the IAF's MADE networks, got {flow_hidden}"
                            )
                    order = torch.arange(latent_dim)
                    arn = ConditionalAutoRegressiveNN(
                        latent_dim,
                        self.context_dim,
                        flow_hidden,
                        permutation=order.flip(0) if k % 2 else order,
                        nonlinearity=nn.ELU(),
                    )
                    self.flows.append(ConditionalAffineAutoregressive(arn, stable=True))
                else:
                    self.flows.append(
                        conditional_pcp_map(latent_dim, self.context_dim, flow_hidden)
                    )

        self.register_buffer("prior_loc", torch.zeros(latent_dim))
        self.register_buffer("prior_scale", torch.ones(latent_dim))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # state dicts saved before the KL warm-up moved out of the module (issue 19) carry
        # its step count as a buffer; the step now lives in fit's checkpoint
        state_dict.pop(prefix + "training_steps", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- networks --------------------------------------------------------------------
    def _act(self, h: Tensor) -> Tensor:
        return ACTIVATIONS[self.activation](h)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""Encode ``x`` :math:`(N, D)` into the base Gaussian and the flow's context.

        Returns:
            :math:`(\mu, s, h)`: the base Gaussian's mean and scale, each :math:`(N, L)`,
            and the features :math:`h`, :math:`(N, C)`.
        """
        h = x
        for layer in self.encoder_layers:
            h = self._act(layer(h))
        loc, raw_scale = self.encoder_head(h).split(self.latent_dim, dim=-1)
        return loc, F.softplus(raw_scale) + self.min_scale, h

    def decode(self, z: Tensor) -> Tensor:
        r"""Decoder output :math:`f_\theta(z)`, :math:`(*, D)`: Bernoulli logits or means."""
        h = z
        for layer in self.decoder_layers:
            h = self._act(layer(h))
        return self.decoder_head(h)

    @torch.no_grad()
    def init_decoder_bias(self, x: Tensor) -> None:
        r"""Start the decoder's output bias at the data's marginal (a common initialisation).

        .. math::

            b = \operatorname{logit}(\operatorname{clamp}(\bar x, 10^{-3}, 1 - 10^{-3}))
            \ \text{(Bernoulli)}, \qquad b = \bar x \ \text{(Gaussian)},

        with :math:`\bar x` the mean of ``x`` over its rows, so that the untrained model
        predicts the average image instead of 0.5 everywhere; this shortens the early
        plateau of training.

        Args:
            x: data :math:`(N, D)`; uint8 pixels are divided by 255.

        Example:
            >>> vae = FlowVAE(2, data_dim=3, hidden_dims=[4])
            >>> vae.init_decoder_bias(torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]]))
            >>> torch.sigmoid(vae.decoder_head.bias)
            tensor([0.0010, 0.9990, 0.5000], grad_fn=<SigmoidBackward0>)
        """
        if isinstance(x, Tensor) and x.dtype == torch.uint8:
            x = x.float() / 255
        check_tensor("x", x, event_shape=(self.data_dim,), min_dim=2)
        mean = x.reshape(-1, self.data_dim).mean(0).to(self.decoder_head.bias)
        if self.likelihood == "bernoulli":
            mean = torch.logit(mean.clamp(1e-3, 1 - 1e-3))
        self.decoder_head.bias.copy_(mean)

    def decoder_scale(self) -> Tensor:
        r"""The Gaussian likelihood's :math:`\sigma`, shape :math:`(D,)`."""
        if self.likelihood != "gaussian":
            raise ArgumentError(
                f"decoder_scale: only the gaussian likelihood has one, got {self.likelihood!r}"
            )
        return F.softplus(self.decoder_scale_raw) + self.min_scale

    def posterior(self, x: Tensor) -> dist.TorchDistribution:
        r""":math:`q(z \mid x)`: batch shape :math:`(N,)`, event shape :math:`(L,)`.

        Fresh conditioned transforms on each call (no cache carried between calls).
        """
        x = self._check_x(x)
        loc, scale, h = self.encode(x)
        base = dist.Normal(loc, scale).to_event(1)
        if self.encoder_flow is None:
            return base
        return dist.TransformedDistribution(base, [layer.condition(h) for layer in self.flows])

    # -- checks ----------------------------------------------------------------------
    def _check_x(self, x: Tensor, first_row: int = 0) -> Tensor:
        bernoulli = self.likelihood == "bernoulli"  # is_binary below refuses NaN and inf
        check_input("x", x, self.prior_loc, event_shape=(self.data_dim,), min_dim=2,
                    finite=not bernoulli)  # fmt: skip
        if x.dim() != 2:
            raise ArgumentError(
                f"x: expected shape (N, {self.data_dim}), got shape {tuple(x.shape)}"
            )
        if bernoulli and is_validation_enabled() and not is_binary(x):
            check_finite("x", x)  # a non-finite entry is reported as such
            bad = (x != 0) & (x != 1)
            rows = bad.any(-1).nonzero().flatten()
            raise ArgumentError(
                f"x: the Bernoulli likelihood expects binary data (0.0 or 1.0), got "
                f"{int(bad.sum())} other values (e.g. {x[bad][0].item():g}) in "
                f"{len(rows)} rows (first: row {first_row + int(rows[0])}); binarise the "
                "data (pyro_manifold.datasets.dynamic_binarize) or use likelihood='gaussian'"
            )
        return x

    def check_data(self, x: Tensor, num_samples: int | None = None, *, first_row: int = 0) -> None:
        r"""Check every row of ``x`` :math:`(N, D)` as :meth:`model` would, values included.

        The data-check protocol of :func:`~pyro_manifold.infer.fit`, which calls it once
        over the whole training and validation data before training (row ``i`` is
        reported as row ``first_row + i``), so that the training steps read nothing back.
        With the Bernoulli likelihood every entry must be 0 or 1.

        Example:
            >>> FlowVAE(2, data_dim=3, hidden_dims=[4]).check_data(torch.tensor([[0.0, 1.0, 1.0]]))
        """
        check_data_rows(lambda x: self._check_x(x, first_row), x, first_row)

    def kl_weight_at(self, step: int) -> float:
        r"""The warm-up factor :math:`\beta_t = \min(1, (t + 1) / W)` of the step after :math:`t`.

        1 without warm-up (:math:`W = 0`).

        Example:
            >>> vae = FlowVAE(2, data_dim=3, hidden_dims=[4], kl_warmup_steps=4)
            >>> [vae.kl_weight_at(t) for t in range(5)]
            [0.25, 0.5, 0.75, 1.0, 1.0]
        """
        step = check_positive_int("step", step, minimum=0)
        if self.kl_warmup_steps == 0:
            return 1.0
        return min(1.0, (step + 1) / self.kl_warmup_steps)

    def step_kwargs(self, step: int) -> dict[str, float]:
        r"""The keyword arguments of training step :math:`t`: ``{"kl_weight": β_t}``.

        :func:`~pyro_manifold.infer.fit` passes them to :meth:`model` and :meth:`guide`
        before each step (:math:`t` steps taken before it); call it yourself with
        Pyro's ``SVI`` (see the class).

        Example:
            >>> FlowVAE(2, data_dim=3, hidden_dims=[4], kl_warmup_steps=10).step_kwargs(4)
            {'kl_weight': 0.5}
        """
        return {"kl_weight": self.kl_weight_at(step)}

    @contextmanager
    def _latent_scale(self, kl_weight: float) -> Iterator[None]:
        beta = check_positive("kl_weight", kl_weight)  # poutine.scale refuses 0
        if beta == 1.0:
            yield
        else:
            with poutine.scale(scale=beta):
                yield

    # -- the Pyro programs -------------------------------------------------------------
    def model(
        self, x: Tensor | None = None, num_samples: int | None = None, *, kl_weight: float = 1.0
    ) -> Tensor:
        r"""Observe ``x`` :math:`(N, D)`, or generate ``num_samples`` new points.

        Sites: ``"z"`` (latent, :math:`(N, L)`, its log-density scaled by ``kl_weight``
        :math:`\beta > 0`), ``"x_mean"`` (deterministic decoder mean; not in training
        steps, see the class) and ``"x"`` (observed). Returns the value of ``"x"``.
        """
        register_parameters(self)
        if x is not None:
            n = self._check_x(x).shape[0]
        else:
            n = check_positive_int("num_samples", 1 if num_samples is None else num_samples)
        with pyro.plate("data", n, dim=-1):
            with self._latent_scale(kl_weight):
                z = pyro.sample("z", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            out = self.decode(z)
            bernoulli = self.likelihood == "bernoulli"
            if not (self.training and torch.is_grad_enabled()):
                pyro.deterministic("x_mean", torch.sigmoid(out) if bernoulli else out, event_dim=1)
            if bernoulli:
                likelihood = dist.Bernoulli(logits=out).to_event(1)
            else:
                likelihood = dist.Normal(out, self.decoder_scale()).to_event(1)
            return pyro.sample("x", likelihood, obs=x)

    def guide(
        self, x: Tensor | None = None, num_samples: int | None = None, *, kl_weight: float = 1.0
    ) -> Tensor:
        r"""Sample ``"z"`` from :math:`q(z \mid x)` (reparameterised); ``x`` is required.

        ``kl_weight`` :math:`\beta` scales :math:`\log q(z|x)` as in :meth:`model`.
        """
        if x is None:
            raise ArgumentError("x: the guide needs data of shape (N, D), got None")
        posterior = self.posterior(x)
        with pyro.plate("data", x.shape[0], dim=-1), self._latent_scale(kl_weight):
            return pyro.sample("z", posterior)

    # -- posterior predictive ----------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        r"""Decoder means :math:`\mathbb E[x \mid z]` at :math:`z \sim q(z \mid x)`, :math:`(N, D)`.

        Runs :class:`~pyro.infer.Predictive` with the guide (one posterior draw).
        """
        predictive = Predictive(
            self.model, guide=self.guide, num_samples=1, return_sites=["x_mean"]
        )
        return predictive(x)["x_mean"][0]

    @torch.no_grad()
    def sample(
        self, num_samples: int, mean: bool = True, *, batch_size: int = SAMPLE_BATCH
    ) -> Tensor:
        r"""``num_samples`` new points from the model, :math:`(num\_samples, D)`.

        The model runs on at most ``batch_size`` points at a time, without gradients
        (:func:`~pyro_manifold.metrics.sample_in_batches`), so memory beyond the draws is
        that of one batch at any ``num_samples``. Each call draws the latents and then
        the observations, so a batched draw agrees with one unbatched call in
        distribution, not draw by draw.

        Args:
            num_samples: how many.
            mean: return the decoder means (pixel probabilities) rather than draws.
            batch_size: the most points per call of the model.
        """
        check_positive_int("num_samples", num_samples)
        check_bool("mean", mean)
        site = "x_mean" if mean else "x"
        predictive = Predictive(self.model, num_samples=1, return_sites=[site])
        return sample_in_batches(
            lambda b: predictive(None, num_samples=b)[site][0], num_samples, batch_size, device=None
        )
