r"""Checkpoints that hold only tensors and plain data, written atomically.

A checkpoint is a dictionary saved with :func:`torch.save` and read back with
``torch.load(weights_only=True)``, so loading one never runs code from the file. It is
written to a temporary file in the same folder, flushed to disk and then renamed over
the old one (:func:`os.replace` is atomic on POSIX), so the file on disk is always a
complete checkpoint: either the previous one or the new one. A writer killed half-way
leaves only its temporary file, which the next successful write of the same checkpoint
deletes.

Every checkpoint carries a SHA-256 ``"digest"`` of its content: each tensor's dtype,
shape and bytes and every plain value with its type, in a canonical order. Loading
recomputes it, so one byte changed anywhere (a flipped bit inside a tensor, which
``torch.load`` itself would not notice) is refused with
:class:`~pyro_manifold.errors.CheckpointError`. What a checkpoint may hold is checked
before anything is written: tensors, ``dict`` (string or integer keys), ``list``,
``tuple``, ``int``, ``float``, ``bool``, ``str`` and ``None``; numpy scalars and
``os.PathLike`` values are converted to ``int``/``float``/``bool`` and ``str``; anything
else is refused, so ``save_checkpoint`` never writes a file that
:func:`load_checkpoint` would refuse.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_manifold.errors import CheckpointError, CheckpointNotFoundError

__all__ = [
    "CHECKPOINT_FORMAT",
    "content_digest",
    "load_checkpoint",
    "plain_data",
    "save_checkpoint",
]

#: The format tag written into every checkpoint; loading refuses any other.
CHECKPOINT_FORMAT = "pyro_manifold.checkpoint/2"
_RESERVED = ("format", "digest")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename).

    Args:
        state: tensors and plain Python data only (dicts with string or integer keys,
            lists, tuples, numbers, strings, ``None``; numpy scalars and paths are
            converted); ``"format"`` and ``"digest"`` keys are added.
        path: destination file; its folder is created if missing.

    Returns:
        The path written.

    Raises:
        CheckpointError: ``state`` holds something else (the message gives its place,
            e.g. ``state['config']['model']``), or uses a reserved key; nothing is
            written.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "run", "checkpoint.pt")
        >>> _ = save_checkpoint({"step": 3, "w": torch.ones(2)}, path)
        >>> load_checkpoint(path)["step"]
        3
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"state: expected a dict, got {type(state).__name__}")
    reserved = [k for k in _RESERVED if k in state]
    if reserved:
        raise CheckpointError(f"state: the keys {reserved} are reserved for the checkpoint")
    state = {**plain_data(state, "state"), "format": CHECKPOINT_FORMAT}
    state["digest"] = content_digest(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
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
    that carries a pickled object, is truncated, is not a pyro_manifold checkpoint of
    this format, or whose content does not match its SHA-256 digest (one byte changed
    anywhere) raises :class:`~pyro_manifold.errors.CheckpointError` naming the file.

    Args:
        path: the checkpoint file.
        map_location: where to put the tensors (default CPU).

    Raises:
        CheckpointNotFoundError: there is no file at ``path`` (a ``FileNotFoundError``);
            for a run directory, the message names the ``checkpoint.pt`` in it.
        CheckpointError: the file is refused, for the reason the message gives.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "c.pt")
        >>> _ = save_checkpoint({"step": 1}, path)
        >>> sorted(load_checkpoint(path))
        ['digest', 'format', 'step']
    """
    path = Path(path)
    if path.is_dir():
        inside = path / "checkpoint.pt"
        hint = f" (its checkpoint.pt: {inside})" if inside.is_file() else ""
        raise CheckpointNotFoundError(
            f"checkpoint: expected a file at {path}, found a directory{hint}"
        )
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint: expected a file at {path}, found none")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path}: refused, it holds objects other than tensors and plain "
            f"data (loading it would run code from the file): {e}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path}: expected a checkpoint file, got a truncated, corrupted or "
            f"foreign file ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"checkpoint {path}: expected format {CHECKPOINT_FORMAT!r}, got {found!r}"
        )
    recorded = state.pop("digest", None)
    actual = content_digest(state)
    if recorded != actual:
        raise CheckpointError(
            f"checkpoint {path}: expected content digest {recorded!r}, computed {actual!r}: "
            "the file was changed or damaged after it was written"
        )
    state["digest"] = recorded
    return state


def content_digest(state: dict) -> str:
    """SHA-256 (hex) of ``state``'s content, the same for equal content wherever it lives.

    A tensor contributes its dtype, shape and bytes (moved to the CPU, made contiguous),
    so a tensor loaded onto another device has the same digest; a ``"digest"`` key is
    left out. Dict entries are taken in a sorted order of their keys.

    Example:
        >>> a = content_digest({"w": torch.ones(2), "step": 3})
        >>> a == content_digest({"step": 3, "w": torch.ones(2)})
        True
        >>> a == content_digest({"step": 3, "w": torch.tensor([1.0, 1.0 + 1e-7])})
        False
    """
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "digest"})
    return h.hexdigest()


def _feed(h: Any, value: Any) -> None:
    """Add a type-tagged, length-prefixed encoding of ``value`` to the hash ``h``."""

    def chunk(tag: bytes, payload: bytes | memoryview) -> None:
        h.update(tag + struct.pack("<Q", len(payload)))
        h.update(payload)  # streamed: the same digest as hashing the concatenation

    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        chunk(b"T", f"{t.dtype}{tuple(t.shape)}".encode())
        raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else None
        chunk(b"B", memoryview(raw) if raw is not None else b"")  # no copy of the bytes
    elif isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: (type(kv[0]).__name__, str(kv[0])))
        chunk(b"D", struct.pack("<Q", len(items)))
        for k, v in items:
            _feed(h, k)
            _feed(h, v)
    elif isinstance(value, list | tuple):
        chunk(b"L" if isinstance(value, list) else b"U", struct.pack("<Q", len(value)))
        for v in value:
            _feed(h, v)
    else:  # None, bool, int, float, str (checked by plain_data before saving)
        chunk(type(value).__name__.encode(), repr(value).encode())


def plain_data(value: Any, where: str) -> Any:
    """``value`` with numpy scalars and paths made plain, or a ``CheckpointError``.

    Raises :class:`~pyro_manifold.errors.CheckpointError` on what a checkpoint cannot hold.

    What :func:`save_checkpoint` does to its ``state`` (``where`` names it in messages).

    Example:
        >>> import numpy as np, pathlib
        >>> plain_data({"lr": np.float32(0.5), "dir": pathlib.Path("/runs/a")}, "config")
        {'lr': 0.5, 'dir': '/runs/a'}
    """
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, os.PathLike):
        return str(os.fspath(value))
    if isinstance(value, np.generic):  # a numpy scalar
        value = value.item()
    for plain in (bool, int, float, str):  # np.float64, an IntEnum, ...
        if isinstance(value, plain):
            return plain(value)
    if isinstance(value, dict):
        bad = [k for k in value if type(k) not in (str, int)]
        if bad:
            raise CheckpointError(
                f"{where}: expected str or int keys, got {type(bad[0]).__name__} {bad[0]!r}"
            )
        return {k: plain_data(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [plain_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise CheckpointError(
        f"{where}: expected tensors and plain data (dict, list, tuple, int, float, bool, "
        f"str, None), got {type(value).__module__}.{type(value).__qualname__} {value!r:.80}"
    )
