"""Hooks that let sphinx-gallery run the tutorials as the plain scripts they are.

Each tutorial is executed in smoke mode with ``--smoke --out DIR`` as its arguments; the
PNG files it writes into ``DIR`` are shown under the cell that wrote them. Sphinx-gallery
imports these by name (``"gallery_hooks.reset_argv"``), which keeps the configuration
picklable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

#: Where the tutorials' ``--out`` folders go, relative to the Sphinx source folder.
OUTPUT_DIR = "_tutorial_output"

#: The gallery's order (the README's); a tutorial not listed comes after these, by name.
ORDER = (
    "classic_flows",
    "noisy_injective_flows",
    "variational_mixture_of_flows",
    "vq_flows",
    "flow_vae",
    "own_model",
    "distributed_training",
)

# PNG files already shown, per output folder: {folder: {path in it: mtime_ns}}.
_shown: dict[str, dict[str, int]] = {}


def output_dir(gallery_conf: dict, src_file: str | Path) -> Path:
    """The ``--out`` folder of one tutorial in this build."""
    return Path(gallery_conf["src_dir"]) / OUTPUT_DIR / Path(src_file).stem


def reset_argv(gallery_conf: dict, script_vars: dict) -> list[str]:
    """Arguments of a tutorial run: smoke mode, figures into a fresh folder of its own."""
    out = output_dir(gallery_conf, script_vars["src_file"])
    shutil.rmtree(out, ignore_errors=True)  # no figure of an earlier build is shown
    _shown[str(out)] = {}
    return ["--smoke", "--out", str(out)]


def png_scraper(block, block_vars: dict, gallery_conf: dict) -> str:
    """Show the PNG files that the cell just run wrote (new or rewritten) into ``--out``."""
    from sphinx_gallery.scrapers import figure_rst

    out = output_dir(gallery_conf, block_vars["src_file"])
    shown = _shown.setdefault(str(out), {})
    pngs = ((p.stat().st_mtime_ns, p.relative_to(out).as_posix(), p) for p in out.rglob("*.png"))
    written = sorted(png for png in pngs if shown.get(png[1]) != png[0])
    rst = ""
    for mtime, name, path in written:
        target = block_vars["image_path_iterator"].next()
        shutil.copyfile(path, target)
        shown[name] = mtime
        rst += figure_rst([target], gallery_conf["src_dir"], name)  # one figure, its name
    return rst


def reset_state(gallery_conf: dict, fname: str | None) -> None:
    """Give every tutorial a fresh Pyro parameter store and torch's defaults."""
    import pyro
    import torch

    pyro.clear_param_store()
    pyro.enable_validation(True)
    torch.set_default_dtype(torch.float32)
    torch.set_grad_enabled(True)


class TutorialOrder:
    """Sort key of the gallery: :data:`ORDER` first, then the others by file name."""

    def __init__(self, src_dir: str) -> None:
        self.src_dir = src_dir

    def __repr__(self) -> str:  # a stable repr: Sphinx compares configurations by it
        return "TutorialOrder"

    def __call__(self, filename: str) -> tuple[int, str]:
        """The key of one tutorial file."""
        stem = Path(filename).stem
        return (ORDER.index(stem) if stem in ORDER else len(ORDER), stem)


def write_run_status(app, exception) -> None:
    """Write ``_tutorial_output/runs.json``: which tutorials ran, and each failure's traceback.

    Connected to ``build-finished`` before sphinx-gallery's own summary, so the file is
    written also when that summary fails the build.
    """
    conf = app.config.sphinx_gallery_conf
    if exception is not None or not conf["plot_gallery"]:
        return
    runs = {Path(p).stem: {"passed": True, "traceback": None} for p in conf["passing_examples"]}
    for path, traceback in conf["failing_examples"].items():
        runs[Path(path).stem] = {"passed": False, "traceback": traceback}
    status = Path(app.srcdir) / OUTPUT_DIR / "runs.json"
    status.parent.mkdir(parents=True, exist_ok=True)
    status.write_text(json.dumps(runs, indent=1, sort_keys=True))
