"""Bad input to every public class and function: one table, one test.

Each entry is ``pytest.param(call, error, pattern, id="Name-case")``: ``call()`` must raise
``error`` (``ValueError``, or ``TypeError`` for a wrong type) from pyro_manifold's own
checks (not from inside torch), with a message matching ``pattern``, which names the
argument and the value given. An :class:`OnTarget` call builds its object first, and the
test checks that the failing call changed none of its state (parameters, buffers,
``requires_grad`` flags, train/eval modes, counters).

Cases, where they apply: wrong event dimension, wrong dtype (float32 into a float64
module, integer tensors), another device (``torch.device("meta")``), non-finite values,
empty batches, out-of-support values with validation on, invalid hyper-parameters.

Not every case applies everywhere (see ``NOT_APPLICABLE`` and the module docstring of
``pyro_manifold._validation``): value checks (finite entries, supports) run only while
Pyro's validation is enabled and not inside the networks of :mod:`pyro_manifold.nn`,
which run in inner loops (the Newton line search of PCP-Map tries non-finite points on
purpose); transforms, networks and ``log_prob`` accept empty batches (they return empty
results, as torch does), data entry points of models and the stochastic inverse do not.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.util import is_validation_enabled
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN, ConditionalDenseNN, DenseNN
from torch import Tensor, nn

import pyro_manifold
import pyro_manifold.distributions as D
import pyro_manifold.models as M
import pyro_manifold.nn as N
import pyro_manifold.transforms as T
from pyro_manifold.infer import fit

F64 = torch.float64
PACKAGE = Path(pyro_manifold.__file__).parent


# -- inputs ----------------------------------------------------------------------------
def f64(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=F64)


def f32(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=torch.float32)


def ints(*shape: int) -> Tensor:
    return torch.zeros(*shape, dtype=torch.int64)


def meta(*shape: int) -> Tensor:
    return torch.zeros(*shape, dtype=F64, device="meta")


def nan(*shape: int) -> Tensor:
    x = f64(*shape)
    x.view(-1)[-1] = float("nan")
    return x


def inf(*shape: int) -> Tensor:
    x = f64(*shape)
    x.view(-1)[0] = float("inf")
    return x


def binary(*shape: int) -> Tensor:
    return torch.randint(0, 2, shape).to(F64)


# -- message patterns: the argument's name and the value given -----------------------------
def shape(name: str, want: str, got: tuple[int, ...]) -> str:
    return rf"{name}: expected shape \(\*, {want}\).*got tensor of shape {re.escape(str(got))}"


def dtype(name: str) -> str:
    return rf"{name}: expected dtype torch\.float64 .*got dtype torch\.float32"


def integer(name: str) -> str:
    return rf"{name}: expected a floating-point tensor, got .*dtype torch\.int64"


def device(name: str) -> str:
    return rf"{name}: expected dtype torch\.float64 on device cpu.*got .* on device meta"


def nonfinite(name: str, value: str = "nan") -> str:
    return rf"{name}: expected finite values, got 1 non-finite entries .*{value}"


def empty(name: str, got: tuple[int, ...]) -> str:
    return rf"{name}: expected a non-empty tensor, got tensor of shape {re.escape(str(got))}"


def int_at_least(name: str, minimum: int, got: object) -> str:
    return rf"{name}: expected an int >= {minimum}, got {re.escape(str(got))}"


def positive(name: str, got: object) -> str:
    return rf"{name}: expected a finite number > 0, got {re.escape(str(got))}"


def nonnegative(name: str, got: object) -> str:
    return rf"{name}: expected a finite number >= 0, got {re.escape(str(got))}"


def nohidden(name: str) -> str:
    return rf"{name}: expected a non-empty list of ints \(at least one hidden layer\), got \[\]"


def flag(name: str, got: object) -> str:
    return rf"{name}: expected True or False, got {type(got).__name__} {re.escape(repr(got))}"


def choice(name: str, got: str) -> str:
    return rf"{name}: expected one of \[.*\], got '{got}'"


def widths(name: str, got: object) -> str:
    return rf"{name}: expected a list of ints, got {re.escape(repr(got))}"


SUPPORT = r"Expected value argument .* to be within the support .* but found invalid values"


# -- objects ------------------------------------------------------------------------------
@dataclass
class OnTarget:
    """``act(make())``; the test snapshots the state of ``make()`` around ``act``."""

    make: Callable[[], object]
    act: Callable[[object], object]

    def __call__(self) -> object:
        return self.act(self.make())


def affine() -> T.AffineCoupling:  # D = 3, keeps 1
    return T.AffineCoupling(1, DenseNN(1, [4], param_dims=[2, 2])).double()


def conditional_affine() -> T.ConditionalAffineCoupling:  # D = 3, C = 2
    return T.conditional_affine_coupling(3, 2, [4]).double()


def conditional_conformal() -> T.ConditionalConformalEmbedding:  # d = 2, D = 3, C = 4
    return T.conditional_conformal_embedding(2, 3, context_dim=4, hidden_dims=[8]).double()


def conditional_maf() -> T.ConditionalMaskedAutoregressive:  # D = 3, C = 2
    return T.conditional_masked_autoregressive(3, 2, [8]).double()


def pcp() -> T.ConditionalPCPMap:  # D = 2, C = 3
    return T.conditional_pcp_map(2, 3, hidden_dims=[8]).double()


def conditioned_pcp() -> T.ConditionedPCPMap:  # batch (4,)
    return pcp().condition(f64(4, 3))


def conformal() -> T.ConformalEmbedding:  # d = 2, D = 3
    return T.ConformalEmbedding(2, 3).double()


def nif() -> D.GaussianNIF:  # d = 2, D = 5
    return D.GaussianNIF(2, 5).double()


def maf() -> T.MaskedAutoregressive:  # D = 3
    return T.MaskedAutoregressive(AutoRegressiveNN(3, [8])).double()


def block() -> D.BlockLinear:  # d = 2, D = 3
    return D.BlockLinear(f64(1, 3, 2))


def atlas() -> M.VQAutoencoder:  # D = 3, C = 2, K = 4
    return M.VQAutoencoder(3, 2, 4, [8]).double()


def chart_mixture(**kwargs: object) -> D.ChartMixture:
    args: dict = {
        "atlas": atlas(),
        "chart_flow": [T.conditional_affine_coupling(2, 2, [8]).double()],
        "chart_logits": torch.zeros(4, dtype=F64),
        "data_dim": 3,
        "latent_dim": 2,
        "embedding": T.conditional_conformal_embedding(2, 3, 2, [8]).double(),
        "num_overlap": 2,
        "epsilon": 0.1,
        "validate_args": True,
    }
    args.update(kwargs)
    return D.ChartMixture(**args)


def mixture(**kwargs: object) -> D.MixtureOfFlows:  # K = 3, D = 2
    comps = dist.Normal(f64(3, 2), torch.ones(3, 2, dtype=F64)).to_event(1)
    return D.MixtureOfFlows(torch.zeros(3, dtype=F64), comps, **{"validate_args": True, **kwargs})


def noisy(**kwargs: object) -> D.NoisyInjective:  # batch (4,), d = 2, D = 3
    args: dict = {"validate_args": True, **kwargs}
    latent = args.pop("latent", torch.zeros(4, 2, dtype=F64))
    bias = args.pop("bias", torch.zeros(3, dtype=F64))
    scale = args.pop("noise_scale", torch.ones(3, dtype=F64))
    return D.NoisyInjective(latent, block(), bias, scale, **args)


def gaussian_mixture(**kwargs: object) -> D.GaussianMixture:  # batch (4,), K = 3, d = 2
    args = {"logits": f64(4, 3), "loc": f64(4, 3, 2), "scale_tril": torch.eye(2, dtype=F64)}
    args["scale_tril"] = args["scale_tril"].expand(3, 2, 2)
    args.update(kwargs)
    return D.GaussianMixture(args["logits"], args["loc"], args["scale_tril"])


def inverse(**kwargs: object) -> D.StochasticInverse:  # batch (4,), d = 2, D = 3
    args: dict = {"validate_args": True, **kwargs}
    x = args.pop("x", f64(4, 3))
    scale = args.pop("noise_scale", torch.ones(3, dtype=F64))
    return D.StochasticInverse(x, block(), torch.zeros(3, dtype=F64), scale, **args)


def flow() -> M.Flow:  # D = 2
    return M.Flow(2, "realnvp", num_layers=1, hidden_dims=[8]).double()


def vae() -> M.FlowVAE:  # L = 2, D = 6
    return M.FlowVAE(2, data_dim=6, hidden_dims=[8]).double()


def nif_flow() -> M.NoisyInjectiveFlow:  # D = 3, d = 1
    return M.NoisyInjectiveFlow(
        3, 1, top_flow="realnvp", top_layers=1, top_hidden_dims=[8]
    ).double()


def nif_mixture_prior() -> M.NoisyInjectiveFlow:  # D = 3, d = 2, a 4-component mixture
    return M.NoisyInjectiveFlow(
        3, 2, top_flow="realnvp", top_layers=1, top_hidden_dims=[8], prior_components=4
    ).double()


def nif_prior_flow() -> M.NoisyInjectiveFlow:  # D = 3, d = 2, a RealNVP prior
    return M.NoisyInjectiveFlow(
        3, 2, top_flow="realnvp", top_layers=1, top_hidden_dims=[8], prior_flow="realnvp",
        prior_layers=1, prior_hidden_dims=[8],
    ).double()  # fmt: skip


def vq_flow() -> M.VQFlow:  # D = 3, K = 4
    return M.VQFlow(3, 4, num_layers=1, hidden_dims=[8], autoencoder_hidden_dims=[8]).double()


def vmonf() -> M.VariationalMixtureOfFlows:  # D = 2, K = 3
    return M.VariationalMixtureOfFlows(
        2, 3, num_layers=1, hidden_dims=[8], encoder_hidden_dims=[8]
    ).double()


def batched_linear() -> N.BatchedLinear:  # K = 3, 4 -> 2
    return N.BatchedLinear(3, 4, 2).double()


def batched_dense() -> N.BatchedDenseNN:  # K = 3, 2 -> (1, 1)
    return N.BatchedDenseNN(3, 2, [8]).double()


def batched_made() -> N.BatchedAutoRegressiveNN:  # K = 3, D = 4
    return N.BatchedAutoRegressiveNN(3, 4, [8]).double()


def classifier() -> N.MNISTClassifier:
    return N.MNISTClassifier(num_features=8).double()


def picnn() -> N.PICNN:  # D = 2, C = 3
    return N.PICNN(2, 3, [8]).double()


def quantizer() -> N.VectorQuantizer:  # K = 4, C = 2
    return N.VectorQuantizer(4, 2).double()


def training(module: nn.Module) -> nn.Module:
    return module.train()


# -- the table ------------------------------------------------------------------------------
P = pytest.param
V, TE = ValueError, TypeError

TRANSFORMS = [
    # AffineCoupling: D = 3, keeps 1
    P(
        lambda: T.AffineCoupling(0, DenseNN(1, [4], [2, 2])),
        V,
        int_at_least("split_dim", 1, 0),
        id="AffineCoupling-split_dim-zero",
    ),
    P(
        lambda: T.AffineCoupling(3, DenseNN(3, [4], [1, 1]), input_dim=3),
        V,
        r"split_dim: expected an int in \[1, 2\] \(input_dim = 3\), got 3",
        id="AffineCoupling-split_dim-too-large",
    ),
    P(
        lambda: T.AffineCoupling(1, DenseNN(1, [4], [2, 2]), sigma_min=-1.0),
        V,
        positive("sigma_min", -1.0),
        id="AffineCoupling-sigma_min-negative",
    ),
    P(
        OnTarget(affine, lambda t: t(f64(4, 5))),
        V,
        shape("u", "3", (4, 5)),
        id="AffineCoupling-event-dim",
    ),
    P(
        OnTarget(affine, lambda t: t.inv(f64(4, 2))),
        V,
        shape("x", "3", (4, 2)),
        id="AffineCoupling-inverse-event-dim",
    ),
    P(OnTarget(affine, lambda t: t(f32(4, 3))), V, dtype("u"), id="AffineCoupling-float32"),
    P(OnTarget(affine, lambda t: t(ints(4, 3))), TE, integer("u"), id="AffineCoupling-integer"),
    P(OnTarget(affine, lambda t: t.inv(meta(4, 3))), V, device("x"), id="AffineCoupling-device"),
    P(
        OnTarget(affine, lambda t: t.inv(nan(4, 3))),
        V,
        nonfinite("x"),
        id="AffineCoupling-nonfinite",
    ),
    # ConditionalAffineCoupling: D = 3, C = 2
    P(
        lambda: T.ConditionalAffineCoupling(0, ConditionalDenseNN(1, 2, [4], [2, 2])),
        V,
        int_at_least("split_dim", 1, 0),
        id="ConditionalAffineCoupling-split_dim-zero",
    ),
    P(
        lambda: T.ConditionalAffineCoupling(
            1, ConditionalDenseNN(1, 2, [4], [2, 2]), sigma_min=0.0
        ),
        V,
        positive("sigma_min", 0.0),
        id="ConditionalAffineCoupling-sigma_min-zero",
    ),
    P(
        OnTarget(conditional_affine, lambda t: t.condition(f64(4, 5))),
        V,
        shape("context", "2", (4, 5)),
        id="ConditionalAffineCoupling-context-event-dim",
    ),
    P(
        OnTarget(conditional_affine, lambda t: t.condition(f32(4, 2))),
        V,
        dtype("context"),
        id="ConditionalAffineCoupling-context-float32",
    ),
    P(
        OnTarget(conditional_affine, lambda t: t.condition(ints(4, 2))),
        TE,
        integer("context"),
        id="ConditionalAffineCoupling-context-integer",
    ),
    P(
        OnTarget(conditional_affine, lambda t: t.condition(meta(4, 2))),
        V,
        device("context"),
        id="ConditionalAffineCoupling-context-device",
    ),
    P(
        OnTarget(conditional_affine, lambda t: t.condition(inf(4, 2))),
        V,
        nonfinite("context", "inf"),
        id="ConditionalAffineCoupling-context-nonfinite",
    ),
    P(
        OnTarget(conditional_affine, lambda t: t.condition(f64(4, 2))(f64(4, 5))),
        V,
        shape("u", "3", (4, 5)),
        id="ConditionalAffineCoupling-event-dim",
    ),
    P(
        OnTarget(conditional_affine, lambda t: t.condition(f64(4, 2)).inv(f32(4, 3))),
        V,
        dtype("x"),
        id="ConditionalAffineCoupling-float32",
    ),
    # ConditionalConformalEmbedding: d = 2, D = 3, C = 4
    P(
        lambda: T.ConditionalConformalEmbedding(4, 3, DenseNN(4, [8], [1, 3, 9])),
        V,
        r"latent_dim: expected an int <= data_dim = 3 .*got 4",
        id="ConditionalConformalEmbedding-latent_dim-above-data_dim",
    ),
    P(
        lambda: T.ConditionalConformalEmbedding(0, 3, DenseNN(4, [8], [1, 3, 9])),
        V,
        int_at_least("latent_dim", 1, 0),
        id="ConditionalConformalEmbedding-latent_dim-zero",
    ),
    P(
        lambda: T.ConditionalConformalEmbedding(2, 3, DenseNN(4, [8], [1, 3, 9]), 0),
        V,
        int_at_least("num_reflections", 1, 0),
        id="ConditionalConformalEmbedding-num_reflections-zero",
    ),
    P(
        lambda: T.ConditionalConformalEmbedding(2, 3, DenseNN(4, [8], [1, 3, 6]), scale_min=-1.0),
        V,
        positive("scale_min", -1.0),
        id="ConditionalConformalEmbedding-scale_min-negative",
    ),
    P(
        lambda: T.ConditionalConformalEmbedding(2, 3, DenseNN(4, [8], [1, 3, 6]), context_dim=0),
        V,
        int_at_least("context_dim", 1, 0),
        id="ConditionalConformalEmbedding-context_dim-zero",
    ),
    P(
        OnTarget(conditional_conformal, lambda t: t.condition(f64(5, 3))),
        V,
        shape("context", "4", (5, 3)),
        id="ConditionalConformalEmbedding-context-event-dim",
    ),
    P(
        OnTarget(conditional_conformal, lambda t: t.condition(f32(5, 4))),
        V,
        dtype("context"),
        id="ConditionalConformalEmbedding-context-float32",
    ),
    P(
        OnTarget(conditional_conformal, lambda t: t.condition(ints(5, 4))),
        TE,
        integer("context"),
        id="ConditionalConformalEmbedding-context-integer",
    ),
    P(
        OnTarget(conditional_conformal, lambda t: t.condition(meta(5, 4))),
        V,
        device("context"),
        id="ConditionalConformalEmbedding-context-device",
    ),
    P(
        OnTarget(conditional_conformal, lambda t: t.condition(nan(5, 4))),
        V,
        nonfinite("context"),
        id="ConditionalConformalEmbedding-context-nonfinite",
    ),
    P(
        OnTarget(conditional_conformal, lambda t: t.condition(f64(5, 4))(f64(5, 3))),
        V,
        shape("z", "2", (5, 3)),
        id="ConditionalConformalEmbedding-event-dim",
    ),
    P(
        OnTarget(conditional_conformal, lambda t: t.condition(f64(5, 4)).inv(f64(5, 2))),
        V,
        shape("x", "3", (5, 2)),
        id="ConditionalConformalEmbedding-inverse-event-dim",
    ),
    P(
        OnTarget(conditional_conformal, lambda t: t.condition(f64(5, 4))(f32(5, 2))),
        V,
        dtype("z"),
        id="ConditionalConformalEmbedding-float32",
    ),
    P(
        OnTarget(conditional_conformal, lambda t: t.condition(f64(5, 4))(meta(5, 2))),
        V,
        device("z"),
        id="ConditionalConformalEmbedding-device",
    ),
    P(
        OnTarget(conditional_conformal, lambda t: t.condition(f64(5, 4)).inv(nan(5, 3))),
        V,
        nonfinite("x"),
        id="ConditionalConformalEmbedding-nonfinite",
    ),
    # ConditionalMaskedAutoregressive: D = 3, C = 2
    P(
        lambda: T.ConditionalMaskedAutoregressive(ConditionalAutoRegressiveNN(3, 2, [8]), -1.0),
        V,
        positive("sigma_min", -1.0),
        id="ConditionalMaskedAutoregressive-sigma_min-negative",
    ),
    P(
        lambda: T.ConditionalMaskedAutoregressive(DenseNN(3, [8])),
        TE,
        r"autoregressive_nn: expected a MADE network with a permutation attribute, got DenseNN",
        id="ConditionalMaskedAutoregressive-network-without-order",
    ),
    P(
        OnTarget(conditional_maf, lambda t: t.condition(f64(4, 3))),
        V,
        shape("context", "2", (4, 3)),
        id="ConditionalMaskedAutoregressive-context-event-dim",
    ),
    P(
        OnTarget(conditional_maf, lambda t: t.condition(f32(4, 2))),
        V,
        dtype("context"),
        id="ConditionalMaskedAutoregressive-context-float32",
    ),
    P(
        OnTarget(conditional_maf, lambda t: t.condition(ints(4, 2))),
        TE,
        integer("context"),
        id="ConditionalMaskedAutoregressive-context-integer",
    ),
    P(
        OnTarget(conditional_maf, lambda t: t.condition(meta(4, 2))),
        V,
        device("context"),
        id="ConditionalMaskedAutoregressive-context-device",
    ),
    P(
        OnTarget(conditional_maf, lambda t: t.condition(nan(4, 2))),
        V,
        nonfinite("context"),
        id="ConditionalMaskedAutoregressive-context-nonfinite",
    ),
    P(
        OnTarget(conditional_maf, lambda t: t.condition(f64(4, 2)).inv(f64(4, 5))),
        V,
        shape("x", "3", (4, 5)),
        id="ConditionalMaskedAutoregressive-event-dim",
    ),
    P(
        OnTarget(conditional_maf, lambda t: t.condition(f64(4, 2)).inv(f32(4, 3))),
        V,
        dtype("x"),
        id="ConditionalMaskedAutoregressive-float32",
    ),
    # ConditionalPCPMap: D = 2, C = 3
    P(
        lambda: T.ConditionalPCPMap(0, 3),
        V,
        int_at_least("input_dim", 1, 0),
        id="ConditionalPCPMap-input_dim-zero",
    ),
    P(
        lambda: T.ConditionalPCPMap(2, -1),
        V,
        int_at_least("context_dim", 1, -1),
        id="ConditionalPCPMap-context_dim-negative",
    ),
    P(
        lambda: T.ConditionalPCPMap(2, 3, N.PICNN(2, 3, [4]), min_curvature=0.0),
        V,
        positive("min_curvature", 0.0),
        id="ConditionalPCPMap-min_curvature-zero",
    ),
    P(
        lambda: T.ConditionalPCPMap(2, 3, N.PICNN(2, 3, [4]), tol=-1e-6),
        V,
        positive("tol", -1e-6),
        id="ConditionalPCPMap-tol-negative",
    ),
    P(
        lambda: T.ConditionalPCPMap(2, 3, N.PICNN(2, 3, [4]), max_iter=0),
        V,
        int_at_least("max_iter", 1, 0),
        id="ConditionalPCPMap-max_iter-zero",
    ),
    P(
        lambda: T.ConditionalPCPMap(2, 3, N.PICNN(3, 3, [4])),
        V,
        r"picnn: expected input_dim=2 and context_dim=3, got a PICNN with input_dim=3",
        id="ConditionalPCPMap-picnn-mismatch",
    ),
    P(
        lambda: T.ConditionalPCPMap(2, 3, DenseNN(2, [4])),
        TE,
        r"picnn: expected a pyro_manifold\.nn\.PICNN, got DenseNN",
        id="ConditionalPCPMap-picnn-type",
    ),
    P(
        OnTarget(pcp, lambda t: t.condition(f64(4, 2))),
        V,
        shape("context", "3", (4, 2)),
        id="ConditionalPCPMap-context-event-dim",
    ),
    P(
        OnTarget(pcp, lambda t: t.condition(f32(4, 3))),
        V,
        dtype("context"),
        id="ConditionalPCPMap-context-float32",
    ),
    P(
        OnTarget(pcp, lambda t: t.condition(ints(4, 3))),
        TE,
        integer("context"),
        id="ConditionalPCPMap-context-integer",
    ),
    P(
        OnTarget(pcp, lambda t: t.condition(meta(4, 3))),
        V,
        device("context"),
        id="ConditionalPCPMap-context-device",
    ),
    P(
        OnTarget(pcp, lambda t: t.condition(nan(4, 3))),
        V,
        nonfinite("context"),
        id="ConditionalPCPMap-context-nonfinite",
    ),
    P(
        OnTarget(pcp, lambda t: t.potential(f64(4, 3), f64(4, 3))),
        V,
        shape("z", "2", (4, 3)),
        id="ConditionalPCPMap-potential-event-dim",
    ),
    # ConditionedPCPMap: D = 2, context (4, 3)
    P(
        lambda: T.ConditionedPCPMap(N.PICNN(2, 3, [4]), f64(4, 3)),
        TE,
        r"module: expected a ConditionalPCPMap, got PICNN",
        id="ConditionedPCPMap-module-type",
    ),
    P(
        OnTarget(pcp, lambda t: T.ConditionedPCPMap(t, f64(4, 5))),
        V,
        shape("context", "3", (4, 5)),
        id="ConditionedPCPMap-context-event-dim",
    ),
    P(
        OnTarget(conditioned_pcp, lambda t: t(f64(4, 3))),
        V,
        shape("z", "2", (4, 3)),
        id="ConditionedPCPMap-event-dim",
    ),
    P(
        OnTarget(conditioned_pcp, lambda t: t.inv(f64(4, 1))),
        V,
        shape("y", "2", (4, 1)),
        id="ConditionedPCPMap-inverse-event-dim",
    ),
    P(
        OnTarget(conditioned_pcp, lambda t: t(f64(5, 2))),
        V,
        r"z: expected a batch shape that broadcasts with the context's \(4,\), got \(5,\)",
        id="ConditionedPCPMap-batch-shape",
    ),
    P(
        OnTarget(conditioned_pcp, lambda t: t(f32(4, 2))),
        V,
        dtype("z"),
        id="ConditionedPCPMap-float32",
    ),
    P(
        OnTarget(conditioned_pcp, lambda t: t.inv(ints(4, 2))),
        TE,
        integer("y"),
        id="ConditionedPCPMap-integer",
    ),
    P(
        OnTarget(conditioned_pcp, lambda t: t(meta(4, 2))),
        V,
        device("z"),
        id="ConditionedPCPMap-device",
    ),
    P(
        OnTarget(conditioned_pcp, lambda t: t(nan(4, 2))),
        V,
        nonfinite("z"),
        id="ConditionedPCPMap-nonfinite",
    ),
    P(
        OnTarget(conditioned_pcp, lambda t: t.inv(inf(4, 2))),
        V,
        nonfinite("y", "inf"),
        id="ConditionedPCPMap-inverse-nonfinite",
    ),
    # ConformalEmbedding: d = 2, D = 3
    P(
        lambda: T.ConformalEmbedding(4, 3),
        V,
        r"latent_dim: expected an int <= data_dim = 3 .*got 4",
        id="ConformalEmbedding-latent_dim-above-data_dim",
    ),
    P(
        lambda: T.ConformalEmbedding(2, 0),
        V,
        int_at_least("data_dim", 1, 0),
        id="ConformalEmbedding-data_dim-zero",
    ),
    P(
        lambda: T.ConformalEmbedding(2, 3, num_reflections=0),
        V,
        int_at_least("num_reflections", 1, 0),
        id="ConformalEmbedding-num_reflections-zero",
    ),
    P(
        lambda: T.ConformalEmbedding(2, 3, scale_min=0.0),
        V,
        positive("scale_min", 0.0),
        id="ConformalEmbedding-scale_min-zero",
    ),
    P(
        OnTarget(conformal, lambda t: t(f64(4, 3))),
        V,
        shape("z", "2", (4, 3)),
        id="ConformalEmbedding-event-dim",
    ),
    P(
        OnTarget(conformal, lambda t: t.inv(f64(4, 2))),
        V,
        shape("x", "3", (4, 2)),
        id="ConformalEmbedding-inverse-event-dim",
    ),
    P(OnTarget(conformal, lambda t: t(f32(4, 2))), V, dtype("z"), id="ConformalEmbedding-float32"),
    P(
        OnTarget(conformal, lambda t: t(ints(4, 2))),
        TE,
        integer("z"),
        id="ConformalEmbedding-integer",
    ),
    P(
        OnTarget(conformal, lambda t: t.inv(meta(4, 3))),
        V,
        device("x"),
        id="ConformalEmbedding-device",
    ),
    P(
        OnTarget(conformal, lambda t: t(nan(4, 2))),
        V,
        nonfinite("z"),
        id="ConformalEmbedding-nonfinite",
    ),
    # MaskedAutoregressive: D = 3
    P(
        lambda: T.MaskedAutoregressive(AutoRegressiveNN(3, [8]), sigma_min=0.0),
        V,
        positive("sigma_min", 0.0),
        id="MaskedAutoregressive-sigma_min-zero",
    ),
    P(
        lambda: T.MaskedAutoregressive(DenseNN(3, [8])),
        TE,
        r"autoregressive_nn: expected a MADE network with a permutation attribute, got DenseNN",
        id="MaskedAutoregressive-network-without-order",
    ),
    P(
        OnTarget(maf, lambda t: t.inv(f64(4, 2))),
        V,
        shape("x", "3", (4, 2)),
        id="MaskedAutoregressive-event-dim",
    ),
    P(
        OnTarget(maf, lambda t: t(f64(4, 4))),
        V,
        shape("u", "3", (4, 4)),
        id="MaskedAutoregressive-forward-event-dim",
    ),
    P(OnTarget(maf, lambda t: t.inv(f32(4, 3))), V, dtype("x"), id="MaskedAutoregressive-float32"),
    P(
        OnTarget(maf, lambda t: t.inv(ints(4, 3))),
        TE,
        integer("x"),
        id="MaskedAutoregressive-integer",
    ),
    P(OnTarget(maf, lambda t: t.inv(meta(4, 3))), V, device("x"), id="MaskedAutoregressive-device"),
    P(
        OnTarget(maf, lambda t: t(nan(4, 3))),
        V,
        nonfinite("u"),
        id="MaskedAutoregressive-nonfinite",
    ),
    # Reverse: parameter-free, so no dtype or device to match
    P(
        OnTarget(T.Reverse, lambda t: t(torch.tensor(1.0))),
        V,
        r"u: expected at least 1 dims, got .*shape \(\)",
        id="Reverse-event-dim",
    ),
    P(OnTarget(T.Reverse, lambda t: t.inv(ints(4, 3))), TE, integer("x"), id="Reverse-integer"),
    P(OnTarget(T.Reverse, lambda t: t(nan(4, 3))), V, nonfinite("u"), id="Reverse-nonfinite"),
    # builders
    P(
        lambda: T.affine_coupling(1),
        V,
        int_at_least("input_dim", 2, 1),
        id="affine_coupling-input_dim-one",
    ),
    P(
        lambda: T.affine_coupling(3, [8, 0]),
        V,
        int_at_least("hidden_dims", 1, 0),
        id="affine_coupling-hidden_dims-zero",
    ),
    P(
        lambda: T.affine_coupling(3, 8),
        TE,
        widths("hidden_dims", 8),
        id="affine_coupling-hidden_dims-type",
    ),
    P(
        lambda: T.affine_coupling(3, sigma_min=0.0),
        V,
        positive("sigma_min", 0.0),
        id="affine_coupling-sigma_min-zero",
    ),
    P(
        lambda: T.conditional_affine_coupling(3, 0),
        V,
        int_at_least("context_dim", 1, 0),
        id="conditional_affine_coupling-context_dim-zero",
    ),
    P(
        lambda: T.conditional_affine_coupling(3, 2, [-4]),
        V,
        int_at_least("hidden_dims", 1, -4),
        id="conditional_affine_coupling-hidden_dims-negative",
    ),
    P(
        lambda: T.conditional_conformal_embedding(2, 3, 0),
        V,
        int_at_least("context_dim", 1, 0),
        id="conditional_conformal_embedding-context_dim-zero",
    ),
    P(
        lambda: T.conditional_conformal_embedding(2, 3, 2, [0]),
        V,
        int_at_least("hidden_dims", 1, 0),
        id="conditional_conformal_embedding-hidden_dims-zero",
    ),
    P(
        lambda: T.conditional_conformal_embedding(3, 2, 2),
        V,
        r"latent_dim: expected an int <= data_dim = 2 .*got 3",
        id="conditional_conformal_embedding-latent_dim-above-data_dim",
    ),
    P(
        lambda: T.conditional_masked_autoregressive(1, 2),
        V,
        int_at_least("input_dim", 2, 1),
        id="conditional_masked_autoregressive-input_dim-one",
    ),
    P(
        lambda: T.conditional_masked_autoregressive(3, 2, [2]),
        V,
        int_at_least("hidden_dims", 3, 2),
        id="conditional_masked_autoregressive-hidden_dims-below-input_dim",
    ),
    P(
        lambda: T.conditional_pcp_map(2, 3, [0]),
        V,
        int_at_least("hidden_dims", 1, 0),
        id="conditional_pcp_map-hidden_dims-zero",
    ),
    P(
        lambda: T.conditional_pcp_map(2, 3, 8),
        TE,
        widths("hidden_dims", 8),
        id="conditional_pcp_map-hidden_dims-type",
    ),
    P(
        lambda: T.conditional_pcp_map(2, 3, max_iter=0),
        V,
        int_at_least("max_iter", 1, 0),
        id="conditional_pcp_map-max_iter-zero",
    ),
    P(
        lambda: T.conformal_embedding(3, 2),
        V,
        r"latent_dim: expected an int <= data_dim = 2 .*got 3",
        id="conformal_embedding-latent_dim-above-data_dim",
    ),
    P(
        lambda: T.conformal_embedding(1, 3, num_reflections=-1),
        V,
        int_at_least("num_reflections", 1, -1),
        id="conformal_embedding-num_reflections-negative",
    ),
    P(
        lambda: T.masked_autoregressive(1),
        V,
        int_at_least("input_dim", 2, 1),
        id="masked_autoregressive-input_dim-one",
    ),
    P(
        lambda: T.masked_autoregressive(3, [2]),
        V,
        int_at_least("hidden_dims", 3, 2),
        id="masked_autoregressive-hidden_dims-below-input_dim",
    ),
    P(
        lambda: T.masked_autoregressive(3, (8.0,)),
        TE,
        r"hidden_dims: expected an int >= 3, got float 8\.0",
        id="masked_autoregressive-hidden_dims-float",
    ),
]

DISTRIBUTIONS = [
    # BlockLinear: d = 2, D = 3
    P(
        lambda: D.BlockLinear(f64(3, 2)),
        V,
        r"weight: expected at least 3 dims, got .*shape \(3, 2\)",
        id="BlockLinear-weight-dims",
    ),
    P(
        lambda: D.BlockLinear(f64(1, 2, 3)),
        V,
        r"weight: an injective map needs m >= k .*got \(2, 3\)",
        id="BlockLinear-weight-not-injective",
    ),
    P(lambda: D.BlockLinear(ints(1, 3, 2)), TE, integer("weight"), id="BlockLinear-weight-integer"),
    P(
        lambda: D.BlockLinear(f64(2, 3, 1)),
        V,
        r"weight: a dense map has one block, got 2",
        id="BlockLinear-dense-blocks",
    ),
    P(
        lambda: D.BlockLinear(f64(4, 12, 1), (3, 4, 4), 0),
        V,
        int_at_least("factor", 1, 0),
        id="BlockLinear-factor-zero",
    ),
    P(
        lambda: D.BlockLinear(f64(4, 12, 1), (3, 4, 4), 3),
        V,
        r"factor: expected a divisor of H=4 and W=4, got 3",
        id="BlockLinear-factor-not-divisor",
    ),
    P(
        OnTarget(block, lambda a: a.matvec(f64(4, 3))),
        V,
        shape("z", "2", (4, 3)),
        id="BlockLinear-event-dim",
    ),
    P(
        OnTarget(block, lambda a: a.rmatvec(f64(4, 2))),
        V,
        shape("x", "3", (4, 2)),
        id="BlockLinear-rmatvec-event-dim",
    ),
    P(OnTarget(block, lambda a: a.matvec(f32(4, 2))), V, dtype("z"), id="BlockLinear-float32"),
    P(OnTarget(block, lambda a: a.rmatvec(ints(4, 3))), TE, integer("x"), id="BlockLinear-integer"),
    P(OnTarget(block, lambda a: a.matvec(meta(4, 2))), V, device("z"), id="BlockLinear-device"),
    P(
        OnTarget(block, lambda a: a.gram(f64(2))),
        V,
        shape("precision", "3", (2,)),
        id="BlockLinear-gram-event-dim",
    ),
    # ChartMixture: D = 3, d = 2, K = 4, m = 2
    P(
        lambda: chart_mixture(num_overlap=5),
        V,
        r"num_overlap: expected an int <= the number of charts K = 4, got 5",
        id="ChartMixture-num_overlap-above-K",
    ),
    P(
        lambda: chart_mixture(num_overlap=0),
        V,
        int_at_least("num_overlap", 1, 0),
        id="ChartMixture-num_overlap-zero",
    ),
    P(
        lambda: chart_mixture(latent_dim=4),
        V,
        r"latent_dim: expected an int <= data_dim = 3, got 4",
        id="ChartMixture-latent_dim-above-data_dim",
    ),
    P(
        lambda: chart_mixture(data_dim=0),
        V,
        int_at_least("data_dim", 1, 0),
        id="ChartMixture-data_dim-zero",
    ),
    P(
        lambda: chart_mixture(embedding=None),
        V,
        r"embedding: expected a dimension-raising transform from R\^2 to R\^3, got None",
        id="ChartMixture-embedding-missing",
    ),
    P(
        lambda: chart_mixture(epsilon=-0.1),
        V,
        nonnegative("epsilon", -0.1),
        id="ChartMixture-epsilon-negative",
    ),
    P(
        lambda: chart_mixture(chart_logits=f64(5)),
        V,
        shape("chart_logits", "4", (5,)),
        id="ChartMixture-chart_logits-shape",
    ),
    P(
        lambda: chart_mixture(chart_logits=torch.zeros(4)),
        V,
        dtype("chart_logits"),
        id="ChartMixture-chart_logits-float32",
    ),
    P(
        OnTarget(chart_mixture, lambda p: p.log_prob(f64(5, 2))),
        V,
        shape("value", "3", (5, 2)),
        id="ChartMixture-event-dim",
    ),
    P(
        OnTarget(chart_mixture, lambda p: p.log_prob(f32(5, 3))),
        V,
        dtype("value"),
        id="ChartMixture-float32",
    ),
    P(
        OnTarget(chart_mixture, lambda p: p.chart_posterior(ints(5, 3))),
        TE,
        integer("x"),
        id="ChartMixture-integer",
    ),
    P(
        OnTarget(chart_mixture, lambda p: p.log_prob(meta(5, 3))),
        V,
        device("value"),
        id="ChartMixture-device",
    ),
    P(
        OnTarget(chart_mixture, lambda p: p.log_prob(nan(5, 3))),
        V,
        nonfinite("value"),
        id="ChartMixture-nonfinite",
    ),
    P(
        OnTarget(chart_mixture, lambda p: p.encode(f64(0, 3))),
        V,
        empty("x", (0, 3)),
        id="ChartMixture-empty",
    ),
    P(
        OnTarget(chart_mixture, lambda p: p.region_mask(f64(5, 2))),
        V,
        shape("x", "3", (5, 2)),
        id="ChartMixture-region_mask-event-dim",
    ),
    P(
        OnTarget(chart_mixture, lambda p: p.sample_with_charts((5,), True, max_draws=0)),
        V,
        int_at_least("max_draws", 1, 0),
        id="ChartMixture-max_draws-zero",
    ),
    # GaussianMixture: batch (4,), K = 3, d = 2
    P(
        lambda: gaussian_mixture(logits=f64(4, 5)),
        V,
        shape("logits", "3", (4, 5)),
        id="GaussianMixture-logits-shape",
    ),
    P(
        lambda: gaussian_mixture(scale_tril=f64(3, 2, 3)),
        V,
        shape("scale_tril", "3, 2, 2", (3, 2, 3)),
        id="GaussianMixture-scale_tril-shape",
    ),
    P(
        lambda: gaussian_mixture(loc=f64(2)),
        V,
        r"loc: expected at least 2 dims",
        id="GaussianMixture-loc-dims",
    ),
    P(
        lambda: gaussian_mixture(logits=f32(4, 3)),
        V,
        dtype("logits"),
        id="GaussianMixture-logits-float32",
    ),
    P(
        lambda: gaussian_mixture(loc=ints(4, 3, 2)),
        TE,
        integer("loc"),
        id="GaussianMixture-loc-integer",
    ),
    P(
        lambda: gaussian_mixture(scale_tril=meta(3, 2, 2)),
        V,
        r"scale_tril: expected dtype torch\.float64 on device cpu.*got .* on device meta",
        id="GaussianMixture-scale_tril-device",
    ),
    P(
        lambda: gaussian_mixture(logits=f64(5, 3)),
        V,
        r"loc: expected a batch shape that broadcasts with logits's \(5,\), got \(4,\)",
        id="GaussianMixture-batch-shapes",
    ),
    P(
        lambda: gaussian_mixture(scale_tril=-torch.eye(2, dtype=F64).expand(3, 2, 2)),
        V,
        r"Expected parameter scale_tril .* to satisfy the constraint .* but found invalid values",
        id="GaussianMixture-scale_tril-support",
    ),
    P(
        lambda: gaussian_mixture().log_prob(f64(5, 3)),
        V,
        shape("value", "2", (5, 3)),
        id="GaussianMixture-log_prob-event-dim",
    ),
    P(
        lambda: gaussian_mixture().log_prob(f32(5, 2)),
        V,
        dtype("value"),
        id="GaussianMixture-log_prob-float32",
    ),
    P(
        lambda: gaussian_mixture().log_prob(meta(5, 2)),
        V,
        device("value"),
        id="GaussianMixture-log_prob-device",
    ),
    P(
        lambda: gaussian_mixture().log_prob(nan(5, 2)),
        V,
        nonfinite("value"),
        id="GaussianMixture-log_prob-nonfinite",
    ),
    # GaussianNIF: d = 2, D = 5
    P(
        lambda: D.GaussianNIF(5, 5),
        V,
        r"latent_dim: expected less than data_dim=5 .*got 5",
        id="GaussianNIF-latent_dim-not-below-data_dim",
    ),
    P(
        lambda: D.GaussianNIF(0, 5),
        V,
        int_at_least("latent_dim", 1, 0),
        id="GaussianNIF-latent_dim-zero",
    ),
    P(
        lambda: D.GaussianNIF(2, 5, init_noise_scale=-0.1),
        V,
        positive("init_noise_scale", -0.1),
        id="GaussianNIF-init_noise_scale-negative",
    ),
    P(
        lambda: D.GaussianNIF(2, 5, min_noise_scale=0.0),
        V,
        positive("min_noise_scale", 0.0),
        id="GaussianNIF-min_noise_scale-zero",
    ),
    P(
        lambda: D.GaussianNIF(2, 5, init_noise_scale=1e-3, min_noise_scale=1e-2),
        V,
        r"init_noise_scale: expected more than min_noise_scale=0\.01, got 0\.001",
        id="GaussianNIF-init_noise_scale-below-floor",
    ),
    P(
        lambda: D.GaussianNIF(2, 12, image_shape=(3, 2, 2), factor=0),
        V,
        int_at_least("factor", 1, 0),
        id="GaussianNIF-factor-zero",
    ),
    P(
        lambda: D.GaussianNIF(2, 5, weight=f64(5, 3)),
        V,
        shape("weight", "5, 2", (5, 3)),
        id="GaussianNIF-weight-shape",
    ),
    P(
        lambda: D.GaussianNIF(2, 5, weight=ints(5, 2)),
        TE,
        integer("weight"),
        id="GaussianNIF-weight-integer",
    ),
    P(
        OnTarget(nif, lambda t: t.stochastic_inverse(f64(4, 4))),
        V,
        shape("x", "5", (4, 4)),
        id="GaussianNIF-event-dim",
    ),
    P(
        OnTarget(nif, lambda t: t.stochastic_inverse(f32(4, 5))),
        V,
        dtype("x"),
        id="GaussianNIF-float32",
    ),
    P(
        OnTarget(nif, lambda t: t.log_manifold_term(ints(4, 5))),
        TE,
        integer("x"),
        id="GaussianNIF-integer",
    ),
    P(
        OnTarget(nif, lambda t: t.stochastic_inverse(meta(4, 5))),
        V,
        device("x"),
        id="GaussianNIF-device",
    ),
    P(
        OnTarget(nif, lambda t: t.log_manifold_term(nan(4, 5))),
        V,
        nonfinite("x"),
        id="GaussianNIF-nonfinite",
    ),
    P(
        OnTarget(nif, lambda t: t.stochastic_inverse(f64(0, 5))),
        V,
        empty("x", (0, 5)),
        id="GaussianNIF-empty",
    ),
    P(
        OnTarget(nif, lambda t: t.likelihood(f64(4, 3))),
        V,
        shape("z", "2", (4, 3)),
        id="GaussianNIF-likelihood-event-dim",
    ),
    P(
        OnTarget(nif, lambda t: t.likelihood(f32(4, 2))),
        V,
        dtype("z"),
        id="GaussianNIF-likelihood-float32",
    ),
    P(
        OnTarget(nif, lambda t: t.likelihood(f64(4, 2), s=-1.0)),
        V,
        nonnegative("s", -1.0),
        id="GaussianNIF-likelihood-s-negative",
    ),
    P(
        OnTarget(nif, lambda t: t.marginal(f64(3))),
        V,
        shape("loc", "2", (3,)),
        id="GaussianNIF-marginal-loc-event-dim",
    ),
    P(
        OnTarget(nif, lambda t: t.marginal(f64(2), f64(2, 3))),
        V,
        r"scale_tril: expected shape \(\*, 2, 2\)",
        id="GaussianNIF-marginal-scale_tril-shape",
    ),
    P(
        OnTarget(nif, lambda t: t.marginal(f32(2))),
        V,
        dtype("loc"),
        id="GaussianNIF-marginal-float32",
    ),
    # MixtureOfFlows: K = 3, D = 2
    P(
        lambda: D.MixtureOfFlows(torch.tensor(0.0, dtype=F64), dist.Normal(f64(3), 1.0)),
        V,
        r"mixture_logits: expected at least 1 dims, got .*shape \(\)",
        id="MixtureOfFlows-mixture_logits-dims",
    ),
    P(
        lambda: D.MixtureOfFlows(ints(3), dist.Normal(f64(3), 1.0)),
        TE,
        integer("mixture_logits"),
        id="MixtureOfFlows-mixture_logits-integer",
    ),
    P(
        lambda: D.MixtureOfFlows(nan(3), dist.Normal(f64(3), 1.0)),
        V,
        nonfinite("mixture_logits"),
        id="MixtureOfFlows-mixture_logits-nonfinite",
    ),
    P(
        lambda: D.MixtureOfFlows(f64(3), dist.Normal(f64(4), 1.0)),
        V,
        r"component_distribution: expected batch shape \(\*, 3\) .*got batch shape \(4,\)",
        id="MixtureOfFlows-components-mismatch",
    ),
    P(
        lambda: D.MixtureOfFlows(f64(3), nn.Linear(2, 3)),
        TE,
        r"component_distribution: expected a torch Distribution .*got Linear",
        id="MixtureOfFlows-components-type",
    ),
    P(
        lambda: D.MixtureOfFlows(f64(5, 3), dist.Normal(f64(4, 3), 1.0)),
        V,
        r"mixture_logits: batch shape \(5,\) does not broadcast with the components' \(4,\)",
        id="MixtureOfFlows-batch-shapes",
    ),
    P(
        OnTarget(mixture, lambda p: p.log_prob(f64(4, 5))),
        V,
        shape("value", "2", (4, 5)),
        id="MixtureOfFlows-event-dim",
    ),
    P(
        OnTarget(mixture, lambda p: p.log_prob(f32(4, 2))),
        V,
        dtype("value"),
        id="MixtureOfFlows-float32",
    ),
    P(
        OnTarget(mixture, lambda p: p.posterior_log_prob(ints(4, 2))),
        TE,
        integer("value"),
        id="MixtureOfFlows-integer",
    ),
    P(
        OnTarget(mixture, lambda p: p.log_prob(meta(4, 2))),
        V,
        device("value"),
        id="MixtureOfFlows-device",
    ),
    P(OnTarget(mixture, lambda p: p.log_prob(nan(4, 2))), V, SUPPORT, id="MixtureOfFlows-support"),
    P(
        lambda: D.MixtureOfFlows(
            torch.zeros(2, dtype=F64),
            dist.Exponential(torch.ones(2, dtype=F64)),
            validate_args=True,
        ).log_prob(-torch.ones(3, dtype=F64)),
        V,
        SUPPORT + r":\ntensor\(\[-1\., -1\., -1\.\]",
        id="MixtureOfFlows-support-positive",
    ),
    # SelectedComponent: K = 3
    P(
        lambda: D.SelectedComponent(dist.Normal(0.0, 1.0), torch.tensor([0])),
        TE,
        r"mixture: expected a MixtureOfFlows, got Normal",
        id="SelectedComponent-mixture-type",
    ),
    P(
        OnTarget(mixture, lambda p: p.component(torch.tensor([0.0, 1.0]))),
        TE,
        r"k: expected an integer tensor of component indices, got tensor of dtype torch\.float32",
        id="SelectedComponent-k-float",
    ),
    P(
        OnTarget(mixture, lambda p: p.component(torch.tensor([0, 3]))),
        V,
        r"k: expected component indices in \[0, 2\], got values in \[0, 3\]",
        id="SelectedComponent-k-out-of-range",
    ),
    P(
        OnTarget(mixture, lambda p: p.component(torch.tensor([0, 1], device="meta"))),
        V,
        r"k: expected a tensor on device cpu, got .*device meta",
        id="SelectedComponent-k-device",
    ),
    P(
        lambda: D.MixtureOfFlows(f64(2, 3), dist.Normal(f64(2, 3), 1.0)).component(ints(5)),
        V,
        r"k: expected a shape that broadcasts with the mixture's batch shape \(2,\), got \(5,\)",
        id="SelectedComponent-k-shape",
    ),
    P(
        OnTarget(mixture, lambda p: p.component(ints(4)).log_prob(f64(4, 3))),
        V,
        shape("value", "2", (4, 3)),
        id="SelectedComponent-event-dim",
    ),
    P(
        OnTarget(mixture, lambda p: p.component(ints(4)).log_prob(f32(4, 2))),
        V,
        dtype("value"),
        id="SelectedComponent-float32",
    ),
    # NoisyInjective: d = 2, D = 3
    P(
        lambda: noisy(latent=f64(4, 3)),
        V,
        shape("latent", "2", (4, 3)),
        id="NoisyInjective-latent-event-dim",
    ),
    P(lambda: noisy(latent=f32(4, 2)), V, dtype("latent"), id="NoisyInjective-latent-float32"),
    P(lambda: noisy(latent=ints(4, 2)), TE, integer("latent"), id="NoisyInjective-latent-integer"),
    P(lambda: noisy(latent=meta(4, 2)), V, device("latent"), id="NoisyInjective-latent-device"),
    P(
        lambda: noisy(latent=nan(4, 2)),
        V,
        r"Expected parameter latent .* to satisfy the constraint .* but found invalid values",
        id="NoisyInjective-latent-support",
    ),
    P(
        lambda: noisy(latent=f64(0, 2)),
        V,
        empty("latent", (0, 2)),
        id="NoisyInjective-latent-empty",
    ),
    P(
        lambda: noisy(noise_scale=-torch.ones(3, dtype=F64)),
        V,
        r"noise_scale: expected positive values, got min -1",
        id="NoisyInjective-noise_scale-negative",
    ),
    P(
        lambda: noisy(noise_scale=torch.ones(3)),
        V,
        dtype("noise_scale"),
        id="NoisyInjective-noise_scale-float32",
    ),
    P(lambda: noisy(bias=f64(4)), V, shape("bias", "3", (4,)), id="NoisyInjective-bias-shape"),
    P(
        lambda: noisy(noise_multiplier=-1.0),
        V,
        nonnegative("noise_multiplier", -1.0),
        id="NoisyInjective-noise_multiplier-negative",
    ),
    P(
        lambda: D.NoisyInjective(f64(4, 2), f64(3, 2), f64(3), f64(3).exp()),
        TE,
        r"linear: expected a BlockLinear, got Tensor",
        id="NoisyInjective-linear-type",
    ),
    P(
        OnTarget(noisy, lambda p: p.log_prob(f64(4, 2))),
        V,
        shape("value", "3", (4, 2)),
        id="NoisyInjective-event-dim",
    ),
    P(
        OnTarget(noisy, lambda p: p.log_prob(f32(4, 3))),
        V,
        dtype("value"),
        id="NoisyInjective-float32",
    ),
    P(
        OnTarget(noisy, lambda p: p.log_prob(ints(4, 3))),
        TE,
        integer("value"),
        id="NoisyInjective-integer",
    ),
    P(
        OnTarget(noisy, lambda p: p.log_prob(meta(4, 3))),
        V,
        device("value"),
        id="NoisyInjective-device",
    ),
    P(OnTarget(noisy, lambda p: p.log_prob(nan(4, 3))), V, SUPPORT, id="NoisyInjective-support"),
    # StochasticInverse: d = 2, D = 3
    P(lambda: inverse(x=f64(4, 2)), V, shape("x", "3", (4, 2)), id="StochasticInverse-x-event-dim"),
    P(lambda: inverse(x=f32(4, 3)), V, dtype("x"), id="StochasticInverse-x-float32"),
    P(lambda: inverse(x=ints(4, 3)), TE, integer("x"), id="StochasticInverse-x-integer"),
    P(lambda: inverse(x=meta(4, 3)), V, device("x"), id="StochasticInverse-x-device"),
    P(lambda: inverse(x=nan(4, 3)), V, nonfinite("x"), id="StochasticInverse-x-nonfinite"),
    P(lambda: inverse(x=f64(0, 3)), V, empty("x", (0, 3)), id="StochasticInverse-x-empty"),
    P(
        lambda: inverse(noise_scale=torch.zeros(3, dtype=F64)),
        V,
        r"noise_scale: expected positive values, got min 0",
        id="StochasticInverse-noise_scale-zero",
    ),
    P(
        OnTarget(inverse, lambda q: q.log_prob(f64(4, 3))),
        V,
        shape("value", "2", (4, 3)),
        id="StochasticInverse-event-dim",
    ),
    P(
        OnTarget(inverse, lambda q: q.log_prob(f32(4, 2))),
        V,
        dtype("value"),
        id="StochasticInverse-float32",
    ),
    P(
        OnTarget(inverse, lambda q: q.log_prob(meta(4, 2))),
        V,
        device("value"),
        id="StochasticInverse-device",
    ),
    P(
        OnTarget(inverse, lambda q: q.log_prob(nan(4, 2))),
        V,
        SUPPORT,
        id="StochasticInverse-support",
    ),
    # log_manifold_term: d = 2, D = 3
    P(
        lambda: D.log_manifold_term(f64(4, 2), block(), f64(3), f64(3).exp()),
        V,
        shape("x", "3", (4, 2)),
        id="log_manifold_term-event-dim",
    ),
    P(
        lambda: D.log_manifold_term(f32(4, 3), block(), f64(3), f64(3).exp()),
        V,
        dtype("x"),
        id="log_manifold_term-float32",
    ),
    P(
        lambda: D.log_manifold_term(ints(4, 3), block(), f64(3), f64(3).exp()),
        TE,
        integer("x"),
        id="log_manifold_term-integer",
    ),
    P(
        lambda: D.log_manifold_term(meta(4, 3), block(), f64(3), f64(3).exp()),
        V,
        device("x"),
        id="log_manifold_term-device",
    ),
    P(
        lambda: D.log_manifold_term(nan(4, 3), block(), f64(3), f64(3).exp()),
        V,
        nonfinite("x"),
        id="log_manifold_term-nonfinite",
    ),
    P(
        lambda: D.log_manifold_term(f64(0, 3), block(), f64(3), f64(3).exp()),
        V,
        empty("x", (0, 3)),
        id="log_manifold_term-empty",
    ),
    P(
        lambda: D.log_manifold_term(f64(4, 3), block(), f64(3), -f64(3).exp()),
        V,
        r"noise_scale: expected positive values, got min -",
        id="log_manifold_term-noise_scale-negative",
    ),
]

MODELS = [
    # Flow: D = 2
    P(lambda: M.Flow(1), V, int_at_least("data_dim", 2, 1), id="Flow-data_dim-one"),
    P(lambda: M.Flow(2, "glow"), V, choice("flow", "glow"), id="Flow-flow-unknown"),
    P(
        lambda: M.Flow(2, num_layers=0),
        V,
        int_at_least("num_layers", 1, 0),
        id="Flow-num_layers-zero",
    ),
    P(
        lambda: M.Flow(2, "spline_coupling", hidden_dims=[0]),
        V,
        int_at_least("hidden_dims", 1, 0),
        id="Flow-hidden_dims-zero",
    ),
    P(
        lambda: M.Flow(2, "realnvp", hidden_dims=16),
        TE,
        widths("hidden_dims", 16),
        id="Flow-hidden_dims-type",
    ),
    P(
        lambda: M.Flow(2, "spline_coupling", num_bins=0),
        V,
        int_at_least("num_bins", 2, 0),
        id="Flow-num_bins-zero",
    ),
    P(
        OnTarget(flow, lambda m: m.log_prob(f64(4, 3))),
        V,
        shape("x", "2", (4, 3)),
        id="Flow-event-dim",
    ),
    P(
        OnTarget(flow, lambda m: m.log_prob(f64(2))),
        V,
        r"x: expected shape \(\*, 2\) \(at least 2 dims\), got .*shape \(2,\)",
        id="Flow-batch-dim",
    ),
    P(OnTarget(flow, lambda m: m.log_prob(f32(4, 2))), V, dtype("x"), id="Flow-float32"),
    P(OnTarget(flow, lambda m: m.model(ints(4, 2))), TE, integer("x"), id="Flow-integer"),
    P(OnTarget(flow, lambda m: m.log_prob(meta(4, 2))), V, device("x"), id="Flow-device"),
    P(
        OnTarget(flow, lambda m: m.log_prob(inf(4, 2))),
        V,
        nonfinite("x", "inf"),
        id="Flow-nonfinite",
    ),
    P(OnTarget(flow, lambda m: m.model(f64(0, 2))), V, empty("x", (0, 2)), id="Flow-empty"),
    P(
        OnTarget(flow, lambda m: m.sample(0)),
        V,
        int_at_least("num_samples", 1, 0),
        id="Flow-num_samples-zero",
    ),
    # FlowVAE: L = 2, D = 6
    P(lambda: M.FlowVAE(0, 6), V, int_at_least("latent_dim", 1, 0), id="FlowVAE-latent_dim-zero"),
    P(
        lambda: M.FlowVAE(2, 6, "iaf", num_flows=0),
        V,
        int_at_least("num_flows", 1, 0),
        id="FlowVAE-num_flows-zero",
    ),
    P(
        lambda: M.FlowVAE(2, 6, hidden_dims=[8, 0]),
        V,
        int_at_least("hidden_dims", 1, 0),
        id="FlowVAE-hidden_dims-zero",
    ),
    P(
        lambda: M.FlowVAE(2, 6, hidden_dims=8),
        TE,
        widths("hidden_dims", 8),
        id="FlowVAE-hidden_dims-type",
    ),
    P(
        lambda: M.FlowVAE(2, 6, "maf"),
        V,
        choice("encoder_flow", "maf"),
        id="FlowVAE-encoder_flow-unknown",
    ),
    P(
        lambda: M.FlowVAE(2, 6, likelihood="poisson"),
        V,
        choice("likelihood", "poisson"),
        id="FlowVAE-likelihood-unknown",
    ),
    P(
        lambda: M.FlowVAE(2, 6, min_scale=0.0),
        V,
        positive("min_scale", 0.0),
        id="FlowVAE-min_scale-zero",
    ),
    P(
        lambda: M.FlowVAE(2, 6, decoder_scale=-1.0),
        V,
        positive("decoder_scale", -1.0),
        id="FlowVAE-decoder_scale-negative",
    ),
    P(
        lambda: M.FlowVAE(2, 6, kl_warmup_steps=-1),
        V,
        int_at_least("kl_warmup_steps", 0, -1),
        id="FlowVAE-kl_warmup_steps-negative",
    ),
    P(
        lambda: M.FlowVAE(4, 6, "iaf", flow_hidden_dims=[2]),
        V,
        r"flow_hidden_dims: expected widths >= latent_dim = 4 .*got \[2\]",
        id="FlowVAE-flow_hidden_dims-below-latent_dim",
    ),
    P(
        OnTarget(vae, lambda m: m.guide(binary(4, 5))),
        V,
        shape("x", "6", (4, 5)),
        id="FlowVAE-event-dim",
    ),
    P(OnTarget(vae, lambda m: m.guide(binary(4, 6).float())), V, dtype("x"), id="FlowVAE-float32"),
    P(OnTarget(vae, lambda m: m.model(ints(4, 6))), TE, integer("x"), id="FlowVAE-integer"),
    P(OnTarget(vae, lambda m: m.guide(meta(4, 6))), V, device("x"), id="FlowVAE-device"),
    P(
        OnTarget(lambda: training(vae()), lambda m: m.guide(nan(4, 6))),
        V,
        nonfinite("x"),
        id="FlowVAE-nonfinite",
    ),
    P(OnTarget(vae, lambda m: m.model(f64(0, 6))), V, empty("x", (0, 6)), id="FlowVAE-empty"),
    P(
        OnTarget(vae, lambda m: m.model(torch.full((4, 6), 0.5, dtype=F64))),
        V,
        r"x: the Bernoulli likelihood expects binary data .*got 24 other values \(e\.g\. 0\.5\)",
        id="FlowVAE-support",
    ),
    P(
        OnTarget(vae, lambda m: m.sample(0)),
        V,
        int_at_least("num_samples", 1, 0),
        id="FlowVAE-num_samples-zero",
    ),
    # NoisyInjectiveFlow: D = 3, d = 1
    P(
        lambda: M.NoisyInjectiveFlow(3, 3),
        V,
        r"latent_dim: expected less than data_dim=3 .*got 3",
        id="NoisyInjectiveFlow-latent_dim-not-below-data_dim",
    ),
    P(
        lambda: M.NoisyInjectiveFlow(3, 0),
        V,
        int_at_least("latent_dim", 1, 0),
        id="NoisyInjectiveFlow-latent_dim-zero",
    ),
    P(
        lambda: M.NoisyInjectiveFlow(3, 1, top_layers=0),
        V,
        int_at_least("top_layers", 1, 0),
        id="NoisyInjectiveFlow-top_layers-zero",
    ),
    P(
        lambda: M.NoisyInjectiveFlow(3, 1, top_flow="glow"),
        V,
        choice("top_flow", "glow"),
        id="NoisyInjectiveFlow-top_flow-unknown",
    ),
    P(
        lambda: M.NoisyInjectiveFlow(3, 1, prior_flow="maf"),
        V,
        r"prior_flow: needs latent_dim >= 2, got latent_dim=1",
        id="NoisyInjectiveFlow-prior_flow-1d",
    ),
    P(
        lambda: M.NoisyInjectiveFlow(3, 2, prior_components=0),
        V,
        r"prior_components: expected an int >= 1, got 0",
        id="NoisyInjectiveFlow-prior_components-zero",
    ),
    P(
        lambda: M.NoisyInjectiveFlow(3, 2, prior_flow="maf", prior_components=2),
        V,
        r"prior_components: expected None with prior_flow='maf' \(one prior: a flow or a "
        r"mixture\), got 2",
        id="NoisyInjectiveFlow-prior_components-with-prior_flow",
    ),
    P(
        OnTarget(nif_mixture_prior, lambda m: m.fit_prior(f64(3, 3), num_steps=1)),
        V,
        r"x: expected at least prior_components=4 points to start the mixture's means at, got 3",
        id="NoisyInjectiveFlow-fit_prior-fewer-points-than-components",
    ),
    P(
        lambda: M.NoisyInjectiveFlow(3, 1, init_noise_scale=-1.0),
        V,
        positive("init_noise_scale", -1.0),
        id="NoisyInjectiveFlow-init_noise_scale-negative",
    ),
    P(
        OnTarget(nif_flow, lambda m: m.log_prob(f64(4, 2))),
        V,
        shape("x", "3", (4, 2)),
        id="NoisyInjectiveFlow-event-dim",
    ),
    P(
        OnTarget(nif_flow, lambda m: m.encode(f32(4, 3))),
        V,
        dtype("x"),
        id="NoisyInjectiveFlow-float32",
    ),
    P(
        OnTarget(nif_flow, lambda m: m.guide(ints(4, 3))),
        TE,
        integer("x"),
        id="NoisyInjectiveFlow-integer",
    ),
    P(
        OnTarget(nif_flow, lambda m: m.log_prob(meta(4, 3))),
        V,
        device("x"),
        id="NoisyInjectiveFlow-device",
    ),
    P(
        OnTarget(nif_flow, lambda m: m.model(nan(4, 3))),
        V,
        nonfinite("x"),
        id="NoisyInjectiveFlow-nonfinite",
    ),
    P(
        OnTarget(nif_flow, lambda m: m.log_prob(f64(0, 3))),
        V,
        empty("x", (0, 3)),
        id="NoisyInjectiveFlow-empty",
    ),
    P(
        OnTarget(nif_flow, lambda m: m.sample(3, t=-1.0)),
        V,
        positive("t", -1.0),
        id="NoisyInjectiveFlow-t-negative",
    ),
    P(
        OnTarget(nif_flow, lambda m: m.sample(3, s=-1.0)),
        V,
        nonnegative("s", -1.0),
        id="NoisyInjectiveFlow-s-negative",
    ),
    P(
        OnTarget(nif_flow, lambda m: m.sample(0)),
        V,
        int_at_least("num_samples", 1, 0),
        id="NoisyInjectiveFlow-num_samples-zero",
    ),
    P(
        OnTarget(nif_flow, lambda m: m.fit_prior(f64(8, 3), num_steps=1)),
        V,
        r"prior_flow: fit_prior needs a prior flow or a mixture prior, got a model built with "
        r"prior_flow=None and prior_components=None",
        id="NoisyInjectiveFlow-fit_prior-no-prior-flow",
    ),
    P(
        OnTarget(nif_prior_flow, lambda m: m.fit_prior(nan(8, 3), num_steps=1)),
        V,
        nonfinite("x"),
        id="NoisyInjectiveFlow-fit_prior-nonfinite",
    ),
    P(
        OnTarget(
            nif_prior_flow,
            lambda m: m.fit_prior(f64(8, 3), num_steps=1, validation_data=nan(4, 3)),
        ),
        V,
        nonfinite("validation_data"),
        id="NoisyInjectiveFlow-fit_prior-validation-nonfinite",
    ),
    P(
        OnTarget(nif_prior_flow, lambda m: m.fit_prior(f64(8, 2), num_steps=1)),
        V,
        shape("x", "3", (8, 2)),
        id="NoisyInjectiveFlow-fit_prior-event-dim",
    ),
    P(
        OnTarget(nif_prior_flow, lambda m: m.fit_prior(f64(8, 3), num_steps=0)),
        V,
        int_at_least("num_steps", 1, 0),
        id="NoisyInjectiveFlow-fit_prior-steps-zero",
    ),
    P(
        OnTarget(nif_prior_flow, lambda m: m.fit_prior(f64(8, 3), lr=-1.0)),
        V,
        positive("lr", -1.0),
        id="NoisyInjectiveFlow-fit_prior-lr-negative",
    ),
    # VQAutoencoder: D = 3, C = 2, K = 4
    P(
        lambda: M.VQAutoencoder(3, 2, 0),
        V,
        int_at_least("num_charts", 1, 0),
        id="VQAutoencoder-num_charts-zero",
    ),
    P(
        lambda: M.VQAutoencoder(3, -2, 4),
        V,
        int_at_least("code_dim", 1, -2),
        id="VQAutoencoder-code_dim-negative",
    ),
    P(
        lambda: M.VQAutoencoder(3, 2, 4, [0]),
        V,
        int_at_least("hidden_dims", 1, 0),
        id="VQAutoencoder-hidden_dims-zero",
    ),
    P(
        lambda: M.VQAutoencoder(3, 2, 4, commitment=-0.25),
        V,
        nonnegative("commitment", -0.25),
        id="VQAutoencoder-commitment-negative",
    ),
    P(
        lambda: M.VQAutoencoder(3, 2, 4, reseed_every=-1),
        V,
        int_at_least("reseed_every", 0, -1),
        id="VQAutoencoder-reseed_every-negative",
    ),
    P(
        OnTarget(lambda: training(atlas()), lambda m: m.model(f64(8, 2))),
        V,
        shape("x", "3", (8, 2)),
        id="VQAutoencoder-event-dim",
    ),
    P(
        OnTarget(lambda: training(atlas()), lambda m: m.model(f32(8, 3))),
        V,
        dtype("x"),
        id="VQAutoencoder-float32",
    ),
    P(
        OnTarget(atlas, lambda m: m.encode(ints(8, 3))),
        TE,
        integer("x"),
        id="VQAutoencoder-integer",
    ),
    P(
        OnTarget(lambda: training(atlas()), lambda m: m.model(meta(8, 3))),
        V,
        device("x"),
        id="VQAutoencoder-device",
    ),
    P(
        OnTarget(lambda: training(atlas()), lambda m: m.model(nan(8, 3))),
        V,
        nonfinite("x"),
        id="VQAutoencoder-nonfinite",
    ),
    P(
        OnTarget(lambda: training(atlas()), lambda m: m.model(f64(0, 3))),
        V,
        empty("x", (0, 3)),
        id="VQAutoencoder-empty",
    ),
    P(
        OnTarget(atlas, lambda m: m.chart_membership(f64(8, 3), num_overlap=5)),
        V,
        r"num_overlap: expected an int <= num_charts = 4, got 5",
        id="VQAutoencoder-num_overlap-above-K",
    ),
    P(
        OnTarget(atlas, lambda m: m.chart_membership(f64(8, 3), epsilon=-1.0)),
        V,
        nonnegative("epsilon", -1.0),
        id="VQAutoencoder-epsilon-negative",
    ),
    # VQFlow: D = 3, K = 4
    P(
        lambda: M.VQFlow(3, 4, num_overlap=5),
        V,
        r"num_overlap: expected an int <= num_charts = 4, got 5",
        id="VQFlow-num_overlap-above-K",
    ),
    P(lambda: M.VQFlow(3, 0), V, int_at_least("num_charts", 1, 0), id="VQFlow-num_charts-zero"),
    P(
        lambda: M.VQFlow(3, 4, latent_dim=4),
        V,
        r"latent_dim: expected an int <= data_dim = 3, got 4",
        id="VQFlow-latent_dim-above-data_dim",
    ),
    P(
        lambda: M.VQFlow(3, 4, latent_dim=1),
        V,
        int_at_least("latent_dim", 2, 1),
        id="VQFlow-latent_dim-one",
    ),
    P(
        lambda: M.VQFlow(3, 4, num_layers=0),
        V,
        int_at_least("num_layers", 1, 0),
        id="VQFlow-num_layers-zero",
    ),
    P(
        lambda: M.VQFlow(3, 4, hidden_dims=[0]),
        V,
        int_at_least("hidden_dims", 1, 0),
        id="VQFlow-hidden_dims-zero",
    ),
    P(
        lambda: M.VQFlow(3, 4, autoencoder_hidden_dims=[-1]),
        V,
        int_at_least("autoencoder_hidden_dims", 1, -1),
        id="VQFlow-autoencoder_hidden_dims-negative",
    ),
    P(lambda: M.VQFlow(3, 4, flow="glow"), V, choice("flow", "glow"), id="VQFlow-flow-unknown"),
    P(
        lambda: M.VQFlow(3, 4, epsilon=-0.1),
        V,
        nonnegative("epsilon", -0.1),
        id="VQFlow-epsilon-negative",
    ),
    P(
        lambda: M.VQFlow(3, 4, reconstruction_weight=-1.0),
        V,
        nonnegative("reconstruction_weight", -1.0),
        id="VQFlow-reconstruction_weight-negative",
    ),
    P(
        lambda: M.VQFlow(3, 4, num_reflections=0),
        V,
        int_at_least("num_reflections", 1, 0),
        id="VQFlow-num_reflections-zero",
    ),
    P(
        OnTarget(vq_flow, lambda m: m.log_prob(f64(8, 2))),
        V,
        shape("x", "3", (8, 2)),
        id="VQFlow-event-dim",
    ),
    P(OnTarget(vq_flow, lambda m: m.log_prob(f32(8, 3))), V, dtype("x"), id="VQFlow-float32"),
    P(OnTarget(vq_flow, lambda m: m.model(ints(8, 3))), TE, integer("x"), id="VQFlow-integer"),
    P(OnTarget(vq_flow, lambda m: m.log_prob(meta(8, 3))), V, device("x"), id="VQFlow-device"),
    P(
        OnTarget(vq_flow, lambda m: m.set_stage("flows", nan(8, 3))),
        V,
        nonfinite("x"),
        id="VQFlow-nonfinite",
    ),
    P(
        OnTarget(vq_flow, lambda m: m.set_stage("flows", f64(0, 3))),
        V,
        empty("x", (0, 3)),
        id="VQFlow-empty",
    ),
    P(
        OnTarget(vq_flow, lambda m: m.set_stage("joint")),
        V,
        choice("stage", "joint"),
        id="VQFlow-stage-unknown",
    ),
    P(
        OnTarget(vq_flow, lambda m: m.sample(-1)),
        V,
        int_at_least("num_samples", 1, -1),
        id="VQFlow-num_samples-negative",
    ),
    # VariationalMixtureOfFlows: D = 2, K = 3
    P(
        lambda: M.VariationalMixtureOfFlows(2, 0),
        V,
        int_at_least("num_components", 1, 0),
        id="VariationalMixtureOfFlows-num_components-zero",
    ),
    P(
        lambda: M.VariationalMixtureOfFlows(1, 3),
        V,
        int_at_least("data_dim", 2, 1),
        id="VariationalMixtureOfFlows-data_dim-one",
    ),
    P(
        lambda: M.VariationalMixtureOfFlows(2, 3, num_layers=0),
        V,
        int_at_least("num_layers", 1, 0),
        id="VariationalMixtureOfFlows-num_layers-zero",
    ),
    P(
        lambda: M.VariationalMixtureOfFlows(2, 3, hidden_dims=[0]),
        V,
        int_at_least("hidden_dims", 1, 0),
        id="VariationalMixtureOfFlows-hidden_dims-zero",
    ),
    P(
        lambda: M.VariationalMixtureOfFlows(2, 3, encoder_hidden_dims=[0]),
        V,
        int_at_least("encoder_hidden_dims", 1, 0),
        id="VariationalMixtureOfFlows-encoder_hidden_dims-zero",
    ),
    P(
        lambda: M.VariationalMixtureOfFlows(2, 3, prior="dirichlet"),
        V,
        choice("prior", "dirichlet"),
        id="VariationalMixtureOfFlows-prior-unknown",
    ),
    P(
        lambda: M.VariationalMixtureOfFlows(2, 3, initial_temperature=0.0),
        V,
        positive("initial_temperature", 0.0),
        id="VariationalMixtureOfFlows-temperature-zero",
    ),
    P(
        lambda: M.VariationalMixtureOfFlows(2, 3, temperature_decay=1.5),
        V,
        r"temperature_decay: expected a number in \[0, 1\], got 1\.5",
        id="VariationalMixtureOfFlows-temperature_decay-above-one",
    ),
    P(
        lambda: M.VariationalMixtureOfFlows(2, 3, prior_momentum=0.0),
        V,
        r"prior_momentum: expected a number in \(0, 1\], got 0\.0",
        id="VariationalMixtureOfFlows-prior_momentum-zero",
    ),
    P(
        lambda: M.VariationalMixtureOfFlows(2, 3, label_weight=-1.0),
        V,
        nonnegative("label_weight", -1.0),
        id="VariationalMixtureOfFlows-label_weight-negative",
    ),
    P(
        OnTarget(vmonf, lambda m: m.log_prob(f64(8, 3))),
        V,
        shape("x", "2", (8, 3)),
        id="VariationalMixtureOfFlows-event-dim",
    ),
    P(
        OnTarget(vmonf, lambda m: m.log_prob(f32(8, 2))),
        V,
        dtype("x"),
        id="VariationalMixtureOfFlows-float32",
    ),
    P(
        OnTarget(vmonf, lambda m: m.responsibilities(ints(8, 2))),
        TE,
        integer("x"),
        id="VariationalMixtureOfFlows-integer",
    ),
    P(
        OnTarget(vmonf, lambda m: m.log_prob(meta(8, 2))),
        V,
        device("x"),
        id="VariationalMixtureOfFlows-device",
    ),
    P(
        OnTarget(lambda: training(vmonf()), lambda m: m.guide(nan(8, 2))),
        V,
        nonfinite("x"),
        id="VariationalMixtureOfFlows-nonfinite",
    ),
    P(
        OnTarget(vmonf, lambda m: m.model(f64(0, 2))),
        V,
        empty("x", (0, 2)),
        id="VariationalMixtureOfFlows-empty",
    ),
    P(
        OnTarget(
            lambda: training(vmonf()), lambda m: m.guide(f64(4, 2), torch.tensor([0.0, 1, 2, 0]))
        ),
        TE,
        r"y: expected an integer tensor of labels .*got tensor of dtype torch\.float32",
        id="VariationalMixtureOfFlows-labels-float",
    ),
    P(
        OnTarget(
            lambda: training(vmonf()), lambda m: m.guide(f64(4, 2), torch.tensor([0, 1, 3, -1]))
        ),
        V,
        r"y: expected labels in \[0, 2\] or -1 \(unlabelled\), got values in \[-1, 3\]",
        id="VariationalMixtureOfFlows-labels-out-of-range",
    ),
    P(
        OnTarget(vmonf, lambda m: m.model(f64(4, 2), torch.tensor([0, 1, 2]))),
        V,
        r"y: expected shape \(4,\) like x's rows, got \(3,\)",
        id="VariationalMixtureOfFlows-labels-shape",
    ),
    P(
        OnTarget(vmonf, lambda m: m.model(f64(4, 2), torch.tensor([0, 1, 2, 0], device="meta"))),
        V,
        r"y: expected a tensor on device cpu \(the model's\) or on cpu, got .*device meta",
        id="VariationalMixtureOfFlows-labels-device",
    ),
    P(
        OnTarget(vmonf, lambda m: m.initialize_components(f64(2, 2))),
        V,
        r"x: expected at least num_components = 3 rows, got 2",
        id="VariationalMixtureOfFlows-initialize-too-few-rows",
    ),
    P(
        OnTarget(vmonf, lambda m: m.initialize_components(f64(4, 2), y=torch.tensor([0, 3, 1, 2]))),
        V,
        r"y: expected labels in \[0, 2\] or -1 \(unlabelled\), got values in \[0, 3\]",
        id="VariationalMixtureOfFlows-initialize-labels-range",
    ),
    P(
        OnTarget(vmonf, lambda m: m.fit_encoder(f64(4, 2), torch.tensor([0, 1, -1, 2]))),
        V,
        r"labels: expected components in \[0, 2\] for every point, got -1 \(unlabelled\)",
        id="VariationalMixtureOfFlows-fit_encoder-unlabelled",
    ),
    P(
        OnTarget(vmonf, lambda m: m.fit_encoder(f64(4, 2), torch.tensor([0.0, 1.0, 2.0, 0.0]))),
        TE,
        r"labels: expected an integer tensor of labels \(-1 = unlabelled\), got tensor of dtype",
        id="VariationalMixtureOfFlows-fit_encoder-float-labels",
    ),
    P(
        OnTarget(vmonf, lambda m: m.fit_encoder(f64(4, 2), torch.tensor([0, 1, 2, 0]), lr=0.0)),
        V,
        positive("lr", 0.0),
        id="VariationalMixtureOfFlows-fit_encoder-lr-zero",
    ),
    P(
        OnTarget(vmonf, lambda m: m.fit_encoder(f64(3, 2), torch.tensor([0, 1, 2]), num_steps=-1)),
        V,
        int_at_least("num_steps", 0, -1),
        id="VariationalMixtureOfFlows-fit_encoder-steps-negative",
    ),
    P(
        OnTarget(vmonf, lambda m: m.step_kwargs(-1)),
        V,
        int_at_least("step", 0, -1),
        id="VariationalMixtureOfFlows-step-negative",
    ),
    # the flow-stack factory and the user's own flows
    P(lambda: T.flow_stack(1), V, int_at_least("input_dim", 2, 1), id="flow_stack-input_dim-one"),
    P(
        lambda: T.flow_stack(2, num_components=0),
        V,
        int_at_least("num_components", 1, 0),
        id="flow_stack-num_components-zero",
    ),
    P(
        lambda: T.flow_stack(2, "maf", hidden_dims=[1], num_components=3),
        V,
        int_at_least("hidden_dims", 2, 1),
        id="flow_stack-hidden_dims-below-input_dim",
    ),
    P(
        lambda: T.flow_stack(2, "spline_coupling", bound=0.0, num_components=3),
        V,
        positive("bound", 0.0),
        id="flow_stack-bound-zero",
    ),
    P(
        lambda: T.flow_stack(2, "spline_coupling", num_bins=1),
        V,
        int_at_least("num_bins", 2, 1),
        id="flow_stack-num_bins-one",
    ),
    P(
        lambda: T.flow_stack(2, context_dim=0),
        V,
        int_at_least("context_dim", 1, 0),
        id="flow_stack-context_dim-zero",
    ),
    P(lambda: T.flow_stack(2, "glow"), V, choice("flow", "glow"), id="flow_stack-flow-unknown"),
    P(
        lambda: T.flow_stack(2, "spline"),
        V,
        r"flow: expected one of \[.*\] or a callable; the name \"spline\" .* split: use "
        r"\"spline_coupling\" .* or \"spline_autoregressive\"",
        id="flow_stack-flow-renamed",
    ),
    P(
        lambda: T.flow_stack(2, "spline_autoregressive", 2, [0], context_dim=2),
        V,
        int_at_least("hidden_dims", 2, 0),
        id="flow_stack-hidden_dims-zero",
    ),
    P(
        lambda: T.flow_stack(2, "maf", 0),
        V,
        int_at_least("num_layers", 1, 0),
        id="flow_stack-num_layers-zero",
    ),
    P(
        lambda: T.flow_stack(2, 3),
        TE,
        r"flow: expected one of \[.*\] or a callable returning Pyro TransformModules, got int",
        id="flow_stack-flow-type",
    ),
    P(
        lambda: T.flow_stack(2, T.affine_coupling(2)),
        TE,
        r"flow: .* got AffineCoupling; pass a function that builds it",
        id="flow_stack-flow-instance",
    ),
    P(
        lambda: T.flow_stack(2, lambda d: nn.Linear(d, d)),
        TE,
        r"flow: expected flow\(2\) to return Pyro TransformModules \(the model has no "
        r"context\), got Linear at position 0",
        id="flow_stack-flow-returns-module",
    ),
    P(
        lambda: T.flow_stack(2, lambda d: []),
        V,
        r"flow: expected flow\(2\) to return at least one layer, got none",
        id="flow_stack-flow-returns-nothing",
    ),
    P(
        lambda: T.flow_stack(2, lambda d: [T.Reverse(), T.affine_coupling(3, [8])]),
        V,
        r"flow: expected the layers of flow\(2\) to act on tensors of shape \(\*, 2\), but "
        r"layer 1 \(AffineCoupling\), inverted on zeros of shape \(2, 2\): ArgumentError: x: "
        r"expected .*3",
        id="flow_stack-flow-wrong-dim",
    ),
    P(
        lambda: T.flow_stack(2, lambda d, c: T.affine_coupling(d, [8]), context_dim=3),
        TE,
        r"flow: expected flow\(2, 3\) to return Pyro ConditionalTransformModules \(the model "
        r"conditions on a context\), got AffineCoupling",
        id="flow_stack-flow-not-conditional",
    ),
    P(
        lambda: T.flow_stack(2, num_components=2, context_dim=2),
        V,
        r"num_components: expected None with context_dim=2 \(a stack is conditional or "
        r"batched, not both\), got 2",
        id="flow_stack-num_components-with-context_dim",
    ),
    P(
        lambda: T.flow_stack(2, num_components=2, batch_norm=True),
        V,
        r"batch_norm: only between the layers of a plain named stack",
        id="flow_stack-batch_norm-batched",
    ),
    P(
        lambda: T.check_flow("top_flow", None),
        TE,
        r"top_flow: expected one of",
        id="check_flow-type",
    ),
    P(
        lambda: T.StackedFlows([]),
        V,
        r"flows: expected at least one flow, got none",
        id="StackedFlows-flows-empty",
    ),
    P(
        OnTarget(
            lambda: T.StackedFlows([[T.affine_coupling(2, [4])]] * 2),
            lambda t: t(torch.zeros(4, 3, 2)),
        ),
        V,
        r"u: expected shape \(\*, 2, D\) or \(\*, 1, D\), got \(4, 3, 2\)",
        id="StackedFlows-u-components",
    ),
    P(
        lambda: T.ZukoTransform(3),
        TE,
        r"flow: expected a zuko Flow or LazyTransform .*, got int",
        id="ZukoTransform-flow-type",
    ),
    P(
        lambda: T.ConditionalZukoTransform(nn.Linear),
        TE,
        r"flow: expected a zuko Flow or LazyTransform .*, got type",
        id="ConditionalZukoTransform-flow-type",
    ),
    P(
        lambda: T.ConditionalSplineCoupling(2, 2, ConditionalDenseNN(2, 1, [4], [8])),
        V,
        r"split_dim: expected an int in \[1, 1\], got 2",
        id="ConditionalSplineCoupling-split_dim-too-large",
    ),
    P(
        lambda: T.fresh_spline_coupling(1),
        V,
        int_at_least("input_dim", 2, 1),
        id="fresh_spline_coupling-input_dim-one",
    ),
    P(
        lambda: T.fresh_spline_coupling(3, [8], count_bins=1),
        V,
        int_at_least("count_bins", 2, 1),
        id="fresh_spline_coupling-count_bins-one",
    ),
    P(
        lambda: T.conditional_spline_coupling(1, 2),
        V,
        int_at_least("input_dim", 2, 1),
        id="conditional_spline_coupling-input_dim-one",
    ),
    P(
        lambda: T.spline_param_dims(1),
        V,
        int_at_least("count_bins", 2, 1),
        id="spline_param_dims-count_bins-one",
    ),
    P(lambda: M.Flow(2, "spline"), V, r"flow: .*\"spline_coupling\"", id="Flow-flow-renamed"),
    P(
        lambda: M.NoisyInjectiveFlow(3, 1, top_flow=lambda d: T.affine_coupling(2, [4])),
        V,
        r"top_flow: expected the layers of top_flow\(3\) to act on tensors of shape \(\*, 3\)",
        id="NoisyInjectiveFlow-top_flow-wrong-dim",
    ),
    P(
        lambda: M.VariationalMixtureOfFlows(2, 2, flow=lambda d: nn.Linear(d, d)),
        TE,
        r"flow: expected flow\(2\) to return Pyro TransformModules",
        id="VariationalMixtureOfFlows-flow-returns-module",
    ),
    P(
        lambda: M.VQFlow(3, 2, flow=lambda d, c: T.affine_coupling(d, [4])),
        TE,
        r"flow: expected flow\(3, 3\) to return Pyro ConditionalTransformModules",
        id="VQFlow-flow-not-conditional",
    ),
    P(
        lambda: M.FlowVAE(2, 4, encoder_flow=3),
        TE,
        r"encoder_flow: expected None, one of \['iaf', 'pcp'\] or a callable returning Pyro "
        r"ConditionalTransformModules, got int",
        id="FlowVAE-encoder_flow-type",
    ),
]

NETWORKS = [
    # BatchedLinear: K = 3, 4 -> 2
    P(
        lambda: N.BatchedLinear(0, 4, 2),
        V,
        int_at_least("num_components", 1, 0),
        id="BatchedLinear-num_components-zero",
    ),
    P(
        lambda: N.BatchedLinear(3, 4, 0),
        V,
        int_at_least("out_features", 1, 0),
        id="BatchedLinear-out_features-zero",
    ),
    P(
        lambda: N.BatchedLinear(3, 4, 2, mask=torch.ones(4, 2)),
        V,
        shape("mask", "2, 4", (4, 2)),
        id="BatchedLinear-mask-shape",
    ),
    P(
        OnTarget(batched_linear, lambda n: n(f64(5, 3, 3))),
        V,
        r"x: expected shape \(\*, 3, 4\) or \(\*, 1, 4\), got tensor of shape \(5, 3, 3\)",
        id="BatchedLinear-event-dim",
    ),
    P(
        OnTarget(batched_linear, lambda n: n(f64(5, 2, 4))),
        V,
        r"x: expected shape \(\*, 3, 4\) or \(\*, 1, 4\), got tensor of shape \(5, 2, 4\)",
        id="BatchedLinear-component-dim",
    ),
    P(
        OnTarget(batched_linear, lambda n: n(f32(5, 3, 4))),
        V,
        dtype("x"),
        id="BatchedLinear-float32",
    ),
    P(
        OnTarget(batched_linear, lambda n: n(ints(5, 3, 4))),
        TE,
        integer("x"),
        id="BatchedLinear-integer",
    ),
    P(
        OnTarget(batched_linear, lambda n: n(meta(5, 3, 4))),
        V,
        device("x"),
        id="BatchedLinear-device",
    ),
    # BatchedDenseNN: K = 3, 2 -> (1, 1)
    P(
        lambda: N.BatchedDenseNN(3, 2, []),
        V,
        nohidden("hidden_dims"),
        id="BatchedDenseNN-hidden_dims-empty",
    ),
    P(
        lambda: N.BatchedDenseNN(3, 2, [0]),
        V,
        int_at_least("hidden_dims", 1, 0),
        id="BatchedDenseNN-hidden_dims-zero",
    ),
    P(
        lambda: N.BatchedDenseNN(3, 2, 8),
        TE,
        widths("hidden_dims", 8),
        id="BatchedDenseNN-hidden_dims-type",
    ),
    P(
        lambda: N.BatchedDenseNN(3, 2, [8], param_dims=[0]),
        V,
        int_at_least("param_dims", 1, 0),
        id="BatchedDenseNN-param_dims-zero",
    ),
    P(
        lambda: N.BatchedDenseNN(3, 0, [8]),
        V,
        int_at_least("input_dim", 1, 0),
        id="BatchedDenseNN-input_dim-zero",
    ),
    P(
        OnTarget(batched_dense, lambda n: n(f64(5, 3, 3))),
        V,
        r"x: expected shape \(\*, 3, 2\) or \(\*, 1, 2\), got tensor of shape \(5, 3, 3\)",
        id="BatchedDenseNN-event-dim",
    ),
    P(
        OnTarget(batched_dense, lambda n: n(f32(5, 3, 2))),
        V,
        dtype("x"),
        id="BatchedDenseNN-float32",
    ),
    P(
        OnTarget(batched_dense, lambda n: n(ints(5, 3, 2))),
        TE,
        integer("x"),
        id="BatchedDenseNN-integer",
    ),
    P(
        OnTarget(batched_dense, lambda n: n(meta(5, 3, 2))),
        V,
        device("x"),
        id="BatchedDenseNN-device",
    ),
    # BatchedAutoRegressiveNN: K = 3, D = 4
    P(
        lambda: N.BatchedAutoRegressiveNN(3, 1, [8]),
        V,
        int_at_least("input_dim", 2, 1),
        id="BatchedAutoRegressiveNN-input_dim-one",
    ),
    P(
        lambda: N.BatchedAutoRegressiveNN(3, 4, [3]),
        V,
        int_at_least("hidden_dims", 4, 3),
        id="BatchedAutoRegressiveNN-hidden_dims-below-input_dim",
    ),
    P(
        lambda: N.BatchedAutoRegressiveNN(3, 4, [8], permutation=torch.tensor([0, 1, 1, 3])),
        V,
        r"permutation: expected a permutation of range\(4\), got \[0, 1, 1, 3\]",
        id="BatchedAutoRegressiveNN-permutation-invalid",
    ),
    P(
        lambda: N.BatchedAutoRegressiveNN(3, 4, [8], permutation=torch.arange(3)),
        V,
        shape("permutation", "4", (3,)),
        id="BatchedAutoRegressiveNN-permutation-shape",
    ),
    P(
        OnTarget(batched_made, lambda n: n(f64(5, 3, 5))),
        V,
        r"x: expected shape \(\*, 3, 4\) or \(\*, 1, 4\), got tensor of shape \(5, 3, 5\)",
        id="BatchedAutoRegressiveNN-event-dim",
    ),
    P(
        OnTarget(batched_made, lambda n: n(f32(5, 3, 4))),
        V,
        dtype("x"),
        id="BatchedAutoRegressiveNN-float32",
    ),
    P(
        OnTarget(batched_made, lambda n: n(ints(5, 1, 4))),
        TE,
        integer("x"),
        id="BatchedAutoRegressiveNN-integer",
    ),
    P(
        OnTarget(batched_made, lambda n: n(meta(5, 3, 4))),
        V,
        device("x"),
        id="BatchedAutoRegressiveNN-device",
    ),
    # MNISTClassifier
    P(
        lambda: N.MNISTClassifier(num_features=0),
        V,
        int_at_least("num_features", 1, 0),
        id="MNISTClassifier-num_features-zero",
    ),
    P(
        lambda: N.MNISTClassifier(num_classes=1),
        V,
        int_at_least("num_classes", 2, 1),
        id="MNISTClassifier-num_classes-one",
    ),
    P(
        OnTarget(classifier, lambda n: n(torch.rand(4, 783, dtype=F64))),
        V,
        r"x: expected shape \(\*, 784\) or \(\*, 28, 28\), got .*shape \(4, 783\)",
        id="MNISTClassifier-event-dim",
    ),
    P(
        OnTarget(classifier, lambda n: n.features(torch.rand(4, 784))),
        V,
        dtype("x"),
        id="MNISTClassifier-float32",
    ),
    P(
        OnTarget(classifier, lambda n: n(torch.zeros(4, 784, dtype=torch.uint8))),
        TE,
        r"x: expected a floating-point tensor, got .*dtype torch\.uint8",
        id="MNISTClassifier-integer",
    ),
    P(OnTarget(classifier, lambda n: n(meta(4, 784))), V, device("x"), id="MNISTClassifier-device"),
    P(
        OnTarget(lambda: training(classifier()), lambda n: n(nan(4, 784).abs().clamp(max=1))),
        V,
        nonfinite("x"),
        id="MNISTClassifier-nonfinite",
    ),
    P(
        OnTarget(
            lambda: training(classifier()), lambda n: n(torch.full((4, 784), 255.0, dtype=F64))
        ),
        V,
        r"x: expected pixel values in \[0, 1\], got values in \[255, 255\]",
        id="MNISTClassifier-support",
    ),
    # PICNN: D = 2, C = 3
    P(lambda: N.PICNN(0, 3), V, int_at_least("input_dim", 1, 0), id="PICNN-input_dim-zero"),
    P(
        lambda: N.PICNN(2, 3, [8, 0]),
        V,
        int_at_least("hidden_dims", 1, 0),
        id="PICNN-hidden_dims-zero",
    ),
    P(lambda: N.PICNN(2, 3, 8), TE, widths("hidden_dims", 8), id="PICNN-hidden_dims-type"),
    P(
        lambda: N.PICNN(2, 3, [8], [8, 8]),
        V,
        r"context_hidden_dims: expected 1 widths .*got \[8, 8\]",
        id="PICNN-context_hidden_dims-length",
    ),
    P(
        OnTarget(picnn, lambda n: n(f64(5, 3), f64(5, 3))),
        V,
        shape("z", "2", (5, 3)),
        id="PICNN-event-dim",
    ),
    P(
        OnTarget(picnn, lambda n: n(f64(5, 2), f64(5, 2))),
        V,
        shape("context", "3", (5, 2)),
        id="PICNN-context-event-dim",
    ),
    P(OnTarget(picnn, lambda n: n(f32(5, 2), f64(5, 3))), V, dtype("z"), id="PICNN-float32"),
    P(
        OnTarget(picnn, lambda n: n.derivatives(f64(5, 2), f32(5, 3))),
        V,
        dtype("context"),
        id="PICNN-context-float32",
    ),
    P(OnTarget(picnn, lambda n: n(ints(5, 2), f64(5, 3))), TE, integer("z"), id="PICNN-integer"),
    P(OnTarget(picnn, lambda n: n(f64(5, 2), meta(5, 3))), V, device("context"), id="PICNN-device"),
    P(
        OnTarget(picnn, lambda n: n.derivatives(f64(5, 2), f64(4, 3))),
        V,
        r"context: expected a batch shape that broadcasts with z's \(5,\), got \(4,\)",
        id="PICNN-batch-shape",
    ),
    # VectorQuantizer: K = 4, C = 2
    P(
        lambda: N.VectorQuantizer(0, 2),
        V,
        int_at_least("num_codes", 1, 0),
        id="VectorQuantizer-num_codes-zero",
    ),
    P(
        lambda: N.VectorQuantizer(4, 0),
        V,
        int_at_least("code_dim", 1, 0),
        id="VectorQuantizer-code_dim-zero",
    ),
    P(
        lambda: N.VectorQuantizer(4, 2, commitment=-1.0),
        V,
        nonnegative("commitment", -1.0),
        id="VectorQuantizer-commitment-negative",
    ),
    P(
        OnTarget(lambda: training(quantizer()), lambda n: n(f64(5, 3))),
        V,
        shape("e", "2", (5, 3)),
        id="VectorQuantizer-event-dim",
    ),
    P(
        OnTarget(lambda: training(quantizer()), lambda n: n(f32(5, 2))),
        V,
        dtype("e"),
        id="VectorQuantizer-float32",
    ),
    P(
        OnTarget(quantizer, lambda n: n.distances(ints(5, 2))),
        TE,
        integer("e"),
        id="VectorQuantizer-integer",
    ),
    P(
        OnTarget(quantizer, lambda n: n.initialize(meta(5, 2))),
        V,
        device("e"),
        id="VectorQuantizer-device",
    ),
    P(
        OnTarget(quantizer, lambda n: n.reseed_dead_codes(nan(5, 2))),
        V,
        nonfinite("e"),
        id="VectorQuantizer-nonfinite",
    ),
    P(
        OnTarget(lambda: training(quantizer()), lambda n: n(f64(0, 2))),
        V,
        empty("e", (0, 2)),
        id="VectorQuantizer-empty",
    ),
    P(
        OnTarget(quantizer, lambda n: n.initialize(f64(3, 2))),
        V,
        r"e: expected at least num_codes = 4 encodings, got 3",
        id="VectorQuantizer-initialize-too-few",
    ),
    P(
        OnTarget(quantizer, lambda n: n.initialize(f64(8, 2), num_iterations=-1)),
        V,
        int_at_least("num_iterations", 0, -1),
        id="VectorQuantizer-num_iterations-negative",
    ),
    # scale_output_layer
    P(
        lambda: N.scale_output_layer(torch.nn.Linear(2, 2)),
        TE,
        r"net: expected a network with a non-empty `layers` ModuleList, got Linear",
        id="scale_output_layer-no-layers",
    ),
    P(
        lambda: N.scale_output_layer(pyro.nn.DenseNN(2, [4]), -1.0),
        V,
        nonnegative("factor", -1.0),
        id="scale_output_layer-factor-negative",
    ),
    # chart_membership: K = 4
    P(
        lambda: N.chart_membership(f64(5, 4).abs(), 5),
        V,
        r"num_overlap: expected an int <= the number of charts K = 4, got 5",
        id="chart_membership-num_overlap-above-K",
    ),
    P(
        lambda: N.chart_membership(f64(5, 4).abs(), 0),
        V,
        int_at_least("num_overlap", 1, 0),
        id="chart_membership-num_overlap-zero",
    ),
    P(
        lambda: N.chart_membership(f64(5, 4).abs(), 2, -0.5),
        V,
        nonnegative("epsilon", -0.5),
        id="chart_membership-epsilon-negative",
    ),
    P(
        lambda: N.chart_membership(ints(5, 4), 2),
        TE,
        integer("distances"),
        id="chart_membership-integer",
    ),
    P(
        lambda: N.chart_membership(torch.tensor(1.0), 1),
        V,
        r"distances: expected at least 1 dims, got .*shape \(\)",
        id="chart_membership-event-dim",
    ),
    P(
        lambda: N.chart_membership(nan(5, 4).abs(), 2),
        V,
        nonfinite("distances"),
        id="chart_membership-nonfinite",
    ),
    P(
        lambda: N.chart_membership(f64(0, 4), 2),
        V,
        empty("distances", (0, 4)),
        id="chart_membership-empty",
    ),
    P(
        lambda: N.chart_membership(-torch.ones(5, 4, dtype=F64), 2),
        V,
        r"distances: expected values >= 0, got min -1",
        id="chart_membership-support",
    ),
    # kmeans: N = 5, D = 2, K = 3
    P(
        lambda: N.kmeans(f64(2, 2), 3),
        V,
        r"x: expected shape \(N, D\) with N >= num_clusters = 3, got shape \(2, 2\)",
        id="kmeans-too-few-rows",
    ),
    P(lambda: N.kmeans(f64(5), 3), V, r"x: expected at least 2 dims", id="kmeans-event-dim"),
    P(lambda: N.kmeans(ints(5, 2), 3), TE, integer("x"), id="kmeans-integer"),
    P(lambda: N.kmeans(nan(5, 2), 3), V, nonfinite("x"), id="kmeans-nonfinite"),
    P(lambda: N.kmeans(f64(5, 2), 0), V, int_at_least("num_clusters", 1, 0), id="kmeans-zero"),
    P(
        lambda: N.kmeans(f64(5, 2), 3, -1),
        V,
        int_at_least("num_iterations", 0, -1),
        id="kmeans-num_iterations-negative",
    ),
    P(
        lambda: N.kmeans(f64(5, 2), 3, labels=torch.tensor([0, 1, 2, 3, -1])),
        V,
        r"labels: expected labels in \[-1, 2\], got values in \[-1, 3\]",
        id="kmeans-labels-range",
    ),
    P(
        lambda: N.kmeans(f64(5, 2), 3, labels=f64(5)),
        TE,
        r"labels: expected an \(N,\) integer tensor, got dtype torch.float64",
        id="kmeans-labels-float",
    ),
    P(
        lambda: N.kmeans(f64(5, 2), 3, labels=torch.zeros(4, dtype=torch.int64)),
        V,
        r"labels: expected shape \(\*, 5\)",
        id="kmeans-labels-shape",
    ),
]


# -- fit: every row of data and validation_data, as the programs see them ------------------
def _late(x: Tensor, row: int, value: float, column: int = 0) -> Tensor:
    """``x`` with one bad entry in a row no first batch (rows 0..7) holds."""
    x[row, column] = value
    return x


def _fit(data: Callable[[], object], **kwargs: object) -> Callable[[nn.Module], object]:
    """Two CPU steps of ``fit`` on ``data()`` for the module's programs (batches of 8)."""
    from pyro_manifold.infer import fit

    def act(m: nn.Module) -> object:
        return fit(m.model, m.guide, data(), num_steps=2, batch_size=8, device="cpu",
                   progress=False, **kwargs)  # fmt: skip

    return act


