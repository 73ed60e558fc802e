"""The package as installed: the extension loads, and its absence is explained."""

import subprocess
import sys

import torch

import pyae


FORWARD_OPERATORS = ["sigmoid_encoder", "sigmoid_reconstruction_loss", "kl_sparsity", "weight_decay", "mask_noise",
                     "masked_sigmoid_encoder"]
# mask_noise is its own backward; masked_sigmoid_encoder's backward calls mask_noise and
# sigmoid_encoder_backward.
BACKWARD_OPERATORS = [f"{name}_backward" for name in FORWARD_OPERATORS[:4]]
DEVICE_GENERIC = {"weight_decay", "weight_decay_backward", "masked_sigmoid_encoder"}  # CompositeExplicitAutograd


def test_operators_are_registered():
    # Every operator has a CPU kernel (and a CUDA one in a CUDA build), a C++ autograd kernel
    # (the backward operators' makes double backward exact) and autocast kernels for both
    # devices.
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
    for name in FORWARD_OPERATORS + BACKWARD_OPERATORS:
        assert hasattr(torch.ops.pyae, name)
        if name in DEVICE_GENERIC:
            assert has_kernel(f"pyae::{name}", "CompositeExplicitAutograd"), name
            continue
        assert has_kernel(f"pyae::{name}", "CPU"), name
        assert has_kernel(f"pyae::{name}", "CUDA") == pyae.has_cuda_kernels(), name
    for name in FORWARD_OPERATORS + BACKWARD_OPERATORS:
        for key in ("Autograd", "AutocastCPU", "AutocastCUDA"):
            assert has_kernel(f"pyae::{name}", key), (name, key)


def test_missing_extension_says_how_to_build():
    # sys.modules[name] = None makes `import name` fail, as a missing or broken _C would.
    code = "import sys; sys.modules['pyae._C'] = None\nimport pyae"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "pip install --no-build-isolation -e ." in result.stderr
    assert "no pure-Python fallback" in result.stderr
