"""Build lrc_fast._C, the compiled extension.

The CPU part (csrc/*.cpp, csrc/cpu/*.cpp) is always built. The CUDA part (csrc/cuda/*.cu) is
built when torch has CUDA and a CUDA toolkit is found, or when FORCE_CUDA=1; FORCE_ONLY_CPU=1
skips it. TORCH_CUDA_ARCH_LIST is honoured by torch's BuildExtension.

This file imports torch, so install with `pip install --no-build-isolation .` into an
environment that already has the torch you want (see README): an isolated build would
download a CUDA torch of several GB.
"""
import glob
import os
import sys

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0") == "1"


def _with_cuda():
    if _flag("FORCE_ONLY_CPU"):
        return False
    if _flag("FORCE_CUDA"):
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def _shared_libstdcxx():
    """The shared C++ runtime this process (and so torch) runs with, named on the link line.

    On the lent H100/H200 image the linker otherwise took the static libstdc++ archive, so the
    module carried a private copy of the C++ library; formatting an integer into an error
    message then crashed (that copy's locale facets were never registered with the process's
    locale). Named before the compiler's own -lstdc++, the loaded libstdc++.so.6 resolves every
    C++ runtime symbol the module needs, so no archive member is pulled in, whatever the
    toolchain's defaults.
    """
    if not sys.platform.startswith("linux"):
        return []
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if os.path.basename(path).startswith("libstdc++.so"):
                return [path]
    return []


def extensions():
    rel = lambda paths: sorted(os.path.relpath(p, ROOT) for p in paths)  # noqa: E731
    sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))
                  + glob.glob(os.path.join(ROOT, "csrc", "simt", "*.cpp")))
    # No FMA contraction anywhere: the smoothing must round exactly like scipy's.
    cxx = ["-O3", "-ffp-contract=off"]
    link = _shared_libstdcxx()
    # at::parallel_for is a header template: without -fopenmp it runs serially in this module.
    if "OpenMP" in torch.__config__.parallel_info() and sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if _with_cuda():
        sources += rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
        nvcc = ["-O3", "-fmad=false", "--expt-relaxed-constexpr", "-lineinfo"]
        nvcc += os.environ.get("NVCC_FLAGS", "").split()
        return [CUDAExtension("lrc_fast._C", sources, define_macros=[("WITH_CUDA", None)],
                              extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)]
    return [CppExtension("lrc_fast._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
