"""Shared fixtures and parameters: the devices to test on and the float64 reference."""

import pytest
import torch

import pyae

CUDA_AVAILABLE = torch.cuda.is_available() and pyae.has_cuda_kernels()

# Every op test runs on each device; the CUDA ones are reported as skipped where there is
# no GPU (or a CPU-only build), so a CPU run shows what it did not cover.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs a CUDA GPU and a CUDA build")),
]


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
