r"""Importance-weighted (IWAE) estimates of the marginal log-likelihood of Pyro programs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from pyro_manifold._validation import check_positive_int
from pyro_manifold.errors import ArgumentError, ArgumentTypeError

__all__ = ["importance_log_likelihood"]

_PARTICLE_PLATE = "_importance_particles"


def importance_log_likelihood(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    num_samples: int = 5000,
    chunk_size: int = 100,
    max_plate_nesting: int = 1,
    data_plate: str = "data",
    **kwargs: Any,
) -> Tensor:
    r"""Importance-weighted lower bound on :math:`\log p(x_n)` for every data point.

    With :math:`K` = ``num_samples`` draws :math:`z_{1:K} \sim q(z \mid x)` from the
    guide, this is the bound of Burda et al. (the IWAE bound),

    .. math::

        \log p(x_n) \;\ge\; \mathcal{L}_K(x_n) = \mathbb{E}\left[\log \frac1K
        \sum_{k=1}^K \frac{p(x_n, z_k)}{q(z_k \mid x_n)}\right],

    estimated with one set of :math:`K` draws. It grows with :math:`K`, equals the ELBO
    at :math:`K = 1` and tends to :math:`\log p(x_n)` as :math:`K \to \infty`; with the
    exact posterior as the guide it equals :math:`\log p(x_n)` for every :math:`K`.

    **What the programs must look like.** ``model(*args, **kwargs)`` and
    ``guide(*args, **kwargs)`` are ordinary Pyro programs in which the data sit in a
    ``pyro.plate(data_plate, N)`` (by convention at ``dim=-1``; the plate's dimension is
    read from the trace) and that use at most ``max_plate_nesting`` plates. The draws
    are vectorised as Pyro's ``vectorize_particles`` does: both programs run inside an
    outer plate of size ``chunk_size`` at ``dim=-(max_plate_nesting + 1)``, so every
    ``sample`` statement must broadcast over that batch dimension (write
    ``dist.Normal(loc, scale).to_event(1)``, not reshapes that assume a fixed batch).
    The data plate must not subsample.

    Per site, the log-probability (after Pyro's scale and mask) is broadcast to
    :math:`(K, \dots, N)`; every dimension except the particle and the data dimension
    is summed. Observed sites and latent sites of the model count in :math:`\log p`,
    the guide's sites in :math:`\log q`. A latent site that only the model samples is
    drawn from its prior, its :math:`p/q` ratio is one, and it is left out of both.
    Sites outside the data plate (global latents) count in every data point's weight,
    so the result for :math:`x_n` is the bound for the model with that point alone.

    The :math:`K` draws are made ``chunk_size`` at a time and combined with a running
    ``logsumexp``, so memory is that of ``chunk_size`` particles whatever :math:`K`.
    Everything runs under ``torch.no_grad()``.

    Args:
        model: a Pyro model, called as ``model(*args, **kwargs)``.
        guide: a Pyro guide with the same signature.
        *args: passed to both programs (e.g. the data of shape :math:`(N, D)`).
        num_samples: :math:`K`, the number of importance samples per data point.
        chunk_size: the number of samples drawn in one vectorised pass.
        max_plate_nesting: the number of plates the programs use (the particle plate
            goes one further left).
        data_plate: the name of the plate over data points.
        **kwargs: passed to both programs.

    Returns:
        :math:`\mathcal{L}_K(x_n)`, shape :math:`(N,)`.

    Raises:
        ValueError: no plate named ``data_plate``, a subsampled data plate, a site with
            more batch dimensions than ``max_plate_nesting + 1``, an enumerated site, or
            a non-finite weight.

    Example:
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):  # the exact posterior N(x / 2, 1 / 2)
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))
        >>> x = torch.tensor([0.0, 2.0])
        >>> importance_log_likelihood(model, guide, x, num_samples=10)  # log N(x; 0, 2)
        tensor([-1.2655, -2.2655])

    References:
        Importance Weighted Autoencoders. Yuri Burda, Roger Grosse, Ruslan
        Salakhutdinov, 2016. arXiv:1509.00519.
    """
    if not callable(model):
        raise ArgumentTypeError(f"model: expected a callable, got {type(model).__name__}")
    if not callable(guide):
        raise ArgumentTypeError(f"guide: expected a callable, got {type(guide).__name__}")
    check_positive_int("num_samples", num_samples)
    check_positive_int("chunk_size", chunk_size)
    check_positive_int("max_plate_nesting", max_plate_nesting, minimum=0)
    if not isinstance(data_plate, str):
        raise ArgumentTypeError(f"data_plate: expected a str, got {type(data_plate).__name__}")

    total = None
    with torch.no_grad():
        done = 0
        while done < num_samples:
            size = min(chunk_size, num_samples - done)
            log_weights = _log_weights(
                model, guide, args, kwargs, size, max_plate_nesting, data_plate
            )
            chunk = torch.logsumexp(log_weights, dim=0)
            total = chunk if total is None else torch.logaddexp(total, chunk)
            done += size
    return total - math.log(num_samples)


def _log_weights(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    num_particles: int,
    max_plate_nesting: int,
    data_plate: str,
) -> Tensor:
    r"""Log importance weights :math:`\log p(x, z_k) - \log q(z_k)`, shape ``(K, N)``."""
    particle_dim = -(max_plate_nesting + 1)

    def vectorized(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*a: Any, **kw: Any) -> Any:
            with pyro.plate(_PARTICLE_PLATE, num_particles, dim=particle_dim):
                return fn(*a, **kw)

        return wrapped

    guide_trace = poutine.trace(vectorized(guide)).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(vectorized(model), trace=guide_trace)).get_trace(
        *args, **kwargs
    )
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)

    data_dim, num_data = _find_data_plate(model_trace, guide_trace, data_plate)
    batch_rank = max_plate_nesting + 1
    log_w: Tensor | None = None

    def site_term(name: str, site: dict[str, Any], program: str) -> Tensor:
        if site["infer"].get("enumerate"):
            raise ArgumentError(
                f"{program} site {name!r}: enumerated sites are not supported, got "
                f"infer={site['infer']!r}"
            )
        lp = site["log_prob"]
        if lp.dim() > batch_rank:
            raise ArgumentError(
                f"{program} site {name!r}: log_prob has batch shape {tuple(lp.shape)}, more "
                f"than max_plate_nesting + 1 = {batch_rank} dims; increase max_plate_nesting"
            )
        lp = lp.reshape((1,) * (batch_rank - lp.dim()) + tuple(lp.shape))
        keep = {0, batch_rank + data_dim}
        summed = [d for d in range(batch_rank) if d not in keep]
        if summed:
            lp = lp.sum(summed, keepdim=True)
        lp = lp.reshape(lp.shape[0], lp.shape[batch_rank + data_dim])
        if lp.shape[1] not in (1, num_data) or lp.shape[0] not in (1, num_particles):
            raise ArgumentError(
                f"{program} site {name!r}: expected a log_prob broadcastable to "
                f"({num_particles}, {num_data}) over (particles, {data_plate!r}), got "
                f"{tuple(lp.shape)}"
            )
        return lp

    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"] or name in guide_trace.nodes:
            term = site_term(name, site, "model")
            log_w = term if log_w is None else log_w + term
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"]:
            term = site_term(name, site, "guide")
            log_w = -term if log_w is None else log_w - term
    if log_w is None:
        raise ArgumentError("model: expected at least one sample site, found none")
    log_w = log_w.expand(num_particles, num_data)
    if not bool(torch.isfinite(log_w).all()):
        raise ArgumentError(
            f"importance_log_likelihood: got {int((~torch.isfinite(log_w)).sum())} "
            "non-finite log weights; check that the guide's support lies inside the model's"
        )
    return log_w


def _find_data_plate(model_trace: Trace, guide_trace: Trace, data_plate: str) -> tuple[int, int]:
    """Return the (negative) dim and the size of the data plate."""
    for trace in (model_trace, guide_trace):
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            for frame in site["cond_indep_stack"]:
                if frame.name != data_plate:
                    continue
                if frame.dim is None:
                    raise ArgumentError(
                        f"data_plate: plate {data_plate!r} must be vectorised (a pyro.plate "
                        "used as a context manager), got a sequential plate"
                    )
                if frame.full_size is not None and frame.full_size != frame.size:
                    raise ArgumentError(
                        f"data_plate: plate {data_plate!r} subsamples {frame.size} of "
                        f"{frame.full_size} points; evaluate without subsampling"
                    )
                return frame.dim, frame.size
    raise ArgumentError(f"data_plate: expected a pyro.plate named {data_plate!r}, found none")
