"""Shared pytest set-up: doctest names and a seed before every test."""

import pyro
import pyro.distributions as dist
import pytest
import torch


@pytest.fixture(autouse=True)
def _add_doctest_names(doctest_namespace):
    doctest_namespace.update(torch=torch, pyro=pyro, dist=dist)


@pytest.fixture(autouse=True)
def _seed_everything():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
