"""Felzenszwalb throughput: lrc_fast (CPU, CUDA) against scikit-image, in one run.

Script:  python benchmarks/bench_felzenszwalb.py [--quick] [--skip-cpu] [--schedule | --simt | --phases | --once]
  CPU: scikit-image vs lrc_fast "cpu" on 512x512 CT-like slices, one thread and all cores.
  CUDA (when present): batches of 16 and 256 slices already on the GPU, every launch
  configuration and cost window checked for identical labels against the CPU backend, then
  timed with CUDA events (median). Prints a markdown table last; exits 1 when a correctness
  check fails.
  --schedule: only the GPU schedule's work per cost window, with and without the hub
  extension, and with the slot engine, from its CPU emulation (rounds, edge offers and hub steps
  per slice; no GPU needed).
  --simt: the CUDA kernel's own code on the CPU SIMT simulator, for the launch shapes of B=16 with
  the hub extension on and off, and with the slot engine: its critical path (global loads,
  atomics and warp collectives waited for, summed over barrier intervals; loads issued together
  one wait, reductions none),
  the strict path (every load and atomic one wait), barriers, and the path by kernel phase, per
  slice, and an estimate: the strict path and the cluster barriers weighted as fitted to the H100
  run of commit 3f723fc (within 5% at 1-4 CTAs per slice there; the critical path did not track
  it). Not a timing; benchmarks/RESULTS.md has the fit.
  --phases (CUDA): the kernel's GPU time split by the same phases, at B=16 for the default
  launch and one CTA per slice, with the global rounds and with the slot engine (the team's
  first thread reads the global timer at each phase change), beside the batch time with that
  clock off.
  --once (CUDA): two launches of the default B=16 launch on real CT (the phantom without the
  data), for a profiler: `ncu -k fh_kernel --launch-skip 1 --launch-count 1 ...` takes the second.
pytest-benchmark:  pytest benchmarks/bench_felzenszwalb.py
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from multiprocessing import get_context

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import lrc_fast
from lrc_fast.data import phantom_slice, read_dicom_series, shared_data_dir, window_hu
from lrc_fast.superpixels import _WINDOW, _segment

from cuda_timing import median_event_ms  # benchmarks/ is on sys.path

SIZE = 512
# The simulator's strict path and cluster barriers against the H100 (benchmarks/RESULTS.md, "the
# simulator against the H100"): fitted at commit 3f723fc, within 5% at 1, 2 and 4 CTAs per slice.
US_PER_STRICT_OP = 0.359
US_PER_CLUSTER_BARRIER = 2.34
# Launch shapes timed per batch size. On an H200 (RESULTS.md) 15 clusters of 7 or 8 CTAs run at
# once (`cluster_waves` prints it), so at B=16 those took a second wave and clusters of 6 won; B=8
# asks whether 8 CTAs, which the simulator's H100 fit puts ~5% under 6 per slice, win when the
# whole batch fits (the default takes at most 6).
LAUNCHES = {8: [(4, 1024), (6, 1024), (8, 1024)],
            16: [(1, 1024), (2, 1024), (4, 1024), (4, 512), (6, 1024), (7, 1024), (8, 1024), (8, 512)],
            256: [(1, 512), (1, 1024), (2, 1024)]}
ONE_WINDOW = 2**31 - 1  # the whole sorted list at once: every pending edge offered each round
# Launch shapes timed with the slot engine (the main pass on the first CTA of each slice; the
# other CTAs of a cluster only share the per-pixel phases, the sort and the min_size pass).
SLOT_LAUNCHES = {16: [(1, 1024), (2, 1024), (6, 1024)], 256: [(1, 1024), (2, 1024)]}
# Cost windows timed with the default launch (B=16, 256). Wider windows take fewer rounds now that
# a hub frontier over 2,048 edges is cut rather than skipped (the simulator's H100 fit: 10-12% per
# slice at 4,096, 11-16% at 8,192; RESULTS.md); 512 measured slower than 2,048 on the H100.
WINDOWS = (_WINDOW, 4096, 8192, ONE_WINDOW)


def _variants(base: list[np.ndarray], n: int) -> np.ndarray:
    """n slices cycling through `base`, every other cycle mirrored left-right."""
    return np.stack([base[i % len(base)][:, ::-1] if (i // len(base)) % 2 else base[i % len(base)]
                     for i in range(n)]).astype(np.float32)


def ct_like_batch(n: int, size: int = SIZE) -> np.ndarray:
    """n CT-like phantom slices, HU-windowed to [0, 1] (abdomen window), float32.

    Not jittered: like real windowed CT they have plateaus (air and bone clipped to 0 and 1)
    and tied edge costs, which is what a training loop feeds.
    """
    return _variants([window_hu(phantom_slice(size, size, seed=s)) for s in range(min(n, 16))], n)


def real_ct_slices() -> list[np.ndarray] | None:
    """The abdominal DICOM series in ../shared/data (512x512), windowed, or None when absent."""
    root = shared_data_dir()
    folder = root / "totalseg-abdomen" / "ct_dicom" if root is not None else None
    if folder is None or not folder.is_dir():
        return None
    return [window_hu(s) for s in sitk.GetArrayFromImage(read_dicom_series(folder))]


def _skimage_one(image):
    from skimage.segmentation import felzenszwalb

    return felzenszwalb(image, scale=1.0, sigma=0.8, min_size=20, channel_axis=None)


def _wall(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cpu_rows(quick: bool) -> list[tuple[str, str, float]]:
    cores = os.cpu_count() or 1
    n1, nall = (2, 4 * cores) if quick else (8, 16 * cores)
    one = ct_like_batch(n1)
    many = ct_like_batch(nall)
    rows = []
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        # Equal to skimage where the contract promises it: on a tie-free (jittered) copy.
        tie_free = one[:2].astype(np.float64) + 1e-4 * np.random.default_rng(0).random(one[:2].shape)
        if not np.array_equal(lrc_fast.felzenszwalb(tie_free, backend="cpu"),
                              np.stack([_skimage_one(s) for s in tie_free])):
            raise SystemExit("MISMATCH: the cpu backend differs from skimage on jittered benchmark slices")
        t_sk = _wall(lambda: [_skimage_one(s) for s in one], 1) / n1
        t_ours = _wall(lambda: lrc_fast.felzenszwalb(one, backend="cpu"), 3) / n1
    finally:
        torch.set_num_threads(threads)
    rows.append(("skimage, 1 core", f"{n1} x {SIZE}^2", 1.0 / t_sk))
    rows.append(("lrc_fast cpu, 1 thread", f"{n1} x {SIZE}^2", 1.0 / t_ours))
    with get_context("spawn").Pool(cores) as pool:
        pool.map(_skimage_one, many[:cores])  # start-up outside the timing
        t_sk_all = _wall(lambda: pool.map(_skimage_one, many, chunksize=1), 1) / nall
    t_ours_all = _wall(lambda: lrc_fast.felzenszwalb(many, backend="cpu"), 3) / nall
    rows.append((f"skimage, {cores} processes", f"{nall} x {SIZE}^2", 1.0 / t_sk_all))
    rows.append((f"lrc_fast cpu, {threads} threads", f"{nall} x {SIZE}^2", 1.0 / t_ours_all))
    return rows


def _datasets() -> list[tuple[str, callable]]:
    """(name, make) pairs; make(n) gives n slices, spread over the whole series for real CT."""
    datasets = [("phantom", ct_like_batch)]
    real = real_ct_slices()  # read once
    if real is not None:
        spread = [real[i] for i in np.linspace(0, len(real) - 1, min(16, len(real))).astype(int)]
        datasets.append(("real abdomen CT", lambda n: _variants(spread, n)))
    return datasets


def schedule_rows(quick: bool) -> list[tuple[str, int, bool, list[float]]]:
    """The schedule's work per slice for each cost window, from the CPU emulation."""
    n = 2 if quick else 8
    rows = []
    for data_name, make in _datasets():
        x = torch.from_numpy(make(n)).double()
        expected = lrc_fast.felzenszwalb(x, backend="cpu")
        for extend in (False, True):
            for window in WINDOWS:
                labels, _, stats = _segment(x, 1.0, 0.8, 20, "emulate", window=window, extend=extend)
                if not torch.equal(labels, expected):
                    raise SystemExit(f"MISMATCH: emulation (window={window}, extend={extend}) differs from cpu")
                rows.append((data_name, window, extend, stats.double().mean(0).tolist()))
        labels, _, stats = _segment(x, 1.0, 0.8, 20, "emulate", slots=True)
        if not torch.equal(labels, expected):
            raise SystemExit("MISMATCH: emulation of the slot engine differs from cpu")
        rows.append((data_name, "slot engine", False, stats.double().mean(0).tolist()))
    return rows


