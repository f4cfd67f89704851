"""The one place that loads the compiled extension and says which backends exist.

``lrc_fast._C`` is built by ``setup.py`` from ``csrc/``: the CPU part always, the CUDA part
when torch has CUDA and a toolkit is found (or ``FORCE_CUDA=1``). Triton kernels are plain
Python and need only an importable ``triton``; on CPU tensors they run under the Triton
interpreter (``TRITON_INTERPRET=1``), which is how the test suite checks them without a GPU.
"""
from __future__ import annotations

import os

import torch

try:
    from . import _C  # compiled extension
    _EXT_ERROR: Exception | None = None
except ImportError as exc:  # not built (e.g. a source checkout without `pip install -e .`)
    _C = None
    _EXT_ERROR = exc


def has_cpu_extension() -> bool:
    """True when the compiled CPU part of ``lrc_fast._C`` is importable."""
    return _C is not None


@torch.compiler.assume_constant_result
def has_cuda_extension() -> bool:
    """True when ``lrc_fast._C`` was built with its CUDA part (a constant to ``torch.compile``,
    which cannot trace into the compiled module: the loss's region index asks it)."""
    return _C is not None and bool(_C.with_cuda())


def require_extension():
    """Return the compiled module, or raise an ImportError saying how to build it."""
    if _C is None:
        raise ImportError(
            "lrc_fast._C (the compiled extension) is not built; install the package with "
            "`pip install --no-build-isolation -e .` (see README). Import error: "
            f"{_EXT_ERROR}"
        )
    return _C


def _import_triton() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


# asked once, at import (torch has usually imported triton by then): a module constant rather than
# a cached function, which torch.compile would warn about in every compiled loss
_TRITON_AVAILABLE = _import_triton()


def triton_available() -> bool:
    """True when ``triton`` imports (it does on CPU machines too); asked once per process."""
    return _TRITON_AVAILABLE


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Triton decides between interpreter and compiler when it is imported and when each kernel is
# defined, so a TRITON_INTERPRET set after `import lrc_fast` (which imports triton) cannot make the
# kernels run on CPU tensors: only the value at import counts.
_INTERPRET_AT_IMPORT = _interpret_requested()


def triton_interpret() -> bool:
    """True when Triton kernels run in its CPU interpreter: ``TRITON_INTERPRET=1`` was set before
    ``lrc_fast`` was imported, and still is (set or unset later, CPU tensors take the reference)."""
    return _INTERPRET_AT_IMPORT and _interpret_requested()


def triton_usable(where: torch.Tensor | torch.device) -> bool:
    """Whether a Triton kernel can run on ``where``, a tensor or a device: CUDA, or the CPU in
    interpret mode."""
    if not triton_available():
        return False
    device = where.device if isinstance(where, torch.Tensor) else torch.device(where)
    return device.type == "cuda" or (device.type == "cpu" and triton_interpret())


@torch.compiler.assume_constant_result
def float32_matmul_exact() -> bool:
    """Whether Triton products of float32 data keep float32 accuracy (``tl.dot`` in tf32x3):
    unless torch has been allowed to trade float32 matmul precision for speed
    (``torch.set_float32_matmul_precision`` 'high' or 'medium'), then tf32. The loss's logits
    and the elastic field follow it. A compiled graph keeps the setting it was traced with."""
    return torch.get_float32_matmul_precision() == "highest"


def backends() -> dict[str, bool]:
    """Which backends this installation has.

    Returns
    -------
    dict
        ``{"cpu_extension", "cuda_extension", "cuda_device", "triton"}`` mapped to booleans.

    Example
    -------
    >>> import lrc_fast
    >>> sorted(lrc_fast.backends())
    ['cpu_extension', 'cuda_device', 'cuda_extension', 'triton']
    """
    return {
        "cpu_extension": has_cpu_extension(),
        "cuda_extension": has_cuda_extension(),
        "cuda_device": torch.cuda.is_available(),
        "triton": triton_available(),
    }
