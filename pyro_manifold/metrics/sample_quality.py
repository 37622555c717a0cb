r"""Sample quality: manifold distance, MMD, and many samples drawn in bounded memory."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from pyro_manifold._validation import check_positive, check_positive_int, check_tensor
from pyro_manifold.errors import ArgumentError, ArgumentTypeError

__all__ = [
    "SAMPLE_BATCH",
    "maximum_mean_discrepancy",
    "mean_manifold_distance",
    "sample_in_batches",
]


#: Draws per call of a model in ``model.sample`` (and the default of :func:`sample_in_batches`).
SAMPLE_BATCH = 8192


def sample_in_batches(
    sample_fn: Callable[[int], Tensor | tuple[Tensor, ...]],
    num_samples: int,
    batch_size: int = SAMPLE_BATCH,
    *,
    device: str | torch.device | None = "cpu",
    all_outputs: bool = False,
) -> Any:
    r"""Draw ``num_samples`` points by calling ``sample_fn`` on batches, in bounded memory.

    Calls ``sample_fn(b)`` with :math:`b \le` ``batch_size`` under ``torch.no_grad()``
    and writes each draw into one preallocated tensor of shape :math:`(N, *)` on
    ``device``, so the model's intermediate tensors take the memory of one batch
    whatever :math:`N` (a million draws of a model on the GPU land on the CPU). A
    ``sample_fn`` that returns a tuple (e.g. points and their components) contributes its
    first element, or with ``all_outputs=True`` every element (a tuple of tensors is
    returned, each of :math:`N` rows). When :math:`N \le` ``batch_size`` the one draw is
    returned as it is (moved to ``device``). Every model's ``sample`` draws through this
    function.

    For a fixed seed the batched draw equals one call ``sample_fn(N)`` when
    ``sample_fn`` takes its random numbers in one block per call (a flow: its base
    draw) and, on the CPU, every batch but the last holds a multiple of 16 numbers and
    the last at least 16 (torch draws normals in blocks of 16);
    a program that takes several blocks per call (a component then a point, a latent
    then noise) interleaves them differently, and its batched draw agrees in
    distribution only.

    Args:
        sample_fn: maps a count :math:`b` to draws of shape :math:`(b, *)`, e.g.
            ``flow.sample``.
        num_samples: :math:`N`, at least 1.
        batch_size: the largest count per call.
        device: where the result lives (``None``: where the draws are made).
        all_outputs: keep every element of a tuple that ``sample_fn`` returns.

    Returns:
        The draws, shape :math:`(N, *)` (a tuple of them with ``all_outputs`` and a
        ``sample_fn`` that returns tuples).

    Raises:
        ValueError: ``sample_fn`` returns a tensor with another number of rows or
            another trailing shape than its first batch.

    Example:
        >>> normal = dist.Normal(torch.zeros(2), 1.0).to_event(1)
        >>> sample_in_batches(lambda b: normal.sample((b,)), 5, batch_size=2).shape
        torch.Size([5, 2])
    """
    if not callable(sample_fn):
        raise ArgumentTypeError(f"sample_fn: expected a callable, got {type(sample_fn).__name__}")
    check_positive_int("num_samples", num_samples)
    check_positive_int("batch_size", batch_size)
    outs: list[Tensor] | None = None
    is_tuple = False
    with torch.no_grad():
        for start in range(0, num_samples, batch_size):
            count = min(batch_size, num_samples - start)
            draw = sample_fn(count)
            is_tuple = isinstance(draw, tuple)
            parts = list(draw) if is_tuple else [draw]
            if not all_outputs:
                parts = parts[:1]
            if outs is not None and len(parts) != len(outs):
                raise ArgumentError(
                    f"sample_fn: expected {len(outs)} outputs per call, got {len(parts)}"
                )
            for i, part in enumerate(parts):
                name = f"sample_fn(b)[{i}]" if is_tuple else "sample_fn(b)"
                check_tensor(name, part, min_dim=1, floating=False, finite=False)
                trailing = part.shape[1:] if outs is None else outs[i].shape[1:]
                if part.shape != (count, *trailing):
                    expected = (count, *trailing)
                    raise ArgumentError(
                        f"{name}: expected draws of shape {expected} for "
                        f"b={count}, got shape {tuple(part.shape)}"
                    )
            if outs is None:
                if count == num_samples:  # one batch: nothing to gather
                    outs = [p if device is None else p.to(device) for p in parts]
                    break
                outs = [_result_buffer(num_samples, p, device) for p in parts]
            for out, part in zip(outs, parts, strict=True):
                out[start : start + count] = part
    assert outs is not None
    return tuple(outs) if all_outputs and is_tuple else outs[0]


def mean_manifold_distance(samples: Tensor, distance_fn: Callable[[Tensor], Tensor]) -> float:
    r"""Mean distance of samples from a manifold whose distance function is known.

    .. math::

        \bar d = \frac1N \sum_{n=1}^N d(x_n, \mathcal{M})

    For a model that should sample on a known manifold :math:`\mathcal{M}` (a toy
    circle, sphere or torus), this measures how far off it the samples land, e.g. the
    noisy injective flow's samples at noise scale :math:`s = 0` against :math:`s = 1`.

    Args:
        samples: points of shape :math:`(N, D)`.
        distance_fn: maps :math:`(N, D)` to the distances :math:`(N,)` from the
            manifold, e.g. the ``distance`` method of a toy manifold from
            ``pyro_manifold.datasets``; any callable will do.

    Returns:
        The mean distance as a Python float.

    Raises:
        ValueError: ``distance_fn`` returns a wrong shape or non-finite values.

    Example:
        >>> def unit_circle_distance(x):
        ...     return (x.norm(dim=-1) - 1).abs()
        >>> mean_manifold_distance(torch.tensor([[1.0, 0.0], [0.0, 3.0]]), unit_circle_distance)
        1.0
    """
    check_tensor("samples", samples, min_dim=2)
    if not callable(distance_fn):
        raise ArgumentTypeError(
            f"distance_fn: expected a callable, got {type(distance_fn).__name__}"
        )
    with torch.no_grad():
        distances = distance_fn(samples)
    if not isinstance(distances, Tensor) or distances.shape != samples.shape[:1]:
        got = tuple(distances.shape) if isinstance(distances, Tensor) else type(distances)
        raise ArgumentError(
            f"distance_fn: expected an output of shape ({samples.shape[0]},), got {got}"
        )
    check_tensor("distance_fn(samples)", distances)
    return float(distances.to(torch.float64).mean())


def maximum_mean_discrepancy(
    x: Tensor, y: Tensor, *, bandwidths: Sequence[float] | None = None
) -> Tensor:
    r"""Unbiased estimate of the squared MMD between two samples, with Gaussian kernels.

    With the kernel :math:`k(a, b) = \sum_{h} \exp(-\lVert a - b \rVert^2 / (2 h^2))`
    summed over the bandwidths :math:`h`,

    .. math::

        \widehat{\operatorname{MMD}}^2 = \frac{1}{n(n-1)} \sum_{i \ne j} k(x_i, x_j)
        + \frac{1}{m(m-1)} \sum_{i \ne j} k(y_i, y_j)
        - \frac{2}{nm} \sum_{i, j} k(x_i, y_j).

    Being unbiased, it can come out slightly negative when the distributions agree.
    By default the bandwidths are :math:`(0.5, 1, 2)` times the median heuristic, the
    median distance between distinct points of the pooled sample (treated as a
    constant for gradients). Memory grows as :math:`(n + m)^2`.

    Args:
        x: first sample, shape :math:`(n, D)` with :math:`n \ge 2`.
        y: second sample, shape :math:`(m, D)` with :math:`m \ge 2`.
        bandwidths: kernel bandwidths :math:`h > 0`; ``None`` uses the median heuristic.

    Returns:
        A scalar tensor (differentiable in ``x`` and ``y``).

    Example:
        >>> x, y = torch.randn(300, 2), torch.randn(300, 2)
        >>> abs(maximum_mean_discrepancy(x, y).item()) < 0.02
        True
        >>> maximum_mean_discrepancy(x, y + 2.0).item() > 0.5
        True

    References:
        A Kernel Two-Sample Test. Arthur Gretton, Karsten M. Borgwardt, Malte J. Rasch,
        Bernhard Schölkopf, Alexander Smola, JMLR 2012.
    """
    check_tensor("x", x, min_dim=2)
    check_tensor("y", y, event_shape=tuple(x.shape[1:]), min_dim=2)
    if x.dim() != 2:
        raise ArgumentError(f"x: expected shape (n, D), got {tuple(x.shape)}")
    for name, t in (("x", x), ("y", y)):
        if t.shape[0] < 2:
            raise ArgumentError(f"{name}: expected at least 2 points, got shape {tuple(t.shape)}")
    n, m = x.shape[0], y.shape[0]
    z = torch.cat([x, y.to(x.dtype)])
    sq_dist = torch.cdist(z, z).square()
    if bandwidths is None:
        off_diag = sq_dist.detach()[~torch.eye(n + m, dtype=torch.bool, device=z.device)]
        off_diag = off_diag[off_diag > 0]
        median = off_diag.sqrt().median().item() if off_diag.numel() else 1.0
        bandwidths = [median * f for f in (0.5, 1.0, 2.0)]
    else:
        if isinstance(bandwidths, str) or not isinstance(bandwidths, Sequence) or not bandwidths:
            raise ArgumentTypeError(
                f"bandwidths: expected a non-empty sequence of positive floats, got {bandwidths!r}"
            )
        for h in bandwidths:
            check_positive("bandwidths", h)
    kernel = sum(torch.exp(-sq_dist / (2.0 * h * h)) for h in bandwidths)
    k_xx, k_yy, k_xy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    # sums in float64: the result is a small difference of terms of order one
    wide = torch.float64
    term_xx = (k_xx.sum(dtype=wide) - k_xx.diagonal().sum(dtype=wide)) / (n * (n - 1))
    term_yy = (k_yy.sum(dtype=wide) - k_yy.diagonal().sum(dtype=wide)) / (m * (m - 1))
    return (term_xx + term_yy - 2.0 * k_xy.sum(dtype=wide) / (n * m)).to(x.dtype)


def _result_buffer(num_samples: int, part: Tensor, device: str | torch.device | None) -> Tensor:
    """The tensor that gathers ``num_samples`` draws like ``part``, or our error if too big."""
    shape = (num_samples, *part.shape[1:])
    try:
        return torch.empty(
            shape, dtype=part.dtype, device=part.device if device is None else device
        )
    except RuntimeError as e:  # the allocator's "not enough memory" (torch.OutOfMemoryError too)
        gib = math.prod(shape) * part.element_size() / 2**30
        raise ArgumentError(
            f"num_samples: expected a number of draws that fits in memory, got {num_samples} "
            f"draws of shape {tuple(part.shape[1:])} ({gib:.3g} GiB): "
            f"{str(e).splitlines()[0]}"
        ) from None