def fitting(data: object = None, **kwargs: object) -> Callable[[M.Flow], object]:
    """``fit`` of the float64 test flow on ``data`` (default 16 good rows) with ``kwargs``."""

    def act(model: M.Flow) -> object:
        args: dict = {"device": "cpu", "progress": False, "num_steps": 2, **kwargs}
        return fit(model.model, model.guide, f64(16, 2) if data is None else data, **args)

    return act


def _overflow(x: Tensor) -> tuple[Tensor]:  # 1e300 becomes inf, 0 and 1 stay
    return (x * 1e10 / 1e10,)


def _row(name: str, row: int) -> str:
    return rf"{name} \(as transform_batch returns it\): expected finite .*first: row {row}\b"


#: (name, factory, data) of every model class, for the transformed-data rows
FIT_MODELS = [
    ("Flow", flow, lambda n: f64(n, 2)),
    ("FlowVAE", vae, lambda n: binary(n, 6)),
    ("NoisyInjectiveFlow", nif_flow, lambda n: f64(n, 3)),
    ("VQFlow", vq_flow, lambda n: f64(n, 3)),
    ("VQAutoencoder", atlas, lambda n: f64(n, 3)),
    ("VariationalMixtureOfFlows", vmonf, lambda n: f64(n, 2)),
]  # fmt: skip

