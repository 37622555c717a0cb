"""Finite values and gradients where mixtures are combined and far from the data."""

import torch

from pyro_manifold.distributions import MixtureOfFlows
from pyro_manifold.models import VariationalMixtureOfFlows, VQFlow


def _grads_finite(module):
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return bool(grads) and all(torch.isfinite(g).all() for g in grads)


def test_mixture_with_a_negligible_component_far_from_the_data():
    torch.manual_seed(0)
    m = VariationalMixtureOfFlows(2, 3, "realnvp", num_layers=2, hidden_dims=[8])
    logits = torch.tensor([0.0, -1e4, 0.0], requires_grad=True)  # pi_2 underflows to 0
    x = torch.randn(5, 2) * 30  # every component's density underflows in float32
    lp = MixtureOfFlows(logits, m.components()).log_prob(x)
    lp.sum().backward()
    assert torch.isfinite(lp).all()
    assert torch.isfinite(logits.grad).all() and logits.grad[1] == 0
    assert _grads_finite(m)


def test_chart_mixture_far_outside_every_chart():
    torch.manual_seed(0)
    vq = VQFlow(3, num_charts=4, flow="realnvp", num_layers=2, hidden_dims=[8])
    vq.set_stage("flows", torch.randn(64, 3))
    lp = vq.log_prob(torch.randn(8, 3) * 100)  # log-sum-exp over the charts holding x
    lp.sum().backward()
    assert torch.isfinite(lp).all() and (lp < -1e3).all()
    assert _grads_finite(vq)
