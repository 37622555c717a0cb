"""VQAutoencoder: the atlas of VQ-Flows (stage 1)."""

import pyro
import pytest
import torch

from pyro_manifold.datasets import LinkedRings
from pyro_manifold.infer import fit
from pyro_manifold.models import VQAutoencoder


def test_chart_distances_and_membership_match_their_definition():
    torch.manual_seed(0)
    ae = VQAutoencoder(3, code_dim=2, num_charts=5, hidden_dims=[16]).double()
    x = torch.randn(30, 3, dtype=torch.float64)
    e = ae.encode(x)
    d = ae.chart_distances(x)
    torch.testing.assert_close(d, torch.cdist(e, ae.centres))
    mask = ae.chart_membership(x, 2, 0.3)
    mth = d.sort(-1).values[:, 1:2]
    assert torch.equal(mask, d <= 1.3 * mth)
    assert (mask.sum(-1) >= 2).all()
    assert torch.equal(ae.assign(x), d.argmin(-1))


def test_loss_is_reconstruction_plus_vq_terms():
    torch.manual_seed(1)
    ae = VQAutoencoder(3, code_dim=2, num_charts=4, hidden_dims=[16], commitment=0.3).double()
    ae.eval()
    x = torch.randn(10, 3, dtype=torch.float64)
    e = ae.encode(x)
    k = torch.cdist(e, ae.centres).argmin(-1)
    v = ae.centres[k]
    expected = (x - ae.decoder(v)).pow(2).sum(-1) + 1.3 * (e - v).pow(2).sum(-1)
    torch.testing.assert_close(ae.loss(x), expected)
    torch.testing.assert_close(ae.reconstruct(x), ae.decoder(v))


def test_training_with_fit_learns_an_atlas_of_the_rings():
    pyro.set_rng_seed(2)
    ae = VQAutoencoder(3, code_dim=3, num_charts=8, hidden_dims=[32], reseed_every=20)
    x, ring = LinkedRings().sample(512, noise=0.01, seed=0)
    ae.eval()
    with torch.no_grad():
        before = float(ae.loss(x).mean())
    ae.train()
    result = fit(ae.model, ae.guide, x, num_steps=150, batch_size=128, lr=3e-3, device="cpu")
    ae.eval()
    with torch.no_grad():
        after = float(ae.loss(x).mean())
    assert bool(ae.quantizer.initialized)
    assert after < 0.5 * before, (before, after, result.history["loss"][-1])
    # every chart is used, and (almost) every chart holds points of one ring only
    k = ae.assign(x)
    assert len(k.unique()) == 8
    purity = sum(max(int(((k == j) & (ring == r)).sum()) for r in (0, 1)) for j in range(8)) / len(
        x
    )
    assert purity > 0.8


def test_bad_arguments():
    ae = VQAutoencoder(3, 2, 4, [8])
    with pytest.raises(ValueError, match="num_overlap"):
        ae.chart_membership(torch.zeros(2, 3), 5, 0.1)
    with pytest.raises(ValueError, match="epsilon"):
        ae.chart_membership(torch.zeros(2, 3), 1, -1.0)
    with pytest.raises(ValueError, match="x"):
        ae.chart_distances(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="x"):
        ae.chart_distances(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_charts"):
        VQAutoencoder(3, 2, 0)
