r"""The package's own exception types, so that a caller can tell our refusals from bugs.

Every error the package raises on purpose is one of these types (a test reads every
module's ``raise`` statements to keep it so). Each derives from :class:`PyroManifoldError`
and also from the built-in type a Python user would expect (``ValueError`` for a wrong
value, ``TypeError`` for a wrong type, ``FileNotFoundError`` for missing data, ``OSError``
for a directory that cannot be written, ``RuntimeError`` for a computation that could not
finish), so ``except ValueError`` keeps working. The message names the argument or file,
what was expected and what was given; the command line prints it on one line.

Example:
    >>> from pyro_manifold.models import Flow
    >>> try:
    ...     Flow(0)
    ... except PyroManifoldError as e:
    ...     print(type(e).__name__, isinstance(e, ValueError))
    ArgumentError True
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ComputationError",
    "DataFormatError",
    "DataNotFoundError",
    "PyroManifoldError",
    "RunDirectoryError",
    "RunLockedError",
]


class PyroManifoldError(Exception):
    """Base of every error the package raises on purpose."""


class ArgumentError(PyroManifoldError, ValueError):
    """An argument has a wrong value, shape, dtype, device or range."""


class ArgumentTypeError(PyroManifoldError, TypeError):
    """An argument has a wrong type (an integer tensor where a floating one is needed, say)."""


class CheckpointError(PyroManifoldError, ValueError):
    """A checkpoint file is unreadable, corrupted, refused, or does not fit the run.

    Raised before anything is written or any tensor changed: the model and the run
    directory are left as they were.
    """


class RunDirectoryError(PyroManifoldError, OSError):
    """A directory to write to cannot be used: a file, not writable, or held by another run."""


class RunLockedError(RunDirectoryError):
    """Another live process is writing to the run directory.

    Attributes:
        holder: what the lock file says of its owner (``pid``, ``host``, ``since``).
    """

    def __init__(self, message: str, holder: dict | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """There is no checkpoint file where one was asked for."""


class DataNotFoundError(PyroManifoldError, FileNotFoundError):
    """A data set (MNIST, a classifier's weights) is not where it was looked for."""


class DataFormatError(PyroManifoldError, ValueError):
    """A data file is there but is not what it should be.

    Truncated, a foreign header, or sizes that disagree with its companion file (MNIST's
    images and labels, say); the message names the file, the expected and the found.
    """


class ComputationError(PyroManifoldError, RuntimeError):
    """A computation could not finish: a non-finite loss, an inverse that did not converge."""
