"""The package as installed: the extension loads, and its absence is explained."""

import subprocess
import sys

import torch

import pyae


def test_operators_are_registered():
    assert hasattr(torch.ops.pyae, "sigmoid_encoder")
    assert hasattr(torch.ops.pyae, "sigmoid_encoder_backward")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("pyae::sigmoid_encoder", "CPU")
    assert isinstance(pyae.has_cuda_kernels(), bool)


def test_missing_extension_says_how_to_build():
    # sys.modules[name] = None makes `import name` fail, as a missing or broken _C would.
    code = "import sys; sys.modules['pyae._C'] = None\nimport pyae"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "pip install --no-build-isolation -e ." in result.stderr
    assert "no pure-Python fallback" in result.stderr
