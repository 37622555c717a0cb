"""Every tutorial runs headless in smoke mode and writes its figures.

The tutorials run once per session, inside the documentation build (the ``docs_build``
fixture of ``tests/conftest.py``): sphinx-gallery executes each script cell by cell with
``--smoke --out DIR`` as its arguments, as ``python tutorials/NAME.py --smoke --out DIR``
would, and the gallery shows the PNG files it writes into ``DIR``.
"""

import json
import math
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.py"))


def test_there_are_tutorials():
    assert TUTORIALS


def _failure_report(log: str) -> str:
    """The lines that name an error (from any process the tutorial started), then the tail."""
    keys = ("Error", "error:", "what()", "terminate called", "Exception", "Traceback")
    named = [line for line in log.splitlines() if any(k in line for k in keys)]
    return "\n".join(named[:40]) + "\n--- last 3000 characters ---\n" + log[-3000:]


@pytest.mark.parametrize("script", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_smoke(script, docs_build):
    run = docs_build.tutorial_runs().get(script.stem)
    assert run is not None, "the docs build did not run it:\n" + _failure_report(docs_build.log)
    assert run["passed"], (
        run["traceback"] + "\n--- build log ---\n" + _failure_report(docs_build.log)
    )
    assert list(docs_build.tutorial_output(script.stem).rglob("*.png")), "it wrote no figure"


#: The result each tutorial's MNIST section records: (key, or the value of "data").
MNIST_RESULTS = {
    "noisy_injective_flows": "mnist_last_loss_per_image",
    "variational_mixture_of_flows": "mnist/semi_supervised",
    "vq_flows": "mnist_reconstruction_mse_logit_space",
    "flow_vae": "MNIST",
}


@pytest.mark.mnist
@pytest.mark.parametrize("stem", sorted(MNIST_RESULTS))
def test_tutorial_mnist_section_runs_in_smoke_mode(stem, mnist_root, docs_build):
    """The MNIST blocks a reader copies run in the suite too, at tiny sizes."""
    run = docs_build.tutorial_runs().get(stem)
    assert run is not None and run["passed"], run and run["traceback"]
    results = json.loads((docs_build.tutorial_output(stem) / "results.json").read_text())
    expected = MNIST_RESULTS[stem]
    assert expected in results or results.get("data") == expected, sorted(results)
    if expected in results and isinstance(results[expected], float):
        assert math.isfinite(results[expected])
    figures = list(docs_build.tutorial_output(stem).glob("mnist*.png"))
    assert figures or stem == "flow_vae", f"{stem} wrote no mnist*.png figure"
