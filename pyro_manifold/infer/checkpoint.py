r"""Checkpoints that hold only tensors and plain data, written atomically.

A checkpoint is a dictionary saved with :func:`torch.save` and read back with
``torch.load(weights_only=True)``, so loading one never runs code from the file. It is
written to a temporary file in the same folder, flushed to disk and then renamed over
the old one (:func:`os.replace` is atomic on POSIX), so the file on disk is always a
complete checkpoint: either the previous one or the new one. A writer killed half-way
leaves only its temporary file, which the next successful write of the same checkpoint
deletes.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "pyro_manifold.checkpoint/1"


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename).

    Args:
        state: tensors and plain Python data only (dicts, lists, tuples, numbers,
            strings, ``None``); a ``"format"`` key is added.
        path: destination file; its folder is created if missing.

    Returns:
        The path written.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "run", "checkpoint.pt")
        >>> _ = save_checkpoint({"step": 3, "w": torch.ones(2)}, path)
        >>> load_checkpoint(path)["step"]
        3
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({**state, "format": CHECKPOINT_FORMAT}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _remove_stale_temporaries(path, older_than=os.stat(path).st_mtime)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _remove_stale_temporaries(path: Path, older_than: float) -> None:
    """Delete half-written temporaries of ``path`` left by a writer that was killed."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if stale.stat().st_mtime <= older_than:
                stale.unlink()
        except FileNotFoundError:  # another cleaner got there first
            pass


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, refusing anything else.

    Only tensors and plain data are accepted (``torch.load(weights_only=True)``): a file
    that carries a pickled object, is truncated or corrupted, or is not a
    pyro_manifold checkpoint raises ``ValueError`` naming the file.

    Args:
        path: the checkpoint file.
        map_location: where to put the tensors (default CPU).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "c.pt")
        >>> _ = save_checkpoint({"step": 1}, path)
        >>> sorted(load_checkpoint(path))
        ['format', 'step']
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"checkpoint {path}: refused, it holds objects other than tensors and plain "
            f"data (loading it would run code from the file): {e}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"checkpoint {path}: truncated or corrupted file ({e})") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {path}: expected format {CHECKPOINT_FORMAT!r}, got {found!r}")
    return state
