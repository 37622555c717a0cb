"""PyroModules that bundle a ``model()`` and a ``guide()`` for each method."""

from pyro_manifold.models.flow import FLOWS, Flow

__all__ = ["FLOWS", "Flow"]
