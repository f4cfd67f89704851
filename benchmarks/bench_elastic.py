"""Benchmark of elastic positive pairs: fused Triton path against the PyTorch reference.

``python benchmarks/bench_elastic.py``
    On CUDA: B = 16 and B = 256 slices of 512 x 512 (float32 image + int64 region map), default
    alpha/sigma. It first checks the fused path against the reference (field against the fp32 CPU
    oracle on the same noise, warp bit-exact ids), then times with ``triton.testing.do_bench``
    (median):
      ``elastic_pair`` on the Triton path (noise, the field's two smoothing kernels, the fused
      warp), the field alone (tf32x3 and tf32), the warp alone;
      the package reference (separable conv field + explicit-gather warp);
      the plain-PyTorch baseline of the issue (separable conv field + ``F.grid_sample`` bilinear
      for the image and nearest for the regions);
      the same baseline with ``torch.backends.cudnn.benchmark = True`` (cuDNN then times its
      algorithms for the 129-tap convolution instead of taking its heuristic's pick);
      a tuned PyTorch baseline: the same warp, the smoothing as two batched fp32 GEMMs with
      banded matrices that fold scipy's reflect boundary in (built once, outside the timing);
      the coarse mode (spacings 8 and 4) beside a plain-PyTorch pipeline of the same coarse field;
      MONAI ``Rand2DElasticd`` one sample at a time, when ``import monai`` works.
    do_bench flushes the L2 cache before each call, which also hides the host's time to issue a
    call of less GPU work than the flush. So the dense and coarse pairs and their PyTorch
    baselines are also timed as calls in a row (``back_to_back_ms``), and the dense and coarse
    pairs as CUDA graph replays (their GPU time alone), and the host's time to issue a pair is
    timed alone (``host_ms``: calls in a row without waiting for the GPU).
    It prints a markdown table last and exits 1 if a check fails. Without CUDA it runs a tiny CPU
    smoke version (Triton under the interpreter).
``python benchmarks/bench_elastic.py --sweep``
    Only the fused field (noise + smoothing, tf32x3) for every tile shape of
    ``SMOOTH_BLOCK_CHOICES`` (BM, BN, BK, num_warps), each checked against the fp32 CPU oracle
    first (a shape that fails to launch is reported and skipped); a table sorted by time (the
    default shape is the first choice). Then the coarse mode's fused warp (spacing 8, control
    grid given) for every ``COARSE_LAUNCH_CHOICES`` (pixels, num_warps), each first checked
    against the default launch (whether bit for bit is printed; a check fails only beyond one
    float32 rounding's effect).
``python benchmarks/bench_elastic.py --host``
    In a fresh process at B=16: the host's time per call and the time per call in a row of the
    dense and coarse pairs, then a cProfile of 200 coarse pairs (where the host's time goes).
``pytest benchmarks/bench_elastic.py``
    pytest-benchmark functions for the Triton pair and the reference pair.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

if not torch.cuda.is_available():  # the Triton kernels then run in the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch.nn.functional as F  # noqa: E402

from lrc_fast.elastic import (DEFAULT_ALPHA, DEFAULT_SIGMA, elastic_pair, elastic_warp,  # noqa: E402
                              random_elastic_field)
from lrc_fast.kernels.elastic_warp import (COARSE_LAUNCH_CHOICES, SMOOTH_BLOCK_CHOICES,  # noqa: E402
                                           elastic_warp_coarse_triton, elastic_warp_triton,
                                           field_from_uniform_triton)
from lrc_fast.reference import elastic as ref  # noqa: E402

from bench_loss import with_matmul_precision  # noqa: E402  (benchmarks/ is on sys.path)
from cuda_timing import back_to_back_ms, cpu_median_ms, graph_replay_ms, host_ms  # noqa: E402

CUDA = torch.cuda.is_available()
# Largest field error accepted against the fp32 oracle, per tl.dot precision, times alpha (see
# tests/test_elastic.py).
FIELD_ATOL = {"tf32x3": 1e-5, "tf32": 1e-4}
# the coarse field's largest error, in units of alpha: float32 taps and interpolation with fma
# (3.8e-6 px measured on an H200, 9.5e-9 of alpha; as tests/test_elastic.py's GPU test)
COARSE_FIELD_ATOL = 2e-7
DEVICE = torch.device("cuda" if CUDA else "cpu")
SIZE = 512 if CUDA else 64
BATCHES = (16, 256) if CUDA else (2,)
MONAI_MAX_BATCH = 16  # per-sample MONAI at B = 256 would take minutes; it is timed at B <= 16
# Control-point spacings of the coarse mode timed beside the dense field: sigma / 2 (its
# variance and correlation within 0.3% of the dense field's) and sigma / 4.
COARSE_SPACINGS = (8, 4)


def make_inputs(batch: int, size: int = SIZE, seed: int = 0):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    images = torch.rand(batch, 1, size, size, generator=gen, device=DEVICE)  # (B, 1, H, W)
    regions = torch.randint(0, 300, (batch, size, size), generator=gen, device=DEVICE)  # (B, H, W)
    return images, regions


def generator(seed: int = 1) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(seed)


def triton_pair(images, regions, gen):
    return elastic_pair(images, regions, DEFAULT_ALPHA, DEFAULT_SIGMA, gen, backend="triton")


def draw(batch: int, gen: torch.Generator) -> torch.Tensor:
    """The uniform draw behind one batch's fields: ``(B, 2, SIZE, SIZE)`` on the benchmark device."""
    return torch.rand((batch, 2, SIZE, SIZE), generator=gen, device=DEVICE)


