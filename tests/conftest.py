"""Shared fixtures: the device each op test runs on, one torch thread. (Shared values and helpers
are in helpers.py, the float64 references in reference.py.)"""

import pytest
import torch

import pyae
from helpers import DEVICES


def pytest_report_header(config):
    return (
        f"torch {torch.__version__}; pyae CUDA kernels: {pyae.has_cuda_kernels()}; "
        f"CUDA device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}"
    )


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def one_thread():
    """Run the test with one torch thread: tiny models pay OpenMP's overhead (and stall on a
    busy machine) with more."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
