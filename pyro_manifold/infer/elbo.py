r"""ELBO estimators that build the loss from the traces without host synchronisation.

Pyro's ``Trace_ELBO.differentiable_loss`` reads every site's log-probability back to
the host (``torch_item``) and checks the loss for NaN (``warn_if_nan``, which also hooks
a NaN check into the backward pass); on a GPU each of these waits for the device. The
estimators here compute the same value and the same gradients with tensors only, so a
training step queues its kernels without waiting. With Pyro's validation disabled
(:func:`pyro.validation_enabled` ``(False)``, which :func:`~pyro_manifold.infer.fit` does
inside its hot loop) no step of the ELBO synchronises.

Both are subclasses of Pyro's estimators and take the same arguments; ``loss`` (the
non-differentiable value, used for validation) is Pyro's own.
"""

from __future__ import annotations

import warnings

import torch
from pyro.distributions.torch_distribution import MaskedDistribution
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.traceenum_elbo import _check_tmc_elbo_constraint, _compute_dice_elbo
from pyro.infer.util import is_identically_zero, is_validation_enabled
from pyro.util import check_traceenum_requirements
from torch import Tensor

from pyro_manifold.errors import ArgumentError, ArgumentTypeError

__all__ = ["FastTraceEnum_ELBO", "FastTrace_ELBO", "fast_elbo"]


class FastTrace_ELBO(Trace_ELBO):
    r"""``Trace_ELBO`` whose ``differentiable_loss`` never leaves the device.

    For each particle, with :math:`\log p` and :math:`\log q` summed over the sites of
    the model and guide traces (after Pyro's scale and mask),

    .. math::

        \widehat{\mathrm{ELBO}} = \sum_{\text{model}} \log p - \sum_{\text{guide}} \log q,
        \qquad
        \tilde{\mathcal L} = \sum_{\text{model}} \log p - \sum_{\text{guide}} H_s
            + \sum_{\text{guide}} \bigl(\textstyle\sum \log r\bigr) \cdot S_s,

    where :math:`H_s` is the entropy term and :math:`S_s` the score-function term of a
    guide site's ``score_parts`` and :math:`\log r` the (downstream, plate-aware) cost of
    Pyro's partial Rao-Blackwellisation. The loss returned is
    :math:`-\widehat{\mathrm{ELBO}} + (-\tilde{\mathcal L}) - \mathrm{sg}(-\tilde{\mathcal L})`
    averaged over particles: its value is Pyro's and its gradient is Pyro's surrogate
    gradient, computed without ``.item()`` and without NaN hooks.

    Example:
        >>> def model(x):
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))
        >>> pyro.set_rng_seed(0)
        >>> fast = FastTrace_ELBO().differentiable_loss(model, guide, torch.tensor(1.0))
        >>> pyro.set_rng_seed(0)
        >>> stock = Trace_ELBO().differentiable_loss(model, guide, torch.tensor(1.0))
        >>> torch.equal(fast, stock)
        True
    """

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        elbo: Tensor | float = 0.0
        surrogate: Tensor | float = 0.0
        log_r = None
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo + site["log_prob_sum"].detach()
                surrogate = surrogate + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] != "sample":
                continue
            _, score_function_term, entropy_term = site["score_parts"]
            elbo = elbo - site["log_prob_sum"].detach()
            if not is_identically_zero(entropy_term):
                surrogate = surrogate - entropy_term.sum()
            if not is_identically_zero(score_function_term):
                if log_r is None:
                    log_r = _compute_log_r(model_trace, guide_trace)
                downstream = log_r.sum_to(site["cond_indep_stack"])
                surrogate = surrogate + (downstream * score_function_term).sum()
        return -elbo, -surrogate

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """The negative ELBO with Pyro's gradient, as a tensor on the data's device."""
        loss: Tensor | float = 0.0
        surrogate: Tensor | float = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss_particle, surrogate_particle = self._differentiable_loss_particle(
                model_trace, guide_trace
            )
            loss = loss + loss_particle / self.num_particles
            surrogate = surrogate + surrogate_particle / self.num_particles
        if not isinstance(surrogate, Tensor):
            raise ArgumentError(
                f"model/guide: the ELBO has no sample sites to differentiate, got {surrogate!r}"
            )
        return loss + (surrogate - surrogate.detach())


