"""pyro_manifold.infer."""

__all__: list[str] = []
