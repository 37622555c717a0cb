"""pyro_manifold.distributions."""

__all__: list[str] = []
