"""Builds the compiled core of pyae, the extension module ``pyae._C``.

The build is a CppExtension (CPU kernels only) or a CUDAExtension (CPU and CUDA kernels).
As torchvision does, the CUDA kernels are built when a GPU is visible (for its architecture)
and torch is a CUDA build with a CUDA toolkit (nvcc and its headers) at hand, or when asked
(FORCE_CUDA=1, or TORCH_CUDA_ARCH_LIST naming the architectures); otherwise the build is
CPU-only, and says so: compiling kernels that the machine cannot run would be most of the
install's time. Environment switches:

    FORCE_CUDA=1            build the CUDA kernels even without a visible GPU
    PYAE_CUDA=0             never build the CUDA kernels
    CUDA_HOME               the toolkit folder whose include/ holds cuda_runtime.h
    TORCH_CUDA_ARCH_LIST    GPU architectures to compile for, e.g. "9.0" or "8.0;9.0+PTX" (setting
                            it asks for a CUDA build); without it, the visible GPUs', or
                            DEFAULT_CUDA_ARCH_LIST under FORCE_CUDA=1 with none visible
    MAX_JOBS                parallel compile jobs (ninja)
    DEBUG=1                 -O0 -g, no NDEBUG

Install for development with ``pip install --no-build-isolation -e .`` (the build needs
the torch that is installed, hence no build isolation).
"""

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _has_cuda_runtime_header(folder):
    return bool(folder) and os.path.isfile(os.path.join(folder, "include", "cuda_runtime.h"))


def _locate_cuda_home():
    """Return the CUDA toolkit folder, or None.

    torch.utils.cpp_extension guesses CUDA_HOME from the location of ``nvcc`` on PATH, which
    is wrong when that ``nvcc`` is a wrapper script outside the toolkit. Look for a folder
    that really holds the headers, and export it before cpp_extension is imported so that
    torch's guess and ours agree.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for folder in candidates:
        if _has_cuda_runtime_header(folder) and os.path.isfile(os.path.join(folder, "bin", "nvcc")):
            return folder
    return None


def _cuda_library_include_dirs():
    """Header folders for the CUDA libraries torch's headers include (cusparse.h, cublas_v2.h)
    when the toolkit in CUDA_HOME lacks them: a pip-installed torch brings them as
    ``nvidia-*`` wheels."""
    if cuda_home and os.path.isfile(os.path.join(cuda_home, "include", "cusparse.h")):
        return []
    try:
        import nvidia
    except ImportError:
        return []
    folders = set()
    for root in getattr(nvidia, "__path__", []):
        folders.update(os.path.dirname(h) for h in glob.glob(os.path.join(root, "*", "include", "cusparse.h")))
    return sorted(folders)


# Turing, Ampere (8.0 code also runs on 8.6/8.7/8.9), Hopper, Blackwell, and PTX that newer
# GPUs compile at load time.
DEFAULT_CUDA_ARCH_LIST = "7.5;8.0;9.0;10.0;12.0+PTX"


def _flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _off(name):
    return os.environ.get(name, "").strip().lower() in {"0", "false", "no", "off"}


cuda_home = _locate_cuda_home()
if cuda_home and not _has_cuda_runtime_header(os.environ.get("CUDA_HOME")):
    os.environ["CUDA_HOME"] = cuda_home

import torch  # noqa: E402  (after CUDA_HOME is fixed)
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _choose_backend():
    """Return (use_cuda, reason)."""
    if _off("PYAE_CUDA"):
        return False, "PYAE_CUDA=0"
    if _flag("FORCE_CUDA"):
        return True, "FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build"
    if cuda_home is None:
        return False, "no CUDA toolkit found (set CUDA_HOME to the folder whose include/ holds cuda_runtime.h)"
    if os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip():
        return True, f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} (nvcc in {cuda_home})"
    if not torch.cuda.is_available():
        return False, (
            "no GPU is visible, so its kernels could not run here; FORCE_CUDA=1 (or TORCH_CUDA_ARCH_LIST=...) "
            "builds them anyway"
        )
    return True, f"a GPU is visible, torch is a CUDA {torch.version.cuda} build and nvcc is in {cuda_home}"


def _extension():
    use_cuda, reason = _choose_backend()
    debug = _flag("DEBUG")
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp"))) + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx_flags = opt + ["-fdiagnostics-color=always"]
    if not debug:
        cxx_flags.append("-DNDEBUG")
    # torch.utils.cpp_extension picks the C++ standard that torch itself needs (C++17 or 20).
    # Py_LIMITED_API keeps the module free of any one CPython version's ABI: it only
    # registers operators and exposes no Python functions of its own.
    define_macros = [("Py_LIMITED_API", "0x03090000")]
    link_flags = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is inline: compiled without OpenMP it runs serially in this module,
        # whatever torch.set_num_threads says. libgomp.so.1 then resolves to the copy torch
        # has already loaded, so both share one thread pool.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    extra = {"cxx": cxx_flags}
    include_dirs = [os.path.join(ROOT, "csrc")]
    if use_cuda:
        include_dirs += _cuda_library_include_dirs()
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        extra["nvcc"] = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
        if not debug:
            extra["nvcc"].append("-DNDEBUG")
        define_macros.append(("PYAE_WITH_CUDA", None))
        extension_class = CUDAExtension
    else:
        extension_class = CppExtension

    arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if use_cuda and not arch:
        if torch.cuda.is_available():
            arch = "(the visible GPUs')"
        else:
            # torch has no default without a visible GPU (it fails); build for the families a
            # CUDA 13 toolkit supports, with PTX for newer ones.
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch = DEFAULT_CUDA_ARCH_LIST
            arch += " (default: no GPU visible and TORCH_CUDA_ARCH_LIST unset)"
    print(
        "pyae build configuration:\n"
        f"  backend      : {'CPU + CUDA' if use_cuda else 'CPU only'} ({reason})\n"
        f"  CUDA_HOME    : {cuda_home or '-'}\n"
        f"  arch list    : {arch if use_cuda else '-'}\n"
        f"  MAX_JOBS     : {os.environ.get('MAX_JOBS', '(ninja default)')}\n"
        f"  DEBUG        : {debug}\n"
        f"  sources      : {', '.join(sources)}\n"
        f"  include dirs : {', '.join(include_dirs)}",
        file=sys.stderr,
    )
    return extension_class(
        name="pyae._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=link_flags,
        py_limited_api=True,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
