"""VectorQuantizer and chart_membership: nearest codes, losses, k-means, dead codes."""

import pytest
import torch

from pyro_manifold.nn import VectorQuantizer, chart_membership


def test_nearest_code_straight_through_and_losses():
    torch.manual_seed(0)
    vq = VectorQuantizer(5, 3, commitment=0.5).double()
    e = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    codes, index, loss = vq(e)
    brute = torch.stack([torch.stack([(ei - v).norm() for v in vq.codebook]) for ei in e])
    torch.testing.assert_close(vq.distances(e), brute)
    assert torch.equal(index, brute.argmin(-1))
    torch.testing.assert_close(codes, vq.codebook[index])
    sq = (e - vq.codebook[index]).pow(2).sum(-1)
    torch.testing.assert_close(loss, 1.5 * sq)
    # straight-through: d codes / d e is the identity
    codes.sum().backward(retain_graph=True)
    torch.testing.assert_close(e.grad, torch.ones_like(e))
    # the codebook gets the VQ loss gradient, the encoder the commitment gradient
    e.grad = None
    loss.sum().backward()
    torch.testing.assert_close(e.grad, 0.5 * 2 * (e - vq.codebook[index]).detach())
    assert vq.codebook.grad.abs().sum() > 0


def test_kmeans_initialisation_finds_separated_clusters():
    torch.manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    e = (centres.repeat_interleave(50, 0) + 0.1 * torch.randn(150, 2))[torch.randperm(150)]
    vq = VectorQuantizer(3, 2)
    vq.initialize(e)
    found = vq.codebook.detach()
    err = torch.cdist(centres, found).min(-1).values
    assert (err < 0.1).all(), found
    assert bool(vq.initialized)


def test_dead_codes_are_reseeded_and_live_ones_kept():
    torch.manual_seed(2)
    vq = VectorQuantizer(4, 2)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [50.0, 50.0], [-50.0, 9.0]]))
    e = torch.rand(20, 2)
    vq(e)
    assert vq.usage[2] == 0 and vq.usage[3] == 0
    live = vq.codebook[:2].detach().clone()
    assert vq.reseed_dead_codes(e) == 2
    torch.testing.assert_close(vq.codebook[:2].detach(), live)
    assert (vq.codebook[2:].detach().abs() < 1.1).all()
    assert (vq.usage == 0).all()
    vq.eval()
    vq(e)
    assert (vq.usage == 0).all(), "usage counts only in training mode"


def test_chart_membership_every_point_in_at_least_m_charts():
    torch.manual_seed(3)
    d = torch.rand(200, 6, dtype=torch.float64)
    for m in range(1, 7):
        for eps in (0.0, 0.2, 1.0):
            mask = chart_membership(d, m, eps)
            assert (mask.sum(-1) >= m).all()
            mth = d.sort(-1).values[:, m - 1 : m]
            assert torch.equal(mask, d <= (1 + eps) * mth)
    # points exactly at a code (distance 0) still get m charts
    d[:, 0] = 0
    assert (chart_membership(d, 2, 0.0).sum(-1) >= 2).all()


def test_bad_arguments():
    d = torch.rand(4, 3)
    with pytest.raises(ValueError, match="num_overlap"):
        chart_membership(d, 4, 0.1)
    with pytest.raises(ValueError, match="epsilon"):
        chart_membership(d, 1, -0.1)
    with pytest.raises(TypeError, match="num_overlap"):
        chart_membership(d, 1.0, 0.1)
    with pytest.raises(ValueError, match="num_codes"):
        VectorQuantizer(0, 2)
    vq = VectorQuantizer(3, 2)
    with pytest.raises(ValueError, match="e: expected shape"):
        vq(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="at least num_codes"):
        vq.initialize(torch.zeros(2, 2))
