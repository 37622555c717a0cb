"""Every tutorial runs headless in smoke mode and writes its figures."""

import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.py"))


def test_there_are_tutorials():
    assert TUTORIALS


def _failure_report(stderr: str) -> str:
    """The lines that name an error (from any process the tutorial started), then the tail."""
    keys = ("Error", "error:", "what()", "terminate called", "Exception", "Traceback")
    named = [line for line in stderr.splitlines() if any(k in line for k in keys)]
    return "\n".join(named[:40]) + "\n--- last 3000 characters ---\n" + stderr[-3000:]


@pytest.mark.parametrize("script", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_smoke(script, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(script), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={"MPLBACKEND": "Agg", **__import__("os").environ},
    )
    assert proc.returncode == 0, _failure_report(proc.stderr)
    assert list(out.glob("*.png")), "the tutorial wrote no figure"
