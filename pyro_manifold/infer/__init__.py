"""Training: ``fit`` (SVI over mini-batches), synchronisation-free ELBOs and checkpoints."""

from pyro_manifold.infer.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from pyro_manifold.infer.elbo import FastTrace_ELBO, FastTraceEnum_ELBO, fast_elbo
from pyro_manifold.infer.fit import FitResult, NonFiniteLossError, fit, resolve_device

__all__ = [
    "CHECKPOINT_FORMAT",
    "FastTraceEnum_ELBO",
    "FastTrace_ELBO",
    "FitResult",
    "NonFiniteLossError",
    "fast_elbo",
    "fit",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
]
