"""Every error the package raises on purpose is one of its own types (pyro_manifold.errors)."""

import ast
import inspect
from pathlib import Path

import pytest

import pyro_manifold
from pyro_manifold import errors

PACKAGE = Path(pyro_manifold.__file__).parent
# (AssertionError stays allowed: it marks code that cannot be reached)
BUILTINS = {"ValueError", "TypeError", "RuntimeError", "FileNotFoundError", "OSError",
            "KeyError", "IndexError", "Exception"}  # fmt: skip


def _raised_names(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name):
                yield node.lineno, exc.id


def test_no_module_raises_a_bare_builtin_error():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line} raises {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, name in _raised_names(ast.parse(path.read_text()))
        if name in BUILTINS
    ]
    assert not found, "raise one of pyro_manifold.errors instead:\n" + "\n".join(found)


@pytest.mark.parametrize("name", errors.__all__)
def test_each_error_is_ours_and_a_builtin(name):
    cls = getattr(errors, name)
    assert issubclass(cls, errors.PyroManifoldError)
    if cls is not errors.PyroManifoldError:
        builtin = [b for b in inspect.getmro(cls) if b.__module__ == "builtins"]
        assert builtin[0] is not Exception, f"{name} should also be a ValueError, TypeError, ..."


def test_the_package_errors_derive_from_ours():
    from pyro_manifold.infer import NonFiniteLossError
    from pyro_manifold.transforms.pcp_map import PCPMapInverseError

    for cls in (NonFiniteLossError, PCPMapInverseError):
        assert issubclass(cls, errors.ComputationError) and issubclass(cls, RuntimeError)
