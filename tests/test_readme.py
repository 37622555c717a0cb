"""The README's example program runs as printed."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    assert len(blocks[0].strip().splitlines()) <= 30
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    history = namespace["result"].history["loss"]
    assert history[-1] < history[0]


def test_readme_has_exactly_the_two_setup_commands():
    text = README.read_text()
    commands = re.findall(r"^    (python3 -m venv .*)$", text, flags=re.M)
    assert len(commands) == 2
    assert commands[0].endswith("-m pyro_manifold demo")
    assert "pytest" in commands[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "README.md" in ci
