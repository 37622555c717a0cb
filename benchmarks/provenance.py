"""The command, the commit and the machine of a benchmark run, for its JSON.

Every result JSON records these, so a figure never outlives its code unseen: RESULTS.md
cites the commit, and ``uncommitted_changes`` says when the tree differed from it.

Example::

    >>> from provenance import provenance  # benchmarks/ is the script's directory
    >>> sorted(provenance())
    ['command', 'commit', 'machine', 'uncommitted_changes']
"""

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch


def _git(*cmd):
    """``git cmd`` in this checkout; None where git or the repository is missing."""
    try:
        out = subprocess.run(["git", *cmd], capture_output=True, text=True, timeout=30,
                             cwd=Path(__file__).resolve().parent)  # fmt: skip
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance() -> dict:
    """``command`` (as run), ``commit`` (HEAD), ``uncommitted_changes`` and ``machine``."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "command": " ".join(["python", *sys.argv]),
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes": None if status is None else bool(status),
        "machine": {
            "host": platform.node(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }
