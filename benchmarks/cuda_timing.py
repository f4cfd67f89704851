"""Timing shared by the benchmark scripts: CUDA events, calls in a row, the host's issue time, CUDA
graph replays, and wall time on the CPU."""
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


def cpu_median_ms(fn, calls: int = 3) -> float:
    """Median wall ms of ``calls`` calls of ``fn`` after one warm-up call (the CPU smoke runs)."""
    fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


_GRAPH_FAILURE: list[str] = []  # why a capture failed: later configurations do not try again


def graph_replay_ms(fn, remember: bool = True):
    """Median time of one replay of ``fn`` captured in a CUDA graph (L2 flushed before each, as
    every time here): the step's GPU time without the host issuing it (what a trainer captured
    with CUDA graphs would see), or the reason the capture failed (a GPU->CPU sync inside the step
    makes it fail). None on CPU. A failure is remembered, and later calls return it without
    trying, unless ``remember`` is False (an experiment whose own capture may fail)."""
    if not torch.cuda.is_available():
        return None
    if _GRAPH_FAILURE:
        return _GRAPH_FAILURE[0]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs asks
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except Exception as error:  # noqa: BLE001 - report why, keep the profile going
        # a failed capture can leave the capture stream current (torch.cuda.graph exits its
        # stream context after ending the capture); the cause is the exception's context
        torch.cuda.set_stream(torch.cuda.default_stream())
        cause = error.__context__ or error
        reason = f"capture failed: {type(cause).__name__}: {cause}"[:200]
        if remember:
            _GRAPH_FAILURE.append(reason)
        return reason
    from triton.testing import do_bench
    return do_bench(graph.replay, warmup=10, rep=50, return_mode="median")
