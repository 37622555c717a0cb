"""PyroModules that bundle a ``model()`` and a ``guide()`` for each method."""

from pyro_manifold.models.flow import Flow
from pyro_manifold.models.flow_vae import FlowVAE
from pyro_manifold.models.mixture_of_flows import VariationalMixtureOfFlows
from pyro_manifold.models.noisy_injective_flow import NoisyInjectiveFlow
from pyro_manifold.models.vq_autoencoder import VQAutoencoder
from pyro_manifold.models.vq_flow import VQFlow

__all__ = [
    "Flow",
    "FlowVAE",
    "NoisyInjectiveFlow",
    "VQAutoencoder",
    "VQFlow",
    "VariationalMixtureOfFlows",
]
