import pytest
import torch

from pyro_manifold.datasets import (
    DATASETS,
    load_dataset,
    make_manifold,
    pinwheel,
    two_moons,
)

SYNTHETIC = [name for name in DATASETS if name != "mnist"]


def test_registry_names():
    assert DATASETS == (
        "pinwheel",
        "two_circles",
        "two_moons",
        "eight_gaussians",
        "checkerboard",
        "sphere",
        "torus",
        "swiss_roll",
        "linked_rings",
        "mnist",
    )


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_sets(name):
    x, labels = load_dataset(name, 100, seed=2)
    dim = 3 if name in ("sphere", "torus", "swiss_roll", "linked_rings") else 2
    assert x.shape == (100, dim) and x.dtype == torch.float32
    assert labels is None or (labels.shape == (100,) and labels.dtype == torch.int64)
    assert torch.equal(load_dataset(name, 100, seed=2).data, x)
    splits = [
        load_dataset(name, 100, seed=2, split=s).data for s in ("train", "validation", "test")
    ]
    assert not torch.equal(splits[0], splits[1]) and not torch.equal(splits[1], splits[2])
    noisy = load_dataset(name, 100, seed=2, noise=0.1).data
    assert not torch.equal(noisy, x) and (noisy - x).std() > 0.05


def test_default_size_and_equivalences():
    assert load_dataset("two_moons").data.shape == (10_000, 2)
    assert torch.equal(load_dataset("pinwheel", 50, seed=7).data, pinwheel(50, seed=7).data)
    assert torch.equal(load_dataset("two_moons", 50).labels, two_moons(50).labels)
    torus = make_manifold("torus")
    x, _ = load_dataset("torus", 50, noise=0.2, seed=1)
    assert torch.equal(x, torus.sample(50, noise=0.2, seed=1).data)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"name": "spiral"}, "name"),
        ({"name": "torus", "num_samples": 0}, "num_samples"),
        ({"name": "torus", "split": "train+validation"}, "split"),
        ({"name": "torus", "noise": -1.0}, "noise"),
        ({"name": "torus", "seed": -1}, "seed"),
        ({"name": "mnist", "noise": 0.1}, "noise"),
        ({"name": "mnist", "split": "dev"}, "split"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        load_dataset(**kwargs)


def test_mnist_without_data_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        load_dataset("mnist", root=tmp_path / "nothing_here")
