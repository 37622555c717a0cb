"""Run the metrics tests on one thread: their tensors are small, and on a busy machine
multithreaded LAPACK calls (eigh of a 128 x 128 matrix) can be a thousand times slower."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
