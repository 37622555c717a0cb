"""Package-level contracts: version, sorted and complete ``__all__`` in every public package."""

import importlib

import pytest

import pyro_manifold

PACKAGES = [
    "pyro_manifold",
    "pyro_manifold.datasets",
    "pyro_manifold.distributions",
    "pyro_manifold.infer",
    "pyro_manifold.metrics",
    "pyro_manifold.models",
    "pyro_manifold.nn",
    "pyro_manifold.transforms",
]


def test_version():
    major, minor, patch = pyro_manifold.__version__.split(".")
    assert major.isdigit() and minor.isdigit() and patch.isdigit()


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_resolvable(name):
    module = importlib.import_module(name)
    names = module.__all__
    assert names == sorted(names), f"{name}.__all__ is not sorted"
    assert len(set(names)) == len(names)
    for attr in names:
        assert hasattr(module, attr), f"{name}.{attr} is listed but missing"


@pytest.mark.parametrize("name", PACKAGES[1:])
def test_every_public_object_has_a_docstring_with_an_example(name):
    module = importlib.import_module(name)
    missing = []
    for attr in module.__all__:
        obj = getattr(module, attr)
        if not callable(obj) or not getattr(obj, "__module__", "").startswith("pyro_manifold"):
            continue
        doc = obj.__doc__ or ""
        if not doc.strip():
            missing.append(f"{attr} (no docstring)")
        elif ">>>" not in doc and not (isinstance(obj, type) and issubclass(obj, Exception)):
            missing.append(f"{attr} (no example)")
    assert not missing, missing