def field_then_warp(images, regions, uniform):
    """The Triton pair spelled out from one draw: the field, then the warp."""
    return elastic_warp_triton(images, regions, field_from_uniform_triton(uniform, DEFAULT_ALPHA, DEFAULT_SIGMA))


def reference_pair(images, regions, gen):
    return elastic_pair(images, regions, DEFAULT_ALPHA, DEFAULT_SIGMA, gen, backend="reference")


def grid_sample_pair(images, regions, gen):
    """The plain PyTorch pipeline: conv-smoothed noise, then grid_sample for image and ids."""
    batch, _, height, width = images.shape
    uniform = torch.rand((batch, 2, height, width), generator=gen, device=images.device)
    return _grid_sample_warp(images, regions, ref.field_from_uniform(uniform, DEFAULT_ALPHA, DEFAULT_SIGMA))


def _grid_sample_warp(images, regions, field):
    """F.grid_sample warp: bilinear image (border), nearest ids, -1 where the source is outside."""
    height, width = images.shape[-2:]
    y, x = ref.sampling_coordinates(field)  # (B, H, W)
    grid = torch.stack([2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1], dim=-1)  # (B, H, W, 2)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
    ids = F.grid_sample(regions.unsqueeze(1).double(), grid.double(), mode="nearest",
                        padding_mode="zeros", align_corners=True).squeeze(1).long()
    outside = (y < -0.5) | (y >= height - 0.5) | (x < -0.5) | (x >= width - 0.5)
    return warped, ids.masked_fill_(outside, -1)


def smoothing_matrix(n: int, sigma: float, device) -> torch.Tensor:
    """(n, n) float32 S with (S @ v) = scipy's reflect-mode 1-D Gaussian filter of v."""
    weights = ref.gaussian_kernel1d(sigma).to(device)  # (2r+1,)
    radius = (weights.numel() - 1) // 2
    source = ref.reflect_indices(n, radius, device).unfold(0, 2 * radius + 1, 1)  # (n, 2r+1)
    rows = torch.arange(n, device=device).unsqueeze(1).expand_as(source)
    matrix = torch.zeros(n, n, dtype=torch.float64, device=device)
    matrix.index_put_((rows, source), weights.double().expand_as(source), accumulate=True)
    return matrix.float()


_MATRICES: dict[tuple[int, float, str], torch.Tensor] = {}


