"""pyro_manifold: Pyro transforms and distributions for data on or near manifolds.

Noisy injective flows, variational mixtures of flows, VQ-Flows chart atlases and VAEs
with flow encoders, written as ordinary Pyro transform modules (``TransformModule``),
distributions (``Distribution``) and model/guide programs.
"""

from pyro_manifold import datasets, distributions, infer, metrics, models, nn, transforms

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "datasets",
    "distributions",
    "infer",
    "metrics",
    "models",
    "nn",
    "transforms",
]