def simt_rows(quick: bool) -> list[tuple[str, tuple[int, int], str, np.ndarray]]:
    """The kernel's cost profile per slice on the SIMT simulator, for each B=16 launch shape with
    the hub extension on and off, and for the slot engine's launch shapes."""
    ext = lrc_fast._ext.require_extension()
    n = 1 if quick else 4
    rows = []
    engines = [(launch, True, False) for launch in LAUNCHES[16]] + [(launch, False, False) for launch in LAUNCHES[16]]
    engines += [(launch, True, True) for launch in SLOT_LAUNCHES[16]]
    for data_name, make in _datasets():
        x = torch.from_numpy(make(16)[np.linspace(0, 15, n).astype(int)]).double()
        expected = lrc_fast.felzenszwalb(x, backend="cpu")
        for launch, extend, slots in engines:
            engine = "slot engine" if slots else f"hub {'on' if extend else 'off'}"
            labels, _, _, profile = ext.felzenszwalb_simt(x, lrc_fast.superpixels._taps_on(0.8, x.device),
                                                          1 / 255, 20, *launch, _WINDOW, extend, 0, slots)
            if not torch.equal(labels, expected):
                raise SystemExit(f"MISMATCH: simulated kernel {launch} ({engine}) differs from cpu")
            rows.append((data_name, launch, engine, profile.numpy()))
            print(f"  {data_name} {launch} {engine}: critical path {profile[:, 0].max().item()} ops", flush=True)
    return rows


