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

from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.traceenum_elbo import _compute_dice_elbo
from pyro.infer.util import is_identically_zero
from torch import Tensor

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
            raise ValueError(
                f"model/guide: the ELBO has no sample sites to differentiate, got {surrogate!r}"
            )
        return loss + (surrogate - surrogate.detach())


class FastTraceEnum_ELBO(TraceEnum_ELBO):
    r"""``TraceEnum_ELBO`` whose ``differentiable_loss`` never leaves the device.

    The value is Pyro's dice-factor ELBO with enumerated sites summed out exactly (for a
    mixture guide :math:`\sum_k q(k|x)[\log p(x|k) + \log p(k) - \log q(k|x)]`), computed
    by the same contraction, only without the NaN check that synchronises.

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

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """The negative enumerated ELBO, as a tensor on the data's device."""
        elbo: Tensor | float = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle = _compute_dice_elbo(model_trace, guide_trace)
            if not is_identically_zero(particle):
                elbo = elbo + particle
        elbo = elbo / self.num_particles
        if not isinstance(elbo, Tensor) or not elbo.requires_grad:
            raise ValueError(f"model/guide: the ELBO cannot be differentiated, got {elbo!r}")
        return -elbo


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
        raise TypeError(f"loss: expected a pyro.infer.ELBO, got {type(loss).__name__}")
    twin = _FAST.get(type(loss))
    if twin is None:
        return loss
    fast = object.__new__(twin)
    fast.__dict__.update(loss.__dict__)
    return fast
