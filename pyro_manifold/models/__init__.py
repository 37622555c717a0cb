"""PyroModules that bundle a ``model()`` and a ``guide()`` for each method."""

from pyro_manifold.models.flow import FLOWS, Flow, flow_layers
from pyro_manifold.models.flow_vae import FlowVAE
from pyro_manifold.models.mixture_of_flows import VariationalMixtureOfFlows, batched_flow_layers
from pyro_manifold.models.noisy_injective_flow import NoisyInjectiveFlow

__all__ = [
    "FLOWS",
    "Flow",
    "FlowVAE",
    "NoisyInjectiveFlow",
    "VariationalMixtureOfFlows",
    "batched_flow_layers",
    "flow_layers",
]
