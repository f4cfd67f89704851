"""CUDA timing shared by the benchmark scripts: CUDA events, calls in a row, the host's issue time."""
from __future__ import annotations

import statistics
import time

import torch


def median_event_ms(fn, repeats: int) -> float:
    """Median over ``repeats`` of the milliseconds between CUDA events recorded around one call of
    ``fn``, after one call outside the timing (compilation, caches)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def back_to_back_ms(fn, calls: int = 50, repeats: int = 7) -> float | None:
    """Median over ``repeats`` of the time per call of ``calls`` calls in a row, caches warm and
    nothing between them: what a loop of such calls sees, the host's time to issue each call
    included where it exceeds the GPU's (``do_bench`` hides it behind its cache flush). None
    without CUDA (nothing runs asynchronously there)."""
    if not torch.cuda.is_available():
        return None

    def in_a_row():
        for _ in range(calls):
            fn()
    return median_event_ms(in_a_row, repeats) / calls


def host_ms(fn, calls: int = 50, repeats: int = 7) -> float | None:
    """Median over ``repeats`` of the host's time per call to issue ``calls`` calls in a row,
    without waiting for the GPU (the launch queue holds them): the CPU time a training loop spends
    on each call. None without CUDA."""
    if not torch.cuda.is_available():
        return None
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) * 1e3 / calls)
        torch.cuda.synchronize()
    return statistics.median(times)
