"""Host-side helpers for the Triton launchers: integer arithmetic and the launch device.

``triton.cdiv`` and ``triton.next_power_of_2`` are ``constexpr_function`` objects in recent Triton:
a call from Python costs about 2 µs (Triton 3.9 on this project's CPU machine) against 0.03 µs
for the plain expression, and a fused loss step makes about a dozen of them on the host.
"""
from __future__ import annotations

import contextlib

import torch


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for ints, ``b > 0``."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= ``n`` for ``n >= 1``; 0 for ``n = 0``, as Triton's."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


def on_device(tensor: torch.Tensor):
    """The context of a Triton launch on ``tensor``: its CUDA device made current.

    Triton launches a kernel on the current CUDA device, whatever device its tensors are on, so
    features on ``cuda:1`` while ``cuda:0`` is current would be read by a kernel on the wrong GPU.
    A no-op for CPU tensors, for tensors on the current device and while ``torch.compile``
    traces (Inductor guards the device of the kernels it calls).
    """
    if (not tensor.is_cuda or torch.compiler.is_compiling()
            or tensor.device.index == torch.cuda.current_device()):
        return contextlib.nullcontext()
    return torch.cuda.device(tensor.device)