def gemm_field(uniform: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """alpha * gaussian_filter(2 u - 1, sigma) for (B, 2, H, W) uniform draws, as two GEMMs."""
    height, width = uniform.shape[-2:]
    mats = []
    for n in (height, width):
        key = (n, float(sigma), str(uniform.device))
        if key not in _MATRICES:
            _MATRICES[key] = smoothing_matrix(n, sigma, uniform.device)
        mats.append(_MATRICES[key])
    rows = torch.matmul(mats[0], 2 * uniform - 1)  # (B, 2, H, W): axis 0 first, as scipy
    return alpha * torch.matmul(rows, mats[1].T)


def gemm_grid_sample_pair(images, regions, gen):
    """The tuned plain-PyTorch pipeline: GEMM-smoothed noise, then grid_sample."""
    batch, _, height, width = images.shape
    uniform = torch.rand((batch, 2, height, width), generator=gen, device=images.device)
    return _grid_sample_warp(images, regions, gemm_field(uniform, DEFAULT_ALPHA, DEFAULT_SIGMA))


def coarse_pair(images, regions, gen, spacing, backend="triton"):
    return elastic_pair(images, regions, DEFAULT_ALPHA, DEFAULT_SIGMA, gen, backend=backend,
                        spacing=spacing)


def coarse_grid_sample_pair(images, regions, gen, spacing):
    """The coarse mode in plain PyTorch: GEMM-smoothed control grid, the reference's Catmull-Rom
    upsampling (gathers), then grid_sample."""
    batch, _, height, width = images.shape
    coarse_h, coarse_w = ref.coarse_shape(height, width, spacing)
    uniform = torch.rand((batch, 2, coarse_h, coarse_w), generator=gen, device=images.device)
    coarse = gemm_field(uniform, DEFAULT_ALPHA / spacing, DEFAULT_SIGMA / spacing)
    return _grid_sample_warp(images, regions, ref.upsample_field(coarse, spacing, height, width))


def _compare_pairs(label: str, got, expected) -> str | None:
    """Prints whether two warps are equal bit for bit; a failure message only if an image value
    differs by over 1e-4 or over 1e-5 of the region ids differ: a field a few float32 roundings
    off moves image values by ~1e-6 and a few ids, and still times the same work."""
    image_err = (got[0] - expected[0]).abs().max().item()
    ids_differ = (got[1] != expected[1]).float().mean().item()
    print(f"check {label}: bit for bit {image_err == 0 and ids_differ == 0} (image max |difference| "
          f"{image_err:.3g}, ids differing {ids_differ:.3g})")
    if image_err <= 1e-4 and ids_differ <= 1e-5:
        return None
    return f"{label}: image {image_err:.3g}, ids {ids_differ:.3g}"


def check_coarse(batch: int) -> list[str]:
    """The coarse mode's checks: field against the CPU oracle, pair against field then warp."""
    failures = []
    images, regions = make_inputs(batch)
    for spacing in COARSE_SPACINGS:
        field = random_elastic_field(batch, SIZE, SIZE, DEFAULT_ALPHA, DEFAULT_SIGMA, generator(),
                                     backend="triton", spacing=spacing)
        uniform = torch.rand((batch, 2, *ref.coarse_shape(SIZE, SIZE, spacing)), generator=generator(),
                             device=DEVICE)  # the same draw
        oracle = ref.coarse_field_from_uniform(uniform[:2].cpu(), DEFAULT_ALPHA, DEFAULT_SIGMA, spacing,
                                               SIZE, SIZE)
        err = (field[:2].cpu() - oracle).abs().max().item()
        print(f"check B={batch}: coarse field (spacing {spacing}) max |error| = {err:.3g} px")
        if not err <= COARSE_FIELD_ATOL * DEFAULT_ALPHA:
            failures.append(f"B={batch}: coarse field (spacing {spacing}) differs from the reference "
                            f"by {err:.3g} px")
        pair = coarse_pair(images, regions, generator(), spacing)
        two_steps = elastic_warp(images, regions, field, backend="triton", check_finite=False)
        # bit for bit is the claim (tests/test_elastic.py checks it)
        failure = _compare_pairs(f"B={batch}: coarse elastic_pair (spacing {spacing}) against field then "
                                 "warp", pair, two_steps)
        failures += [failure] if failure else []
        # the plain-PyTorch baseline: its field (fp32 GEMMs, no cuDNN TF32) against the oracle,
        # then its grid_sample warp against the reference warp of that field
        uniform = torch.rand(uniform.shape, generator=generator(3), device=DEVICE)  # its draw
        coarse = gemm_field(uniform, DEFAULT_ALPHA / spacing, DEFAULT_SIGMA / spacing)
        field = ref.upsample_field(coarse, spacing, SIZE, SIZE)
        oracle = ref.coarse_field_from_uniform(uniform[:2].cpu(), DEFAULT_ALPHA, DEFAULT_SIGMA, spacing,
                                               SIZE, SIZE)
        gemm_err = (field[:2].cpu() - oracle).abs().max().item()
        baseline = coarse_grid_sample_pair(images, regions, generator(3), spacing)
        baseline_err = (baseline[0] - ref.elastic_warp(images, regions, field)[0]).abs().max().item()
        print(f"check B={batch}: coarse GEMM field max |error| = {gemm_err:.3g} px, its grid_sample warp "
              f"max |difference| = {baseline_err:.3g}")
        if not gemm_err <= 1e-6 * DEFAULT_ALPHA:  # fp32 sums in another order, as the dense GEMM's
            failures.append(f"B={batch}: coarse GEMM field differs from the reference by {gemm_err:.3g} px")
        if not baseline_err <= 1e-4:  # as the dense baseline's check
            failures.append(f"B={batch}: coarse grid_sample baseline differs from the reference by "
                            f"{baseline_err:.3g}")
    return failures


def check(batch: int) -> list[str]:
    """Fused path against the reference; prints the errors and returns the failures."""
    failures = []
    images, regions = make_inputs(batch)
    uniform = draw(batch, generator())
    oracle = ref.field_from_uniform(uniform[:2].cpu(), DEFAULT_ALPHA, DEFAULT_SIGMA)  # fp32 on CPU
    for precision, atol in FIELD_ATOL.items():
        field = field_from_uniform_triton(uniform, DEFAULT_ALPHA, DEFAULT_SIGMA, precision=precision)
        field_err = (field[:2].cpu() - oracle).abs().max().item()
        print(f"check B={batch}: {precision} field max |error| = {field_err:.3g} px")
        if not field_err <= atol * DEFAULT_ALPHA:
            failures.append(f"B={batch}: {precision} field differs from the reference by "
                            f"{field_err:.3g} px")
    pair = triton_pair(images, regions, generator())  # draws the same uniform from the same seed
    two_steps = field_then_warp(images, regions, uniform)  # the field at the default precision
    same = torch.equal(pair[0], two_steps[0]) and torch.equal(pair[1], two_steps[1])
    print(f"check B={batch}: elastic_pair equals field then warp of the same draw bit for bit: {same}")
    if not same:
        failures.append(f"B={batch}: elastic_pair differs from field then warp of the same draw")
    got = elastic_warp(images, regions, field, backend="triton")
    expected = elastic_warp(images, regions, field, backend="reference")
    image_err = (got[0] - expected[0]).abs().max().item()
    print(f"check B={batch}: warped image max |error| = {image_err:.3g}, region ids equal: "
          f"{torch.equal(got[1], expected[1])}")
    if not image_err <= 2e-6:
        failures.append(f"B={batch}: warped image differs from the reference by {image_err:.3g}")
    if not torch.equal(got[1], expected[1]):
        failures.append(f"B={batch}: warped region ids differ from the reference")
    baseline = grid_sample_pair(images, regions, generator(3))
    reference = reference_pair(images, regions, generator(3))
    baseline_err = (baseline[0] - reference[0]).abs().max().item()
    print(f"check B={batch}: grid_sample baseline image max |difference| = {baseline_err:.3g}")
    if not baseline_err <= 1e-4:  # grid_sample's normalised coordinates: ~size * 2^-24 px
        failures.append(f"B={batch}: grid_sample baseline differs from the reference by "
                        f"{baseline_err:.3g}")
    searched = with_cudnn_benchmark(lambda: ref.field_from_uniform(uniform[:2], DEFAULT_ALPHA, DEFAULT_SIGMA))()
    searched_err = (searched.cpu() - oracle).abs().max().item()
    print(f"check B={batch}: conv field with cudnn.benchmark max |error| = {searched_err:.3g} px")
    if not searched_err <= 2 * 2**-10 * DEFAULT_ALPHA:  # cuDNN may run TF32: tests/test_elastic.py bound
        failures.append(f"B={batch}: cudnn.benchmark conv field differs from the reference by "
                        f"{searched_err:.3g} px")
    gemm_err = (gemm_field(uniform[:2], DEFAULT_ALPHA, DEFAULT_SIGMA).cpu() - oracle).abs().max().item()
    print(f"check B={batch}: GEMM field max |error| = {gemm_err:.3g} px")
    if not gemm_err <= 1e-6 * DEFAULT_ALPHA:  # fp32 sums in another order (CPU: ~4e-8 alpha)
        failures.append(f"B={batch}: GEMM field differs from the reference by {gemm_err:.3g} px")
    return failures


def monai_per_sample(images, regions):
    """A callable warping the batch one sample at a time with MONAI, or a reason string."""
    try:
        from monai.transforms import Rand2DElasticd
    except Exception as exc:  # not installed, or broken install
        return f"not available ({type(exc).__name__})"
    transform = Rand2DElasticd(keys=["image", "label"], spacing=(32, 32), magnitude_range=(1.0, 2.0),
                               prob=1.0, mode=("bilinear", "nearest"),
                               padding_mode=("border", "zeros"), device=images.device)
    labels = regions.unsqueeze(1).float()

    def run():
        return [transform({"image": images[b], "label": labels[b]}) for b in range(images.shape[0])]

    return run


def with_cudnn_benchmark(fn):
    """fn run with cuDNN's algorithm search on (restored afterwards)."""
    def run():
        saved = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            return fn()
        finally:
            torch.backends.cudnn.benchmark = saved
    return run


def timed_ms(fn) -> float:
    """Median ms of ``fn``: ``do_bench`` on CUDA; on the CPU smoke run, of 3 calls after a warm-up."""
    if CUDA:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median")
    return cpu_median_ms(fn)


def host_profile() -> int:
    """``--host``: in a fresh process, B=16 (2 without CUDA), the host's time per call and the
    time per call in a row of the dense pair and the coarse pair (spacing 8), then where the
    host's time of 200 coarse pairs goes (cProfile, the 15 functions of most own time)."""
    import cProfile
    import pstats

    batch = BATCHES[0]
    images, regions = make_inputs(batch)
    gen = generator()
    spacing = COARSE_SPACINGS[0]
    pairs = {"elastic_pair": lambda: triton_pair(images, regions, gen),
             f"coarse elastic_pair, spacing {spacing}": lambda: coarse_pair(images, regions, gen, spacing)}
    print(f"B={batch}, {SIZE}x{SIZE}, {torch.cuda.get_device_name() if CUDA else 'CPU'}; ms per call (median)")
    print("| path | host time to issue a call | calls in a row |\n|---|---|---|")
    for name, fn in pairs.items():
        host, in_a_row = host_ms(fn), back_to_back_ms(fn)
        if host is None:  # the CPU smoke run has no launch queue: a call's median time instead
            print(f"| {name} | {timed_ms(fn):.4f} (a call on the CPU) | needs CUDA |")
        else:
            print(f"| {name} | {host:.4f} | {in_a_row:.4f} |")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(200 if CUDA else 2):  # the interpreter takes seconds a call
        pairs[f"coarse elastic_pair, spacing {spacing}"]()
    profiler.disable()
    if CUDA:
        torch.cuda.synchronize()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return 0


def _first_run(label, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, or None after printing why it failed to run (say, a launch shape
    needing more shared memory than the device has), so the sweep goes on to the other shapes."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - any launch error: report it, sweep the rest
        print(f"FAILED {label}: {type(error).__name__}: {error}", flush=True)
        return None


def sweep() -> int:
    """The fused field's time for each tile shape, after checking it; 1 if a check fails."""
    device_name = torch.cuda.get_device_name() if CUDA else "CPU (Triton interpreter, smoke run)"
    rows, failed = [], False
    for batch in BATCHES:
        gen = generator()
        uniform = draw(batch, gen)
        oracle = ref.field_from_uniform(uniform[:2].cpu(), DEFAULT_ALPHA, DEFAULT_SIGMA)  # fp32 on CPU
        for blocks in SMOOTH_BLOCK_CHOICES:
            field = _first_run(f"B={batch} blocks={blocks}", field_from_uniform_triton, uniform, DEFAULT_ALPHA,
                               DEFAULT_SIGMA, blocks=blocks)
            if field is None:
                failed = True
                continue
            err = (field[:2].cpu() - oracle).abs().max().item()
            if not err <= FIELD_ATOL["tf32x3"] * DEFAULT_ALPHA:
                print(f"CHECK FAILED B={batch} blocks={blocks}: field max |error| {err:.3g} px")
                failed = True
                continue
            ms = timed_ms(lambda: field_from_uniform_triton(draw(batch, gen), DEFAULT_ALPHA, DEFAULT_SIGMA,
                                                            blocks=blocks))
            rows.append((batch, blocks, ms, err))
            print(f"  B={batch} blocks={blocks}: {ms:.3f} ms (max |error| {err:.3g} px)", flush=True)
    print(f"\nFused field (noise + smoothing, tf32x3), {SIZE}x{SIZE}, sigma={DEFAULT_SIGMA:g} px, {device_name}; "
          "median ms, fastest first; (BM, BN, BK, num_warps)\n")
    _sweep_table(rows, SMOOTH_BLOCK_CHOICES[0])
    coarse_rows = []
    for batch in BATCHES:
        images, regions = make_inputs(batch)
        coarse_h, coarse_w = ref.coarse_shape(SIZE, SIZE, COARSE_SPACINGS[0])
        uniform = torch.rand((batch, 2, coarse_h, coarse_w), generator=generator(), device=DEVICE)
        grid = field_from_uniform_triton(uniform, DEFAULT_ALPHA / COARSE_SPACINGS[0],
                                         DEFAULT_SIGMA / COARSE_SPACINGS[0])  # (B, 2, Hc, Wc)
        expected = elastic_warp_coarse_triton(images, regions, grid, COARSE_SPACINGS[0])
        for launch in COARSE_LAUNCH_CHOICES:
            got = _first_run(f"B={batch} coarse launch={launch}", elastic_warp_coarse_triton, images, regions,
                             grid, COARSE_SPACINGS[0], launch=launch)
            failure = "did not run" if got is None else _compare_pairs(
                f"B={batch} coarse launch={launch} against the default launch", got, expected)
            if failure:
                print(f"CHECK FAILED {failure}")
                failed = True
                continue
            ms = timed_ms(lambda: elastic_warp_coarse_triton(images, regions, grid, COARSE_SPACINGS[0],
                                                             launch=launch))
            coarse_rows.append((batch, launch, ms, 0.0))
            print(f"  B={batch} coarse launch={launch}: {ms:.3f} ms", flush=True)
    print(f"\nCoarse warp (spacing {COARSE_SPACINGS[0]}: interpolation + warp, grid given), {device_name}; "
          "median ms, fastest first; (pixels, num_warps)\n")
    _sweep_table(coarse_rows, COARSE_LAUNCH_CHOICES[0])
    return 1 if failed else 0


def _sweep_table(rows, default_blocks):
    print("| B | blocks | ms | vs default |")
    print("|---|---|---|---|")
    for batch in BATCHES:
        mine = [row for row in rows if row[0] == batch]
        default = next((row[2] for row in mine if row[1] == default_blocks), None)
        for _, blocks, ms, _ in sorted(mine, key=lambda row: row[2]):
            ratio = f"{ms / default:.2f}x" if default else "-"
            shown = f"{blocks} (default)" if blocks == default_blocks else str(blocks)
            print(f"| {batch} | {shown} | {ms:.3f} | {ratio} |")


def _batch_rows(batch: int) -> list[str]:
    """The table rows of one batch size: every path's median ms and its ratio to elastic_pair."""
    images, regions = make_inputs(batch)
    gen = generator()
    field = field_from_uniform_triton(draw(batch, gen), DEFAULT_ALPHA, DEFAULT_SIGMA)

    def fused_field(precision):
        return field_from_uniform_triton(draw(batch, gen), DEFAULT_ALPHA, DEFAULT_SIGMA,
                                         precision=precision)

    times = {
        "elastic_pair (noise + field + warp)": timed_ms(lambda: triton_pair(images, regions, gen)),
        "elastic_pair, float32 matmul 'high' (tf32 field)": timed_ms(
            with_matmul_precision(lambda: triton_pair(images, regions, gen), "high")),
        "fused field (noise + smoothing, tf32x3)": timed_ms(lambda: fused_field("tf32x3")),
        "fused field (noise + smoothing, tf32)": timed_ms(lambda: fused_field("tf32")),
        "fused warp (image + regions)": timed_ms(
            lambda: elastic_warp(images, regions, field, backend="triton", check_finite=False)),
        "reference pair (conv + gather)": timed_ms(lambda: reference_pair(images, regions, gen)),
        "PyTorch baseline (conv + grid_sample)": timed_ms(
            lambda: grid_sample_pair(images, regions, gen)),
        "PyTorch baseline, cudnn.benchmark=True": timed_ms(
            with_cudnn_benchmark(lambda: grid_sample_pair(images, regions, gen))),
        "tuned PyTorch baseline (GEMM smoothing + grid_sample)": timed_ms(
            lambda: gemm_grid_sample_pair(images, regions, gen)),
    }
    for spacing in COARSE_SPACINGS:
        times[f"coarse elastic_pair, spacing {spacing} (noise to node rows + fused warp)"] = timed_ms(
            lambda: coarse_pair(images, regions, gen, spacing))
        times[f"coarse PyTorch baseline, spacing {spacing} (GEMM grid + gathers + grid_sample)"] = \
            timed_ms(lambda: coarse_grid_sample_pair(images, regions, gen, spacing))
    loop = "calls in a row (caches warm, host time included)"
    times[f"elastic_pair, {loop}"] = back_to_back_ms(lambda: triton_pair(images, regions, gen))
    times[f"tuned PyTorch baseline, {loop}"] = back_to_back_ms(
        lambda: gemm_grid_sample_pair(images, regions, gen))
    spacing = COARSE_SPACINGS[0]
    times[f"coarse elastic_pair, spacing {spacing}, {loop}"] = back_to_back_ms(
        lambda: coarse_pair(images, regions, gen, spacing))
    times[f"coarse PyTorch baseline, spacing {spacing}, {loop}"] = back_to_back_ms(
        lambda: coarse_grid_sample_pair(images, regions, gen, spacing))
    host = "host time to issue a call (no GPU wait)"
    times[f"elastic_pair, {host}"] = host_ms(lambda: triton_pair(images, regions, gen))
    times[f"coarse elastic_pair, spacing {spacing}, {host}"] = host_ms(
        lambda: coarse_pair(images, regions, gen, spacing))
    # the pair's GPU time alone, as a trainer that captures its step in a CUDA graph runs it
    # (the default generator: a capture registers it)
    for name, spacing_or_none in (("elastic_pair", None), (f"coarse elastic_pair, spacing {spacing}", spacing)):
        replay = graph_replay_ms(lambda: elastic_pair(images, regions, backend="triton",
                                                      spacing=spacing_or_none))
        times[f"{name}, CUDA graph replay"] = "needs CUDA" if replay is None else replay
    monai = monai_per_sample(images, regions) if batch <= MONAI_MAX_BATCH else "not timed at this B"
    times["MONAI Rand2DElasticd, per sample"] = timed_ms(monai) if callable(monai) else monai
    fused = times["elastic_pair (noise + field + warp)"]
    times = {name: "needs CUDA" if value is None else value for name, value in times.items()}
    rows = []
    for name, value in times.items():
        if isinstance(value, str):
            rows.append(f"| {batch} | {name} | {value} | |")
        else:
            rows.append(f"| {batch} | {name} | {value:.3f} | {value / fused:.1f}x |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--sweep", action="store_true", help="the field's tile shapes and the coarse warp's launches")
    mode.add_argument("--host", action="store_true", help="the host's time per pair, and a cProfile of it")
    args = parser.parse_args(argv)
    if args.sweep:
        return sweep()
    if args.host:
        return host_profile()
    failures = []
    for batch in BATCHES:
        failures += check(batch) + check_coarse(batch)
    if failures:
        print("CORRECTNESS CHECK FAILED:\n  " + "\n  ".join(failures))
        return 1
    device_name = torch.cuda.get_device_name() if CUDA else "CPU (Triton interpreter, smoke run)"
    rows = []
    for batch in BATCHES:
        rows += _batch_rows(batch)
        if CUDA:  # the batch's tensors are gone with _batch_rows' frame
            torch.cuda.empty_cache()
    print(f"\nElastic pairs, {SIZE}x{SIZE}, alpha={DEFAULT_ALPHA:g}, sigma={DEFAULT_SIGMA:g} px, "
          f"float32 image + int64 regions, {device_name}; median ms; last column = time / elastic_pair\n")
    print("| B | path | ms | vs elastic_pair |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


# ---------------------------------------------------------------------------------------------
# pytest-benchmark
# ---------------------------------------------------------------------------------------------

def _bench(benchmark, pair):
    images, regions = make_inputs(BATCHES[0])
    gen = generator()

    def run():
        out = pair(images, regions, gen)
        if CUDA:
            torch.cuda.synchronize()
        return out

    benchmark(run)


def test_triton_pair(benchmark):
    _bench(benchmark, triton_pair)


def test_reference_pair(benchmark):
    _bench(benchmark, reference_pair)


if __name__ == "__main__":
    sys.exit(main())
