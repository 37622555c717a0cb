r"""One registry of every data set by name, for the command line and the benchmarks."""

from __future__ import annotations

import os

import torch

from pyro_manifold._validation import check_choice, check_positive, check_positive_int
from pyro_manifold.datasets import toy2d
from pyro_manifold.datasets._common import ToyData, check_seed, make_generator, randn
from pyro_manifold.datasets.manifolds import make_manifold
from pyro_manifold.datasets.mnist import MNIST_SPLITS, load_mnist
from pyro_manifold.errors import ArgumentError

__all__ = ["DATASETS", "load_dataset"]

_TOY2D = {
    "pinwheel": toy2d.pinwheel,
    "two_circles": toy2d.two_circles,
    "two_moons": toy2d.two_moons,
    "eight_gaussians": toy2d.eight_gaussians,
    "checkerboard": toy2d.checkerboard,
}
_MANIFOLD_NAMES = ("sphere", "torus", "swiss_roll", "linked_rings")
_TOY_SPLITS = ("train", "validation", "test")
_DEFAULT_NUM_SAMPLES = 10_000

DATASETS: tuple[str, ...] = (*_TOY2D, *_MANIFOLD_NAMES, "mnist")
"""Names accepted by :func:`load_dataset`: five 2D densities, four manifolds, MNIST."""


def _derive_seed(seed: int, stream: int) -> int:
    """A seed for stream ``stream`` of ``seed`` (a SplitMix64 hash; stream 0 is ``seed``)."""
    if stream == 0:
        return seed
    mask = 2**64 - 1
    z = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 30)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) >> 1  # in [0, 2**63)


def load_dataset(
    name: str,
    num_samples: int | None = None,
    *,
    split: str = "train",
    seed: int = 0,
    noise: float = 0.0,
    root: str | os.PathLike | None = None,
) -> ToyData:
    r"""Load any data set of the package by name (see :data:`DATASETS`).

    - 2D densities (``"pinwheel"``, ``"two_circles"``, ``"two_moons"``,
      ``"eight_gaussians"``, ``"checkerboard"``) are drawn with their default parameters;
      ``noise`` adds isotropic Gaussian noise of that standard deviation on top.
    - Manifolds (``"sphere"``, ``"torus"``, ``"swiss_roll"``, ``"linked_rings"``) are
      drawn from :func:`~pyro_manifold.datasets.make_manifold` with default parameters;
      ``noise`` is the off-manifold noise of :meth:`ToyManifold.sample`.
    - ``"mnist"`` returns the raw uint8 pixels of :func:`load_mnist` (the caller
      preprocesses them); ``seed`` fixes the train/validation permutation and ``noise``
      must be 0.

    For the synthetic data sets, ``split`` picks an independent stream of random numbers:
    ``"train"`` uses ``seed`` itself (so ``load_dataset("pinwheel", n, seed=s)`` equals
    ``pinwheel(n, seed=s)``), ``"validation"`` and ``"test"`` use seeds hashed from
    ``(seed, split)``.

    Args:
        name: one of :data:`DATASETS`.
        num_samples: number of points; ``None`` means 10,000 for the synthetic sets and
            the whole split for MNIST (otherwise its first ``num_samples`` images).
        split: ``"train"``, ``"validation"`` or ``"test"`` (MNIST also accepts
            ``"train+validation"``).
        seed: seed of the draw (of the train/validation permutation for MNIST).
        noise: standard deviation of added isotropic Gaussian noise (see above).
        root: the MNIST folder (see :func:`data_root`); ignored by the other data sets.

    Returns:
        :class:`ToyData`: float32 ``data`` :math:`(N, D)` and int64 labels (or ``None``)
        for the synthetic sets; uint8 :math:`(N, 784)` and digit labels for MNIST.

    Example:
        >>> x, _ = load_dataset("torus", 100, split="test", noise=0.01)
        >>> x.shape, x.dtype
        (torch.Size([100, 3]), torch.float32)
        >>> torch.equal(load_dataset("pinwheel", 50).data, toy2d.pinwheel(50).data)
        True
    """
    check_choice("name", name, DATASETS)
    if num_samples is not None:
        check_positive_int("num_samples", num_samples)
    noise = check_positive("noise", noise, allow_zero=True)
    check_seed(seed)
    if name == "mnist":
        check_choice("split", split, MNIST_SPLITS)
        if noise != 0:
            raise ArgumentError(
                f"noise: expected 0 for 'mnist' (preprocess the pixels), got {noise}"
            )
        data = load_mnist(root, split, seed=seed)
        if num_samples is None:
            return data
        if num_samples > data.data.shape[0]:
            raise ArgumentError(
                f"num_samples: expected at most {data.data.shape[0]} for the mnist split "
                f"{split!r}, got {num_samples}"
            )
        return ToyData(data.data[:num_samples], data.labels[:num_samples])

    check_choice("split", split, _TOY_SPLITS)
    n = _DEFAULT_NUM_SAMPLES if num_samples is None else num_samples
    split_seed = _derive_seed(seed, _TOY_SPLITS.index(split))
    if name in _TOY2D:
        data, labels = _TOY2D[name](n, seed=split_seed, dtype=torch.float64)
        if noise > 0:
            data = data + noise * randn(make_generator(_derive_seed(split_seed, 3)), n, 2)
        return ToyData(data.to(torch.float32), labels)
    return make_manifold(name).sample(n, noise=noise, seed=split_seed)
