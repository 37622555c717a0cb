r"""A small convolutional MNIST classifier whose features feed a Fréchet distance."""

from __future__ import annotations

import torch
from pyro.distributions.util import is_validation_enabled
from torch import Tensor, nn

from pyro_manifold._validation import check_bounds, check_input, check_positive_int
from pyro_manifold.errors import ArgumentError

__all__ = ["MNISTClassifier"]


class MNISTClassifier(nn.Module):
    r"""Two convolutional and two linear layers for 28 x 28 digits in :math:`[0, 1]`.

    .. math::

        x \xrightarrow{\text{conv } 3\times3,\,32} \xrightarrow{\text{pool}}
        \xrightarrow{\text{conv } 3\times3,\,64} \xrightarrow{\text{pool}}
        \xrightarrow{\text{linear}} h \in \mathbb{R}^{F} \xrightarrow{\text{linear}}
        \text{logits} \in \mathbb{R}^{10}

    Each convolution is followed by batch normalisation, a ReLU and 2 x 2 max pooling;
    the features :math:`h` (after a ReLU) are the penultimate layer, the ones
    ``pyro_manifold.metrics.mnist_frechet_distance`` compares. Inputs are flattened
    images of shape :math:`(*, 784)` (or :math:`(*, 28, 28)`) with values in
    :math:`[0, 1]`; they are standardised with MNIST's pixel mean and standard deviation
    inside the network. While Pyro's validation is enabled, values outside
    :math:`[0, 1]` (e.g. 0-255 pixels) raise ``ValueError``.

    Args:
        num_features: the feature dimension :math:`F`.
        num_classes: the number of output logits.

    Attributes:
        test_accuracy: the accuracy on MNIST's test split measured after training, or
            ``None`` for an untrained network.

    Example:
        >>> net = MNISTClassifier()
        >>> x = torch.rand(5, 784)
        >>> net.features(x).shape, net(x).shape
        (torch.Size([5, 128]), torch.Size([5, 10]))
    """

    pixel_mean = 0.1307
    pixel_std = 0.3081

    def __init__(self, num_features: int = 128, num_classes: int = 10) -> None:
        check_positive_int("num_features", num_features)
        check_positive_int("num_classes", num_classes, minimum=2)
        super().__init__()
        self.num_features = num_features
        self.num_classes = num_classes
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, num_features), nn.ReLU())
        self.dropout = nn.Dropout(0.25)
        self.head = nn.Linear(num_features, num_classes)
        self.test_accuracy: float | None = None

    def _images(self, x: Tensor) -> tuple[Tensor, torch.Size]:
        check_input("x", x, self.head.weight, min_dim=1, nonempty=False, owner="the network's")
        if x.shape[-1] == 784:
            batch = x.shape[:-1]
        elif x.shape[-2:] == (28, 28):
            batch = x.shape[:-2]
            if len(batch) and batch[-1] == 1:  # (N, 1, 28, 28)
                batch = batch[:-1]
        else:
            raise ArgumentError(
                f"x: expected shape (*, 784) or (*, 28, 28), got tensor of shape {tuple(x.shape)}"
            )
        if is_validation_enabled():
            check_bounds("x", x, 0.0, 1.0, what="pixel values")
        images = x.reshape(-1, 1, 28, 28)
        return (images - self.pixel_mean) / self.pixel_std, batch

    def features(self, x: Tensor) -> Tensor:
        r"""Penultimate-layer features, shape :math:`(*, F)`, for images :math:`(*, 784)`."""
        images, batch = self._images(x)
        return self.hidden(self.conv(images)).reshape(*batch, self.num_features)

    def forward(self, x: Tensor) -> Tensor:
        r"""Class logits, shape :math:`(*, 10)`, for images :math:`(*, 784)`."""
        return self.head(self.dropout(self.features(x)))
