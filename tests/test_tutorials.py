"""Every tutorial runs headless in smoke mode and writes its figures."""

import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.py"))


def test_there_are_tutorials():
    assert TUTORIALS


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
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(out.glob("*.png")), "the tutorial wrote no figure"
