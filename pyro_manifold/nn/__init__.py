"""Networks that are not transforms: the MNIST classifier, PICNN, batched MLPs."""

from pyro_manifold.nn.mnist_classifier import MNISTClassifier

__all__ = ["MNISTClassifier"]
