r"""Log-likelihood summaries: bits per dimension, logit-space conventions, batched means."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from pyro_manifold._validation import check_per_point, check_positive_int, check_tensor
from pyro_manifold.errors import ArgumentError, ArgumentTypeError

__all__ = ["bits_per_dim", "mean_log_likelihood", "pixel_log_likelihood"]


def bits_per_dim(log_prob: Tensor, num_dims: int, *, num_levels: int = 256) -> Tensor:
    r"""Convert a log density of dequantised data in :math:`[0, 1]^D` to bits per dimension.

    The convention is the one of RealNVP, Glow and the MAF paper: integer pixels
    :math:`v \in \{0, \dots, L-1\}^D` (:math:`L` = ``num_levels``) are dequantised with
    uniform noise and scaled, :math:`x = (v + u) / L` with :math:`u \sim U[0, 1)^D`, and
    the model's density ``log_prob`` is :math:`\log p(x)` on :math:`[0, 1]^D`. The density
    of the unscaled :math:`v + u` on :math:`[0, L)^D` is :math:`p(x) / L^D`, and bits per
    dimension are its negative log in base 2, per dimension:

    .. math::

        \text{bits/dim} = -\frac{\log p(x) - D \log L}{D \log 2}.

    Averaged over the data this upper-bounds the discrete model's code length in bits
    per pixel. If the model works in logit space, first map its log density back to
    :math:`[0, 1]` with :func:`pixel_log_likelihood`.

    Args:
        log_prob: :math:`\log p(x)` in nats, any shape :math:`(*)`.
        num_dims: the data dimension :math:`D` (784 for MNIST).
        num_levels: the number of quantisation levels :math:`L` (256 for 8-bit images).

    Returns:
        Bits per dimension, of the same shape as ``log_prob``.

    Raises:
        TypeError: ``log_prob`` is not a floating tensor, or a count is not an int.
        ValueError: a count is not positive, or ``log_prob`` has non-finite entries.

    Example:
        >>> # the uniform density on [0, 1]^D costs exactly log2(256) = 8 bits per dim
        >>> bits_per_dim(torch.zeros(2), num_dims=784)
        tensor([8., 8.])
    """
    check_tensor("log_prob", log_prob, nonempty=False)
    check_positive_int("num_dims", num_dims)
    check_positive_int("num_levels", num_levels)
    return -(log_prob - num_dims * math.log(num_levels)) / (num_dims * math.log(2.0))


def pixel_log_likelihood(log_prob_logit: Tensor, logit_logdet: Tensor) -> Tensor:
    r"""Map a log density in logit space back to the pixel space :math:`[0, 1]^D`.

    Flows for images are often trained on :math:`y = \operatorname{logit}(\lambda +
    (1 - 2\lambda) x)` rather than on the dequantised pixels :math:`x \in [0, 1]^D`.
    By the change of variables,

    .. math::

        \log p_x(x) = \log p_y(y) + \log\left|\det \frac{\partial y}{\partial x}\right|,
        \qquad
        \log\left|\det \frac{\partial y}{\partial x}\right| = \sum_{i=1}^D
        \left[\log(1 - 2\lambda) - \log s_i - \log(1 - s_i)\right],

    with :math:`s = \lambda + (1 - 2\lambda) x`
    (:func:`~pyro_manifold.datasets.logit_transform` returns :math:`y` and this
    log-determinant). Papers differ on which of the two they report: the MAF paper
    (Papamakarios et al. 2017) reports MNIST and CIFAR-10 *log-likelihoods in logit
    space* (:math:`\log p_y(y)`, e.g. about :math:`-1000` nats for MNIST), whereas
    *bits per dimension* are always computed in pixel space from :math:`\log p_x(x)`
    (see :func:`bits_per_dim`). Say which one a table holds.

    Args:
        log_prob_logit: :math:`\log p_y(y)`, shape :math:`(*)`.
        logit_logdet: :math:`\log|\det \partial y / \partial x|`, summed over the
            :math:`D` dimensions, shape broadcastable with ``log_prob_logit``.

    Returns:
        :math:`\log p_x(x)`, the broadcast shape of the two inputs.

    Example:
        >>> import math
        >>> lam, x = 1e-6, torch.full((1, 784), 0.5)
        >>> s = lam + (1 - 2 * lam) * x
        >>> logdet = (math.log(1 - 2 * lam) - s.log() - (-s).log1p()).sum(-1)
        >>> pixel_log_likelihood(torch.tensor([-1000.0]), logdet)
        tensor([86.85...])
    """
    check_tensor("log_prob_logit", log_prob_logit, nonempty=False)
    check_tensor("logit_logdet", logit_logdet, nonempty=False)
    try:
        torch.broadcast_shapes(log_prob_logit.shape, logit_logdet.shape)
    except RuntimeError as err:
        raise ArgumentError(
            f"logit_logdet: expected a shape broadcastable with log_prob_logit's "
            f"{tuple(log_prob_logit.shape)}, got {tuple(logit_logdet.shape)}"
        ) from err
    return log_prob_logit + logit_logdet


def mean_log_likelihood(
    log_prob_fn: Callable[[Tensor], Tensor],
    data: Tensor,
    batch_size: int = 1000,
    *,
    device: str | torch.device | None = None,
) -> tuple[float, float]:
    r"""Mean and standard error of a per-example log density over a data set, streamed.

    Evaluates ``log_prob_fn`` on consecutive batches of ``data`` (along dim 0) under
    ``torch.no_grad()`` and returns

    .. math::

        \bar\ell = \frac1N \sum_{n=1}^N \ell_n, \qquad
        \operatorname{se} = \sqrt{\frac{1}{N(N-1)} \sum_{n=1}^N (\ell_n - \bar\ell)^2},

    the usual ":math:`\bar\ell \pm \operatorname{se}`" of likelihood tables. The batch
    statistics are merged as they arrive (Chan et al.'s pairwise update, in float64), so
    memory is that of one batch whatever :math:`N`: a million points on the CPU can be
    scored by a model on the GPU with ``device="cuda"``.

    Args:
        log_prob_fn: maps a batch :math:`(B, *)` to log densities of shape :math:`(B,)`,
            e.g. ``flow_dist.log_prob``.
        data: the data set, shape :math:`(N, *)`.
        batch_size: the number of examples per call of ``log_prob_fn``.
        device: where to move each batch before scoring it (default: leave it).

    Returns:
        ``(mean, standard_error)`` as Python floats; the standard error is ``nan`` when
        :math:`N = 1`.

    Raises:
        ValueError: ``log_prob_fn`` returns a wrong shape or non-finite values.

    Example:
        >>> normal = dist.Normal(torch.zeros(2), 1.0).to_event(1)
        >>> mean, se = mean_log_likelihood(normal.log_prob, torch.zeros(5, 2), batch_size=2)
        >>> round(mean, 4), se
        (-1.8379, 0.0)
    """
    if not callable(log_prob_fn):
        raise ArgumentTypeError(
            f"log_prob_fn: expected a callable, got {type(log_prob_fn).__name__}"
        )
    check_tensor("data", data, min_dim=1, floating=False, finite=False)
    check_positive_int("batch_size", batch_size)
    count, mean, m2 = 0, 0.0, 0.0  # running count, mean and sum of squared deviations
    with torch.no_grad():
        for start in range(0, data.shape[0], batch_size):
            batch = data[start : start + batch_size]
            if device is not None:
                batch = batch.to(device, non_blocking=True)
            out = check_per_point("log_prob_fn", log_prob_fn(batch), batch)
            check_tensor("log_prob_fn(data)", out)
            values = out.detach().to(torch.float64)
            n_b = values.numel()
            mean_b = values.mean().item()
            m2_b = (values - mean_b).pow(2).sum().item()
            delta = mean_b - mean
            total = count + n_b
            mean += delta * n_b / total
            m2 += m2_b + delta**2 * count * n_b / total
            count = total
    if count < 2:
        return mean, math.nan
    return mean, math.sqrt(m2 / (count - 1) / count)
