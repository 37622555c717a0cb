"""Shared pytest set-up: doctest names, a seed before every test, hypothesis's profile."""

import pyro
import pyro.distributions as dist
import pytest
import torch

try:  # a test extra; the doctests run without it
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover
    pass
else:  # deterministic property tests for CI: fixed examples, no database, no deadline
    settings.register_profile(
        "pyro_manifold",
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.load_profile("pyro_manifold")


@pytest.fixture(autouse=True)
def _add_doctest_names(doctest_namespace):
    doctest_namespace.update(torch=torch, pyro=pyro, dist=dist)


@pytest.fixture(autouse=True)
def _seed_everything():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
