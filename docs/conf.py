"""Sphinx configuration: the API reference (autodoc) and the tutorial gallery (sphinx-gallery).

Build (from the repository root; warnings are errors, as in ``tests/test_docs.py``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The tutorials run in smoke mode during the build (``--smoke --out DIR``); add
``-D plot_gallery=0`` to build the pages without running them. MathJax is served from the
build itself (``sphinx-mathjax-offline``): the pages need no internet.
"""

import os
import re
import sys
from pathlib import Path

from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docstrings import prepare_docstring

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(ROOT), str(DOCS)]  # this checkout's package, and gallery_hooks

import pyro_manifold  # noqa: E402

project = "pyro_manifold"
author = "the pyro_manifold authors"
copyright = "the pyro_manifold authors"
version = release = pyro_manifold.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static: no CDN
]

exclude_patterns = ["_build", "_tutorial_output", "**.ipynb_checkpoints"]
templates_path: list[str] = []

# autodoc: every module page documents the names of its __all__
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "show-inheritance": True,
}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as a field list: autodoc lists the attributes once

# the tutorials, executed in smoke mode: every one (not only plot_*.py), or those named in
# PYRO_MANIFOLD_DOCS_TUTORIALS="a,b" (tests/conftest.py sets it for a test session that needs
# only some); the others' pages are then built without running them
_only = os.environ.get("PYRO_MANIFOLD_DOCS_TUTORIALS")
if _only is None:
    _run_pattern = r"\.py$"
else:
    _run_pattern = "|".join(rf"/{re.escape(s)}\.py$" for s in _only.split(",") if s) or "(?!)"

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "tutorials"),
    "gallery_dirs": "tutorials",
    "filename_pattern": _run_pattern,
    "reset_argv": "gallery_hooks.reset_argv",
    "image_scrapers": ("gallery_hooks.png_scraper",),
    "reset_modules": ("matplotlib", "gallery_hooks.reset_state"),
    "within_subsection_order": "gallery_hooks.TutorialOrder",
    "remove_config_comments": True,
    "download_all_examples": False,
    "show_signature": False,
    "min_reported_time": 1,
    "write_computation_times": False,  # its table page loads scripts from a CDN
    "capture_repr": (),  # a script shows what it prints, not its last expression's value
}

html_theme = "alabaster"
html_title = f"pyro_manifold {release}"
html_theme_options = {
    "description": "Pyro flows across dimensions, mixtures of flows and chart atlases",
    "fixed_sidebar": True,
    "page_width": "1240px",
    "sidebar_width": "220px",
    "body_max_width": "none",  # code lines of up to 100 characters fit
    "show_powered_by": False,
}
html_sidebars = {"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}
html_show_sourcelink = False
html_show_sphinx = False


def _public_bases(app, name, obj, options, bases):
    """Show a private mix-in (``pyro_manifold._cache.FreshCache``, ...) as its public bases."""

    def public(base) -> list:
        parts = getattr(base, "__module__", "").split(".")
        if parts[0] == "pyro_manifold" and any(p.startswith("_") for p in parts):
            return [b for parent in base.__bases__ for b in public(parent)]
        return [base]

    shown = list(dict.fromkeys(b for base in bases for b in public(base)))
    bases[:] = [b for b in shown if b is not object] or shown


def _reexported_data_doc(app, what, name, obj, options, lines):
    """A constant a package re-exports: the doc comment of the module that defines it.

    autodoc reads a constant's ``#:`` comment from the module it is documented under; for
    ``pyro_manifold.transforms.FLOWS`` that is the package, which only imports it, so it
    would show the docstring of ``tuple``.
    """
    if what != "data" or "." not in name:
        return
    package, attr = name.rsplit(".", 1)
    generic = prepare_docstring(type(obj).__doc__ or "")
    if [line for line in lines if line] not in ([], [line for line in generic if line]):
        if not (lines and lines[0].startswith("alias of")):
            return  # the constant has a doc of its own
    for modname in sorted(m for m in sys.modules if m.startswith(package + ".")):
        if getattr(sys.modules[modname], attr, None) is not obj:
            continue
        doc = ModuleAnalyzer.for_module(modname).find_attr_docs().get(("", attr))
        if doc:
            alias = lines if lines and lines[0].startswith("alias of") else []
            lines[:] = [*doc, "", *alias]
            return


def setup(app):
    """Hide private bases; record which tutorials ran, before the gallery's own summary."""
    from gallery_hooks import write_run_status

    app.connect("autodoc-process-bases", _public_bases)
    app.connect("autodoc-process-docstring", _reexported_data_doc)
    app.connect("build-finished", write_run_status, priority=400)


# every cross-reference must resolve (warnings are errors), except to the libraries this
# one builds on, whose inventories the offline build does not have
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|pyro|collections|os|pathlib|datetime|typing)(\..*)?"),
    (r"py:class", r"Tensor|Transform|ConditionalTransform|Distribution"),
    (r"py:class", r"(dict|list|tuple)\[.*"),  # builtin generics in signatures
    # the plain transforms that condition() returns, and a private base: documented
    # through their public conditional classes
    (
        r"py:class",
        r"pyro_manifold\.transforms\.(conformal\.ConditionedConformalEmbedding"
        r"|conformal\._Conformal|splines\._ConditionedSplineCoupling)",
    ),
]
