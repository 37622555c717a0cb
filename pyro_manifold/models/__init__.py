"""PyroModules that bundle a ``model()`` and a ``guide()`` for each method."""

from pyro_manifold.models.flow import FLOWS, Flow, flow_layers
from pyro_manifold.models.flow_vae import FlowVAE
from pyro_manifold.models.mixture_of_flows import VariationalMixtureOfFlows, batched_flow_layers
from pyro_manifold.models.noisy_injective_flow import NoisyInjectiveFlow
from pyro_manifold.models.vq_autoencoder import VQAutoencoder
from pyro_manifold.models.vq_flow import CHART_FLOWS, VQFlow, conditional_flow_layers

__all__ = [
    "CHART_FLOWS",
    "FLOWS",
    "Flow",
    "FlowVAE",
    "NoisyInjectiveFlow",
    "VQAutoencoder",
    "VQFlow",
    "VariationalMixtureOfFlows",
    "batched_flow_layers",
    "conditional_flow_layers",
    "flow_layers",
]
