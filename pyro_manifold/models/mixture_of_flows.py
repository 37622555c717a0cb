r"""The variational mixture of normalizing flows (VMoNF) of Pires & Figueiredo (2020).

Generative model and amortised variational posterior:

.. math::

    k \sim \operatorname{Categorical}(\pi), \qquad x \mid k \sim p_k(x)
    \ \text{(a normalizing flow)}, \qquad
    q_\phi(k \mid x) = \operatorname{softmax}\bigl(g_\phi(x) / T\bigr)_k,

trained by maximising the evidence lower bound (the paper's eq. 31), which for a
discrete :math:`k` is a finite sum that Pyro's ``TraceEnum_ELBO`` computes exactly by
enumerating the guide's :math:`k` in parallel:

.. math::

    \mathcal L(x) = \sum_{k=1}^{K} q_\phi(k \mid x)
        \bigl[\log p_k(x) + \log \pi_k - \log q_\phi(k \mid x)\bigr] \le \log p(x).

The :math:`K` flows are one batched computation (the networks of
:mod:`pyro_manifold.nn.batched` inside the ordinary transforms, built by
:func:`~pyro_manifold.transforms.flow_stack`), held as a
:class:`~pyro_manifold.distributions.MixtureOfFlows`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions.util import is_validation_enabled
from pyro.nn import DenseNN, PyroModule
from torch import Tensor, nn

from pyro_manifold._parallel import sum_over_ranks_
from pyro_manifold._registration import register_parameters
from pyro_manifold._validation import (
    check_bool,
    check_choice,
    check_data_rows,
    check_input,
    check_positive,
    check_positive_int,
    check_probability,
    check_widths,
)
from pyro_manifold.distributions.mixture_of_flows import MixtureOfFlows
from pyro_manifold.errors import ArgumentError, ArgumentTypeError
from pyro_manifold.metrics import SAMPLE_BATCH, sample_in_batches
from pyro_manifold.nn.kmeans import kmeans
from pyro_manifold.transforms import DEFAULT_FLOW, FlowFactory, check_flow, flow_stack

__all__ = ["MIXTURE_PRIORS", "VariationalMixtureOfFlows"]

#: The priors over components that ``prior=`` names.
MIXTURE_PRIORS = ("learned", "responsibilities", "uniform")


class _MixtureWeights(nn.Module):
    r"""Holds the logits of :math:`\pi` as a parameter (learned) or a buffer (fixed)."""

    def __init__(self, num_components: int, learned: bool) -> None:
        super().__init__()
        zeros = torch.zeros(num_components)
        if learned:
            self.logits = nn.Parameter(zeros)
        else:
            self.register_buffer("logits", zeros)


class VariationalMixtureOfFlows(PyroModule):
    r"""A mixture of :math:`K` normalizing flows with an amortised posterior :math:`q(k|x)`.

    .. math::

        p(x) = \sum_k \pi_k\, p_k(x), \qquad
        q(k \mid x) = \operatorname{softmax}\bigl(g(x) / T_t\bigr)_k, \qquad
        T_t = T_\infty + (T_0 - T_\infty)\,\gamma^{t},

        \mathcal L = \sum_{n \in U} \sum_k q(k \mid x_n)\bigl[\log p_k(x_n) + \log\pi_k
            - \log q(k \mid x_n)\bigr]
          + \sum_{n \in L} \bigl[\log p_{y_n}(x_n) + \log\pi_{y_n}
            + \alpha \log q(y_n \mid x_n)\bigr].

    :math:`U` are the unlabelled points and :math:`L` the labelled ones (label
    :math:`y_n \ge 0`; ``-1`` marks an unlabelled point). For a labelled point the
    component is observed in the model, and the classification term
    :math:`\alpha\log q(y|x) \le 0` is *added* to the bound (it is an observed site of the
    model, scaled by :math:`\alpha`), so maximising :math:`\mathcal L` trains :math:`q` to
    predict the labels and the semi-supervised fit is one SVI loop. Pyro computes the
    sum over :math:`k` exactly with ``TraceEnum_ELBO(max_plate_nesting=1)``: the guide
    marks :math:`k` for parallel enumeration.

    Program structure. ``model(x, y)``: a plate ``"data"`` over the unlabelled points
    with the latent site ``"component"`` and the observed ``"x"``; a plate
    ``"labelled"`` with the observed ``"label"``, ``"x_labelled"`` and
    ``"classification"``. With ``x=None``, ``model(num_samples=n)`` draws ``n`` new
    points (sites ``"component"``, ``"x"``), so ``pyro.infer.Predictive`` works for
    generation as for posterior assignments (``Predictive(model, guide=guide, ...)``
    returns ``"component"`` drawn from :math:`q(k|x)`).

    Temperature. ``model`` and ``guide`` take ``temperature=T`` (default
    :math:`T_\infty`, ``final_temperature``, which is also the default of
    :meth:`responsibilities`); the module keeps no step counter. The annealing schedule
    :math:`T_t` is :meth:`step_kwargs`, which :func:`~pyro_manifold.infer.fit` evaluates
    before each step (its step count is saved in checkpoints, so a resumed run continues
    the schedule). With Pyro's own ``SVI``, pass it yourself::

        svi = SVI(vmonf.model, vmonf.guide, pyro.optim.Adam({"lr": 1e-3}),
                  TraceEnum_ELBO(max_plate_nesting=1))
        for t in range(num_steps):
            svi.step(x, **vmonf.step_kwargs(t))

    Mixture weights (``prior``): ``"uniform"`` keeps :math:`\pi_k = 1/K`; ``"learned"``
    trains :math:`\log\pi` by the ELBO gradient; ``"responsibilities"`` sets :math:`\pi`
    to a moving average of the batch means of :math:`q(k|x)` (one-hot for labelled
    points), the maximiser of the bound over :math:`\pi` for the current :math:`q`.

    Start. All components start at the same standard normal base (the paper's model);
    :meth:`initialize_components` optionally centres each one on a k-means cluster (seeded
    by the labels when there are some), and :meth:`fit_encoder` then fits :math:`q(k|x)` to
    that partition.

    Cost. The :math:`K` components of a named flow run as one batched flow: scoring
    :math:`N` points costs one pass of :math:`K`-stacked networks over :math:`(N, K, D)`
    tensors, about one wide flow's time. Your own flow (a callable) is built :math:`K`
    times and the :math:`K` flows run one after another
    (:class:`~pyro_manifold.transforms.StackedFlows`): :math:`K` times one flow's time.

    Args:
        data_dim: :math:`D`, at least 2.
        num_components: :math:`K \ge 1`.
        flow: a name of :data:`~pyro_manifold.transforms.FLOWS` (see
            :func:`~pyro_manifold.transforms.flow_stack`; ``"spline_coupling"`` keeps the
            kept half fixed), or your own flow: a callable ``flow(D)`` returning Pyro
            ``TransformModule`` s on :math:`(*, D)`, called :math:`K` times (see Cost).
        num_layers: layers per component flow (named flows).
        hidden_dims: hidden widths of each flow layer's network (named flows).
        encoder_hidden_dims: hidden widths of the encoder :math:`g` (default
            ``[max(10 D, 64)] * 2``, ``[512, 512]`` for :math:`D \ge 100`).
        prior: ``"uniform"``, ``"learned"`` or ``"responsibilities"``.
        initial_temperature: :math:`T_0 > 0`.
        final_temperature: :math:`T_\infty > 0`.
        temperature_decay: :math:`\gamma \in (0, 1]` per step (1 keeps :math:`T_0`).
        label_weight: :math:`\alpha \ge 0`, weight of :math:`\log q(y|x)` per labelled point.
        prior_momentum: moving-average rate of ``prior="responsibilities"``, in (0, 1].
        num_bins: spline bins (spline flows).

    Attributes:
        layers: the :math:`K` component flows' layers on :math:`(*, K, D)`, base to data,
            each layer batched over the components (a user's own flow: one
            :class:`~pyro_manifold.transforms.StackedFlows` of :math:`K` stacks).
        encoder: the network :math:`g` of :math:`q(k|x) = \operatorname{softmax}(g(x) / T)`
            (a Pyro ``DenseNN``).
        weights: holds ``logits``, the logits of :math:`\pi` (a parameter when
            ``prior="learned"``, else a buffer).

    Example:
        >>> from pyro.infer import TraceEnum_ELBO
        >>> vmonf = VariationalMixtureOfFlows(2, num_components=3, num_layers=2,
        ...                                   hidden_dims=[16, 16])
        >>> x = torch.randn(8, 2)
        >>> loss = TraceEnum_ELBO(max_plate_nesting=1).loss(vmonf.model, vmonf.guide, x)
        >>> vmonf.component_log_prob(x).shape, vmonf.log_prob(x).shape
        (torch.Size([8, 3]), torch.Size([8]))
        >>> vmonf.responsibilities(x).sum(-1).allclose(torch.ones(8))
        True
        >>> samples, components = vmonf.sample(5)
        >>> samples.shape, components.shape
        (torch.Size([5, 2]), torch.Size([5]))

    References:
        Variational Mixture of Normalizing Flows. Guilherme G. P. Freitas Pires, Mário
        A. T. Figueiredo, 2020. arXiv:2009.00585.
        Semi-Supervised Learning with Deep Generative Models. Diederik P. Kingma, Danilo
        J. Rezende, Shakir Mohamed, Max Welling, 2014. arXiv:1406.5298.
    """

    def __init__(
        self,
        data_dim: int,
        num_components: int,
        flow: str | FlowFactory = DEFAULT_FLOW,
        num_layers: int = 4,
        hidden_dims: Sequence[int] | None = None,
        encoder_hidden_dims: Sequence[int] | None = None,
        prior: str = "uniform",
        initial_temperature: float = 1.0,
        final_temperature: float = 1.0,
        temperature_decay: float = 1.0,
        label_weight: float = 1.0,
        prior_momentum: float = 0.1,
        num_bins: int = 8,
    ) -> None:
        super().__init__()
        self.data_dim = check_positive_int("data_dim", data_dim, minimum=2)
        self.num_components = check_positive_int("num_components", num_components)
        self.flow = check_flow("flow", flow)
        self.prior = check_choice("prior", prior, MIXTURE_PRIORS)
        self.initial_temperature = check_positive("initial_temperature", initial_temperature)
        self.final_temperature = check_positive("final_temperature", final_temperature)
        gamma = check_probability("temperature_decay", temperature_decay)
        if gamma == 0:
            raise ArgumentError("temperature_decay: expected a number in (0, 1], got 0.0")
        self.temperature_decay = gamma
        self.label_weight = check_positive("label_weight", label_weight, allow_zero=True)
        momentum = check_probability("prior_momentum", prior_momentum)
        if momentum == 0:
            raise ArgumentError("prior_momentum: expected a number in (0, 1], got 0.0")
        self.prior_momentum = momentum
        self.layers = flow_stack(
            data_dim,
            flow,
            num_layers,
            hidden_dims,
            num_components=num_components,
            num_bins=num_bins,
        )
        if encoder_hidden_dims is None:
            encoder_hidden_dims = [max(10 * data_dim, 64)] * 2 if data_dim < 100 else [512, 512]
        encoder_hidden = check_widths("encoder_hidden_dims", encoder_hidden_dims)
        self.encoder = DenseNN(data_dim, encoder_hidden, param_dims=[num_components])
        self.weights = _MixtureWeights(num_components, learned=prior == "learned")
        self.register_buffer("base_loc", torch.zeros(num_components, data_dim))
        self.register_buffer("base_scale", torch.ones(num_components, data_dim))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # state dicts saved before the temperature moved out of the module (issue 19)
        # carry its step count as extra state; the step now lives in fit's checkpoint
        state_dict.pop(prefix + "_extra_state", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- temperature -------------------------------------------------------------------
    def temperature_at(self, step: int) -> float:
        r"""Return :math:`T_t = T_\infty + (T_0 - T_\infty)\gamma^t` for step :math:`t \ge 0`.

        Example:
            >>> m = VariationalMixtureOfFlows(2, 2, num_layers=1, initial_temperature=5.0,
            ...                               temperature_decay=0.5)
            >>> [m.temperature_at(t) for t in (0, 1, 2)]
            [5.0, 3.0, 2.0]
        """
        step = check_positive_int("step", step, minimum=0)
        t0, t_inf = self.initial_temperature, self.final_temperature
        return t_inf + (t0 - t_inf) * self.temperature_decay**step

    def step_kwargs(self, step: int) -> dict[str, float]:
        r"""The keyword arguments of training step :math:`t`: ``{"temperature": T_t}``.

        :func:`~pyro_manifold.infer.fit` passes them to :meth:`model` and :meth:`guide`
        before each step (:math:`t` steps taken before it); call it yourself with
        Pyro's ``SVI`` (see the class).

        Example:
            >>> m = VariationalMixtureOfFlows(2, 2, num_layers=1, initial_temperature=3.0,
            ...                               temperature_decay=0.5)
            >>> m.step_kwargs(0), m.step_kwargs(1)
            ({'temperature': 3.0}, {'temperature': 2.0})
        """
        return {"temperature": self.temperature_at(step)}

    def _temperature(self, temperature: float | None) -> float:
        if temperature is None:
            return self.final_temperature
        return check_positive("temperature", temperature)

    # -- checks ------------------------------------------------------------------------
    def _check_x(self, x: object) -> Tensor:
        x = check_input("x", x, self.base_loc, event_shape=(self.data_dim,), min_dim=2)
        if x.dim() != 2:
            raise ArgumentError(
                f"x: expected shape (N, {self.data_dim}), got shape {tuple(x.shape)}"
            )
        return x

    def check_data(
        self,
        x: Tensor,
        y: Tensor | None = None,
        num_samples: int | None = None,
        *,
        first_row: int = 0,
    ) -> None:
        r"""Check every row of ``x`` :math:`(N, D)` as :meth:`model` would, values included.

        The data-check protocol of :func:`~pyro_manifold.infer.fit`, which calls it once
        over the whole training and validation data before training (row ``i`` is
        reported as row ``first_row + i``), so that the training steps read nothing back.
        Labels ``y`` :math:`(N,)` must lie in :math:`[0, K-1]` or be -1 (unlabelled).

        Example:
            >>> y = torch.tensor([0, 1, -1, -1])
            >>> VariationalMixtureOfFlows(2, 2).check_data(torch.zeros(4, 2), y)
        """
        check_data_rows(self._check_x, x, first_row)
        if y is not None:
            self._check_labels(y, x.shape[0], first_row=first_row)

    def _check_labels(
        self, y: object, n: int, name: str = "y", first_row: int = 0, values: bool = True
    ) -> Tensor:
        """Labels' type, shape and device; with ``values``, their range (a host read)."""
        if (
            not isinstance(y, Tensor)
            or y.is_floating_point()
            or y.is_complex()
            or (y.dtype == torch.bool)
        ):
            got = f"tensor of dtype {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
            raise ArgumentTypeError(
                f"{name}: expected an integer tensor of labels (-1 = unlabelled), got {got}"
            )
        if tuple(y.shape) != (n,):
            raise ArgumentError(
                f"{name}: expected shape ({n},) like x's rows, got {tuple(y.shape)}"
            )
        model_device = self.base_loc.device
        if y.device != model_device and y.device.type != "cpu":
            raise ArgumentError(
                f"{name}: expected a tensor on device {model_device} (the model's) or on cpu, got "
                f"tensor of shape {tuple(y.shape)}, dtype {y.dtype}, device {y.device}"
            )
        outside = (y < -1) | (y >= self.num_components) if values else None
        if outside is not None and bool(outside.any()):
            row = int(outside.nonzero()[0, 0])
            raise ArgumentError(
                f"{name}: expected labels in [0, {self.num_components - 1}] or -1 (unlabelled), "
                f"got values in [{int(y.min())}, {int(y.max())}] (first outside: row "
                f"{first_row + row}, label {int(y[row])})"
            )
        return y.to(device=self.base_loc.device)

    # -- distributions -----------------------------------------------------------------
    def components(self) -> dist.TransformedDistribution:
        """Return the :math:`K` flows as one distribution, batch shape ``(K,)``, event ``(D,)``."""
        base = dist.Normal(self.base_loc, self.base_scale).to_event(1)
        return dist.TransformedDistribution(base, list(self.layers))

    def mixture_log_weights(self) -> Tensor:
        r"""Return :math:`\log\pi`, shape :math:`(K,)`."""
        return F.log_softmax(self.weights.logits, dim=-1)

    def distribution(self) -> MixtureOfFlows:
        r"""Return :math:`p(x) = \sum_k \pi_k p_k(x)` as a ``MixtureOfFlows``.

        The :class:`~pyro_manifold.distributions.MixtureOfFlows` of the current parameters.
        """
        return MixtureOfFlows(self.mixture_log_weights(), self.components())

    def encoder_logits(self, x: Tensor) -> Tensor:
        r"""Return the encoder's logits :math:`g(x)` (before the temperature), :math:`(N, K)`."""
        return self.encoder(self._check_x(x))

    def responsibilities(self, x: Tensor, temperature: float | None = None) -> Tensor:
        r"""Return :math:`q(k \mid x) = \operatorname{softmax}(g(x)/T)`, shape :math:`(N, K)`.

        Args:
            x: :math:`(N, D)`.
            temperature: :math:`T`; default :math:`T_\infty` (``final_temperature``).
        """
        return torch.softmax(self.encoder_logits(x) / self._temperature(temperature), dim=-1)

    @torch.no_grad()
    def cluster(self, x: Tensor, exact: bool = False) -> Tensor:
        r"""Return cluster indices :math:`\arg\max_k q(k \mid x)`, shape :math:`(N,)`, int64.

        With ``exact=True`` use the model's own posterior
        :math:`\arg\max_k \pi_k p_k(x)` instead of the encoder.
        """
        if check_bool("exact", exact):
            return self.distribution().posterior_log_prob(self._check_x(x)).argmax(-1)
        return self.encoder_logits(x).argmax(-1)

    def component_log_prob(self, x: Tensor) -> Tensor:
        r"""Return :math:`\log p_k(x)` for every component, shape :math:`(N, K)`."""
        return self.distribution().component_log_prob(self._check_x(x))

    def log_prob(self, x: Tensor) -> Tensor:
        r"""Return the exact :math:`\log \sum_k \pi_k p_k(x)`, shape :math:`(N,)`."""
        return self.distribution().log_prob(self._check_x(x))

    @torch.no_grad()
    def sample(self, num_samples: int, *, batch_size: int = SAMPLE_BATCH) -> tuple[Tensor, Tensor]:
        r"""Draw ``num_samples`` points and their components: :math:`(n, D)` and :math:`(n,)`.

        At most ``batch_size`` points are drawn at a time
        (:func:`~pyro_manifold.metrics.sample_in_batches`), so memory beyond the draws is
        that of one batch at any ``num_samples``. Each call draws the components and
        then the points, so a batched draw agrees with one unbatched call in
        distribution, not draw by draw.
        """
        check_positive_int("num_samples", num_samples)
        mixture = self.distribution()
        return sample_in_batches(
            lambda b: mixture.sample_with_components((b,)),
            num_samples,
            batch_size,
            device=None,
            all_outputs=True,
        )

    # -- Pyro programs -----------------------------------------------------------------
    def _split(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Return the unlabelled rows, the labelled rows and their labels."""
        if y is None:
            return x, None, None
        labelled = y >= 0
        if bool(labelled.all()):
            return x[:0], x, y
        if not bool(labelled.any()):
            return x, None, None
        return x[~labelled], x[labelled], y[labelled]

    def model(
        self,
        x: Tensor | None = None,
        y: Tensor | None = None,
        num_samples: int | None = None,
        *,
        temperature: float | None = None,
    ) -> Tensor:
        r"""Observe ``x`` :math:`(N, D)`, with optional labels ``y`` :math:`(N,)`, or draw points.

        ``temperature`` is :math:`T` of the classification term :math:`\log q(y|x)`
        (default ``final_temperature``; :meth:`step_kwargs` gives the schedule). Returns
        the components of the unlabelled points (or of the new points).
        """
        register_parameters(self)
        mixture = self.distribution()
        log_pi = mixture.mixture_log_weights
        if x is None:
            n = check_positive_int("num_samples", 1 if num_samples is None else num_samples)
            with pyro.plate("data", n):
                k = pyro.sample("component", dist.Categorical(logits=log_pi))
                pyro.sample("x", mixture.component(k))
            return k
        x = self._check_x(x)
        if y is not None:
            y = self._check_labels(y, x.shape[0], values=is_validation_enabled())
        x_u, x_l, y_l = self._split(x, y)
        k = x_u.new_zeros((0,), dtype=torch.int64)
        if x_l is not None:
            assert y_l is not None
            logits = self.encoder(x_l) / self._temperature(temperature)
            with pyro.plate("labelled", x_l.shape[0], device=x.device):
                pyro.sample("label", dist.Categorical(logits=log_pi), obs=y_l)
                pyro.sample("x_labelled", mixture.component(y_l), obs=x_l)
                with poutine.scale(scale=self.label_weight):
                    pyro.sample("classification", dist.Categorical(logits=logits), obs=y_l)
        if x_u.shape[0] > 0:
            with pyro.plate("data", x_u.shape[0], device=x.device):
                k = pyro.sample("component", dist.Categorical(logits=log_pi))
                pyro.sample("x", mixture.component(k), obs=x_u)
        return k

    def guide(
        self,
        x: Tensor | None = None,
        y: Tensor | None = None,
        num_samples: int | None = None,
        *,
        temperature: float | None = None,
    ) -> Tensor | None:
        r"""Draw :math:`k \sim q(k \mid x)` for the unlabelled points (enumerated by TraceEnum).

        ``temperature`` is :math:`T` of :math:`q(k|x) = \operatorname{softmax}(g(x)/T)`
        (default ``final_temperature``; :meth:`step_kwargs` gives the schedule).
        """
        if x is None:
            return None
        x = self._check_x(x)
        if y is not None:
            y = self._check_labels(y, x.shape[0], values=is_validation_enabled())
        training = self.training and torch.is_grad_enabled()
        x_u, x_l, y_l = self._split(x, y)
        k, logits = None, None
        if x_u.shape[0] > 0:
            logits = self.encoder(x_u) / self._temperature(temperature)
            with pyro.plate("data", x_u.shape[0], device=x.device):
                k = pyro.sample(
                    "component", dist.Categorical(logits=logits), infer={"enumerate": "parallel"}
                )
        if training and self.prior == "responsibilities":
            probs_u = None if logits is None else torch.softmax(logits.detach(), -1)
            self._update_prior(probs_u, y_l)
        return k

    @torch.no_grad()
    def _update_prior(self, probs_u: Tensor | None, y_l: Tensor | None) -> None:
        # the responsibilities' sums and the point count, summed over the ranks of a
        # data-parallel fit so that the update is the global batch's
        stats = self.base_loc.new_zeros(self.num_components + 1)
        if probs_u is not None:
            stats[:-1] += probs_u.sum(0)
            stats[-1] += probs_u.shape[0]
        if y_l is not None:
            stats[:-1] += torch.bincount(y_l, minlength=self.num_components).to(stats.dtype)
            stats[-1] += y_l.shape[0]
        total, count = sum_over_ranks_(stats).split([self.num_components, 1])
        m = self.prior_momentum
        old = self.mixture_log_weights().exp()
        pi = torch.where(count > 0, (1 - m) * old + m * total / count.clamp_min(1), old)
        self.weights.logits.copy_(pi.clamp_min(1e-12).log())

    @torch.no_grad()
    def initialize_components(
        self, x: Tensor, seed: int = 0, num_iterations: int = 50, y: Tensor | None = None
    ) -> Tensor:
        r"""Centre each component's base distribution on a k-means cluster of ``x``.

        Runs :func:`~pyro_manifold.nn.kmeans` (k-means++ seeding, then up to
        ``num_iterations`` Lloyd steps, in float64 on the CPU with a local generator seeded
        with ``seed``) and sets component :math:`k`'s base
        distribution to :math:`\mathcal N(c_k, \operatorname{diag}(s_k^2))`, the centroid and
        per-coordinate spread of cluster :math:`k`. The flows then start near their own
        part of the data instead of all at the origin, which breaks the symmetry between
        components in a data-driven way (the analogue of initialising a Gaussian mixture
        by k-means). This is not part of Pires & Figueiredo's method; it is an option,
        compared with the random start in ``benchmarks/vmonf.py``.

        With labels ``y`` (as in :meth:`model`, ``-1`` = unlabelled) the k-means is seeded
        and constrained (Basu et al., 2002): cluster :math:`k` starts at the mean of the
        points labelled :math:`k` and labelled points stay in their class, so component
        :math:`k` starts on class :math:`k` for semi-supervised training.

        Args:
            x: :math:`(N, D)` training points, :math:`N \ge K`.
            seed: seed of the k-means generator.
            num_iterations: Lloyd iterations.
            y: optional :math:`(N,)` integer labels in :math:`[0, K)` or ``-1``.

        Returns:
            The k-means labels, :math:`(N,)` int64 (equal to ``y`` where ``y >= 0``).

        Example:
            >>> m = VariationalMixtureOfFlows(2, 2, num_layers=1)
            >>> x = torch.cat([torch.randn(50, 2) - 5, torch.randn(50, 2) + 5])
            >>> labels = m.initialize_components(x)
            >>> sorted(m.base_loc[:, 0].round().tolist())
            [-5.0, 5.0]
            >>> y = torch.full((100,), -1)
            >>> y[0], y[99] = 1, 0  # one label per cluster: component 1 takes x < 0
            >>> (m.initialize_components(x, y=y) == (x[:, 0] < 0).long()).all()
            tensor(True)
        """
        x = self._check_x(x)
        if y is not None:
            y = self._check_labels(y, x.shape[0])
        check_positive_int("seed", seed, minimum=0)
        check_positive_int("num_iterations", num_iterations, minimum=0)
        k = self.num_components
        if x.shape[0] < k:
            raise ArgumentError(f"x: expected at least num_components = {k} rows, got {x.shape[0]}")
        centroids, labels = kmeans(
            x.detach().double().cpu(),
            k,
            num_iterations,
            labels=None if y is None else y.cpu(),
            generator=torch.Generator(device="cpu").manual_seed(seed),
        )
        centroids, labels = centroids.to(x), labels.to(x.device)
        spread = x.std(0).clamp_min(1e-3)
        scales = torch.stack(
            [x[labels == j].std(0) if int((labels == j).sum()) > 1 else spread for j in range(k)]
        )
        self.base_loc.copy_(centroids)
        self.base_scale.copy_(scales.clamp_min(1e-3))
        return labels

    def fit_encoder(
        self,
        x: Tensor,
        labels: Tensor,
        num_steps: int = 500,
        batch_size: int = 256,
        lr: float = 1e-3,
        seed: int = 0,
        temperature: float | None = None,
    ) -> float:
        r"""Fit the encoder :math:`q_\phi(k \mid x)` to a given partition of ``x``.

        Minimises the cross-entropy at the temperature :math:`T` (by default
        :math:`T_0`, that of the first training step),

        .. math::

            \min_\phi\; -\frac1B \sum_{n \in \text{batch}} \log q_\phi(k_n \mid x_n),

        with Adam on the encoder's parameters only (the flows are untouched), over
        ``num_steps`` mini-batches drawn without replacement from a local generator seeded
        with ``seed``. Called after :meth:`initialize_components` with its k-means labels,
        it completes the k-means start: the first ELBO steps then weight each component's
        gradient by its own cluster instead of by :math:`q \approx 1/K` everywhere, which
        otherwise lets one component take several clusters. Like the k-means start, this is
        an option beyond Pires & Figueiredo's method (compared in ``benchmarks/vmonf.py``).

        Args:
            x: :math:`(N, D)` points.
            labels: :math:`(N,)` integer components in :math:`[0, K)`.
            num_steps: optimisation steps (0 leaves the encoder as it is).
            batch_size: points per step (capped at :math:`N`).
            lr: Adam learning rate, positive.
            seed: seed of the batch order.
            temperature: :math:`T`; default ``initial_temperature``.

        Returns:
            The fraction of points whose :math:`\arg\max_k q(k \mid x)` equals their label.

        Example:
            >>> m = VariationalMixtureOfFlows(2, 2, num_layers=1)
            >>> x = torch.cat([torch.randn(50, 2) - 5, torch.randn(50, 2) + 5])
            >>> labels = m.initialize_components(x)
            >>> m.fit_encoder(x, labels, num_steps=100)
            1.0
        """
        x = self._check_x(x)
        labels = self._check_labels(labels, x.shape[0], "labels")
        if bool((labels < 0).any()):
            raise ArgumentError(
                f"labels: expected components in [0, {self.num_components - 1}] for every "
                "point, got -1 (unlabelled)"
            )
        check_positive_int("num_steps", num_steps, minimum=0)
        batch_size = min(check_positive_int("batch_size", batch_size), x.shape[0])
        lr = check_positive("lr", lr)
        check_positive_int("seed", seed, minimum=0)
        t = self.initial_temperature if temperature is None else self._temperature(temperature)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        optimizer = torch.optim.Adam(self.encoder.parameters(), lr=lr)
        order, start = torch.randperm(x.shape[0], generator=generator), 0
        with torch.enable_grad():
            for _ in range(num_steps):
                if start + batch_size > x.shape[0]:
                    order, start = torch.randperm(x.shape[0], generator=generator), 0
                rows = order[start : start + batch_size].to(x.device)
                start += batch_size
                logits = self.encoder(x[rows]) / t
                loss = F.cross_entropy(logits, labels[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            agree = torch.cat(
                [
                    self.encoder(chunk).argmax(-1) == target
                    for chunk, target in zip(x.split(4096), labels.split(4096), strict=True)
                ]
            )
        return float(agree.double().mean())

    def num_parameters(self) -> int:
        """Return the number of trainable scalars (flows, encoder and mixture weights).

        Example:
            >>> m = VariationalMixtureOfFlows(2, 3, num_layers=1, hidden_dims=[4],
            ...                               encoder_hidden_dims=[4])
            >>> m.num_parameters()  # flows 3 * (1*4 + 4 + 4*2 + 2), encoder 2*4 + 4 + 4*3 + 3
            81
        """
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
