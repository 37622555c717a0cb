r"""Small binary images of shapes, generated from a seed: a data set for VAEs that needs no file.

Example:
    >>> x, shape = binary_shapes(6, side=12, seed=0)
    >>> x.shape, sorted(x.unique().tolist()), shape.shape
    (torch.Size([6, 144]), [0.0, 1.0], torch.Size([6]))
"""

from __future__ import annotations

import torch

from pyro_manifold._validation import check_positive_int
from pyro_manifold.datasets._common import ToyData, check_dtype, check_seed, make_generator

__all__ = ["SHAPES", "binary_shapes"]

SHAPES: tuple[str, ...] = ("rectangle", "frame", "ellipse", "cross")
"""The shapes of :func:`binary_shapes`, in the order of their labels."""

_MIN_SIDE = 8


def binary_shapes(
    num_samples: int,
    side: int = 16,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ToyData:
    r"""Sample ``side`` x ``side`` binary images, each holding one shape of :data:`SHAPES`.

    Each image draws, independently and uniformly, a shape :math:`s` (its label), half-
    heights :math:`a` and half-widths :math:`b` in :math:`\{2, \dots, \lfloor side/4
    \rfloor + 1\}` and a centre :math:`(c_i, c_j)` at which the shape fits in the image
    (:math:`a \le c_i \le side - 1 - a`, likewise :math:`c_j` with :math:`b`). With
    :math:`u = i - c_i`, :math:`v = j - c_j` for pixel :math:`(i, j)`, the pixel is 1 where

    .. math::

        \text{rectangle: } |u| \le a \wedge |v| \le b, \qquad
        \text{frame: } \text{rectangle} \wedge (|u| = a \vee |v| = b),

        \text{ellipse: } \frac{u^2}{a(a+1)} + \frac{v^2}{b(b+1)} \le 1, \qquad
        \text{cross: } (u = 0 \wedge |v| \le b) \vee (v = 0 \wedge |u| \le a),

    and 0 elsewhere. A data set for binary-likelihood models (a Bernoulli VAE decoder)
    that is generated in milliseconds and never downloaded: its factors of variation are
    one discrete (the shape) and four integer ones (sizes and position), so there are
    :math:`4\,\bigl(\sum_{h=2}^{\lfloor side/4 \rfloor + 1} (side - 2h)\bigr)^2` distinct
    images (5184 at ``side=16``), and a test set drawn with another seed shares some
    images with the training set. The result is deterministic given ``seed`` (a local
    :class:`torch.Generator`).

    Args:
        num_samples: number of images :math:`N`.
        side: image side, at least 8 (pixels per image: ``side ** 2``).
        seed: seed of the draw.
        dtype: floating dtype of the pixels.

    Returns:
        :class:`~pyro_manifold.datasets.ToyData`: pixels in :math:`\{0, 1\}` of shape
        :math:`(N, side^2)` (rows of the image one after another) and int64 labels, the
        index of the shape in :data:`SHAPES`.

    Example:
        >>> x, labels = binary_shapes(4, side=8, seed=1)
        >>> x.shape, x.dtype, labels.tolist()
        (torch.Size([4, 64]), torch.float32, [1, 3, 0, 0])
        >>> torch.equal(x, binary_shapes(4, side=8, seed=1).data)
        True
    """
    check_positive_int("num_samples", num_samples)
    check_positive_int("side", side, minimum=_MIN_SIDE)
    check_seed(seed)
    dtype = check_dtype(dtype)
    g = make_generator(seed)
    n, max_half = num_samples, side // 4 + 1
    labels = torch.randint(len(SHAPES), (n,), generator=g)
    half = torch.randint(2, max_half + 1, (n, 2), generator=g)  # (a, b)
    # a centre at which the shape fits: c in [h, side - 1 - h]
    centre = half + (torch.rand(n, 2, generator=g, dtype=torch.float64) * (side - 2 * half)).long()
    grid = torch.arange(side)
    u = (grid[None, :, None] - centre[:, 0, None, None]).abs()  # (N, side, 1)
    v = (grid[None, None, :] - centre[:, 1, None, None]).abs()  # (N, 1, side)
    a, b = half[:, 0, None, None], half[:, 1, None, None]
    inside = (u <= a) & (v <= b)
    masks = torch.stack(
        [
            inside,
            inside & ((u == a) | (v == b)),
            (u**2 * (b * (b + 1)) + v**2 * (a * (a + 1))) <= a * (a + 1) * b * (b + 1),
            ((u == 0) & (v <= b)) | ((v == 0) & (u <= a)),
        ]
    )  # (shapes, N, side, side)
    images = masks[labels, torch.arange(n)]
    return ToyData(images.reshape(n, side * side).to(dtype), labels)
