"""CUDA-event timing shared by the benchmark scripts (CUDA only)."""
from __future__ import annotations

import statistics

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
