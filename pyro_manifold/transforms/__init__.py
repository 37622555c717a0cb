"""Pyro transforms (``TransformModule`` and ``ConditionalTransformModule``), one family per module.

Every transform maps base/latent to data (Pyro's direction) and says in its docstring
which direction is one network pass.
"""

from pyro_manifold.transforms.affine_coupling import (
    AffineCoupling,
    ConditionalAffineCoupling,
    affine_coupling,
    conditional_affine_coupling,
)
from pyro_manifold.transforms.conformal import (
    ConditionalConformalEmbedding,
    ConformalEmbedding,
    conditional_conformal_embedding,
    conformal_embedding,
)
from pyro_manifold.transforms.flow_stack import (
    DEFAULT_FLOW,
    FLOWS,
    FlowFactory,
    StackedFlows,
    check_flow,
    flow_stack,
)
from pyro_manifold.transforms.masked_autoregressive import (
    ConditionalMaskedAutoregressive,
    MaskedAutoregressive,
    conditional_masked_autoregressive,
    masked_autoregressive,
)
from pyro_manifold.transforms.pcp_map import (
    ConditionalPCPMap,
    ConditionedPCPMap,
    PCPMapInverseError,
    conditional_pcp_map,
)
from pyro_manifold.transforms.permutation import Reverse
from pyro_manifold.transforms.splines import (
    ConditionalSplineCoupling,
    FreshConditionalSplineAutoregressive,
    FreshSplineAutoregressive,
    FreshSplineCoupling,
    conditional_spline_coupling,
    fresh_spline_coupling,
    spline_param_dims,
)
from pyro_manifold.transforms.zuko_adapter import ConditionalZukoTransform, ZukoTransform

__all__ = [
    "AffineCoupling",
    "ConditionalAffineCoupling",
    "ConditionalConformalEmbedding",
    "ConditionalMaskedAutoregressive",
    "ConditionalPCPMap",
    "ConditionalSplineCoupling",
    "ConditionalZukoTransform",
    "ConditionedPCPMap",
    "ConformalEmbedding",
    "DEFAULT_FLOW",
    "FLOWS",
    "FlowFactory",
    "FreshConditionalSplineAutoregressive",
    "FreshSplineAutoregressive",
    "FreshSplineCoupling",
    "MaskedAutoregressive",
    "PCPMapInverseError",
    "Reverse",
    "StackedFlows",
    "ZukoTransform",
    "affine_coupling",
    "check_flow",
    "conditional_affine_coupling",
    "conditional_conformal_embedding",
    "conditional_masked_autoregressive",
    "conditional_pcp_map",
    "conditional_spline_coupling",
    "conformal_embedding",
    "flow_stack",
    "fresh_spline_coupling",
    "masked_autoregressive",
    "spline_param_dims",
]