class FastTraceEnum_ELBO(TraceEnum_ELBO):
    r"""``TraceEnum_ELBO`` whose ``differentiable_loss`` never leaves the device.

    The value is Pyro's dice-factor ELBO with enumerated sites summed out exactly (for a
    mixture guide :math:`\sum_k q(k|x)[\log p(x|k) + \log p(k) - \log q(k|x)]`), computed
    by Pyro's contraction, only without the NaN check that synchronises; or, in the
    common case below, in closed form.

    The common case, computed without Pyro's tensor contraction (or its packing): a
    guide whose only sample site :math:`k` is enumerated in parallel (no Monte Carlo
    ``num_samples``) and a model that enumerates nothing of its own. Pyro's Dice
    estimator then weights each model site's (scaled, masked) log-probability
    :math:`\log p_s` and the guide's :math:`-\log q` by the guide's probabilities
    :math:`q = \exp(\log q)` (not detached) when the term depends on :math:`k` and lies
    inside all the plates of :math:`k`, and sums every other term as it is:

    .. math::

        \mathrm{ELBO} = \sum_{s \ni k} \sum q \odot \bigl[\log p_s\bigr]_{q > 0}
            - \sum q \odot \bigl[\log q\bigr]_{q > 0}
            + \sum_{s \not\ni k} \sum \log p_s,

    where :math:`[c]_{q > 0}` drops the entries where :math:`q` underflowed to 0, as
    Pyro's contraction does (with ``masked_select``, a host read; here with
    ``torch.where``, none). It is the same function of the parameters as Pyro's, so value
    and gradient agree (to rounding); everything else goes through Pyro's contraction.

    Example:
        >>> from pyro.infer import config_enumerate
        >>> def model(x):
        ...     k = pyro.sample("k", dist.Categorical(torch.ones(2) / 2))
        ...     pyro.sample("x", dist.Normal(torch.tensor([-1.0, 1.0])[k], 1.0), obs=x)
        >>> @config_enumerate
        ... def guide(x):
        ...     pyro.sample("k", dist.Categorical(logits=pyro.param("l", torch.zeros(2))))
        >>> x = torch.tensor(0.5)
        >>> fast = FastTraceEnum_ELBO().differentiable_loss(model, guide, x)
        >>> torch.allclose(fast, TraceEnum_ELBO().differentiable_loss(model, guide, x))
        True
    """

    _leave_unpacked = False  # set while differentiable_loss draws its traces

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """The negative enumerated ELBO, as a tensor on the data's device."""
        elbo: Tensor | float = 0.0
        self._leave_unpacked = True
        try:
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                particle = _closed_form_elbo(model_trace, guide_trace)
                if particle is None:
                    guide_trace.pack_tensors()
                    model_trace.pack_tensors(guide_trace.plate_to_symbol)
                    particle = _compute_dice_elbo(model_trace, guide_trace)
                if not is_identically_zero(particle):
                    elbo = elbo + particle
        finally:
            self._leave_unpacked = False
        elbo = elbo / self.num_particles
        if not isinstance(elbo, Tensor) or not elbo.requires_grad:
            raise ArgumentError(f"model/guide: the ELBO cannot be differentiated, got {elbo!r}")
        return -elbo

    def _get_trace(self, model, guide, args, kwargs):
        """One guide trace and the model's against it; unpacked inside ``differentiable_loss``.

        Packing (naming every dimension for the tensor contraction) is then left to the
        pairs that need the contraction. Pyro's checks of the pair run under validation,
        and a pair without enumerated sites is reported, as Pyro does.
        """
        if not self._leave_unpacked:  # Pyro's other methods (loss, marginals) pack
            return super()._get_trace(model, guide, args, kwargs)
        model_trace, guide_trace = get_importance_trace(
            "flat", self.max_plate_nesting, model, guide, args, kwargs
        )
        if is_validation_enabled():
            check_traceenum_requirements(model_trace, guide_trace)
            _check_tmc_elbo_constraint(model_trace, guide_trace)
            enumerated = (
                site["infer"].get("enumerate")
                for trace in (model_trace, guide_trace)
                for site in trace.nodes.values()
                if site["type"] == "sample"
            )
            if self.strict_enumeration_warning and not any(enumerated):
                warnings.warn(
                    "FastTraceEnum_ELBO: no sample site is marked for enumeration "
                    '(config_enumerate, or infer={"enumerate": "parallel"}); without one, '
                    "Trace_ELBO gives the same estimate",
                    stacklevel=2,
                )
        return model_trace, guide_trace


