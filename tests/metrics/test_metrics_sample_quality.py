import math

import pytest
import torch

from pyro_manifold.metrics import maximum_mean_discrepancy, mean_manifold_distance


def test_mean_manifold_distance_circle():
    g = torch.Generator().manual_seed(0)
    angles = torch.rand(100, generator=g) * 2 * math.pi
    radii = 1 + 0.1 * torch.randn(100, generator=g)
    x = torch.stack([radii * angles.cos(), radii * angles.sin()], -1)

    def circle(points):
        return (points.norm(dim=-1) - 1).abs()

    assert mean_manifold_distance(x, circle) == pytest.approx((radii - 1).abs().mean().item())
    with pytest.raises(ValueError, match="distance_fn"):
        mean_manifold_distance(x, lambda p: p)
    with pytest.raises(TypeError, match="distance_fn"):
        mean_manifold_distance(x, 3)


def test_mmd_by_hand_single_bandwidth():
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    e = math.exp
    expected = e(-0.5) + e(-2.0) - 2 * (1 + e(-2.0) + 2 * e(-0.5)) / 4
    out = maximum_mean_discrepancy(x, y, bandwidths=[1.0])
    assert out.item() == pytest.approx(expected, rel=1e-12)


def test_mmd_same_and_shifted_distributions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g)
    y = torch.randn(500, 3, generator=g)
    same = maximum_mean_discrepancy(x, y).item()
    shifted = maximum_mean_discrepancy(x, y + torch.tensor([1.0, 0.0, 0.0])).item()
    assert abs(same) < 0.005
    assert shifted > 0.05
    assert shifted > 20 * abs(same)
    assert maximum_mean_discrepancy(y, x).item() == pytest.approx(same, abs=1e-6)


def test_mmd_differentiable_and_checks():
    x = torch.randn(20, 2, requires_grad=True)
    y = torch.randn(30, 2)
    maximum_mean_discrepancy(x, y).backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="y"):
        maximum_mean_discrepancy(torch.randn(5, 2), torch.randn(5, 3))
    with pytest.raises(ValueError, match="x"):
        maximum_mean_discrepancy(torch.randn(1, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match="bandwidths"):
        maximum_mean_discrepancy(torch.randn(5, 2), torch.randn(5, 2), bandwidths=[1.0, -1.0])


def test_sample_in_batches_equals_one_call_and_keeps_batches_small():
    from pyro_manifold.metrics import sample_in_batches

    normal = torch.distributions.Normal(torch.zeros(3), 1.0)
    sizes = []

    def draw(b):
        sizes.append(b)
        return normal.sample((b,))

    torch.manual_seed(0)
    batched = sample_in_batches(draw, 10, batch_size=4)
    torch.manual_seed(0)
    whole = torch.cat([normal.sample((b,)) for b in (4, 4, 2)])
    assert sizes == [4, 4, 2] and torch.equal(batched, whole)
    pairs = sample_in_batches(lambda b: (torch.ones(b, 2), torch.zeros(b)), 3, batch_size=2)
    assert pairs.shape == (3, 2)  # a tuple contributes its first element


@pytest.mark.parametrize(
    "fn, match",
    [
        (
            lambda b: torch.ones(b + 1, 2),
            r"expected draws of shape \(2, 2\) for b=2, got shape \(3, 2\)",
        ),
        (lambda b: "x", "sample_fn"),
    ],
)
def test_sample_in_batches_refuses_wrong_draws(fn, match):
    from pyro_manifold.metrics import sample_in_batches

    with pytest.raises((ValueError, TypeError), match=match):
        sample_in_batches(fn, 4, batch_size=2)
    with pytest.raises(ValueError, match="num_samples"):
        sample_in_batches(fn, 0)


def test_sample_in_batches_refuses_more_draws_than_memory_holds_by_name():
    from pyro_manifold.errors import ArgumentError
    from pyro_manifold.metrics import sample_in_batches

    calls = []

    def draw(b):
        calls.append(b)
        return torch.zeros(b, 2)

    with pytest.raises(ArgumentError, match=r"num_samples: expected a number of draws that fits"):
        sample_in_batches(draw, 10**15, batch_size=4)
    assert calls == [4]  # one batch drawn, then refused before the gathering tensor exists
