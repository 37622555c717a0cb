import math

import pytest
import torch

from pyro_manifold.datasets import (
    ToyData,
    checkerboard,
    eight_gaussians,
    pinwheel,
    two_circles,
    two_moons,
)

SAMPLERS = {
    "pinwheel": (pinwheel, 5),
    "two_circles": (two_circles, 2),
    "two_moons": (two_moons, 2),
    "eight_gaussians": (eight_gaussians, 8),
    "checkerboard": (checkerboard, 8),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_shapes_dtypes_and_labels(name):
    fn, num_labels = SAMPLERS[name]
    out = fn(300, seed=1)
    assert isinstance(out, ToyData)
    assert out.data.shape == (300, 2) and out.data.dtype == torch.float32
    assert out.labels.shape == (300,) and out.labels.dtype == torch.int64
    assert out.labels.min() >= 0 and out.labels.max() < num_labels
    assert set(out.labels.tolist()) == set(range(num_labels))
    assert torch.isfinite(out.data).all()
    assert fn(5, seed=1, dtype=torch.float64).data.dtype == torch.float64


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_determinism_and_seeds(name):
    fn, _ = SAMPLERS[name]
    state = torch.get_rng_state()
    a, b, c = fn(200, seed=3), fn(200, seed=3), fn(200, seed=4)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must be untouched"
    assert torch.equal(a.data, b.data) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.data, c.data)
    # float32 is the rounded float64 draw
    d = fn(200, seed=3, dtype=torch.float64)
    assert torch.equal(d.data.float(), a.data) and torch.equal(d.labels, a.labels)


def test_pinwheel_wings():
    x, wing = pinwheel(5000, seed=0)
    counts = torch.bincount(wing, minlength=5)
    assert len(counts) == 5
    assert (counts - 1000).abs().max() < 150  # multinomial sd ~ 28
    # radius ~ N(1, 0.3^2) (the tangential part adds little)
    assert abs(x.norm(dim=-1).median().item() - 1.0) < 0.05
    # wing k is wing 0 rotated by 2 pi k / 5
    mean_angle = [torch.atan2(*x[wing == k].mean(0).flip(0)).item() for k in range(5)]
    gaps = [(mean_angle[k + 1] - mean_angle[k]) % (2 * math.pi) for k in range(4)]
    assert all(abs(g - 2 * math.pi / 5) < 0.05 for g in gaps)
    # rate 0 gives straight wings: wing 0 points along +x with tangential spread 0.1
    straight, w = pinwheel(4000, rate=0.0, seed=1, dtype=torch.float64)
    w0 = straight[w == 0]
    assert abs(w0[:, 1].std().item() - 0.1) < 0.01 and abs(w0[:, 0].mean().item() - 1) < 0.03


def test_two_circles_radii():
    x, c = two_circles(1000, noise=0.0, factor=0.3, dtype=torch.float64)
    r = x.norm(dim=-1)
    assert torch.allclose(r[c == 0], torch.ones(1, dtype=torch.float64))
    assert torch.allclose(r[c == 1], torch.full((1,), 0.3, dtype=torch.float64))
    noisy, c = two_circles(4000, noise=0.05, seed=2, dtype=torch.float64)
    assert abs((noisy.norm(dim=-1)[c == 0] - 1).std().item() - 0.05) < 0.005


def test_two_moons_shape():
    x, moon = two_moons(1000, noise=0.0, dtype=torch.float64)
    upper, lower = x[moon == 0], x[moon == 1]
    one = torch.ones(1, dtype=torch.float64)
    assert torch.allclose(upper.norm(dim=-1), one) and (upper[:, 1] >= 0).all()
    centre = torch.tensor([1.0, 0.5], dtype=torch.float64)
    assert torch.allclose((lower - centre).norm(dim=-1), one) and (lower[:, 1] <= 0.5).all()


def test_eight_gaussians_components():
    x, k = eight_gaussians(8000, scale=2.0, seed=0, dtype=torch.float64)
    angle = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    centres = 2.0 * torch.stack([angle.cos(), angle.sin()], -1)
    for j in range(8):
        pts = x[k == j]
        assert (pts.mean(0) - centres[j]).abs().max() < 0.01
        assert abs(pts.std(0).mean().item() - 0.04) < 0.005  # default std = 0.02 * scale
    wide, _ = eight_gaussians(2000, std=0.5, scale=4.0)
    assert wide.abs().max() > 4.5


def test_checkerboard_cells():
    x, cell = checkerboard(4000, seed=0, dtype=torch.float64)
    assert (x.abs() <= 4).all()
    ij = torch.floor((x + 4) / 2).long()  # (column, row), each in 0..3
    assert ((ij[:, 0] + ij[:, 1]) % 2 == 0).all(), "every point lies in a dark cell"
    # labels count dark cells row-major: row * 2 + column // 2
    assert torch.equal(cell, ij[:, 1] * 2 + ij[:, 0] // 2)
    counts = torch.bincount(cell, minlength=8)
    assert (counts - 500).abs().max() < 100
    small, labels = checkerboard(1000, num_cells=3, half_width=1.5)
    assert labels.max() == 4 and (small.abs() <= 1.5).all()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_common_bad_arguments(name):
    fn, _ = SAMPLERS[name]
    with pytest.raises(ValueError, match="num_samples"):
        fn(0)
    with pytest.raises(TypeError, match="num_samples"):
        fn(2.5)
    with pytest.raises(ValueError, match="seed"):
        fn(10, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        fn(10, seed=1.0)
    with pytest.raises(TypeError, match="dtype"):
        fn(10, dtype=torch.int64)


@pytest.mark.parametrize(
    "call, name, error",
    [
        (lambda: pinwheel(10, num_wings=0), "num_wings", ValueError),
        (lambda: pinwheel(10, radial_std=-0.1), "radial_std", ValueError),
        (lambda: pinwheel(10, tangential_std=float("nan")), "tangential_std", ValueError),
        (lambda: pinwheel(10, rate=float("inf")), "rate", ValueError),
        (lambda: pinwheel(10, rate="fast"), "rate", TypeError),
        (lambda: two_circles(10, noise=-1.0), "noise", ValueError),
        (lambda: two_circles(10, factor=1.0), "factor", ValueError),
        (lambda: two_circles(10, factor=0.0), "factor", ValueError),
        (lambda: two_moons(10, noise=-0.5), "noise", ValueError),
        (lambda: eight_gaussians(10, std=-1.0), "std", ValueError),
        (lambda: eight_gaussians(10, scale=0.0), "scale", ValueError),
        (lambda: checkerboard(10, num_cells=0), "num_cells", ValueError),
        (lambda: checkerboard(10, half_width=-2.0), "half_width", ValueError),
    ],
)
def test_specific_bad_arguments(call, name, error):
    with pytest.raises(error, match=name):
        call()


def test_error_message_names_value():
    with pytest.raises(ValueError, match=r"factor: expected a number in \(0, 1\), got 1.5"):
        two_circles(10, factor=1.5)