def cuda_rows(quick: bool) -> tuple[list[tuple[str, str, float, float]], bool]:
    rows, ok = [], True
    for data_name, make in _datasets():
        for batch_size in ((16,) if quick else (8, 16, 256)):
            host = make(batch_size)
            expected = lrc_fast.felzenszwalb(host, backend="cpu")
            x = torch.from_numpy(host).cuda()
            x64 = x.double()
            default = lrc_fast.superpixels._default_launch(batch_size, x.device)
            configs = [(launch, _WINDOW, True, False) for launch in LAUNCHES[batch_size]]
            if batch_size != 8:  # the other windows, and without the hub extension
                configs += [(default, w, True, False) for w in WINDOWS if w != _WINDOW]
                configs += [(default, _WINDOW, False, False), (default, ONE_WINDOW, False, False)]
                configs += [(launch, _WINDOW, True, True) for launch in SLOT_LAUNCHES[batch_size]]
            for launch, window, extend, slots in configs:
                name = f"launch={launch}, " + ("slot engine" if slots else
                                               f"window={window}, hub={'on' if extend else 'off'}")
                try:
                    got, _, stats = _segment(x64, 1.0, 0.8, 20, "cuda", launch, window, extend, slots=slots)
                except RuntimeError as error:  # a shape the device rejects: report it, time the rest
                    print(f"FAILED: cuda {name} B={batch_size}: {error}")
                    ok = False
                    continue
                if not np.array_equal(got.cpu().numpy(), expected):
                    print(f"MISMATCH: cuda {name} B={batch_size} differs from cpu")
                    ok = False
                    continue
                # with the float64 conversion, as the public call does it in a training loop
                ms = median_event_ms(
                    lambda: _segment(x.double(), 1.0, 0.8, 20, "cuda", launch, window, extend, slots=slots), 5)
                rows.append((f"lrc_fast cuda {data_name}, {name}", f"{batch_size} x {SIZE}^2", ms,
                             batch_size / ms * 1e3))
                r = stats.double().mean(0).cpu().tolist()
                print(f"  {name}: {ms:.2f} ms; rounds {r[0]:.0f} + {r[1]:.0f}, offers {r[2]:.3g} + {r[3]:.3g}, "
                      f"hub steps {r[4]:.0f} per slice", flush=True)
    return rows, ok


def cluster_waves() -> list[tuple[int, int, str]]:
    """(CTAs per slice, threads per CTA, slices the CUDA device runs at once) for each shape the
    kernel takes: a batch of more slices than that runs in waves (clusters must fit in a GPC).
    A failing query shows its error in place of the count (a diagnostic: the timings go on)."""
    ext = lrc_fast._ext.require_extension()
    rows = []
    for threads in (1024, 512):
        for cluster in range(1, 9):
            try:
                rows.append((cluster, threads, str(ext.felzenszwalb_cuda_max_active_teams(cluster, threads))))
            except RuntimeError as error:
                rows.append((cluster, threads, f"error: {error}"))
    return rows


