"""Known answers of the sample-based metrics the benchmarks report, on constructed sets."""

import pytest
import torch

from pyro_manifold.metrics import feature_statistics, frechet_distance, mnist_frechet_distance
from pyro_manifold.nn import MNISTClassifier


def test_frechet_distance_of_two_gaussian_samples_approaches_the_closed_form():
    # diagonal covariances: d^2 = |m1 - m2|^2 + sum (s1 - s2)^2
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.0, 0.5, 1.5])
    n = 200_000
    a = m1 + s1 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    b = m2 + s2 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    expected = ((m1 - m2) ** 2 + (s1 - s2) ** 2).sum().item()  # 5 + 2.25 + 1 = 8.25
    estimate = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert estimate == pytest.approx(expected, rel=0.01)
    # a set against itself, and against a reordered copy of itself: zero
    same = feature_statistics(a)
    assert frechet_distance(*same, *feature_statistics(a.flip(0))) == pytest.approx(0, abs=1e-9)


def test_mnist_frechet_distance_of_identical_sets_is_zero_in_any_batching():
    torch.manual_seed(0)
    net = MNISTClassifier()  # weights do not matter for this answer
    images = torch.rand(300, 784)
    shuffled = images[torch.randperm(300)]
    assert mnist_frechet_distance(images, shuffled, net, batch_size=64) == pytest.approx(
        0.0, abs=1e-6
    )
    # and a different set is not at zero
    assert mnist_frechet_distance(images, images.flip(-1), net, batch_size=64) > 1e-3
