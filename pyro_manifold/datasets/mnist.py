r"""MNIST: loading from a local folder, splits, binarisation, dequantisation, logit transform.

The data are never downloaded unless asked (``download=True``). The folder is found by
:func:`data_root`: the ``root`` argument, else the environment variable
``PYRO_MANIFOLD_DATA``; it holds torchvision's layout ``MNIST/raw/*-ubyte``.

:func:`~pyro_manifold.datasets.load_mnist` returns raw pixels (uint8, 0..255, flattened
to 784); the model's caller chooses the preprocessing:

- binary models: :func:`dynamic_binarize` (a fresh Bernoulli draw every epoch) or
  :func:`static_binarize` (one fixed draw);
- continuous flows: :func:`dequantize_logit` (:func:`dequantize` then
  :func:`logit_transform`, whose log-determinant converts densities back to the unit cube).

Example:
    >>> pixels = torch.tensor([[0, 128, 255]], dtype=torch.uint8)
    >>> x = dequantize(pixels, torch.Generator().manual_seed(0))
    >>> y, logdet = logit_transform(x)
    >>> torch.allclose(inverse_logit_transform(y), x), logdet.shape
    (True, torch.Size([1]))
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Sequence

import torch
from torch import Tensor

from pyro_manifold._validation import (
    check_choice,
    check_positive,
    check_positive_int,
    check_tensor,
)
from pyro_manifold.datasets._common import ToyData, check_dtype, check_seed, make_generator
from pyro_manifold.errors import (
    ArgumentError,
    ArgumentTypeError,
    DataFormatError,
    DataNotFoundError,
)

__all__ = [
    "DATA_ENV_VAR",
    "MNIST_SPLITS",
    "data_root",
    "dequantize",
    "dequantize_logit",
    "dynamic_binarize",
    "inverse_logit_transform",
    "load_mnist",
    "logit_transform",
    "static_binarize",
]

#: The environment variable naming the folder that holds MNIST when no ``root`` is given.
DATA_ENV_VAR = "PYRO_MANIFOLD_DATA"
#: The ``split`` names :func:`~pyro_manifold.datasets.load_mnist` accepts.
MNIST_SPLITS = ("train", "validation", "test", "train+validation")
_NUM_TRAIN = 60000
_HOW = (
    f"Provide the data with the argument root=..., or set the environment variable "
    f"{DATA_ENV_VAR} to a folder holding MNIST/raw/*-ubyte (torchvision's layout), "
    f"or pass download=True to load_mnist to fetch it into root."
)


def data_root(root: str | os.PathLike | None = None, *, must_exist: bool = True) -> pathlib.Path:
    r"""Return the data folder: ``root`` if given, else ``$PYRO_MANIFOLD_DATA``.

    Args:
        root: the folder, or ``None`` to read the environment variable
            ``PYRO_MANIFOLD_DATA`` (an empty value counts as unset).
        must_exist: raise if the folder does not exist.

    Returns:
        The folder as a :class:`pathlib.Path` (``~`` expanded).

    Raises:
        FileNotFoundError: neither ``root`` nor the environment variable is set, or
            (with ``must_exist``) the folder does not exist. The message names the paths
            tried and how to provide the data.

    Example:
        >>> data_root("/tmp/mnist-data", must_exist=False).as_posix()
        '/tmp/mnist-data'
    """
    if root is not None:
        if not isinstance(root, str | os.PathLike):
            raise ArgumentTypeError(f"root: expected a str, os.PathLike or None, got {root!r}")
        path, source = pathlib.Path(root).expanduser(), "the argument root"
    else:
        env = os.environ.get(DATA_ENV_VAR, "")
        if not env:
            raise DataNotFoundError(
                f"no data folder given: tried the argument root=None and the environment "
                f"variable {DATA_ENV_VAR} (unset). {_HOW}"
            )
        path, source = pathlib.Path(env).expanduser(), f"the environment variable {DATA_ENV_VAR}"
    if must_exist and not path.is_dir():
        raise DataNotFoundError(f"data folder {str(path)!r} (from {source}) does not exist. {_HOW}")
    return path


def _check_digits(digits: object) -> list[int]:
    if isinstance(digits, str | bytes) or not isinstance(digits, Sequence | Tensor):
        raise ArgumentTypeError(
            f"digits: expected a sequence of ints in 0..9 or None, got {digits!r}"
        )
    values = digits.tolist() if isinstance(digits, Tensor) else list(digits)
    if not values:
        raise ArgumentError("digits: expected a non-empty sequence of ints in 0..9, got []")
    for d in values:
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 9:
            raise ArgumentError(f"digits: expected ints in 0..9, got {values!r} (bad entry {d!r})")
    return sorted(set(values))


_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # IDX magic numbers: uint8 data, 3 dims / 1 dim


def _read_idx(file: pathlib.Path, magic: int, shape: tuple[int | None, ...]) -> Tensor:
    """The uint8 array of an IDX file whose header must say ``magic`` and ``shape``.

    ``None`` in ``shape`` accepts any size along that dimension.

    Raises :class:`~pyro_manifold.errors.DataFormatError` naming the file, what was
    expected and what was found: a foreign or damaged header, another number of items
    or another image size, or a file shorter or longer than its header says.
    """
    header = 4 * (1 + len(shape))
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(header)
        if len(head) < header:
            raise DataFormatError(
                f"{file}: expected an IDX file with a {header}-byte header, got a file of "
                f"{size} bytes (truncated?)"
            )
        found_magic = int.from_bytes(head[:4], "big")
        dims = tuple(int.from_bytes(head[i : i + 4], "big") for i in range(4, header, 4))
        if found_magic != magic:
            raise DataFormatError(
                f"{file}: expected the IDX magic number {magic} (uint8, {len(shape)} dims), "
                f"got {found_magic} (not an MNIST file, or a compressed one)"
            )
        if len(dims) != len(shape) or any(
            s not in (None, d) for d, s in zip(dims, shape, strict=True)
        ):
            expected = tuple("N" if s is None else s for s in shape)
            raise DataFormatError(f"{file}: expected a header of shape {expected}, got {dims}")
        want = header + math.prod(dims)
        if size != want:
            raise DataFormatError(
                f"{file}: expected {want} bytes for its header's shape {dims}, got {size} "
                f"bytes ({'truncated' if size < want else 'trailing data'})"
            )
        values = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    return values.reshape(dims)


def _read_mnist(path: pathlib.Path, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    raw = path / "MNIST" / "raw"
    prefix = "train" if train else "t10k"
    images, labels = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
    if download and not (images.is_file() and labels.is_file()):
        from torchvision.datasets import MNIST

        try:
            MNIST(str(path), train=train, download=True)
        except RuntimeError as err:
            raise DataNotFoundError(
                f"MNIST could not be downloaded into {str(path)!r} (torchvision said: {err})"
            ) from err
    missing = [str(f) for f in (images, labels) if not f.is_file()]
    if missing:
        raise DataNotFoundError(
            f"MNIST not found under {str(path)!r}: expected {' and '.join(missing)}. {_HOW}"
        )
    data = _read_idx(images, _IDX_IMAGES, (None, 28, 28))
    n = data.shape[0]
    try:
        targets = _read_idx(labels, _IDX_LABELS, (n,))
    except DataFormatError as err:
        raise DataFormatError(f"{err} (one label per image of {images.name}, {n} images)") from None
    if int(targets.max()) > 9:
        bad = int((targets > 9).nonzero()[0])
        raise DataFormatError(
            f"{labels}: expected digit labels in 0..9, got {int(targets[bad])} at item {bad}"
        )
    return data.reshape(n, 784), targets.to(torch.int64)


def load_mnist(
    root: str | os.PathLike | None = None,
    split: str = "train",
    *,
    digits: Sequence[int] | None = None,
    validation_size: int = 10000,
    seed: int = 0,
    download: bool = False,
) -> ToyData:
    r"""Load an MNIST split as raw uint8 pixels, flattened to 784 values per image.

    The official training set (60,000 images) is permuted by a permutation drawn from
    ``seed``; ``"train"`` is its first :math:`60000 - V` images and ``"validation"`` the
    last :math:`V` (``validation_size``), in permuted order, so the two are disjoint and
    fixed by the seed. ``"train+validation"`` is the whole official training set and
    ``"test"`` the official 10,000 test images, both in their original order.

    Args:
        root: folder holding ``MNIST/raw/*-ubyte``; ``None`` reads ``$PYRO_MANIFOLD_DATA``
            (see :func:`data_root`).
        split: ``"train"``, ``"validation"``, ``"test"`` or ``"train+validation"``.
        digits: keep only images of these digits (non-empty, each in 0..9); ``None`` keeps
            all.
        validation_size: :math:`V`, in ``[0, 60000)``.
        seed: seed of the train/validation permutation.
        download: let torchvision download the files into ``root`` if they are missing
            (off by default: nothing is fetched unless asked).

    Returns:
        :class:`ToyData` with ``data`` uint8 :math:`(N, 784)` (row-major 28 × 28 pixels,
        0..255) and ``labels`` int64 :math:`(N,)`, the digit.

    Raises:
        FileNotFoundError: the folder or the MNIST files are missing; the message names
            the path and how to provide the data.
        ValueError: (:class:`~pyro_manifold.errors.DataFormatError`) an MNIST file is
            truncated, has a foreign header, or holds another number of items than
            MNIST (a labels file shorter than its images file, say); the message names
            the file, the expected and the found.

    Example:
        >>> load_mnist(split="test", digits=[0, 1]).data.shape  # doctest: +SKIP
        torch.Size([2115, 784])
        >>> try:
        ...     load_mnist("/no/such/folder")
        ... except FileNotFoundError as err:
        ...     print(str(err).split(" does")[0])
        data folder '/no/such/folder' (from the argument root)
    """
    check_choice("split", split, MNIST_SPLITS)
    wanted = None if digits is None else _check_digits(digits)
    check_positive_int("validation_size", validation_size, minimum=0)
    if validation_size >= _NUM_TRAIN:
        raise ArgumentError(
            f"validation_size: expected an int in [0, {_NUM_TRAIN}), got {validation_size}"
        )
    if split == "validation" and validation_size == 0:
        raise ArgumentError(
            "validation_size: the 'validation' split needs validation_size > 0, got 0"
        )
    check_seed(seed)
    if not isinstance(download, bool):
        raise ArgumentTypeError(f"download: expected a bool, got {download!r}")
    path = data_root(root, must_exist=not download)

    data, labels = _read_mnist(path, train=split != "test", download=download)
    if split in ("train", "validation"):
        if data.shape[0] != _NUM_TRAIN:
            raise DataFormatError(
                f"the MNIST training files under {str(path)!r}: expected {_NUM_TRAIN} images "
                f"to split into {split!r} and 'validation', got {data.shape[0]} (use "
                f"split='train+validation' for a smaller set)"
            )
        perm = torch.randperm(_NUM_TRAIN, generator=make_generator(seed))
        cut = _NUM_TRAIN - validation_size
        index = perm[:cut] if split == "train" else perm[cut:]
        data, labels = data[index], labels[index]
    if wanted is not None:
        keep = torch.isin(labels, torch.tensor(wanted, dtype=torch.int64))
        data, labels = data[keep], labels[keep]
    return ToyData(data, labels)


def _check_unit_range(name: str, x: Tensor) -> Tensor:
    if bool(((x < 0) | (x > 1)).any()):
        raise ArgumentError(
            f"{name}: expected values in [0, 1], got values in [{x.min().item()}, {x.max().item()}]"
        )
    return x


def _unit_interval(name: str, x: object) -> Tensor:
    """Return ``x`` as probabilities: uint8 divided by 255, floats checked to be in [0, 1]."""
    if isinstance(x, Tensor) and x.dtype == torch.uint8:
        check_tensor(name, x, floating=False)
        return x.to(torch.float32) / 255
    return _check_unit_range(name, check_tensor(name, x, floating=True))


def _uniform_like(x: Tensor, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    """U[0, 1) draws of ``x``'s shape, drawn on the generator's device, moved to ``x``'s."""
    device = x.device if generator is None else generator.device
    return torch.rand(x.shape, generator=generator, dtype=dtype, device=device).to(x.device)


def dynamic_binarize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r"""Draw binary pixels :math:`b \sim \mathrm{Bernoulli}(p)` with :math:`p` the intensity.

    .. math::

        p = x / 255 \ \text{(uint8)} \quad\text{or}\quad p = x \ \text{(floats in } [0, 1]),
        \qquad b = \mathbb 1[u < p],\ u \sim \mathcal U[0, 1).

    Called afresh every epoch this is the dynamic binarisation common in VAE papers; it
    reduces overfitting compared with one fixed draw (:func:`static_binarize`).

    Args:
        x: pixels, uint8 in 0..255 or floating point in :math:`[0, 1]`, any shape.
        generator: random generator (its device is where the uniforms are drawn);
            ``None`` uses the global one.

    Returns:
        A tensor of 0.0 and 1.0 of ``x``'s shape, float32 for uint8 input, else ``x``'s
        dtype.

    Example:
        >>> b = dynamic_binarize(torch.tensor([0, 255, 128], dtype=torch.uint8))
        >>> b[:2].tolist(), b.dtype
        ([0.0, 1.0], torch.float32)
    """
    p = _unit_interval("x", x)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ArgumentTypeError(f"generator: expected a torch.Generator or None, got {generator!r}")
    return (_uniform_like(p, generator, p.dtype) < p).to(p.dtype)


def static_binarize(x: Tensor, seed: int = 0) -> Tensor:
    r"""One fixed Bernoulli draw of binary pixels (statically binarised MNIST).

    The same as :func:`dynamic_binarize` with a CPU generator seeded by ``seed``, so the
    result depends only on ``x`` and ``seed`` (and each entry's position in ``x``):

    .. math::

        b = \mathbb 1[u < p],\qquad u \sim \mathcal U[0, 1) \text{ from } \texttt{seed}.

    Args:
        x: pixels, uint8 in 0..255 or floating point in :math:`[0, 1]`, any shape.
        seed: seed of the draw.

    Returns:
        A tensor of 0.0 and 1.0 of ``x``'s shape (float32 for uint8 input).

    Example:
        >>> x = torch.randint(0, 256, (4, 784), dtype=torch.uint8)
        >>> torch.equal(static_binarize(x, seed=1), static_binarize(x, seed=1))
        True
    """
    check_seed(seed)
    return dynamic_binarize(x, make_generator(seed))


def dequantize(
    x: Tensor, generator: torch.Generator | None = None, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    r"""Uniformly dequantise 8-bit pixels into the open unit interval.

    .. math::

        y = \frac{x + u}{256},\qquad u \sim \mathcal U[0, 1).

    A density :math:`p_y` on :math:`[0, 1]^D` then gives the discrete model
    :math:`P(x) \ge \exp\bigl(\mathbb E_u[\log p_y(y)] - D\log 256\bigr)`, the usual
    bits-per-dimension bound. Values are kept strictly inside :math:`(0, 1)` at the
    dtype's resolution (rounding would otherwise give exactly 1.0 for
    :math:`x = 255` and :math:`u \to 1`).

    Args:
        x: integer pixels in 0..255 (uint8 or another integer dtype), any shape.
        generator: random generator for :math:`u`; ``None`` uses the global one.
        dtype: floating-point dtype of the result.

    Returns:
        :math:`y` of ``x``'s shape, in :math:`(0, 1)`.

    Example:
        >>> x = torch.tensor([0, 7, 255], dtype=torch.uint8)
        >>> y = dequantize(x, torch.Generator().manual_seed(0))
        >>> (y * 256).floor().long().tolist(), y.dtype
        ([0, 7, 255], torch.float32)
    """
    check_tensor("x", x, floating=False)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ArgumentTypeError(
            f"x: expected an integer tensor of pixels 0..255, got dtype {x.dtype}"
        )
    if bool(((x < 0) | (x > 255)).any()):
        raise ArgumentError(
            f"x: expected pixel values in 0..255, got values in "
            f"[{x.min().item()}, {x.max().item()}]"
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ArgumentTypeError(f"generator: expected a torch.Generator or None, got {generator!r}")
    check_dtype(dtype)
    finfo = torch.finfo(dtype)
    y = (x.to(dtype) + _uniform_like(x, generator, dtype)) / 256
    return y.clamp(finfo.tiny, 1 - finfo.eps / 2)


def _check_alpha(alpha: object) -> float:
    alpha = check_positive("alpha", alpha, allow_zero=True)
    if alpha >= 0.5:
        raise ArgumentError(f"alpha: expected a number in [0, 0.5), got {alpha}")
    return alpha


def logit_transform(x: Tensor, alpha: float = 1e-6) -> tuple[Tensor, Tensor]:
    r"""Map :math:`x \in [0, 1]^D` to logit space, with the log-determinant per example.

    .. math::

        s = \alpha + (1 - 2\alpha)x,\qquad y = \log\frac{s}{1 - s},\qquad
        \log\left|\det\frac{\partial y}{\partial x}\right|
        = \sum_{j=1}^{D}\bigl[\log(1 - 2\alpha) - \log s_j - \log(1 - s_j)\bigr].

    Densities convert as :math:`\log p_x(x) = \log p_y(y) + \log|\det \partial y/\partial x|`.
    Dequantised pixels (:func:`dequantize`) followed by this map with
    :math:`\alpha = \lambda = 10^{-6}` is the MNIST preprocessing of the MAF paper
    (Papamakarios et al. 2017); :math:`\alpha > 0` keeps :math:`y` finite at 0 and 1.
    :math:`1 - s` is computed as :math:`\alpha + (1 - 2\alpha)(1 - x)` to keep its
    precision near :math:`x = 1`.

    Args:
        x: values in :math:`[0, 1]`, shape :math:`(*, D)`, floating point.
        alpha: :math:`\alpha \in [0, 0.5)`.

    Returns:
        ``(y, logdet)``: :math:`y` of ``x``'s shape and the log-determinant, shape
        :math:`(*)` (summed over the last dimension).

    Example:
        >>> y, logdet = logit_transform(torch.tensor([[0.5, 0.5]]), alpha=0.0)
        >>> y.tolist(), round(logdet.item(), 4)  # dy/dx = 4 per coordinate
        ([[0.0, 0.0]], 2.7726)

    References:
        Masked Autoregressive Flow for Density Estimation. George Papamakarios, Theo
        Pavlakou, Iain Murray, 2017. arXiv:1705.07057.
    """
    _check_unit_range("x", check_tensor("x", x, min_dim=1))
    alpha = _check_alpha(alpha)
    s = alpha + (1 - 2 * alpha) * x
    one_minus_s = alpha + (1 - 2 * alpha) * (1 - x)
    log_s, log_one_minus_s = torch.log(s), torch.log(one_minus_s)
    y = log_s - log_one_minus_s
    logdet = (math.log1p(-2 * alpha) - log_s - log_one_minus_s).sum(-1)
    return y, logdet


def dequantize_logit(
    x: Tensor,
    seed: int | None = None,
    *,
    alpha: float = 1e-6,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    r"""Dequantise 8-bit pixels and map them to logit space, with the log-determinant.

    :func:`dequantize` then :func:`logit_transform`, the MNIST preprocessing of the MAF
    paper with :math:`\alpha = 10^{-6}`:

    .. math::

        u = \frac{x + v}{256},\quad v \sim \mathcal U[0, 1),\qquad
        y = \log\frac{s}{1 - s},\quad s = \alpha + (1 - 2\alpha)u .

    The seeding rule, the one used wherever pixels are dequantised: with ``seed`` the
    uniforms :math:`v` come from a CPU generator seeded with it, drawn in row-major order
    and moved to ``x``'s device, so the result depends only on ``x`` and ``seed`` (the
    same on every device); with ``None`` they come from the global random state of
    ``x``'s device (fresh noise on every call, as a training batch wants).

    Args:
        x: integer pixels in 0..255, shape :math:`(*, D)`.
        seed: seed of the dequantisation noise, an int ``>= 0``, or ``None``.
        alpha: :math:`\alpha \in [0, 0.5)`.
        dtype: floating-point dtype of the result.

    Returns:
        ``(y, logdet)``: :math:`y` of ``x``'s shape and
        :math:`\log|\det \partial y / \partial u|`, shape :math:`(*)`.

    Example:
        >>> pixels = torch.tensor([[0, 128, 255]], dtype=torch.uint8)
        >>> y, logdet = dequantize_logit(pixels, seed=0)
        >>> torch.equal(y, dequantize_logit(pixels, seed=0)[0]), y.shape, logdet.shape
        (True, torch.Size([1, 3]), torch.Size([1]))
    """
    generator = None if seed is None else make_generator(check_seed(seed))
    return logit_transform(dequantize(x, generator, dtype=dtype), alpha=alpha)


def inverse_logit_transform(y: Tensor, alpha: float = 1e-6) -> Tensor:
    r"""Invert :func:`logit_transform`: :math:`x = (\sigma(y) - \alpha) / (1 - 2\alpha)`.

    Args:
        y: values in logit space, any shape, floating point.
        alpha: the :math:`\alpha` used in the forward map.

    Returns:
        :math:`x` of ``y``'s shape (in :math:`[0, 1]` for ``y`` from the forward map; model
        samples may fall slightly outside, clamp them to display images).

    Example:
        >>> x = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
        >>> torch.allclose(inverse_logit_transform(logit_transform(x)[0]), x)
        True
    """
    check_tensor("y", y, finite=False)
    alpha = _check_alpha(alpha)
    return (torch.sigmoid(y) - alpha) / (1 - 2 * alpha)