def phase_rows() -> list[tuple[str, tuple[int, int], float, np.ndarray, np.ndarray]]:
    """GPU time per kernel phase at B=16 (felzenszwalb_cuda_timed), labels checked first.

    Per data set and launch (the default one, and one CTA per slice): the batch's time with CUDA
    events with the phase clock off, and the microseconds of each phase for the slowest slice
    and averaged over the batch (with the clock on).
    """
    ext = lrc_fast._ext.require_extension()
    rows = []
    for data_name, make in _datasets():
        host = make(16)
        expected = lrc_fast.felzenszwalb(host, backend="cpu")
        x = torch.from_numpy(host).cuda().double()
        taps = lrc_fast.superpixels._taps_on(0.8, x.device)
        default = lrc_fast.superpixels._default_launch(16, x.device)
        launches = list(dict.fromkeys([default, (1, 1024)]))
        for launch, slots in [(launch, slots) for slots in (False, True) for launch in launches]:
            labels, _, _, ns = ext.felzenszwalb_cuda_timed(x, taps, 1 / 255, 20, *launch, _WINDOW, True, slots)
            if not np.array_equal(labels.cpu().numpy(), expected):
                raise SystemExit(f"MISMATCH: timed cuda kernel {launch} (slots {slots}) differs from cpu")
            ms = median_event_ms(
                lambda: ext.felzenszwalb_cuda(x, taps, 1 / 255, 20, *launch, _WINDOW, True, slots), 5)
            us = ext.felzenszwalb_cuda_timed(x, taps, 1 / 255, 20, *launch, _WINDOW, True, slots)[3].cpu().numpy() / 1e3
            name = f"{data_name}, slot engine" if slots else data_name
            rows.append((name, launch, ms, us[us.sum(1).argmax()], us.mean(0)))
            print(f"  {name} {launch}: {ms:.2f} ms per batch, slowest slice {us.sum(1).max() / 1e3:.2f} ms "
                  "by the phase clock", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--skip-cpu", action="store_true", help="CUDA rows only")
    parser.add_argument("--schedule", action="store_true", help="only the schedule's work per cost window")
    parser.add_argument("--simt", action="store_true", help="only the kernel's cost profile on the SIMT simulator")
    parser.add_argument("--phases", action="store_true", help="only the CUDA kernel's time per phase (B=16)")
    parser.add_argument("--once", action="store_true", help="two launches of the default B=16 launch, for ncu")
    args = parser.parse_args()
    if not lrc_fast.backends()["cpu_extension"]:
        print("lrc_fast._C is not built; run `pip install --no-build-isolation -e .` first")
        return 1
    if args.schedule:
        edges = 4 * SIZE * SIZE - 6 * SIZE + 2  # 8-connected edges of a SIZE x SIZE slice
        print(f"\n### GPU schedule work per {SIZE}x{SIZE} slice (CPU emulation, labels checked; mean per slice)")
        print("| data | window | hub extension | rounds main | rounds min_size | offers / edge main "
              "| offers / edge min_size | hub steps |")
        print("|---|---|---|---|---|---|---|---|")
        for data_name, window, extend, st in schedule_rows(args.quick):
            shown = "all" if window == ONE_WINDOW else window  # or "slot engine"
            print(f"| {data_name} | {shown} | {'on' if extend else 'off'} | {st[0]:.0f} | {st[1]:.0f} "
                  f"| {st[2] / edges:.2f} | {st[3] / edges:.2f} | {st[4]:.0f} |")
        return 0
    if args.once:
        if not torch.cuda.is_available():
            print("--once needs a CUDA device")
            return 1
        data_name, make = _datasets()[-1]
        x = torch.from_numpy(make(16)).cuda().double()
        launch = lrc_fast.superpixels._default_launch(16, x.device)
        for _ in range(2):  # a warm-up, then the launch to profile
            _segment(x, 1.0, 0.8, 20, "cuda", launch, _WINDOW, True)
        torch.cuda.synchronize()
        print(f"{data_name}: two launches of {launch} at B=16 x {SIZE}^2")
        return 0
    if args.phases:
        if not torch.cuda.is_available():
            print("--phases needs a CUDA device")
            return 1
        names = lrc_fast._ext.require_extension().felzenszwalb_simt_phases()
        rows = phase_rows()
        print(f"\n### CUDA kernel time by phase, B=16 x {SIZE}^2, window {_WINDOW}, hub extension on, "
              f"{torch.cuda.get_device_name()} (µs; batch ms with the phase clock off)")
        print("| data | launch | batch ms | slice | " + " | ".join(names) + " |")
        print("|---|---|---|---|" + "---|" * len(names))
        for data_name, launch, ms, slowest, mean in rows:
            for label, us in (("slowest", slowest), ("mean", mean)):
                print(f"| {data_name} | {launch} | {ms:.2f} | {label} | " + " | ".join(f"{v:.0f}" for v in us) + " |")
        return 0
    if args.simt:
        rows = simt_rows(args.quick)
        names = lrc_fast._ext.require_extension().felzenszwalb_simt_phases()
        print(f"\n### CUDA kernel on the SIMT simulator, {SIZE}x{SIZE} slices, window {_WINDOW} "
              "(labels checked; per slice)")
        print("| data | launch | main pass | critical path, max | mean | strict path, max "
              "| cluster barriers, max | CTA barriers, max | H100 fit, ms |")
        print("|---|---|---|---|---|---|---|---|---|")
        for data_name, launch, engine, p in rows:
            fit = US_PER_STRICT_OP * p[:, 4].max() / 1e3 + US_PER_CLUSTER_BARRIER * p[:, 1].max() / 1e3
            print(f"| {data_name} | {launch} | {engine} | {p[:, 0].max()} | {p[:, 0].mean():.0f} "
                  f"| {p[:, 4].max()} | {p[:, 1].max()} | {p[:, 2].max()} | {fit:.1f} |")
        print(f"\nH100 fit: {US_PER_STRICT_OP} µs per strict-path operation + {US_PER_CLUSTER_BARRIER} µs per "
              "cluster barrier (fitted to the slowest slice of B=16 batches at 1-4 CTAs, commit 3f723fc; "
              "blind to shared memory and CTA barriers; benchmarks/RESULTS.md)")
        n = len(names)
        for title, first in (("critical path", 5), ("strict path (what the H100 fit weights)", 5 + n)):
            print(f"\n### The {title} by phase (mean per slice; hub extension on, and the slot engine)")
            print("| data | launch | main pass | " + " | ".join(names) + " |")
            print("|---|---|---|" + "---|" * n)
            for data_name, launch, engine, p in rows:
                if engine != "hub off":
                    print(f"| {data_name} | {launch} | {engine} | "
                          + " | ".join(f"{v:.0f}" for v in p[:, first:first + n].mean(0)) + " |")
        return 0
    cpu = [] if args.skip_cpu else cpu_rows(args.quick)
    gpu, ok = cuda_rows(args.quick) if torch.cuda.is_available() else ([], True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    if torch.cuda.is_available():
        waves = cluster_waves()
        print(f"\n### Slices the kernel runs at once on {device} (cudaOccupancyMaxActiveClusters)")
        print("| threads per CTA | " + " | ".join(f"{c} CTA{'s' if c > 1 else ''}" for c in range(1, 9)) + " |")
        print("|---|" + "---|" * 8)
        for threads in (1024, 512):
            print(f"| {threads} | " + " | ".join(n for _, t, n in waves if t == threads) + " |")
    print(f"\n### felzenszwalb, {SIZE}x{SIZE} windowed CT slices (scale 1, sigma 0.8, min_size 20); {device}; "
          f"{os.cpu_count()} CPU cores")
    print("| path | batch | ms / batch | slices / s |\n|---|---|---|---|")
    for name, batch, rate in cpu:
        print(f"| {name} | {batch} | | {rate:.1f} |")
    if cpu:
        print(f"| ratio lrc_fast / skimage, 1 core | | | {cpu[1][2] / cpu[0][2]:.2f}x |")
        print(f"| ratio lrc_fast / skimage, all cores | | | {cpu[3][2] / cpu[2][2]:.2f}x |")
    for name, batch, ms, rate in gpu:
        print(f"| {name} | {batch} | {ms:.2f} | {rate:.0f} |")
    return 0 if ok else 1


@pytest.fixture(scope="module")
def slices():
    return ct_like_batch(4)


def test_skimage_per_slice(benchmark, slices):
    benchmark(lambda: [_skimage_one(s) for s in slices])


def test_lrc_fast_cpu(benchmark, slices):
    emulated = lrc_fast.felzenszwalb(slices, backend="emulate")
    np.testing.assert_array_equal(lrc_fast.felzenszwalb(slices, backend="cpu"), emulated)
    benchmark(lambda: lrc_fast.felzenszwalb(slices, backend="cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lrc_fast_cuda(benchmark, slices):
    x = torch.from_numpy(slices).cuda()
    np.testing.assert_array_equal(lrc_fast.felzenszwalb(x).cpu().numpy(), lrc_fast.felzenszwalb(slices))

    def run():
        lrc_fast.felzenszwalb(x, check_finite=False)
        torch.cuda.synchronize()

    benchmark(run)


if __name__ == "__main__":
    sys.exit(main())
