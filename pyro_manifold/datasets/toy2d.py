r"""Two-dimensional toy densities: pinwheel, two circles, two moons, eight Gaussians, checkerboard.

Each sampler has the signature ``fn(num_samples, <density parameters>, *, seed=0,
dtype=torch.float32) -> ToyData``, is deterministic given ``seed`` (it draws from its own
:class:`torch.Generator`, never the global random state) and returns points of shape
:math:`(N, 2)` with int64 labels that name the mixture component each point was drawn
from. Labels are drawn independently and uniformly, so the class counts are multinomial
(roughly, not exactly, equal).

Example:
    >>> x, y = two_moons(100, seed=1)
    >>> x.shape, y.unique().tolist()
    (torch.Size([100, 2]), [0, 1])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyro_manifold._validation import check_positive, check_positive_int
from pyro_manifold.datasets._common import (
    ToyData,
    check_dtype,
    check_real,
    check_seed,
    make_generator,
    rand,
    randint,
    randn,
)
from pyro_manifold.errors import ArgumentError

__all__ = [
    "checkerboard",
    "eight_gaussians",
    "pinwheel",
    "two_circles",
    "two_moons",
]


def _finish(data: Tensor, labels: Tensor | None, dtype: torch.dtype) -> ToyData:
    return ToyData(data.to(dtype), labels)


def _pinwheel(
    num_samples: int,
    num_wings: int,
    radial_std: float,
    tangential_std: float,
    rate: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    labels = randint(generator, num_wings, num_samples)
    radial = 1.0 + radial_std * randn(generator, num_samples)
    tangential = tangential_std * randn(generator, num_samples)
    angle = 2 * math.pi * labels.double() / num_wings + rate * torch.exp(radial)
    cos, sin = torch.cos(angle), torch.sin(angle)
    data = torch.stack([cos * radial - sin * tangential, sin * radial + cos * tangential], -1)
    return data, labels


def pinwheel(
    num_samples: int,
    num_wings: int = 5,
    radial_std: float = 0.3,
    tangential_std: float = 0.1,
    rate: float = 0.25,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ToyData:
    r"""Sample the pinwheel: Gaussian blobs twisted into ``num_wings`` curved wings.

    A point of wing :math:`k` (drawn uniformly) starts as a Gaussian blob on the
    :math:`x` axis and is rotated by an angle that grows with its radius:

    .. math::

        r \sim \mathcal N(1, \sigma_r^2),\quad t \sim \mathcal N(0, \sigma_t^2),\quad
        \theta = \frac{2\pi k}{K} + \text{rate}\cdot e^{r},\quad
        x = R(\theta) \begin{pmatrix} r \\ t \end{pmatrix},

    with :math:`R(\theta)` the rotation by :math:`\theta`. This is the synthetic data set
    of Johnson et al. (2016) used by Pires & Figueiredo (2020) to evaluate VMoNF, without
    Johnson et al.'s final factor of 10 (the points lie within a radius of about 2.5).

    Args:
        num_samples: number of points :math:`N`.
        num_wings: number of wings :math:`K`.
        radial_std: :math:`\sigma_r`, spread along a wing.
        tangential_std: :math:`\sigma_t`, spread across a wing.
        rate: how fast the wings twist with the radius (0 gives straight wings).
        seed: seed of the local random generator.
        dtype: floating-point dtype of ``data``.

    Returns:
        :class:`ToyData` with ``data`` :math:`(N, 2)` and ``labels`` :math:`(N,)`, the
        wing index in ``[0, num_wings)``.

    Example:
        >>> x, wing = pinwheel(500, seed=0)
        >>> x.shape, x.dtype, wing.dtype
        (torch.Size([500, 2]), torch.float32, torch.int64)
        >>> sorted(wing.unique().tolist())
        [0, 1, 2, 3, 4]

    References:
        Composing graphical models with neural networks for structured representations and
        fast inference. Matthew J. Johnson, David Duvenaud, Alexander B. Wiltschko,
        Sandeep R. Datta, Ryan P. Adams, 2016. arXiv:1603.06277.

        Variational Mixture of Normalizing Flows. Guilherme G. P. Freitas Pires, Mário
        A. T. Figueiredo, 2020. arXiv:2009.00585.
    """
    check_positive_int("num_samples", num_samples)
    check_positive_int("num_wings", num_wings)
    radial_std = check_positive("radial_std", radial_std, allow_zero=True)
    tangential_std = check_positive("tangential_std", tangential_std, allow_zero=True)
    rate = check_real("rate", rate)
    check_seed(seed)
    check_dtype(dtype)
    g = make_generator(seed)
    data, labels = _pinwheel(num_samples, num_wings, radial_std, tangential_std, rate, g)
    return _finish(data, labels, dtype)


def _two_circles(
    num_samples: int, noise: float, factor: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    labels = randint(generator, 2, num_samples)
    angle = 2 * math.pi * rand(generator, num_samples)
    radius = torch.where(labels == 0, 1.0, factor).double()
    data = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    return data + noise * randn(generator, num_samples, 2), labels


def two_circles(
    num_samples: int,
    noise: float = 0.05,
    factor: float = 0.5,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ToyData:
    r"""Sample two noisy concentric circles, of radius 1 (label 0) and ``factor`` (label 1).

    .. math::

        c \sim \mathcal U\{0, 1\},\quad \phi \sim \mathcal U[0, 2\pi),\quad
        x = \rho_c (\cos\phi, \sin\phi) + \sigma\varepsilon,\quad
        \rho_0 = 1,\ \rho_1 = \text{factor},\ \varepsilon \sim \mathcal N(0, I_2).

    Args:
        num_samples: number of points :math:`N`.
        noise: :math:`\sigma`, standard deviation of the isotropic Gaussian noise.
        factor: radius of the inner circle, in :math:`(0, 1)`.
        seed: seed of the local random generator.
        dtype: floating-point dtype of ``data``.

    Returns:
        :class:`ToyData` with ``data`` :math:`(N, 2)` and ``labels`` :math:`(N,)`:
        0 for the outer circle, 1 for the inner one.

    Example:
        >>> x, c = two_circles(400, noise=0.0, factor=0.3)
        >>> r = x.norm(dim=-1)
        >>> torch.allclose(r[c == 0], torch.tensor(1.0))
        True
        >>> torch.allclose(r[c == 1], torch.tensor(0.3))
        True
    """
    check_positive_int("num_samples", num_samples)
    noise = check_positive("noise", noise, allow_zero=True)
    factor = check_positive("factor", factor)
    if factor >= 1:
        raise ArgumentError(f"factor: expected a number in (0, 1), got {factor}")
    check_seed(seed)
    check_dtype(dtype)
    data, labels = _two_circles(num_samples, noise, factor, make_generator(seed))
    return _finish(data, labels, dtype)


def _two_moons(num_samples: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    labels = randint(generator, 2, num_samples)
    angle = math.pi * rand(generator, num_samples)
    upper = torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    lower = torch.stack([1.0 - torch.cos(angle), 0.5 - torch.sin(angle)], -1)
    data = torch.where((labels == 0)[:, None], upper, lower)
    return data + noise * randn(generator, num_samples, 2), labels


def two_moons(
    num_samples: int,
    noise: float = 0.05,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ToyData:
    r"""Sample two interleaving half circles ("moons") with Gaussian noise.

    .. math::

        c \sim \mathcal U\{0, 1\},\quad \phi \sim \mathcal U[0, \pi),\quad
        x = \begin{cases} (\cos\phi, \sin\phi) & c = 0 \\
        (1 - \cos\phi, \tfrac12 - \sin\phi) & c = 1 \end{cases}
        \; + \sigma\varepsilon,\quad \varepsilon \sim \mathcal N(0, I_2).

    Args:
        num_samples: number of points :math:`N`.
        noise: :math:`\sigma`, standard deviation of the isotropic Gaussian noise.
        seed: seed of the local random generator.
        dtype: floating-point dtype of ``data``.

    Returns:
        :class:`ToyData` with ``data`` :math:`(N, 2)` and ``labels`` :math:`(N,)`:
        0 for the upper moon, 1 for the lower one.

    Example:
        >>> x, moon = two_moons(200, noise=0.0)
        >>> bool((x[moon == 0, 1] >= 0).all()), bool((x[moon == 1, 1] <= 0.5).all())
        (True, True)
    """
    check_positive_int("num_samples", num_samples)
    noise = check_positive("noise", noise, allow_zero=True)
    check_seed(seed)
    check_dtype(dtype)
    data, labels = _two_moons(num_samples, noise, make_generator(seed))
    return _finish(data, labels, dtype)


def _eight_gaussians(
    num_samples: int, std: float, scale: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    labels = randint(generator, 8, num_samples)
    angle = 2 * math.pi * labels.double() / 8
    centres = scale * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    return centres + std * randn(generator, num_samples, 2), labels


def eight_gaussians(
    num_samples: int,
    std: float | None = None,
    scale: float = 2.0,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ToyData:
    r"""Sample an equal-weight mixture of eight Gaussians with centres on a circle.

    .. math::

        k \sim \mathcal U\{0, \dots, 7\},\quad
        x = s\,(\cos\tfrac{2\pi k}{8}, \sin\tfrac{2\pi k}{8}) + \sigma\varepsilon,\quad
        \varepsilon \sim \mathcal N(0, I_2).

    Args:
        num_samples: number of points :math:`N`.
        std: :math:`\sigma`, the standard deviation of each component; ``None`` means
            :math:`0.02\,s`.
        scale: :math:`s`, the radius of the circle of centres.
        seed: seed of the local random generator.
        dtype: floating-point dtype of ``data``.

    Returns:
        :class:`ToyData` with ``data`` :math:`(N, 2)` and ``labels`` :math:`(N,)`, the
        component index in ``[0, 8)`` (component 0 is centred at :math:`(s, 0)`, and the
        index grows counter-clockwise).

    Example:
        >>> x, k = eight_gaussians(1000, scale=4.0)
        >>> (x[k == 0].mean(0) - torch.tensor([4.0, 0.0])).abs().max() < 0.05
        tensor(True)
    """
    check_positive_int("num_samples", num_samples)
    scale = check_positive("scale", scale)
    std = 0.02 * scale if std is None else check_positive("std", std, allow_zero=True)
    check_seed(seed)
    check_dtype(dtype)
    data, labels = _eight_gaussians(num_samples, std, scale, make_generator(seed))
    return _finish(data, labels, dtype)


def _checkerboard(
    num_samples: int, num_cells: int, half_width: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    rows, cols = torch.meshgrid(torch.arange(num_cells), torch.arange(num_cells), indexing="ij")
    filled = (rows + cols) % 2 == 0
    corners = torch.stack([cols[filled], rows[filled]], -1).double()  # (num_filled, 2)
    labels = randint(generator, corners.shape[0], num_samples)
    size = 2 * half_width / num_cells
    data = -half_width + size * (corners[labels] + rand(generator, num_samples, 2))
    return data, labels


def checkerboard(
    num_samples: int,
    num_cells: int = 4,
    half_width: float = 4.0,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ToyData:
    r"""Sample the uniform density on the dark squares of a checkerboard.

    The square :math:`[-w, w]^2` is cut into ``num_cells`` :math:`\times` ``num_cells``
    cells of side :math:`h = 2w / n`; cell :math:`(i, j)` (row :math:`i` counted along
    :math:`x_2`, column :math:`j` along :math:`x_1`, from the corner :math:`(-w, -w)`) is
    dark when :math:`i + j` is even. The density is uniform on the union of dark cells:

    .. math::

        p(x) = \frac{1}{|\text{dark}|\,h^2}
        \mathbb 1\left[\lfloor (x_1 + w)/h \rfloor + \lfloor (x_2 + w)/h \rfloor
        \text{ is even}\right].

    Args:
        num_samples: number of points :math:`N`.
        num_cells: :math:`n`, the number of cells along each side.
        half_width: :math:`w`, half the side of the board.
        seed: seed of the local random generator.
        dtype: floating-point dtype of ``data``.

    Returns:
        :class:`ToyData` with ``data`` :math:`(N, 2)` and ``labels`` :math:`(N,)`, the
        index of the dark cell each point lies in, counting dark cells in row-major order
        (``num_cells**2 // 2`` cells for an even ``num_cells``).

    Example:
        >>> x, cell = checkerboard(1000, seed=0)
        >>> x.shape, int(cell.max()) + 1
        (torch.Size([1000, 2]), 8)
        >>> bool((x.abs() <= 4).all())
        True
    """
    check_positive_int("num_samples", num_samples)
    check_positive_int("num_cells", num_cells)
    half_width = check_positive("half_width", half_width)
    check_seed(seed)
    check_dtype(dtype)
    data, labels = _checkerboard(num_samples, num_cells, half_width, make_generator(seed))
    return _finish(data, labels, dtype)
