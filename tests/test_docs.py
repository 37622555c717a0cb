"""The documentation builds with warnings as errors and documents every public name.

The build is the session's ``docs_build`` fixture (``tests/conftest.py``): the same
``sphinx-build -W --keep-going`` as the README's command, into a temporary folder.
"""

import importlib
import inspect
import pkgutil
import re
import zlib
from pathlib import Path

import pytest

import pyro_manifold

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.py"))


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _public_modules() -> list[str]:
    """Every module of the package whose dotted path has no private part (``__main__`` counts)."""
    found = pkgutil.walk_packages(pyro_manifold.__path__, "pyro_manifold.")
    names = ["pyro_manifold", *(m.name for m in found)]
    return [n for n in names if not any(_private(p) for p in n.split("."))]


def _inventory(path: Path) -> set[tuple[str, str]]:
    """``(name, domain:role)`` of every entry of a Sphinx ``objects.inv``."""
    with path.open("rb") as f:
        assert f.readline().startswith(b"# Sphinx inventory version 2")
        for _ in range(3):
            f.readline()
        body = zlib.decompress(f.read()).decode()
    entries = set()
    for line in body.splitlines():
        match = re.match(r"(.+?)\s+(\S+:\S+)\s+-?\d+\s", line)
        assert match, line
        entries.add((match.group(1), match.group(2)))
    return entries


@pytest.fixture(scope="module")
def built(docs_build):
    assert docs_build.returncode == 0, "the docs build failed:\n" + docs_build.problems()
    assert docs_build.complete
    return docs_build


def test_docs_build_without_warnings(docs_build):
    assert docs_build.returncode == 0, docs_build.problems()


def test_public_names_come_from_all():
    # what the next test checks is not empty: every public module names its public API
    for module in _public_modules():
        assert isinstance(getattr(importlib.import_module(module), "__all__", None), list), module


def test_every_public_name_is_documented(built):
    """Each name of each public module's ``__all__`` has an entry in ``objects.inv``.

    A name re-exported by a package counts as documented under the package's path (where
    users import it) or under its own module's.
    """
    inventory = _inventory(built.html / "objects.inv")
    names = {name for name, _ in inventory}
    modules = {name for name, role in inventory if role == "py:module"}
    missing = []
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                if obj.__name__ not in modules:
                    missing.append(obj.__name__)
                continue
            parts = module_name.split(".")
            exporters = [
                ".".join(parts[:i])
                for i in range(len(parts), 0, -1)
                if getattr(importlib.import_module(".".join(parts[:i])), name, None) is obj
                and name in importlib.import_module(".".join(parts[:i])).__all__
            ]
            if not any(f"{path}.{name}" in names for path in exporters):
                missing.append(f"{module_name}.{name}")
    assert not missing, f"public names without an entry in the API reference: {missing}"


def test_every_api_page_is_reachable_from_the_index(built):
    # -W already refuses a page in no toctree; the index links the API reference, and it
    # links a page for every documented subpackage
    index = (built.html / "index.html").read_text()
    assert 'href="api/index.html"' in index and 'href="tutorials/index.html"' in index
    api = (built.html / "api" / "index.html").read_text()
    for name in pyro_manifold.__all__:
        if inspect.ismodule(getattr(pyro_manifold, name)):
            assert f'href="{name}.html"' in api, name


@pytest.mark.parametrize("script", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_page_shows_its_figures(built, script):
    page = built.html / "tutorials" / f"{script.stem}.html"
    assert page.exists(), page
    html = page.read_text()
    images = re.findall(rf'<img[^>]*src="(\.\./_images/sphx_glr_{script.stem}_\d+\.png)"', html)
    assert images, f"{page.name} shows no figure"
    for image in images:
        assert (page.parent / image).resolve().is_file(), image
    written = list(built.tutorial_output(script.stem).rglob("*.png"))
    assert len(set(images)) >= len(written), "a PNG the tutorial wrote is not shown"
    if re.search(r":math:`|\.\. math::", script.read_text()):
        assert 'class="math notranslate nohighlight"' in html, "its math is not marked up"


def test_math_renders_from_the_build_alone(built):
    """Math is MathJax markup, and MathJax is served from the build: no page needs the internet."""
    page = (built.html / "api" / "transforms.html").read_text()
    assert re.search(r'<span class="math notranslate nohighlight">\\\(.+?\\\)</span>', page)
    assert '<div class="math notranslate nohighlight">' in page
    assert 'src="../_static/mathjax/tex-chtml.js"' in page
    assert (built.html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    fonts = built.html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert list(fonts.glob("*.woff"))
    remote = re.compile(r'<(?:script|link|img|iframe)[^>]*(?:src|href)="(?:https?:)?//')
    for path in built.html.rglob("*.html"):
        assert not remote.search(path.read_text()), f"{path} loads a resource from the network"
