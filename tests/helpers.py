"""What the tests share: the devices, the tolerances against the float64 references, and the
random inputs of the encoder."""

import pytest
import torch

import pyae

CUDA_AVAILABLE = torch.cuda.is_available() and pyae.has_cuda_kernels()
needs_cuda = pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs a CUDA GPU and a CUDA build")

# Every op test runs on each device; the CUDA ones are reported as skipped where there is
# no GPU (or a CPU-only build), so a CPU run shows what it did not cover.
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]

# Tolerances against the float64 reference. float32: a few ulps of accumulated rounding over
# sums of up to ~1000 terms. float16 / bfloat16: the inputs, the matrix product's output and
# every result are rounded to the dtype (unit roundoff 4.9e-4 and 3.9e-3); each result is a
# short chain of such roundings on O(1) values, so a few units of roundoff, relative, bound it.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.float16: dict(rtol=1e-2, atol=2e-3),
    torch.bfloat16: dict(rtol=5e-2, atol=2e-2),
}
DTYPES = list(TOLERANCES)


def make_inputs(batch, features, hidden, *, dtype=torch.float64, device="cpu", bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, features, generator=generator, dtype=torch.float64)
    weight = torch.randn(hidden, features, generator=generator, dtype=torch.float64) / features**0.5
    b = torch.randn(hidden, generator=generator, dtype=torch.float64) * 0.5 if bias else None
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), cast(weight), cast(b)


def assert_close(actual, expected, dtype):
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), **TOLERANCES[dtype])


def run_quick(run_experiment, out):
    """``(out, results)`` of an experiment's quick run on the CPU with one torch thread, and
    the check that the run restored torch's thread count."""
    threads = torch.get_num_threads()
    results = run_experiment(out, quick=True, device="cpu", progress=False, num_threads=1)
    assert torch.get_num_threads() == threads  # restored
    return out, results
