"""Every model's ``flow=`` takes the user's own flow: a callable of Pyro transforms, or zuko."""

import pyro
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceEnum_ELBO

import pyro_manifold.transforms as T
from pyro_manifold.infer import fit
from pyro_manifold.models import (
    Flow,
    FlowVAE,
    NoisyInjectiveFlow,
    VariationalMixtureOfFlows,
    VQFlow,
)


def _own(d):
    return [T.affine_coupling(d, [8]), T.Reverse(), T.affine_coupling(d, [8])]


def _own_conditional(d, c):
    return [
        T.conditional_affine_coupling(d, c, [8]),
        T.conditional_masked_autoregressive(d, c, [8]),
    ]


def _zuko(d):
    zuko = pytest.importorskip("zuko")
    return T.ZukoTransform(zuko.flows.NSF(d, transforms=2, hidden_features=[8]))


def _zuko_conditional(d, c):
    zuko = pytest.importorskip("zuko")
    return T.ConditionalZukoTransform(
        zuko.flows.MAF(d, context=c, transforms=2, hidden_features=[8])
    )


def _models(kind):
    plain, conditional = (_own, _own_conditional) if kind == "own" else (_zuko, _zuko_conditional)
    enum = TraceEnum_ELBO(max_plate_nesting=1)
    vq = VQFlow(3, num_charts=2, flow=conditional, autoencoder_hidden_dims=[8])
    vq.set_stage("flows")
    return {
        "flow": (Flow(2, plain), Trace_ELBO(), 2),
        "nif": (NoisyInjectiveFlow(3, 2, top_flow=plain, prior_flow=plain), Trace_ELBO(), 3),
        "vmonf": (VariationalMixtureOfFlows(2, 2, flow=plain, encoder_hidden_dims=[8]), enum, 2),
        "vq": (vq, Trace_ELBO(), 3),
        "vae": (
            FlowVAE(2, 3, encoder_flow=conditional, hidden_dims=[8], likelihood="gaussian"),
            Trace_ELBO(),
            3,
        ),
    }


@pytest.mark.parametrize("kind", ["own", "zuko"])
@pytest.mark.parametrize("name", ["flow", "nif", "vmonf", "vq", "vae"])
def test_model_trains_with_fit_and_svi_and_predicts(kind, name):
    torch.manual_seed(0)
    model, elbo, dim = _models(kind)[name]
    x = torch.randn(32, dim)
    fit(model.model, model.guide, x, loss=elbo, num_steps=3, batch_size=16, progress=False)
    pyro.clear_param_store()
    params = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    losses = [svi.step(x) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    moved = [
        p
        for p, q in zip(params, (p for p in model.parameters() if p.requires_grad), strict=True)
        if not torch.equal(p, q)
    ]
    assert moved, "SVI moved no parameter"
    model.eval()
    site = "x" if name != "vae" else "x_mean"
    if name in ("flow", "nif", "vmonf", "vae"):
        out = Predictive(model.model, num_samples=2, return_sites=[site])(None, num_samples=4)
        assert out[site].shape == (2, 4, dim)
    else:
        out = Predictive(model.model, guide=model.guide, num_samples=2)(x[:4])
        assert out["x"].shape[-2:] == (4, dim)


def test_vmonf_runs_a_user_flow_as_k_separate_flows():
    m = VariationalMixtureOfFlows(2, 3, flow=_own, encoder_hidden_dims=[8])
    (stacked,) = m.layers
    assert isinstance(stacked, T.StackedFlows) and len(stacked.flows) == 3
    assert m.component_log_prob(torch.randn(5, 2)).shape == (5, 3)
