"""Pyro ``TransformModule``s and ``ConditionalTransformModule``s, one family per module.

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

__all__ = [
    "AffineCoupling",
    "ConditionalAffineCoupling",
    "ConditionalConformalEmbedding",
    "ConditionalMaskedAutoregressive",
    "ConditionalPCPMap",
    "ConditionedPCPMap",
    "ConformalEmbedding",
    "MaskedAutoregressive",
    "PCPMapInverseError",
    "Reverse",
    "affine_coupling",
    "conditional_affine_coupling",
    "conditional_conformal_embedding",
    "conditional_masked_autoregressive",
    "conditional_pcp_map",
    "conformal_embedding",
    "masked_autoregressive",
]
