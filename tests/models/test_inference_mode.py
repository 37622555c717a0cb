"""Every model scores and samples under torch.inference_mode(), built inside it or not."""

import pytest
import torch

from pyro_manifold.models import (
    Flow,
    FlowVAE,
    NoisyInjectiveFlow,
    VariationalMixtureOfFlows,
    VQAutoencoder,
    VQFlow,
)

BUILDERS = {
    "Flow_maf": lambda: Flow(3, "maf", num_layers=2, hidden_dims=[8]),
    "Flow_realnvp": lambda: Flow(3, "realnvp", num_layers=2, hidden_dims=[8]),
    "Flow_spline_batch_norm": lambda: Flow(
        3, "spline_coupling", num_layers=2, hidden_dims=[8], batch_norm=True
    ),
    "NoisyInjectiveFlow": lambda: NoisyInjectiveFlow(
        3, 2, top_flow="spline_coupling", top_layers=1, top_hidden_dims=[8], batch_norm=True
    ),
    "VariationalMixtureOfFlows": lambda: VariationalMixtureOfFlows(
        3, 2, "spline_coupling", num_layers=1, hidden_dims=[8], encoder_hidden_dims=[8]
    ),
    "VQFlow": lambda: VQFlow(
        3, num_charts=3, num_layers=1, hidden_dims=[8], autoencoder_hidden_dims=[8]
    ),
    "VQAutoencoder": lambda: VQAutoencoder(3, 2, 3, hidden_dims=[8]),
    "FlowVAE_iaf": lambda: FlowVAE(2, 3, "iaf", num_flows=1, hidden_dims=[8]),
    "FlowVAE_pcp": lambda: FlowVAE(2, 3, "pcp", num_flows=1, hidden_dims=[8]),
}


def _evaluate(model, x):
    """What each model offers for scoring and sampling (values compared, then shapes)."""
    if isinstance(model, FlowVAE):
        posterior = model.posterior(x)
        z = posterior.sample()
        return {"log_q": posterior.log_prob(z)}, [model.reconstruct(x), model.sample(4)]
    if isinstance(model, VQAutoencoder):
        return {"reconstruct": model.reconstruct(x)}, [model.assign(x)]
    drawn = model.sample(4)
    values = {"log_prob": model.log_prob(x), "log_prob_again": model.log_prob(x)}
    if isinstance(model, VQFlow):
        values["reconstruct"] = model.reconstruct(x)
    return values, [drawn[0] if isinstance(drawn, tuple) else drawn]


@pytest.mark.parametrize("built_inside", [False, True], ids=["built_outside", "built_inside"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_log_prob_and_sample_under_inference_mode(name, built_inside):
    torch.manual_seed(0)
    x = (torch.rand(6, 3) < 0.4).float() if name.startswith("FlowVAE") else torch.randn(6, 3)
    if built_inside:
        with torch.inference_mode():
            model = BUILDERS[name]().eval()
    else:
        model = BUILDERS[name]().eval()
    # parameters built in inference mode are inference tensors: usable only inside it
    with torch.inference_mode() if built_inside else torch.no_grad():
        expected = {k: v for k, v in _evaluate(model, x)[0].items() if k != "log_q"}
    with torch.inference_mode():
        values, draws = _evaluate(model, x)
    for key, value in expected.items():
        torch.testing.assert_close(values[key], value, msg=key)
    for value in [*values.values(), *draws]:
        assert bool(torch.isfinite(value.float()).all())