def _plates(site) -> frozenset[str]:
    """The names of the vectorised plates a site is in (Pyro's ordinal, by name)."""
    return frozenset(f.name for f in site["cond_indep_stack"] if f.vectorized)


def _closed_form_elbo(model_trace, guide_trace) -> Tensor | float | None:
    r"""The ELBO of one guide site enumerated in parallel, in closed form (else ``None``).

    ``None`` (Pyro's contraction is needed) unless the guide has exactly one sample site,
    enumerated in parallel without ``num_samples``, with a score-function term, and the
    model enumerates no site of its own. See :class:`FastTraceEnum_ELBO`.
    """
    enumerated = None
    for site in guide_trace.nodes.values():
        if site["type"] != "sample":
            continue
        if enumerated is not None:
            return None
        enumerated = site
    if enumerated is None or enumerated["mask"] is not None:
        return None
    if isinstance(enumerated["fn"], MaskedDistribution):
        return None  # a masked q need not sum to one over k: Pyro's contraction weighs it
    infer = enumerated["infer"]
    dim = infer.get("_enumerate_dim")
    log_q = enumerated["score_parts"].score_function  # unscaled, unmasked, as Dice's
    if (
        dim is None
        or infer.get("enumerate") != "parallel"
        or infer.get("num_samples") is not None
        or not isinstance(log_q, Tensor)
    ):
        return None
    name = enumerated["name"]
    sites = [s for s in model_trace.nodes.values() if s["type"] == "sample"]
    if any(s["name"] != name and s["infer"].get("_enumerate_dim") is not None for s in sites):
        return None  # enumerated in the model: its sum needs the contraction
    plates = _plates(enumerated)

    def weighted(cost) -> bool:
        """Whether Dice weights ``cost`` by q: it varies with k (inside k's plates)."""
        return cost.dim() >= -dim and cost.shape[dim] > 1

    elbo: Tensor | float = 0.0
    by_shape: dict[torch.Size, Tensor] = {}  # k-dependent costs, summed before weighting
    costs = [(s["log_prob"], plates <= _plates(s)) for s in sites]
    costs.append((-enumerated["log_prob"], True))
    for cost, inside in costs:
        if is_identically_zero(cost):
            continue
        if inside and isinstance(cost, Tensor) and weighted(cost):
            total = by_shape.get(cost.shape)
            by_shape[cost.shape] = cost if total is None else total + cost
        else:
            elbo = elbo + (cost.sum() if isinstance(cost, Tensor) else cost)
    if by_shape:
        q = log_q.exp()
        positive = q > 0
        for cost in by_shape.values():
            elbo = elbo + (q * torch.where(positive, cost, 0.0)).sum()
    return elbo


_FAST = {Trace_ELBO: FastTrace_ELBO, TraceEnum_ELBO: FastTraceEnum_ELBO}


def fast_elbo(loss: ELBO) -> ELBO:
    """The synchronisation-free twin of ``loss`` with the same settings, when there is one.

    ``Trace_ELBO`` becomes :class:`FastTrace_ELBO` and ``TraceEnum_ELBO`` becomes
    :class:`FastTraceEnum_ELBO` (same ``num_particles``, ``max_plate_nesting``,
    ``vectorize_particles``, ...); the fast ones and any other ELBO (subclasses such as
    ``TraceMeanField_ELBO`` or ``JitTrace_ELBO`` included) are returned unchanged.

    Example:
        >>> type(fast_elbo(Trace_ELBO(num_particles=4))).__name__
        'FastTrace_ELBO'
        >>> fast_elbo(Trace_ELBO(num_particles=4)).num_particles
        4
    """
    if not isinstance(loss, ELBO):
        raise ArgumentTypeError(f"loss: expected a pyro.infer.ELBO, got {type(loss).__name__}")
    twin = _FAST.get(type(loss))
    if twin is None:
        return loss
    fast = object.__new__(twin)
    fast.__dict__.update(loss.__dict__)
    return fast
