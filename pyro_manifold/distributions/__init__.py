"""Pyro distributions: the noisy injective likelihood, its stochastic inverse, mixtures."""

from pyro_manifold.distributions.block_linear import BlockLinear
from pyro_manifold.distributions.noisy_injective import (
    NoisyInjective,
    StochasticInverse,
    log_manifold_term,
)

__all__ = [
    "BlockLinear",
    "NoisyInjective",
    "StochasticInverse",
    "log_manifold_term",
]
