"""Pyro distributions: the noisy injective likelihood, its stochastic inverse, mixtures."""

from pyro_manifold.distributions.block_linear import BlockLinear
from pyro_manifold.distributions.chart_mixture import Atlas, ChartMixture
from pyro_manifold.distributions.gaussian_mixture import GaussianMixture
from pyro_manifold.distributions.gaussian_nif import GaussianNIF
from pyro_manifold.distributions.mixture_of_flows import MixtureOfFlows, SelectedComponent
from pyro_manifold.distributions.noisy_injective import (
    NoisyInjective,
    StochasticInverse,
    log_manifold_term,
)

__all__ = [
    "Atlas",
    "BlockLinear",
    "ChartMixture",
    "GaussianMixture",
    "GaussianNIF",
    "MixtureOfFlows",
    "NoisyInjective",
    "SelectedComponent",
    "StochasticInverse",
    "log_manifold_term",
]
