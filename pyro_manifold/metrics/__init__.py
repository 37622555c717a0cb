"""pyro_manifold.metrics: likelihoods, importance-weighted bounds, clustering and sample quality.

- :mod:`~pyro_manifold.metrics.likelihood`: bits per dimension, logit-space conventions,
  batched mean log-likelihoods with standard errors.
- :mod:`~pyro_manifold.metrics.importance`: the IWAE bound for any Pyro model and guide.
- :mod:`~pyro_manifold.metrics.vae`: that bound for a VAE over a data set, in batches.
- :mod:`~pyro_manifold.metrics.clustering`: accuracy under the best matching, NMI, ARI.
- :mod:`~pyro_manifold.metrics.sample_quality`: distance to a known manifold, MMD, and
  drawing many samples in bounded memory.
- :mod:`~pyro_manifold.metrics.frechet`: a Fréchet distance on a small MNIST classifier's
  features (not Inception FID).
"""

from pyro_manifold.metrics.clustering import (
    adjusted_rand_index,
    clustering_accuracy,
    contingency_table,
    normalized_mutual_information,
)
from pyro_manifold.metrics.frechet import (
    feature_statistics,
    frechet_distance,
    load_mnist_classifier,
    mnist_frechet_distance,
    save_mnist_classifier,
    train_mnist_classifier,
)
from pyro_manifold.metrics.importance import importance_log_likelihood
from pyro_manifold.metrics.likelihood import (
    bits_per_dim,
    mean_log_likelihood,
    pixel_log_likelihood,
)
from pyro_manifold.metrics.sample_quality import (
    SAMPLE_BATCH,
    maximum_mean_discrepancy,
    mean_manifold_distance,
    sample_in_batches,
)
from pyro_manifold.metrics.vae import iwae_log_likelihood

__all__ = [
    "SAMPLE_BATCH",
    "adjusted_rand_index",
    "bits_per_dim",
    "clustering_accuracy",
    "contingency_table",
    "feature_statistics",
    "frechet_distance",
    "importance_log_likelihood",
    "iwae_log_likelihood",
    "load_mnist_classifier",
    "maximum_mean_discrepancy",
    "mean_log_likelihood",
    "mean_manifold_distance",
    "mnist_frechet_distance",
    "normalized_mutual_information",
    "pixel_log_likelihood",
    "sample_in_batches",
    "save_mnist_classifier",
    "train_mnist_classifier",
]
