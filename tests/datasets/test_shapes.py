import pytest
import torch

from pyro_manifold.datasets import SHAPES, ToyData, binary_shapes
from pyro_manifold.errors import ArgumentError, ArgumentTypeError


def _boxes(x, side):
    """Bounding box (rows, cols) of the pixels that are on, per image."""
    images = x.reshape(-1, side, side).bool()
    rows, cols = images.any(2), images.any(1)
    first = lambda m: m.float().argmax(1)  # noqa: E731
    last = lambda m: side - 1 - m.flip(1).float().argmax(1)  # noqa: E731
    return first(rows), last(rows), first(cols), last(cols)


def test_shapes_dtypes_and_labels():
    out = binary_shapes(400, seed=1)
    assert isinstance(out, ToyData)
    assert out.data.shape == (400, 256) and out.data.dtype == torch.float32
    assert set(out.data.unique().tolist()) == {0.0, 1.0}
    assert out.labels.dtype == torch.int64
    assert set(out.labels.tolist()) == set(range(len(SHAPES)))
    assert binary_shapes(3, 10, seed=1, dtype=torch.float64).data.shape == (3, 100)
    assert binary_shapes(3, seed=1, dtype=torch.float64).data.dtype == torch.float64


def test_determinism_and_seeds():
    state = torch.get_rng_state()
    a, b, c = binary_shapes(100, seed=3), binary_shapes(100, seed=3), binary_shapes(100, seed=4)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must be untouched"
    assert torch.equal(a.data, b.data) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.data, c.data)


@pytest.mark.parametrize("side", [8, 13, 16])
def test_every_shape_fits_and_has_its_pixels(side):
    x, labels = binary_shapes(2000, side, seed=0)
    images = x.reshape(-1, side, side)
    top, bottom, left, right = _boxes(x, side)
    h, w = bottom - top + 1, right - left + 1  # 2a + 1 and 2b + 1
    sizes = set(range(5, 2 * (side // 4 + 1) + 2, 2))
    assert set(h.tolist()) == sizes and set(w.tolist()) == sizes
    area = images.sum((1, 2))
    for k, name in enumerate(SHAPES):
        s = labels == k
        if name == "rectangle":
            assert torch.equal(area[s], (h * w)[s].float())
        elif name == "frame":
            assert torch.equal(area[s], (2 * h + 2 * w - 4)[s].float())
        elif name == "cross":
            assert torch.equal(area[s], (h + w - 1)[s].float())
        else:  # ellipse: inside its box, more than a cross, less than the box
            assert ((area[s] > (h + w - 1)[s]) & (area[s] < (h * w)[s])).all()
    # the shape's centre pixel is on except for a frame
    cy, cx = (top + bottom) // 2, (left + right) // 2
    centre = images[torch.arange(len(x)), cy, cx]
    assert torch.equal(centre == 1, labels != SHAPES.index("frame"))


def test_number_of_distinct_images_is_as_documented():
    side = 8  # half sizes 2..3: 4 * ((8 - 4) + (8 - 6)) ** 2 = 144 images
    x, _ = binary_shapes(5000, side, seed=0)
    assert torch.unique(x, dim=0).shape[0] == 4 * (4 + 2) ** 2


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"num_samples": 0}, ArgumentError, "num_samples: expected an int >= 1, got 0"),
        ({"num_samples": 2.0}, ArgumentTypeError, "num_samples: expected an int"),
        ({"side": 7}, ArgumentError, "side: expected an int >= 8, got 7"),
        ({"seed": -1}, ArgumentError, "seed: expected an int >= 0, got -1"),
        ({"dtype": torch.int64}, ArgumentTypeError, "dtype: expected a floating-point"),
    ],
)
def test_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        binary_shapes(**{"num_samples": 4, **kwargs})
