"""Imports run downward only: the layer table of the design notes, checked on every module.

Every ``import`` and ``from ... import`` of every module of the package is read with
:mod:`ast`, at any depth (inside functions, methods and ``if TYPE_CHECKING:`` blocks too),
and a module may import only modules of its own layer or below. Doctest examples are
strings to :mod:`ast`, so they are exempt. The package's own ``__init__`` gathers the
subpackages for the user and sits above every layer.
"""

import ast
from pathlib import Path

import pytest

import pyro_manifold

PACKAGE = Path(pyro_manifold.__file__).parent

#: Layer of each top-level module or subpackage of pyro_manifold; higher may import lower.
LAYERS = {
    "__main__": 4,
    "demo": 4,
    "experiment": 4,
    "models": 3,
    "infer": 2,
    "metrics": 2,
    "plotting": 2,
    "transforms": 1,
    "distributions": 1,
    "nn": 1,
    "datasets": 1,
    "_validation": 0,
    "_math": 0,
    "_parallel": 0,
    "_registration": 0,
    "_cache": 0,
    "errors": 0,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, name: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, module)`` for every import of a pyro_manifold module in ``source``."""
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # ``from pyro_manifold import models`` imports the subpackage ``models``
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return [(line, m) for line, m in found if m.split(".")[0] == "pyro_manifold"]


def _imported(path: Path) -> list[tuple[int, str]]:
    return _imports(path.read_text(), _module_name(path), path.name == "__init__.py")


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_module_has_a_layer():
    missing = {_module_name(p) for p in MODULES if _layer(_module_name(p)) is None}
    assert not missing, f"add to LAYERS (and to the design notes): {sorted(missing)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_run_downward(path):
    own = _layer(_module_name(path))
    upward = [
        f"line {line}: {module} (layer {_layer(module)})"
        for line, module in _imported(path)
        if _layer(module) is not None and _layer(module) > own
    ]
    assert not upward, f"{_module_name(path)} (layer {own}) imports upward: {upward}"


def test_subpackages_import_each_other_without_a_cycle():
    edges: dict[str, set[str]] = {}
    for path in MODULES:
        own = _module_name(path).split(".")[1]
        for _, module in _imported(path):
            other = module.split(".")[1] if "." in module else None
            if other in LAYERS and other != own:
                edges.setdefault(own, set()).add(other)
    done: set[str] = set()

    def visit(node: str, trail: tuple[str, ...]) -> None:
        assert node not in trail, f"import cycle: {' -> '.join((*trail, node))}"
        if node not in done:
            for nxt in sorted(edges.get(node, ())):
                visit(nxt, (*trail, node))
            done.add(node)

    for node in sorted(edges):
        visit(node, ())


def test_the_check_sees_imports_in_functions_type_checking_and_relative_form():
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from ..metrics import bits_per_dim\n"
        "def f():\n"
        "    from pyro_manifold.models import Flow\n"
        "    import pyro_manifold.experiment\n"
        "    from pyro_manifold import demo\n"
    )
    found = {m for _, m in _imports(source, "pyro_manifold.infer.fit", is_package=False)}
    assert {"pyro_manifold.metrics", "pyro_manifold.models", "pyro_manifold.experiment"} <= found
    assert "pyro_manifold.demo" in found
    assert _layer("pyro_manifold.models") > _layer("pyro_manifold.infer.fit")