BERNOULLI = r"x: the Bernoulli likelihood expects binary data .*first: row {}\b"

FIT = [
    P(
        OnTarget(vae, _fit(lambda: _late(binary(256, 6), 200, 0.5))),
        V,
        "^data: " + BERNOULLI.format(200),
        id="FlowVAE-fit-support-late-row",
    ),
    P(
        OnTarget(
            vae,
            _fit(lambda: binary(64, 6), validation_data=_late(binary(64, 6), 40, 2.0, column=5)),
        ),
        V,
        "^validation_data: " + BERNOULLI.format(40),
        id="FlowVAE-fit-validation-support-late-row",
    ),  # fmt: skip
    P(
        OnTarget(vae, lambda m: m.check_data(_late(binary(10, 6), 3, 0.5), first_row=100)),
        V,
        BERNOULLI.format(103),
        id="FlowVAE-check_data-first_row",
    ),
    P(
        OnTarget(flow, lambda m: m.check_data(_late(f64(10, 2), 4, float("inf")), first_row=50)),
        V,
        r"x: expected finite values in every row, got 1 rows .*first: row 54, value inf",
        id="Flow-check_data-nonfinite-first_row",
    ),
    P(
        OnTarget(vmonf, _fit(lambda: (f64(256, 2), _late(torch.full((256, 1), -1), 150, 7)[:, 0]))),
        V,
        r"^data: y: expected labels in \[0, 2\] or -1 .*first outside: row 150, label 7",
        id="VariationalMixtureOfFlows-fit-labels-late-row",
    ),
    *[
        P(
            OnTarget(
                make,
                _fit(lambda data=data: _late(data(256), 150, 1e300), transform_batch=_overflow),
            ),
            V,
            "^" + _row("data", 150),
            id=f"{name}-fit-transformed-nonfinite-late-row",
        )
        for name, make, data in FIT_MODELS
    ],
    *[
        P(
            OnTarget(
                make,
                _fit(
                    lambda data=data: data(64),
                    transform_batch=_overflow,
                    validation_data=_late(data(64), 33, -1e300),
                ),
            ),
            V,
            "^" + _row("validation_data", 33),
            id=f"{name}-fit-validation-transformed-nonfinite",
        )
        for name, make, data in FIT_MODELS
    ],  # fmt: skip
]


