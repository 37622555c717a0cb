"""Every tutorial runs headless in smoke mode and writes its figures.

The tutorials run once per session, inside the documentation build (the ``docs_build``
fixture of ``tests/conftest.py``): sphinx-gallery executes each script cell by cell with
``--smoke --out DIR`` as its arguments, as ``python tutorials/NAME.py --smoke --out DIR``
would, and the gallery shows the PNG files it writes into ``DIR``.
"""

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
