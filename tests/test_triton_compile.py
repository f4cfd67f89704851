"""Every Triton kernel compiles for a GPU (sm_90), checked on the CPU.

The other CPU tests run the kernels under the Triton interpreter, which does not type-check them
as the GPU compiler does: a kernel whose branches give one variable an int64 pointer in one and
an int32 pointer in the other runs in the interpreter but does not compile. Here
``benchmarks/triton_resources.py --check`` records every launch variant of the package and of the
benchmark sweeps (without running them) and compiles each for sm_90 with Triton's own compiler
and ptxas, which ship with Triton and need no GPU.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import triton

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "triton_resources.py"


def package_kernels() -> list[str]:
    """The package's launched kernels, counted from the source (``@triton.jit`` then ``def *_kernel``)."""
    kernels = Path(__file__).resolve().parents[1] / "lrc_fast" / "kernels"
    return [name for path in sorted(kernels.glob("*.py"))
            for name in re.findall(r"@triton\.jit\s*\ndef (\w+_kernel)\(", path.read_text())]


def _has_nvidia_backend() -> bool:
    return os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas"))


@pytest.mark.skipif(not _has_nvidia_backend(), reason="this Triton has no NVIDIA backend (ptxas)")
def test_every_triton_launch_compiles_for_sm90():
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    counts = re.search(r"sm_90: (\d+) of (\d+) distinct launches", result.stdout)
    assert counts, result.stdout[-2000:]
    # the script also fails when a kernel of the package has no recorded launch
    assert int(counts[1]) == int(counts[2]) >= len(package_kernels())