# Issue 20, errors that name nothing and late errors: each row failed (with another
# type or message, or only after training) before its fix.
ISSUE_20 = [
    P(
        OnTarget(flow, lambda m: fit(m.model, m.guide, None, device="cpu")),
        TE,
        r"data: expected a tensor or a tuple of tensors with the same number of rows, got NoneType",
        id="fit-data-none",
    ),
    P(
        OnTarget(flow, fitting({"x": f64(16, 2)})),
        TE,
        r"data: expected a tensor or a tuple of tensors .*got dict",
        id="fit-data-dict",
    ),
    P(
        OnTarget(flow, fitting(())),
        V,
        r"data: expected a tensor or a non-empty tuple",
        id="fit-data-empty-tuple",
    ),
    P(
        OnTarget(flow, fitting((f64(16, 2), f64(3)))),
        V,
        r"data\[1\]: expected 16 rows like data\[0\], got shape \(3,\)",
        id="fit-data-row-counts",
    ),
    P(
        OnTarget(flow, fitting(meta(16, 2))),
        V,
        r"data: expected a tensor that holds values, got one on meta",
        id="fit-data-meta",
    ),
    P(
        OnTarget(flow, fitting(validation_data=f32(4, 2))),
        V,
        r"validation_data: expected dtype torch\.float64 like data, got dtype torch\.float32",
        id="fit-validation_data-dtype",
    ),
    P(
        OnTarget(flow, fitting(validation_data=meta(4, 2))),
        V,
        r"validation_data: expected a tensor that holds values, got one on meta",
        id="fit-validation_data-meta",
    ),
    P(
        OnTarget(flow, fitting(validation_data=(f64(4, 2), f64(4, 2)))),
        V,
        r"validation_data: expected 1 tensors like data, got 2",
        id="fit-validation_data-structure",
    ),
    P(
        OnTarget(flow, fitting(modules=[3])),
        TE,
        r"modules\[0\]: expected an nn\.Module, got int 3",
        id="fit-modules-int",
    ),
    P(
        OnTarget(flow, fitting(modules=nn.Linear(2, 2))),
        TE,
        r"modules: expected a list of nn\.Modules, got one Linear",
        id="fit-modules-bare-module",
    ),
    P(
        OnTarget(flow, fitting(restore_best="no")),
        TE,
        flag("restore_best", "no"),
        id="fit-restore_best-str",
    ),
    P(OnTarget(flow, fitting(fast=1)), TE, flag("fast", 1), id="fit-fast-int"),
    P(
        OnTarget(flow, fitting(progress="no")),
        TE,
        r"progress: expected True, False or None, got str 'no'",
        id="fit-progress-str",
    ),
    P(
        OnTarget(flow, fitting(distributed="no")),
        TE,
        r"distributed: expected True, False or None, got str 'no'",
        id="fit-distributed-str",
    ),
    P(OnTarget(flow, fitting(seed=-1)), V, int_at_least("seed", 0, -1), id="fit-seed-negative"),
    P(
        OnTarget(flow, fitting(seed=2**40)),
        V,
        r"seed: expected an int in \[0, 2\*\*32 - 1\], got 1099511627776",
        id="fit-seed-huge",
    ),
    P(
        OnTarget(flow, fitting(seed=1.5)),
        TE,
        int_at_least("seed", 0, "float 1.5"),
        id="fit-seed-float",
    ),
    P(
        OnTarget(flow, fitting(resume=3)),
        TE,
        r"resume: expected a path to a checkpoint or None, got int",
        id="fit-resume-int",
    ),
    P(
        OnTarget(flow, fitting(config=3)),
        TE,
        r"config: expected a dict of plain data or None, got int",
        id="fit-config-int",
    ),
    P(
        OnTarget(flow, fitting(transform_batch=3)),
        TE,
        r"transform_batch: expected a callable .*got int",
        id="fit-transform_batch-int",
    ),
    P(
        OnTarget(flow, lambda m: fit(m.model, 3, f64(16, 2), device="cpu")),
        TE,
        r"guide: expected a callable Pyro program, got 3",
        id="fit-guide-not-callable",
    ),
    P(lambda: M.Flow(2, hidden_dims=[]), V, nohidden("hidden_dims"), id="Flow-hidden_dims-empty"),
    P(
        lambda: M.Flow(2, "maf", hidden_dims=[]),
        V,
        nohidden("hidden_dims"),
        id="Flow-hidden_dims-empty-maf",
    ),
    P(lambda: M.Flow(2, batch_norm="no"), TE, flag("batch_norm", "no"), id="Flow-batch_norm-str"),
    P(lambda: M.Flow(2, batch_norm=1), TE, flag("batch_norm", 1), id="Flow-batch_norm-int"),
    P(
        lambda: M.Flow(2, "spline_coupling", num_bins=1),
        V,
        int_at_least("num_bins", 2, 1),
        id="Flow-num_bins-one",
    ),
    P(
        lambda: M.NoisyInjectiveFlow(3, 1, top_hidden_dims=[]),
        V,
        nohidden("top_hidden_dims"),
        id="NoisyInjectiveFlow-top_hidden_dims-empty",
    ),
    P(
        lambda: M.NoisyInjectiveFlow(3, 2, prior_flow="realnvp", prior_hidden_dims=[]),
        V,
        nohidden("prior_hidden_dims"),
        id="NoisyInjectiveFlow-prior_hidden_dims-empty",
    ),
    P(
        lambda: M.NoisyInjectiveFlow(3, 1, top_flow=None, batch_norm="no"),
        TE,
        flag("batch_norm", "no"),
        id="NoisyInjectiveFlow-batch_norm-str",
    ),
    P(
        lambda: M.NoisyInjectiveFlow(3, 1, factor=2),
        V,
        r"factor: expected None without image_shape .*got 2",
        id="NoisyInjectiveFlow-factor-without-image_shape",
    ),
    P(
        lambda: D.GaussianNIF(2, 12, image_shape=(3, 4)),
        TE,
        r"image_shape: expected a tuple \(C, H, W\) of three ints, got \(3, 4\)",
        id="GaussianNIF-image_shape-2d",
    ),
    P(
        lambda: M.VQAutoencoder(3, 2, 4, []),
        V,
        nohidden("hidden_dims"),
        id="VQAutoencoder-hidden_dims-empty",
    ),
    P(lambda: M.VQFlow(3, 4, restrict="no"), TE, flag("restrict", "no"), id="VQFlow-restrict-str"),
    P(
        lambda: M.VQFlow(3, 4, autoencoder_hidden_dims=[]),
        V,
        nohidden("autoencoder_hidden_dims"),
        id="VQFlow-autoencoder_hidden_dims-empty",
    ),
    P(
        OnTarget(vq_flow, lambda m: m.sample(2, within_regions="no")),
        TE,
        r"within_regions: expected True, False or None, got str 'no'",
        id="VQFlow-sample-within_regions-str",
    ),
    P(
        lambda: M.VariationalMixtureOfFlows(2, 3, encoder_hidden_dims=[]),
        V,
        nohidden("encoder_hidden_dims"),
        id="VariationalMixtureOfFlows-encoder_hidden_dims-empty",
    ),
    P(
        OnTarget(vmonf, lambda m: m.cluster(f64(4, 2), exact="no")),
        TE,
        flag("exact", "no"),
        id="VariationalMixtureOfFlows-cluster-exact-str",
    ),
    P(
        OnTarget(vae, lambda m: m.sample(2, mean="no")),
        TE,
        flag("mean", "no"),
        id="FlowVAE-sample-mean-str",
    ),
    P(
        lambda: chart_mixture(restrict="no"),
        TE,
        flag("restrict", "no"),
        id="ChartMixture-restrict-str",
    ),
    P(
        lambda: chart_mixture(sample_within_regions=1),
        TE,
        flag("sample_within_regions", 1),
        id="ChartMixture-sample_within_regions-int",
    ),
    P(
        lambda: T.AffineCoupling(1, DenseNN(1, [4], [2, 2]), reverse="no"),
        TE,
        flag("reverse", "no"),
        id="AffineCoupling-reverse-str",
    ),
    P(
        lambda: T.affine_coupling(3, [8], "no"),
        TE,
        flag("reverse", "no"),
        id="affine_coupling-reverse-str",
    ),
    P(
        lambda: T.affine_coupling(3, []),
        V,
        nohidden("hidden_dims"),
        id="affine_coupling-hidden_dims-empty",
    ),
    P(
        lambda: T.flow_stack(3, batch_norm="no"),
        TE,
        flag("batch_norm", "no"),
        id="flow_stack-batch_norm-str",
    ),
    P(
        lambda: N.BatchedLinear(3, 4, 2, bias="no"),
        TE,
        flag("bias", "no"),
        id="BatchedLinear-bias-str",
    ),
]

