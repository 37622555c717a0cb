"""Training: ``fit`` (SVI over mini-batches) and checkpoints."""

from pyro_manifold.infer.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from pyro_manifold.infer.fit import FitResult, NonFiniteLossError, fit, resolve_device

__all__ = [
    "CHECKPOINT_FORMAT",
    "FitResult",
    "NonFiniteLossError",
    "fit",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
]
