"""The flow-stack factory: every family in every variant, and the user's own flows."""

import pytest
import torch

import pyro_manifold.transforms as T

F64 = torch.float64
K, D = 3, 3


def _perturbed(layers):
    with torch.no_grad():
        for p in layers.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layers


def _batched(flow):
    torch.manual_seed(0)
    if flow == "own":
        return _perturbed(
            T.flow_stack(D, lambda d: T.flow_stack(d, "realnvp", 2, [8]), num_components=K).double()
        )
    return _perturbed(T.flow_stack(D, flow, 2, [8], num_components=K).double())


def _forward(layers, u):
    for t in layers:
        u = t(u)
    return u


def _inverse(layers, x):
    for t in reversed(layers):
        x = t.inv(x)
    return x


@pytest.mark.parametrize("flow", [*T.FLOWS, "own"])
def test_batched_stack_round_trips_and_log_det_matches_autograd(flow):
    layers = _batched(flow)
    torch.manual_seed(1)
    u = torch.randn(5, K, D, dtype=F64)
    x = _forward(layers, u)
    assert x.shape == (5, K, D)
    torch.testing.assert_close(_inverse(layers, x.clone()), u, atol=1e-8, rtol=1e-8)
    ladj, h = 0, u[0]
    for t in layers:
        out = t(h)
        ladj = ladj + t.log_abs_det_jacobian(h, out)
        h = out
    assert ladj.shape == (K,)
    jac = torch.autograd.functional.jacobian(lambda v: _forward(layers, v.clone()), u[0])
    for k in range(K):  # component k's block; components do not interact
        expected = torch.linalg.slogdet(jac[k, :, k, :])[1]
        torch.testing.assert_close(ladj[k], expected, atol=1e-8, rtol=1e-8)
        others = [j for j in range(K) if j != k]
        assert jac[k][:, others].abs().max() == 0


def test_stacked_flows_are_separate_flows():
    torch.manual_seed(0)
    flows = [[T.affine_coupling(D, [8]).double()] for _ in range(K)]
    t = T.StackedFlows(flows)
    u = torch.randn(6, K, D, dtype=F64)
    x = t(u)
    for k, (layer,) in enumerate(flows):
        torch.testing.assert_close(x[:, k], layer(u[:, k].clone()))
        torch.testing.assert_close(
            t.log_abs_det_jacobian(u, x)[:, k], layer.log_abs_det_jacobian(u[:, k], x[:, k])
        )
    assert len(list(t.parameters())) == K * len(list(flows[0][0].parameters()))


def test_one_default_and_honest_names():
    assert T.DEFAULT_FLOW in T.FLOWS and "spline" not in T.FLOWS
    kinds = {
        f: {type(t).__name__ for t in T.flow_stack(3, f, 2, [8], context_dim=2)} for f in T.FLOWS
    }
    assert kinds["spline_coupling"] == {"ConditionalSplineCoupling", "Reverse"}
    assert kinds["spline_autoregressive"] == {"FreshConditionalSplineAutoregressive"}
    plain = {f: {type(t).__name__ for t in T.flow_stack(3, f, 2, [8])} for f in T.FLOWS}
    assert plain["spline_coupling"] == {"FreshSplineCoupling", "Reverse"}
    assert plain["spline_autoregressive"] == {"FreshSplineAutoregressive"}
    # README: FLOWS = ("maf", "realnvp", "spline_autoregressive", "spline_coupling"),
    # default DEFAULT_FLOW = "realnvp" (flow_stack's default)
    assert T.FLOWS == ("maf", "realnvp", "spline_autoregressive", "spline_coupling")
    assert T.DEFAULT_FLOW == "realnvp"
    assert plain["realnvp"] == {type(t).__name__ for t in T.flow_stack(3, num_layers=2)}
    assert plain["realnvp"] != plain["maf"]


def test_checking_a_user_flow_leaves_its_modes_alone():
    built = []

    def own(d):
        built.append(T.flow_stack(d, "realnvp", 1, [8], batch_norm=False))
        built[-1].append(__import__("pyro").distributions.transforms.BatchNorm(d))
        return built[-1]

    layers = T.flow_stack(2, own)
    assert layers[1].training and torch.equal(layers[1].moving_mean, torch.zeros(2))


def test_zuko_flow_as_a_conditional_layer_round_trips():
    zuko = pytest.importorskip("zuko")
    torch.manual_seed(0)
    t = T.ConditionalZukoTransform(zuko.flows.NSF(2, context=3, hidden_features=[8])).double()
    h, u = torch.randn(5, 3, dtype=F64), torch.randn(5, 2, dtype=F64)
    c = t.condition(h)
    x = c(u)
    torch.testing.assert_close(c.inv(x.clone()), u, atol=1e-6, rtol=1e-6)
    jac = torch.autograd.functional.jacobian(lambda v: t.condition(h[:1])(v.clone()), u[:1])
    expected = torch.linalg.slogdet(jac[0, :, 0, :])[1]
    torch.testing.assert_close(c.log_abs_det_jacobian(u, x)[0], expected, atol=1e-6, rtol=1e-6)
