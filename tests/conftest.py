"""Shared fixtures: the MNIST folder, and one documentation build per test session.

``mnist_root`` skips a test, saying why, when the MNIST files are not where
``PYRO_MANIFOLD_DATA`` points. The documentation build (``sphinx-build -W --keep-going``,
into a temporary folder) runs every tutorial in smoke mode through sphinx-gallery
(``--smoke --out DIR``, see ``docs/gallery_hooks.py``), so the tutorials run once for
both: the gallery's pages and the tutorial tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = sorted((ROOT / "tutorials").glob("*.py"))
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture
def mnist_root() -> Path:
    """The MNIST data folder; skips the test, saying why, when it is unavailable."""
    root = os.environ.get("PYRO_MANIFOLD_DATA")
    if not root:
        pytest.skip(
            "PYRO_MANIFOLD_DATA is not set (point it at a folder holding MNIST/raw/*-ubyte)"
        )
    raw = Path(root) / "MNIST" / "raw"
    missing = [f for f in MNIST_FILES if not (raw / f).is_file()]
    if missing:
        pytest.skip(
            f"PYRO_MANIFOLD_DATA={root} lacks the MNIST files {', '.join(missing)} in {raw}"
        )
    return Path(root)


def _write_idx(path: Path, array, magic: int) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for size in array.shape:
            f.write(struct.pack(">I", size))
        f.write(array.numpy().astype("uint8").tobytes())


@pytest.fixture
def fake_mnist():
    """``make(root, num_train=200, num_test=50)``: a tiny synthetic MNIST under ``root``.

    Digit :math:`k` is drawn as a bright horizontal bar on row :math:`3 + 2k` over
    uniform noise, in torchvision's file layout (``root/MNIST/raw/*-ubyte``); returns
    ``root``.
    """

    def make(root: Path, num_train: int = 200, num_test: int = 50) -> Path:
        import torch

        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        g = torch.Generator().manual_seed(0)
        for split, n in (("train", num_train), ("t10k", num_test)):
            labels = torch.randint(0, 10, (n,), generator=g)
            images = torch.randint(0, 60, (n, 28, 28), generator=g)
            images[torch.arange(n), 3 + 2 * labels] = 255
            _write_idx(raw / f"{split}-images-idx3-ubyte", images, 0x803)
            _write_idx(raw / f"{split}-labels-idx1-ubyte", labels, 0x801)
        return Path(root)

    return make


@dataclass
class DocsBuild:
    """A finished documentation build: its exit status, log and folders."""

    returncode: int
    log: str = field(repr=False)
    src: Path  # the copied source folder: generated gallery pages and the tutorials' --out
    html: Path  # the built HTML
    complete: bool  # every tutorial was run (False when the session selected some of them)

    def tutorial_runs(self) -> dict[str, dict]:
        """``{stem: {"passed": bool, "traceback": str | None}}`` of the tutorials that ran."""
        status = self.src / "_tutorial_output" / "runs.json"
        return json.loads(status.read_text()) if status.exists() else {}

    def tutorial_output(self, stem: str) -> Path:
        """The ``--out`` folder the tutorial ``stem`` wrote into."""
        return self.src / "_tutorial_output" / stem

    def problems(self, limit: int = 6000) -> str:
        """The build's warnings and errors (with the lines that follow), else its last lines."""
        lines = self.log.splitlines()
        keep = [
            i
            for i, line in enumerate(lines)
            if re.search(r"WARNING|ERROR|Error|Traceback|failed", line)
        ]
        text = "\n".join(lines[i] for i in keep) if keep else "\n".join(lines[-40:])
        return text[-limit:]


def _selected_tutorials(session: pytest.Session) -> list[str] | None:
    """The tutorials this session's tests need run: ``None`` for all of them."""
    needed = []
    for item in session.items:
        path = Path(str(item.path)).name
        if path == "test_docs.py":
            return None
        match = re.fullmatch(
            r"test_tutorial_(?:smoke|mnist_section_runs_in_smoke_mode)\[(.+)\]", item.name
        )
        if path == "test_tutorials.py" and match:
            needed.append(match.group(1))
    return needed


@pytest.fixture(scope="session")
def docs_build(tmp_path_factory, request) -> DocsBuild:
    """Build the documentation once (tutorials run in smoke mode) and return the result."""
    tmp = tmp_path_factory.mktemp("docs")
    src, html = tmp / "src", tmp / "html"
    shutil.copytree(
        DOCS,
        src,
        ignore=shutil.ignore_patterns(
            "_build", "_tutorial_output", "tutorials", "sg_execution_times.rst", "__pycache__"
        ),
    )
    env = {**os.environ, "MPLBACKEND": "Agg"}
    selected = _selected_tutorials(request.session)
    if selected is not None:  # a session that runs only some tutorial tests runs only those
        env["PYRO_MANIFOLD_DOCS_TUTORIALS"] = ",".join(selected)
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html"]
    proc = subprocess.run(
        [*cmd, "-c", str(DOCS), str(src), str(html)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
        cwd=ROOT,
    )
    return DocsBuild(
        returncode=proc.returncode,
        log=proc.stdout + proc.stderr,
        src=src,
        html=html,
        complete=selected is None,
    )
