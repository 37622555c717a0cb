"""The README's example program runs as printed."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _run(block):
    assert len(block.strip().splitlines()) <= 30
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    history = namespace["result"].history["loss"]
    # where SVI trained the program first, fit continues it: it ends below SVI's start
    # (its own first steps, a fresh Adam on mini-batches, may rise above SVI's end)
    start = namespace["losses"][0] if "losses" in namespace else history[0]
    assert history[-1] < start
    if len(namespace.get("losses", ())) <= 1:  # fit on its own: its history falls
        assert history[-1] < history[0] - 0.5
    return namespace


def test_readme_example_trains_with_fit_alone():
    """Without the SVI loop, fit trains the same program from scratch."""
    block = _blocks()[0]
    assert "for _ in range(200)]" in block
    losses = _run(block.replace("for _ in range(200)]", "for _ in range(1)]"))["losses"]
    assert len(losses) == 1


def test_readme_example_trains_under_pyros_own_svi():
    """The first block's program is an ordinary Pyro program: SVI alone trains it."""
    losses = _run(_blocks()[0])["losses"]
    assert losses[-1] < losses[0] - 0.5  # nats per point: it learned, not just moved


def test_readme_example_runs():
    blocks = _blocks()
    assert len(blocks) == 2
    _run(blocks[0])


def test_readme_bring_your_own_flow_runs():
    pytest.importorskip("zuko")
    _run(_blocks()[1])


def test_readme_has_exactly_the_two_setup_commands():
    text = README.read_text()
    commands = re.findall(r"^    (python3 -m venv .*)$", text, flags=re.M)
    assert len(commands) == 2
    assert commands[0].endswith("-m pyro_manifold demo")
    assert "pytest" in commands[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "README.md" in ci
