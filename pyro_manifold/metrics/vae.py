r"""The IWAE bound for VAEs: test log-likelihoods over a data set, batch by batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pyro_manifold._validation import check_positive_int, check_tensor
from pyro_manifold.errors import ArgumentTypeError
from pyro_manifold.metrics.importance import importance_log_likelihood

__all__ = ["iwae_log_likelihood"]


def iwae_log_likelihood(
    vae: Any,
    x: Tensor,
    num_samples: int = 5000,
    *,
    chunk_size: int = 100,
    batch_size: int = 100,
) -> Tensor:
    r"""Importance-weighted bound :math:`\mathcal L_K(x_n) \le \log p(x_n)` of a VAE, per point.

    .. math::

        \mathcal L_K(x_n) = \log \frac1K \sum_{k=1}^K
            \frac{p(x_n \mid z_k)\, p(z_k)}{q(z_k \mid x_n)}, \qquad
            z_k \sim q(z \mid x_n),

    with :math:`K` = ``num_samples`` (5000 in the protocol of Burda et al.), computed by
    :func:`~pyro_manifold.metrics.importance_log_likelihood` on ``vae.model`` and
    ``vae.guide``. The data go through ``batch_size`` points at a time and the draws
    ``chunk_size`` at a time, so memory is that of ``batch_size * chunk_size`` guide
    samples (for a PCP-Map guide times the latent size, for its Hessians). An
    ``nn.Module`` is put in eval mode for the evaluation and restored afterwards.

    Args:
        vae: an object with Pyro programs ``model(x)`` and ``guide(x)`` whose data
            plate is ``pyro.plate("data", N)`` at ``dim=-1``, e.g. a
            :class:`~pyro_manifold.models.FlowVAE`.
        x: data, :math:`(N, D)`, as the model observes them (binary for a Bernoulli
            decoder).
        num_samples: :math:`K`.
        chunk_size: draws per vectorised pass.
        batch_size: data points per pass.

    Returns:
        :math:`\mathcal L_K(x_n)`, shape :math:`(N,)`; the test NLL in nats is minus its
        mean.

    Example:
        >>> from pyro_manifold.models import FlowVAE
        >>> vae = FlowVAE(2, data_dim=6, hidden_dims=[8])
        >>> x = torch.randint(0, 2, (3, 6)).float()
        >>> iwae_log_likelihood(vae, x, num_samples=20).shape
        torch.Size([3])

    References:
        Importance Weighted Autoencoders. Yuri Burda, Roger Grosse, Ruslan
        Salakhutdinov, 2016. arXiv:1509.00519.
    """
    for name in ("model", "guide"):
        if not callable(getattr(vae, name, None)):
            raise ArgumentTypeError(
                f"vae: expected an object with callable model and guide methods, got "
                f"{type(vae).__name__} without a callable {name!r}"
            )
    check_tensor("x", x, min_dim=2)
    check_positive_int("num_samples", num_samples)
    check_positive_int("chunk_size", chunk_size)
    check_positive_int("batch_size", batch_size)
    was_training = vae.training if isinstance(vae, nn.Module) else None
    if isinstance(vae, nn.Module):
        vae.eval()
    try:
        bounds = [
            importance_log_likelihood(
                vae.model,
                vae.guide,
                x[start : start + batch_size],
                num_samples=num_samples,
                chunk_size=chunk_size,
            )
            for start in range(0, x.shape[0], batch_size)
        ]
    finally:
        if isinstance(vae, nn.Module) and was_training is not None:
            vae.train(was_training)
    return torch.cat(bounds)
