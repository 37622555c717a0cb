"""Networks that are not transforms: the MNIST classifier, PICNN, batched MLPs, init, k-means."""

from pyro_manifold.nn.batched import BatchedAutoRegressiveNN, BatchedDenseNN, BatchedLinear
from pyro_manifold.nn.init import scale_output_layer
from pyro_manifold.nn.kmeans import kmeans
from pyro_manifold.nn.mnist_classifier import MNISTClassifier
from pyro_manifold.nn.picnn import PICNN
from pyro_manifold.nn.vector_quantizer import VectorQuantizer, chart_membership

__all__ = [
    "BatchedAutoRegressiveNN",
    "BatchedDenseNN",
    "BatchedLinear",
    "MNISTClassifier",
    "PICNN",
    "VectorQuantizer",
    "chart_membership",
    "kmeans",
    "scale_output_layer",
]
