r"""A run directory with one writer at a time, checked before anything is written to it.

:func:`check_run_dir` says whether a path can be a run directory (a directory, or a path
that can be created as one, and writable) without creating or changing anything, so a
caller can refuse a bad ``run_dir`` before it trains. :class:`RunLock` then holds the
directory for one writer: it takes an exclusive ``flock`` on the file ``.lock`` inside it
and writes the owner's pid, host and start time there. The operating system releases the
lock when its process ends, however it ends (a ``SIGKILL`` included), so a lock left by a
dead process is taken over by the next writer with no clean-up and no race (a lock taken
on a file that a writer abandoning the directory deleted meanwhile is dropped and taken
again on the file there now); a second
live writer is refused with :class:`~pyro_manifold.errors.RunLockedError` naming the
holder, and the refusal changes no file. Two writers in one process are refused too.

The lock is advisory and needs a file system with working ``flock`` (local disks do; some
network file systems do not).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from pyro_manifold.errors import RunDirectoryError, RunLockedError

__all__ = ["LOCK_NAME", "RunLock", "check_run_dir"]

#: The lock file a writer holds (``flock``) inside a run directory.
LOCK_NAME = ".lock"


def check_run_dir(
    run_dir: str | os.PathLike, name: str = "run_dir", files: Sequence[str] = ()
) -> Path:
    """Check that ``run_dir`` can be a run directory, creating and changing nothing.

    It must be a directory that this process can write to, or a path whose nearest
    existing ancestor is such a directory (so that it can be created), and none of
    ``files``, the files a writer will replace in it, may be a directory there.

    Args:
        run_dir: the path given.
        name: the argument's name, used in the message.
        files: names of files the run will write in it (e.g. ``"checkpoint.pt"``).

    Returns:
        ``run_dir`` as a :class:`~pathlib.Path`.

    Raises:
        RunDirectoryError: the path is a file, or the directory (or the ancestor it
            would be created in) is not writable.

    Example:
        >>> import tempfile
        >>> check_run_dir(tempfile.mkdtemp() + "/new/run").name
        'run'
    """
    if not isinstance(run_dir, str | os.PathLike):
        raise RunDirectoryError(f"{name}: expected a path, got {type(run_dir).__name__}")
    path = Path(run_dir)
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    what = "the directory" if existing == path else f"its ancestor {str(existing)!r}"
    if existing == path and not path.is_dir():
        raise RunDirectoryError(f"{name}: expected a directory, got the file {str(path)!r}")
    if not existing.is_dir():
        raise RunDirectoryError(
            f"{name}: expected a path that can be created as a directory, but "
            f"{str(existing)!r} is a file"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirectoryError(
            f"{name}: expected a writable directory for {str(path)!r}, but {what} is read-only"
        )
    for file in files:
        if (path / file).is_dir():
            raise RunDirectoryError(
                f"{name}: expected {file} in {str(path)!r} to be a file it can replace, got a "
                "directory"
            )
    return path


class RunLock:
    """Exclusive, crash-safe ownership of a run directory (``with RunLock(path): ...``).

    Entering creates the directory if needed and locks ``path/.lock``; leaving (or the
    process ending) releases it. The lock file stays behind with the last owner's
    details, except after :meth:`abandon` of a directory that had none (a set-up that
    failed leaves the file system as it found it); a writer that locked the file just as
    it was deleted drops it and locks the one at the path, so two writers never hold
    different files.

    Args:
        run_dir: the run directory.

    Raises:
        RunLockedError: another live process (or another ``RunLock`` of this process)
            holds the directory; its ``holder`` attribute has the owner's pid, host and
            start time. Nothing was written.
        RunDirectoryError: ``run_dir`` cannot be a run directory (see :func:`check_run_dir`).

    Example:
        >>> import tempfile
        >>> run = tempfile.mkdtemp()
        >>> with RunLock(run):
        ...     try:
        ...         RunLock(run).acquire()
        ...     except RunLockedError as e:
        ...         print(e.holder["pid"] == os.getpid())
        True
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = check_run_dir(run_dir)
        self._fd: int | None = None
        self._created: list[Path] = []
        self._previous: bytes | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`~pyro_manifold.errors.RunLockedError` (the holder)."""
        if self._fd is not None:
            return self
        lock_file = self.path / LOCK_NAME
        while True:  # what this writer creates and finds is read again at each try
            missing = [d for d in (self.path, *self.path.parents) if not d.exists()]
            previous = lock_file.read_bytes() if lock_file.is_file() else None
            fd = self._open_and_lock(lock_file)
            if _is_file_at(fd, lock_file):
                break
            # a writer that abandoned the directory deleted the file between our open and
            # our lock: holding that orphan would let the next writer in beside us
            os.close(fd)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd, self._created, self._previous = fd, missing, previous
        return self

    def _open_and_lock(self, lock_file: Path) -> int:
        """Open (creating) ``lock_file`` and lock it, or raise naming the holder."""
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirectoryError(
                f"run_dir {str(self.path)!r}: expected to open its lock file {LOCK_NAME}, "
                f"got {type(e).__name__}: {e.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"run_dir {str(self.path)!r}: expected no other writer, but it is held by "
                f"{_describe(holder)}; wait for that run to finish or choose another run_dir",
                holder,
            ) from None
        return fd

    def release(self) -> None:
        """Give the lock up (closing the file releases it); a no-op when not held."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def abandon(self) -> None:
        """Release, leaving the file system as :meth:`acquire` found it (a no-op when not held).

        For a run that failed before it wrote anything: the lock file gets its previous
        content back (or goes, if there was none), while still held, and the directories
        that :meth:`acquire` created are removed while they are empty.
        """
        if self._fd is None:
            return
        if self._previous is None:
            (self.path / LOCK_NAME).unlink()
        else:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, self._previous, 0)
        self.release()
        for directory in self._created:  # deepest first
            try:
                directory.rmdir()
            except OSError:  # not empty: something else was put there meanwhile
                return

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _is_file_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the one at ``path`` now (not deleted or replaced)."""
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _read_holder(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        holder = json.loads(text)
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "a process that has not yet written its details"
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
        f"since {holder.get('since', '?')}"
    )