TABLE = TRANSFORMS + DISTRIBUTIONS + MODELS + NETWORKS + FIT + ISSUE_20

#: Public names with no bad input of their own, and why.
NOT_APPLICABLE = {
    "PCPMapInverseError": "an exception type",
    "Atlas": "a typing.Protocol",
    "DEFAULT_FLOW": "a constant",
    "FLOWS": "a constant",
    "FlowFactory": "a type alias",
    "FreshSplineAutoregressive": "Pyro's SplineAutoregressive (its constructor) with our cache",
    "FreshSplineCoupling": "Pyro's SplineCoupling (its constructor) with our cache",
    "FreshConditionalSplineAutoregressive": "Pyro's ConditionalSplineAutoregressive (its "
    "constructor); its conditioned layers have our cache",
}


# -- the test ---------------------------------------------------------------------------------
def _modules(obj: object) -> list[nn.Module]:
    if isinstance(obj, nn.Module):
        return [obj]
    found: list[nn.Module] = []
    for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
        items = value if isinstance(value, list | tuple) else [value]
        found += [v for v in items if isinstance(v, nn.Module)]
    return found


def _snapshot(obj: object) -> list:
    """Everything a failing call must leave alone: tensors, flags, modes and counters."""
    out = []
    for module in _modules(obj):
        state = {
            k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v)
            for k, v in module.state_dict().items()
        }
        grads = [(n, p.requires_grad) for n, p in module.named_parameters()]
        scalars = [
            (
                type(m).__name__,
                m.training,
                {k: v for k, v in vars(m).items() if isinstance(v, bool | int | float | str)},
            )
            for m in module.modules()
        ]
        out.append((state, grads, scalars))
    return out


