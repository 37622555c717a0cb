r"""Data sets: 2D toy densities, toy manifolds in 3D with exact distances, binary shapes, MNIST.

Every synthetic sampler is deterministic given its ``seed`` (it draws from a local
:class:`torch.Generator`) and returns a :class:`ToyData` ``(data, labels)``.
:func:`load_dataset` reaches all of them by name but :func:`binary_shapes` (images for
binary-likelihood models, which the flows of the command line do not train on).

Example:
    >>> from pyro_manifold.datasets import DATASETS, load_dataset
    >>> x, labels = load_dataset("two_moons", 64)
    >>> x.shape, "mnist" in DATASETS
    (torch.Size([64, 2]), True)
"""

from pyro_manifold.datasets._common import ToyData
from pyro_manifold.datasets._registry import DATASETS, load_dataset
from pyro_manifold.datasets.manifolds import (
    LinkedRings,
    Sphere,
    SwissRoll,
    Torus,
    ToyManifold,
    make_manifold,
)
from pyro_manifold.datasets.mnist import (
    data_root,
    dequantize,
    dequantize_logit,
    dynamic_binarize,
    inverse_logit_transform,
    load_mnist,
    logit_transform,
    static_binarize,
)
from pyro_manifold.datasets.shapes import SHAPES, binary_shapes
from pyro_manifold.datasets.toy2d import (
    checkerboard,
    eight_gaussians,
    pinwheel,
    two_circles,
    two_moons,
)

__all__ = [
    "DATASETS",
    "LinkedRings",
    "SHAPES",
    "Sphere",
    "SwissRoll",
    "Torus",
    "ToyData",
    "ToyManifold",
    "binary_shapes",
    "checkerboard",
    "data_root",
    "dequantize",
    "dequantize_logit",
    "dynamic_binarize",
    "eight_gaussians",
    "inverse_logit_transform",
    "load_dataset",
    "load_mnist",
    "logit_transform",
    "make_manifold",
    "pinwheel",
    "static_binarize",
    "two_circles",
    "two_moons",
]