def _same(a: object, b: object) -> bool:
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _raised_in(info: pytest.ExceptionInfo) -> str:
    """The file of the innermost frame, where the error was raised."""
    return str(Path(info.traceback[-1].path).resolve())


@pytest.fixture(autouse=True)
def _validation_on():
    was = is_validation_enabled()
    pyro.enable_validation(True)
    yield
    pyro.enable_validation(was)


@pytest.mark.parametrize("call, error, pattern", TABLE)
def test_bad_input_raises_our_error_before_any_state_change(call, error, pattern):
    if isinstance(call, OnTarget):
        target = call.make()
        before = _snapshot(target)
        with pytest.raises(error, match=pattern) as info:
            call.act(target)
        assert _same(_snapshot(target), before), "the failing call changed the object's state"
    else:
        with pytest.raises(error, match=pattern) as info:
            call()
    where = _raised_in(info)
    torch_validation = where.endswith(str(Path("torch", "distributions", "distribution.py")))
    assert where.startswith(str(PACKAGE.resolve())) or torch_validation, (
        f"raised inside {where}, not by pyro_manifold's checks"
    )


def test_table_covers_every_public_name():
    ids = [p.id for p in TABLE]
    assert len(set(ids)) == len(ids), "duplicate ids"
    covered = {i.split("-")[0] for i in ids}
    for module in (T, D, M, N):
        missing = set(module.__all__) - covered - set(NOT_APPLICABLE)
        assert not missing, f"{module.__name__}: no bad-input entry for {sorted(missing)}"


def test_value_checks_follow_pyro_validation():
    """Without validation the value checks (finite entries, supports) are skipped."""
    model = flow()
    pyro.enable_validation(False)
    try:
        assert torch.isnan(model.log_prob(nan(4, 2))).any()
        assert T.Reverse()(nan(1, 3)).isnan().any()
    finally:
        pyro.enable_validation(True)
    with pytest.raises(ValueError, match=nonfinite("x")):
        model.log_prob(nan(4, 2))
