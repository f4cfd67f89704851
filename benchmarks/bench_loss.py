"""Benchmark of lrc_fast.region_contrast_loss, forward + backward.

Paths, all run in one process on the same inputs:

* ``fused``     -- the fused path (``backend='triton'``), on contiguous (NCHW) features and,
  as ``fused, channels_last``, on the same features in channels_last; for float32 features also
  channels_last under ``torch.set_float32_matmul_precision('high')`` (tf32 logits, checked with
  the tf32 tolerance); ``fused, CUDA graph replay`` times the NCHW step captured in a CUDA graph
  (the GPU's time alone, without the host's time to issue it; no memory column), and
  ``fused, channels_last, CUDA graph replay`` the channels_last one, beside the same step with the
  dense backward instead of its default scatter (``dense backward``), the scatter's baseline, and
  with the InfoNCE's column blocks as wide as its row blocks (``InfoNCE columns = rows``, the
  tiles before stop 27), the narrower columns' baseline. Where the
  extension has CUDA the fused step's region index is sorted by its CUDA kernel; ``fused, tl.sort
  index`` (and its replay) is the same step with the Triton tile sort instead, its baseline,
  after a check that both give the same index;
* ``reference`` -- the PyTorch reference (sampled gather, ``backend='reference'``);
* ``one-hot``   -- a dense one-hot pooling baseline (DetCon style: a ``(B, K, H*W)`` mask, bmm,
  then the same InfoNCE), skipped where its mask would not fit in free GPU memory;
* ``floor``     -- allocating and zero-filling the two dense gradient buffers, the least any
  backward must do.

Setting on CUDA: B=16, D=64, 512 x 512, N=50, K in {64, 256, 1024}, float32 and bfloat16,
separate region maps for the two views (r_p is r_q shifted by (3, -2) with the rolled-in border
ignored), ``num_regions=K`` given (no host sync). Time is the median of
``triton.testing.do_bench`` (L2 flushed between runs); memory is the peak of
``torch.cuda.max_memory_allocated`` above what was allocated before the call. The fused path is
checked against the reference at full size before any timing; the script exits with status 1 if
that check fails. Without CUDA it runs a tiny CPU smoke version (fused path under the Triton
interpreter), with wall-clock times and no memory column.

Run: ``python benchmarks/bench_loss.py`` (``--quick`` for K=256 float32 only; the CPU smoke run's
largest K there), or
``pytest benchmarks/bench_loss.py`` for the pytest-benchmark functions.

``--profile``: instead of the table, where one fused forward+backward step spends its time, per
K, dtype and layout (NCHW features, then channels_last copies; ``--quick``: K=256 float32 NCHW):
``torch.profiler`` over a few steps (after a warm-up step), every CUDA kernel's device time and
launches per step, their sum, and the step's wall time from CUDA events; the difference is time
the GPU waited for the host (launch overhead, host-side work). On CUDA it also gives the host's
time to issue one step (no synchronisation inside the step) and the median time of one replay of
the step captured in a CUDA graph (the GPU's time alone; the capture fails if the step syncs). On
CPU the smoke shapes, with each operator's self CPU time instead of kernels.

The table's "DRAM bound" column is :func:`traffic_bound`: how close to the floor any step could
come on the same inputs, counting the bytes it cannot avoid moving (both region maps read, every
32-byte sector holding a sampled feature read, both gradients written). In NCHW each sample reads
D separate sectors; in channels_last one run of D values.

``--bound``: only that bound, at the full-size setting, on any device (no timing; it needs no
GPU): the bytes behind it for both layouts.

``--host``: the host's side of a fused step (NCHW, float32 and bfloat16, K=64 and 256; on the CPU
the smoke shapes): the time to issue a step when the GPU is not waited for, beside the time per
step of steps in a row, then a cProfile of 100 bfloat16 K=64 steps (the functions of most own
time). Where the first is near the second, the step is bound by the host, not by its kernels.

``--sweep [TABLES]``: instead of the table, kernels alone at each of their launch shapes (median
ms of a CUDA graph replay: the GPU's time, not the host's), each shape checked against the default
shape's result first. ``TABLES``, comma-separated, picks some (default: all, in this order, the
changes not yet timed on a GPU first):

* ``infonce``: the InfoNCE forward + backward (``(rows, columns, warps, stages)`` of
  ``BLOCK_CHOICES`` in :mod:`lrc_fast.kernels.region_infonce`, and at the default shape without
  normalisation);
* ``search``: the pooling forward alone at each width of its search for a sample's tile
  (``SEARCH_BITS_CHOICES``, channels_last features);
* ``overlap``: on CUDA, an experiment: the InfoNCE backward with both gradients' zero fills on a
  second stream against one stream, and the whole channels_last step with both fills forked to a
  second stream at its start against the step as it is (:func:`sweep_overlap`; on the CPU only
  its check that the early fills give the same gradients);
* ``backward``: the dense feature-gradient kernel (one view; ``(pixels, channels, warps)`` of
  ``GRAD_BLOCK_CHOICES`` in :mod:`lrc_fast.kernels.region_pool` for NCHW gradients and of
  ``GRAD_BLOCK_CHOICES_CL`` for channels_last ones, beside a zero fill of one gradient and the
  scatter backward);
* ``index``: the region index with the pooling forward that searches it (``INDEX_TILE_CHOICES``;
  the CUDA tile sort and tl.sort side by side where the extension has CUDA, and the index alone
  per sort).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import pytest
import torch

if not torch.cuda.is_available():  # before any @triton.jit kernel is created
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lrc_fast._ext import has_cuda_extension, triton_usable  # noqa: E402
from lrc_fast.loss import region_contrast_loss  # noqa: E402
from lrc_fast.reference import region_loss as ref  # noqa: E402

# benchmarks/ is on sys.path
from cuda_timing import back_to_back_ms, cpu_median_ms, graph_replay_ms, host_ms  # noqa: E402

CUDA = torch.cuda.is_available()
FULL = dict(batch=16, channels=64, size=512, num_samples=50, ks=(64, 256, 1024),
            dtypes=(torch.float32, torch.bfloat16))
SMOKE = dict(batch=2, channels=8, size=32, num_samples=10, ks=(4, 16), dtypes=(torch.float32, torch.bfloat16))
LOSS_RTOL = {torch.float32: 1e-4, torch.bfloat16: 2e-3}  # tf32x3 / tf32 logits on CUDA (see tests)


def make_inputs(batch, channels, size, num_regions, dtype, device, seed=0):
    """Block regions (a sqrt(K) x sqrt(K) grid, ids shuffled per image) and random features."""
    g = torch.Generator().manual_seed(seed)
    side = int(round(num_regions ** 0.5))
    cells = torch.arange(size) * side // size  # (size,)
    grid = cells[:, None] * side + cells[None, :]  # (size, size) in [0, side^2)
    perm = torch.stack([torch.randperm(side * side, generator=g) for _ in range(batch)])  # (B, side^2)
    regions_q = perm.gather(1, grid.reshape(1, -1).expand(batch, -1)).reshape(batch, size, size)
    regions_p = regions_q.roll(shifts=(3, -2), dims=(1, 2)).clone()
    regions_p[:, :3] = -1
    regions_p[:, :, -2:] = -1
    g_dev = torch.Generator(device=device).manual_seed(seed)
    shape = (batch, channels, size, size)
    feat_q = torch.randn(shape, generator=g_dev, device=device)
    feat_p = (feat_q + 0.5 * torch.randn(shape, generator=g_dev, device=device)).to(dtype)
    return feat_q.to(dtype), feat_p, regions_q.to(device), regions_p.to(device)


def onehot_means(feat, regions, num_regions):
    """Exact region means through a dense (B, K, H*W) one-hot mask and a bmm."""
    batch = feat.shape[0]
    ids = torch.arange(num_regions, device=feat.device).view(1, -1, 1)
    onehot = (regions.reshape(batch, 1, -1) == ids).to(feat.dtype)  # (B, K, HW)
    counts = onehot.sum(-1, dtype=torch.float32)  # (B, K)
    sums = torch.bmm(onehot, feat.flatten(2).transpose(1, 2))  # (B, K, D)
    return sums.float() / counts.clamp_min(1).unsqueeze(-1), counts > 0


def onehot_loss(feat_q, feat_p, regions_q, regions_p, num_regions, temperature=0.1):
    means_q, valid_q = onehot_means(feat_q, regions_q, num_regions)
    means_p, valid_p = onehot_means(feat_p, regions_p, num_regions)
    valid = valid_q & valid_p
    rows = ref.region_infonce(means_q, means_p, valid, temperature)
    return ref.reduce_rows(rows, valid, "mean")


def step_fn(path, feat_q, feat_p, regions_q, regions_p, num_regions, num_samples):
    """A closure running forward + backward of one path and returning the two gradients."""
    if path == "floor":
        return lambda: (torch.zeros_like(feat_q), torch.zeros_like(feat_p))
    if path == "one-hot":
        def run():
            loss = onehot_loss(feat_q, feat_p, regions_q, regions_p, num_regions)
            return torch.autograd.grad(loss, [feat_q, feat_p])
        return run
    backend = "triton" if path == "fused" else "reference"

    def run():
        loss = region_contrast_loss(feat_q, feat_p, regions_q, regions_p, num_samples=num_samples,
                                    num_regions=num_regions, backend=backend)
        return torch.autograd.grad(loss, [feat_q, feat_p])
    return run


HIGH = "float32 matmul 'high'"  # the paths run under torch.set_float32_matmul_precision('high')
REPLAY = "fused, CUDA graph replay"  # the fused step captured in a CUDA graph: no host time
# the fused step with the Triton tile sort (tl.sort) as its region index instead of the compiled
# CUDA kernel, the default where the extension has CUDA: the baseline of that kernel
SORT_INDEX = "fused, tl.sort index"
SORT_INDEX_REPLAY = "fused, tl.sort index, CUDA graph replay"
# the channels_last step's GPU time, with its default backward (the scatter) and with the dense
# one instead: the scatter's baseline
CL_REPLAY = "fused, channels_last, CUDA graph replay"
CL_DENSE_REPLAY = "fused, channels_last, dense backward, CUDA graph replay"
# the channels_last step with the InfoNCE's column blocks as wide as its row blocks (its tiles
# until stop 27): the baseline of the default rule's narrower columns
CL_SQUARE_INFONCE_REPLAY = "fused, channels_last, InfoNCE columns = rows, CUDA graph replay"


def with_patch(fn, module, name, replacement):
    """``fn`` with ``module.name`` replaced by ``replacement`` while it runs."""
    def run():
        default = getattr(module, name)
        setattr(module, name, replacement)
        try:
            return fn()
        finally:
            setattr(module, name, default)
    return run


def with_pool_choice(fn, name, choice):
    """``fn`` with the function ``name`` of :mod:`lrc_fast.kernels.region_pool` that picks a
    method (``_index_method``: the region index's tile sort; ``_backward_method``: the pooling
    backward) answering ``choice`` while it runs."""
    from lrc_fast.kernels import region_pool as pk

    return with_patch(fn, pk, name, lambda *args: choice)


def with_square_infonce_tiles(fn):
    """``fn`` with the InfoNCE kernels' column blocks as wide as the default rule's row blocks."""
    from lrc_fast.kernels import region_infonce as ri

    launch = ri._launch

    def square(batch, regions, channels, given):
        rows, columns, block_d, warps, stages = launch(batch, regions, channels, given)
        return rows, (columns if given else rows), block_d, warps, stages

    return with_patch(fn, ri, "_launch", square)


def side_streams() -> list:
    """Two CUDA streams for :func:`other_stream` (two in a row from torch's pool, so distinct)."""
    return [torch.cuda.Stream(), torch.cuda.Stream()]


def other_stream(streams):
    """The first of ``streams`` that is not the current stream. torch hands streams out round-robin
    from a pool of 32, and a graph's capture stream comes from it too: one stream made in advance
    could be the very stream a step is captured on, and the "second stream" the same one."""
    current = torch.cuda.current_stream()
    return streams[0] if streams[0] != current else streams[1]


def with_early_fills(fn, feats):
    """``fn``, a channels_last step of the two features ``feats``, with both gradients zero-filled
    at its start (on a second stream where there is CUDA) and handed to the scatter backward in
    place of the fills it would make there. Raises if the backward did not take both."""
    from lrc_fast.kernels import region_pool as pk

    zero = pk._zero_gradient
    streams = side_streams() if CUDA else None

    def run():
        side = other_stream(streams) if CUDA else None  # None: the current stream (the CPU)
        if CUDA:
            side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            ready = [zero(list(f.shape), f.dtype, True, f.device) for f in feats]

        def take(size, dtype, channels_last, device):
            grad = ready.pop(0)
            if list(grad.shape) != list(size) or grad.dtype != dtype or not channels_last:
                raise RuntimeError(f"the early fill is {tuple(grad.shape)} {grad.dtype}, the backward "
                                   f"asked for {tuple(size)} {dtype} (channels_last={channels_last})")
            if CUDA:  # the join: the scatter waits for the fills, and the buffer is used here
                torch.cuda.current_stream().wait_stream(side)
                grad.record_stream(torch.cuda.current_stream())
            return grad

        result = with_patch(fn, pk, "_zero_gradient", take)()
        if ready:  # e.g. a dense backward, which writes every element and takes no zero fill
            raise RuntimeError(f"the backward took {len(feats) - len(ready)} of the {len(feats)} early fills")
        return result
    return run


def early_fills_differ(feat_q, feat_p, regions_q, regions_p, num_regions, num_samples) -> str | None:
    """None when the step with early fills (:func:`with_early_fills`) gives the default step's
    loss and gradients bit for bit (channels_last features, the same draw), else what differs."""
    def loss_and_grads():
        loss = region_contrast_loss(feat_q, feat_p, regions_q, regions_p, num_samples=num_samples,
                                    num_regions=num_regions, generator=1234, backend="triton")
        return (loss.detach(), *torch.autograd.grad(loss, [feat_q, feat_p]))
    default, early = loss_and_grads(), with_early_fills(loss_and_grads, (feat_q, feat_p))()
    for name, a, b in zip(("loss", "grad_q", "grad_p"), default, early):
        if not torch.equal(a, b):
            return f"early fills: {name} differs from the default step's"
    return None


def with_matmul_precision(fn, setting):
    """fn run under torch.set_float32_matmul_precision(setting) (restored afterwards)."""
    def run():
        saved = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(setting)
        try:
            return fn()
        finally:
            torch.set_float32_matmul_precision(saved)
    return run


def check_fused(feat_q, feat_p, regions_q, regions_p, num_regions, num_samples,
                tf32=False) -> str | None:
    """Fused vs reference on the benchmark inputs (same seed); an error message or None.

    ``tf32``: the fused path runs under ``torch.set_float32_matmul_precision('high')`` (tf32
    logits for float32 features), checked with the tolerance of tf32 logits."""
    results = {}
    for backend in ("reference", "triton"):
        def loss_and_grads():
            loss = region_contrast_loss(feat_q, feat_p, regions_q, regions_p, num_samples=num_samples,
                                        num_regions=num_regions, generator=1234, backend=backend)
            return (loss.detach(), *torch.autograd.grad(loss, [feat_q, feat_p]))
        results[backend] = (with_matmul_precision(loss_and_grads, "high")() if tf32 and backend == "triton"
                            else loss_and_grads())
    dtype = feat_q.dtype
    rtol = (LOSS_RTOL[torch.bfloat16 if tf32 else dtype]) if CUDA else 1e-5
    for name, fused, expected in zip(("loss", "grad_q", "grad_p"), results["triton"], results["reference"]):
        fused, expected = fused.float(), expected.float()
        scale = float(expected.abs().max())
        atol = (1e-3 if name != "loss" else 0.0) * scale
        grad_rtol = rtol * 10 + (2.0 ** -7 if dtype == torch.bfloat16 else 0.0)
        if not torch.allclose(fused, expected, rtol=rtol if name == "loss" else grad_rtol, atol=atol):
            diff = float((fused - expected).abs().max())
            return f"{name}: max |fused - reference| = {diff:.3g} (reference max {scale:.3g})"
    return None


SECTOR_BYTES = 32  # the smallest unit the L2 reads from DRAM; HBM bursts are no smaller


def index_differs(num_regions, regions_q, regions_p):
    """None when the CUDA tile sort's region index equals tl.sort's (pixels, prefix table, run
    starts where a tile holds the id), else what differs."""
    from lrc_fast.kernels import region_pool as pk

    cuda, sort = (pk.region_index(regions_q, num_regions, regions_p=regions_p, method=m) for m in ("cuda", "sort"))
    held = torch.diff(sort.cum, dim=2, prepend=torch.zeros_like(sort.cum[:, :, :1])) > 0
    for name, a, b in [("pixels", cuda.pixels, sort.pixels), ("cum", cuda.cum, sort.cum),
                       ("local", cuda.local[held], sort.local[held])]:
        if not torch.equal(a, b):
            return f"the CUDA region index's {name} differ from tl.sort's"
    return None


def feature_sectors(idx: torch.Tensor, plane: int, channels: int, element_size: int,
                    channels_last: bool) -> int:
    """Distinct 32-byte sectors of one view's ``(B, D, H, W)`` features holding sampled values.

    ``idx`` is ``(B, M, N)`` flat pixel indices ``h * W + w`` (-1: no sample), as
    :func:`lrc_fast.reference.region_loss.sample_pixels` returns them; ``plane = H * W``. Every
    channel of every sampled pixel is read. In NCHW, value ``(b, c, p)`` lies at byte
    ``((b D + c) plane + p) * element_size``; in channels_last at ``((b plane + p) D + c) *
    element_size``, so a sample reads one run of ``D * element_size`` bytes.
    """
    batch = idx.shape[0]
    image = torch.arange(batch, device=idx.device).view(-1, 1, 1).expand_as(idx)  # (B, M, N)
    keep = idx >= 0
    pixel = torch.unique(image[keep] * plane + idx[keep].long())  # (P,) distinct (b, p)
    run = channels * element_size  # bytes of one pixel's channels in channels_last
    if channels_last:
        start = pixel * run  # (P,)
        span = torch.arange((run - 1) // SECTOR_BYTES + 2, device=idx.device)  # (S,)
        sector = start[:, None] // SECTOR_BYTES + span[None, :]  # (P, S)
        inside = sector <= (start[:, None] + run - 1) // SECTOR_BYTES
        return int(torch.unique(sector[inside]).numel())
    b, p = pixel // plane, pixel % plane  # (P,)
    if plane * element_size % SECTOR_BYTES == 0:  # every channel plane starts on a sector
        return int(torch.unique(b * plane + p * element_size // SECTOR_BYTES).numel()) * channels
    c = torch.arange(channels, device=idx.device)[:, None]  # (D, 1)
    byte = ((b[None, :] * channels + c) * plane + p[None, :]) * element_size  # (D, P)
    return int(torch.unique(byte // SECTOR_BYTES).numel())


def traffic_bound(regions_q, regions_p, num_regions, num_samples, channels, dtype, seed=1234):
    """The least DRAM traffic of a forward + backward step, as a multiple of the zero-fill floor's.

    A step must read both region maps, every sector holding a sampled feature value (sampled as
    the reference samples, from ``seed``) and write both dense gradients; the floor only writes
    the gradients. If the step moved its bytes at the zero fill's bandwidth it would take
    ``1 + (maps + sampled sectors) / gradients`` times the floor: no kernel design does better.
    Returns ``{'NCHW': ratio, 'channels_last': ratio, 'sampled MB': {layout: MB}, 'maps MB': MB,
    'gradients MB': MB}``.
    """
    batch, height, width = regions_q.shape
    plane = height * width
    element_size = torch.tensor([], dtype=dtype).element_size()
    generator = torch.Generator(device=regions_q.device).manual_seed(seed)
    indexes = [ref.region_index(r, num_regions) for r in (regions_q, regions_p)]
    _, valid, _ = ref.select_regions(indexes[0][2], indexes[1][2], None, "largest", None)
    uniforms = ref.draw_uniforms(2, batch, num_regions, num_samples, generator, regions_q.device)
    samples = [ref.sample_pixels(pix, off, cnt, valid, u) for (pix, off, cnt), u in zip(indexes, uniforms)]
    maps = regions_q.numel() * regions_q.element_size() + regions_p.numel() * regions_p.element_size()
    gradients = 2 * batch * channels * plane * element_size
    result, sampled = {}, {}
    for layout, last in (("NCHW", False), ("channels_last", True)):
        read = sum(feature_sectors(idx, plane, channels, element_size, last) for idx in samples) * SECTOR_BYTES
        sampled[layout] = read / 1e6
        result[layout] = 1.0 + (maps + read) / gradients
    result.update({"sampled MB": sampled, "maps MB": maps / 1e6, "gradients MB": gradients / 1e6})
    return result


def superpixel_maps(batch, size, device):
    """Felzenszwalb superpixels of windowed phantom slices (the demo's parameters: scale 1, sigma
    0.8, min_size 20) as r_q, and r_p made from them as make_inputs makes it; and K."""
    from lrc_fast import felzenszwalb
    from lrc_fast.data import phantom_slice, window_hu

    slices = torch.stack([torch.from_numpy(window_hu(phantom_slice(size, size, seed=s))) for s in range(batch)])
    regions_q = felzenszwalb(slices.double(), scale=1.0, sigma=0.8, min_size=20)  # (B, H, W) int64
    regions_p = regions_q.roll(shifts=(3, -2), dims=(1, 2)).clone()
    regions_p[:, :3] = -1
    regions_p[:, :, -2:] = -1
    return regions_q.to(device), regions_p.to(device), int(regions_q.max()) + 1


def print_bounds(config, device):
    print(f"\n### DRAM traffic bound of a fused step, B={config['batch']} D={config['channels']} "
          f"{config['size']}x{config['size']} N={config['num_samples']} (block regions of make_inputs; "
          "'FH' rows: Felzenszwalb superpixels of phantom slices, K = the largest label + 1)")
    print("| dtype | K | maps MB | gradients MB | sampled sectors MB, NCHW | x floor, NCHW "
          "| sampled sectors MB, channels_last | x floor, channels_last |")
    print("|---|---|---|---|---|---|---|---|")
    superpixels = superpixel_maps(config["batch"], config["size"], device)
    for dtype in config["dtypes"]:
        for k in (*config["ks"], "FH"):
            if k == "FH":
                regions_q, regions_p, k = superpixels
                label = f"FH ({k})"
            else:
                _, _, regions_q, regions_p = make_inputs(config["batch"], 1, config["size"], k, dtype, device)
                label = str(k)
            bound = traffic_bound(regions_q, regions_p, k, config["num_samples"], config["channels"], dtype)
            sampled = bound["sampled MB"]
            print(f"| {str(dtype).replace('torch.', '')} | {label} | {bound['maps MB']:.0f} "
                  f"| {bound['gradients MB']:.0f} "
                  f"| {sampled['NCHW']:.0f} | {bound['NCHW']:.2f} "
                  f"| {sampled['channels_last']:.0f} | {bound['channels_last']:.2f} |", flush=True)


def time_ms(fn, rep_ms):
    if CUDA:
        from triton.testing import do_bench
        return do_bench(fn, warmup=max(10, rep_ms // 4), rep=rep_ms, return_mode="median")
    return cpu_median_ms(fn)


def peak_extra_bytes(fn):
    if not CUDA:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return peak


def onehot_skip_reason(batch, size, num_regions, dtype, channels):
    if not CUDA:
        return None
    mask = batch * num_regions * size * size * torch.tensor([], dtype=dtype).element_size()
    needed = 1.5 * mask + 4 * batch * channels * size * size * 4
    free = torch.cuda.mem_get_info()[0]
    if needed > 0.8 * free:
        return f"one-hot mask needs ~{needed / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free"
    return None


def _ks(config, quick) -> tuple:
    """The K values to run: all of the config's, or with ``quick`` K=256 (the CPU smoke run's
    largest K, whose K=256 would take minutes under the interpreter)."""
    if not quick:
        return config["ks"]
    return (256,) if 256 in config["ks"] else config["ks"][-1:]


def run(config, quick=False):
    device = "cuda" if CUDA else "cpu"
    ks = _ks(config, quick)
    dtypes = (torch.float32,) if quick else config["dtypes"]
    fused_ok = CUDA or triton_usable("cpu")
    cuda_index = CUDA and has_cuda_extension()  # the default index is the CUDA kernel: time tl.sort's too
    rows, failures = [], []
    for dtype in dtypes:
        for k in ks:
            feat_q, feat_p, regions_q, regions_p = make_inputs(
                config["batch"], config["channels"], config["size"], k, dtype, device)
            feat_q.requires_grad_(True)
            feat_p.requires_grad_(True)
            args = (feat_q, feat_p, regions_q, regions_p, k, config["num_samples"])
            # the same features in channels_last (a decoder run in that layout): the sampled
            # gather reads one run of D values per sample instead of D separate sectors
            cl_feats = [f.detach().to(memory_format=torch.channels_last).requires_grad_(True)
                        for f in (feat_q, feat_p)]
            cl_args = (*cl_feats, *args[2:])
            # float32 features also with tf32 logits (a trainer's usual 'high' setting), channels_last
            high = dtype == torch.float32
            if fused_ok:
                problem = (check_fused(*args) or check_fused(*cl_args)
                           or (high and check_fused(*cl_args, tf32=True))
                           or (cuda_index and index_differs(k, regions_q, regions_p)))
                if problem:
                    failures.append(f"{dtype} K={k}: {problem}")
                    print(f"CHECK FAILED {dtype} K={k}: {problem}", flush=True)
                    continue
            paths = (["floor", "fused", REPLAY] + ([SORT_INDEX, SORT_INDEX_REPLAY] if cuda_index else [])
                     + ["fused, channels_last", CL_REPLAY, CL_DENSE_REPLAY, CL_SQUARE_INFONCE_REPLAY]
                     + ([f"fused, channels_last, {HIGH}"] if high else [])
                     + ["reference", "one-hot"]
                     if fused_ok else ["floor", "reference", "one-hot"])
            results = {}
            for path in paths:
                skip = onehot_skip_reason(config["batch"], config["size"], k, dtype, config["channels"]) \
                    if path == "one-hot" else None
                if skip:
                    results[path] = (None, None, skip)
                    continue
                if path.endswith("CUDA graph replay"):  # the fused step's GPU time alone (no memory column)
                    fn = step_fn("fused", *(cl_args if "channels_last" in path else args))
                    choice = {SORT_INDEX_REPLAY: ("_index_method", "sort"),
                              CL_DENSE_REPLAY: ("_backward_method", "dense")}.get(path)
                    fn = with_pool_choice(fn, *choice) if choice else fn
                    fn = with_square_infonce_tiles(fn) if path == CL_SQUARE_INFONCE_REPLAY else fn
                    replay = graph_replay_ms(fn)
                    results[path] = ((replay, None, "") if isinstance(replay, float)
                                     else (None, None, replay or "needs CUDA"))
                    continue
                if path.startswith("fused, channels_last"):
                    fn = step_fn("fused", *cl_args)
                    fn = with_matmul_precision(fn, "high") if path.endswith(HIGH) else fn
                elif path == SORT_INDEX:
                    fn = with_pool_choice(step_fn("fused", *args), "_index_method", "sort")
                else:
                    fn = step_fn(path, *args)
                memory = peak_extra_bytes(fn)
                rep = 200 if path == "one-hot" else 60
                results[path] = (time_ms(fn, rep), memory, "")
                torch.cuda.empty_cache() if CUDA else None
            floor_ms, floor_mem, _ = results["floor"]
            bound = traffic_bound(regions_q, regions_p, k, config["num_samples"], config["channels"], dtype)
            bounds = {"fused": bound["NCHW"], "fused, channels_last": bound["channels_last"],
                      f"fused, channels_last, {HIGH}": bound["channels_last"]}
            for path in paths:
                ms, mem, note = results[path]
                rows.append((str(dtype).replace("torch.", ""), k, path, ms, floor_ms, bounds.get(path),
                             mem, floor_mem, note))
                print(f"{rows[-1][0]:>8} K={k:<5} {path:<45} "
                      + (f"{ms:9.3f} ms" if ms is not None else f"skipped ({note})"), flush=True)
            del feat_q, feat_p, regions_q, regions_p, args, cl_feats, cl_args
    return rows, failures


def markdown(rows):
    lines = ["| dtype | K | path | fwd+bwd ms | x floor | DRAM bound x floor | peak extra MiB | x floor mem | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for dtype, k, path, ms, floor_ms, bound, mem, floor_mem, note in rows:
        t = f"{ms:.3f}" if ms is not None else "-"
        tr = f"{ms / floor_ms:.2f}" if ms is not None and floor_ms else "-"
        b = f"{bound:.2f}" if bound is not None else "-"
        m = f"{mem / 2**20:.0f}" if mem is not None else "-"
        mr = f"{mem / floor_mem:.2f}" if mem is not None and floor_mem else "-"
        lines.append(f"| {dtype} | {k} | {path} | {t} | {tr} | {b} | {m} | {mr} | {note} |")
    return "\n".join(lines)


PROFILE_STEPS = 5
PROFILE_TOP = 12  # kernels listed per configuration; the rest are summed in one row


def profile_step(config, dtype, k, channels_last=False):
    """(rows, kernel_ms, wall_ms, host_ms, replay_ms): the fused step's time per kernel (CUDA) or
    per op (CPU), on NCHW features or on channels_last copies of them.

    rows are (name, calls per step, ms per step) sorted by time; kernel_ms their sum per step;
    wall_ms the step's median wall time (CUDA events around each profiled step on CUDA); host_ms
    (CUDA only, else None) the median host time to issue one step, measured without the
    profiler and without synchronising inside the step: above the GPU's time per step, the step
    is bound by the host (a GPU->CPU sync inside the step would make it the GPU time);
    replay_ms :func:`graph_replay_ms` (CUDA only, else None).
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    device = "cuda" if CUDA else "cpu"
    feat_q, feat_p, regions_q, regions_p = make_inputs(config["batch"], config["channels"], config["size"], k,
                                                       dtype, device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    feat_q, feat_p = (f.to(memory_format=layout).requires_grad_(True) for f in (feat_q, feat_p))
    fn = step_fn("fused", feat_q, feat_p, regions_q, regions_p, k, config["num_samples"])
    fn()  # compile and warm up outside the profile
    walls = []
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])
    with profile(activities=activities) as prof:
        for _ in range(PROFILE_STEPS):
            if CUDA:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                walls.append(begin.elapsed_time(end))
            else:
                start = time.perf_counter()
                fn()
                walls.append((time.perf_counter() - start) * 1e3)
    totals: dict[str, list[float]] = {}
    if CUDA:
        for event in prof.events():
            if event.device_type == DeviceType.CUDA:
                entry = totals.setdefault(event.name, [0, 0.0])
                entry[0] += 1
                entry[1] += event.time_range.elapsed_us() / 1e3
    else:
        for event in prof.key_averages():
            if event.self_cpu_time_total > 0:
                totals[event.key] = [event.count, event.self_cpu_time_total / 1e3]
    rows = sorted(((name, n / PROFILE_STEPS, ms / PROFILE_STEPS) for name, (n, ms) in totals.items()),
                  key=lambda row: -row[2])
    host = None
    if CUDA:
        issue = []
        for _ in range(4 * PROFILE_STEPS):
            start = time.perf_counter()
            fn()
            issue.append((time.perf_counter() - start) * 1e3)
        torch.cuda.synchronize()
        host = statistics.median(issue)
    return rows, sum(row[2] for row in rows), statistics.median(walls), host, graph_replay_ms(fn)


def profile_markdown(rows, kernel_ms, wall_ms, host_ms, replay_ms):
    unit = "kernel" if CUDA else "operator (self CPU time)"
    lines = [f"| {unit} | calls / step | ms / step | share |", "|---|---|---|---|"]
    for name, calls, ms in rows[:PROFILE_TOP]:
        short = name if len(name) <= 70 else name[:67] + "..."
        lines.append(f"| `{short}` | {calls:g} | {ms:.4f} | {ms / kernel_ms:.1%} |")
    rest = rows[PROFILE_TOP:]
    if rest:
        ms = sum(row[2] for row in rest)
        lines.append(f"| {len(rest)} others | {sum(row[1] for row in rest):g} | {ms:.4f} | {ms / kernel_ms:.1%} |")
    lines.append(f"| **sum** | {sum(row[1] for row in rows):g} | {kernel_ms:.4f} | |")
    lines.append(f"| **step, wall** | | {wall_ms:.4f} | sum / wall {kernel_ms / wall_ms:.0%} |")
    if host_ms is not None:
        lines.append(f"| **step, host time to issue** | | {host_ms:.4f} | host / wall {host_ms / wall_ms:.0%} |")
    if isinstance(replay_ms, str):
        lines.append(f"| **step, CUDA graph replay** | | {replay_ms} | |")
    elif replay_ms is not None:
        lines.append(f"| **step, CUDA graph replay** | | {replay_ms:.4f} | replay / wall {replay_ms / wall_ms:.0%} |")
    return "\n".join(lines)


def run_profile(config, quick=False):
    for channels_last in ((False,) if quick else (False, True)):
        for dtype in ((torch.float32,) if quick else config["dtypes"]):
            for k in _ks(config, quick):
                rows, kernel_ms, wall_ms, host_ms, replay_ms = profile_step(config, dtype, k, channels_last)
                print(f"\n#### fused step, {str(dtype).replace('torch.', '')}, K={k}, "
                      f"{'channels_last' if channels_last else 'NCHW'} features "
                      f"(median of {PROFILE_STEPS} profiled steps)")
                print(profile_markdown(rows, kernel_ms, wall_ms, host_ms, replay_ms), flush=True)


def kernel_ms(fn, remember: bool = True) -> str:
    """A sweep cell's time: on CUDA the median replay of ``fn`` captured in a CUDA graph, the
    kernels' GPU time without the host's (which sets ``do_bench``'s time of a small launch);
    where the capture fails, ``do_bench``'s time (marked). On the CPU, :func:`time_ms`.
    ``remember``: as :func:`cuda_timing.graph_replay_ms`'s (False: this cell's failed capture
    leaves later cells to try their own)."""
    if not CUDA:
        return f"{time_ms(fn, 60):.3f}"
    replay = graph_replay_ms(fn, remember)
    if isinstance(replay, float):
        return f"{replay:.4f}"
    DO_BENCH_REASONS.add(replay)
    return f"{time_ms(fn, 60):.3f} (do_bench)"


DO_BENCH_REASONS: set = set()  # why sweep cells fell back to do_bench (printed after the sweep)


def sweep_cells(label, shapes, run, problem_of, failures):
    """One table cell per launch shape: ``run(shape)`` checked by ``problem_of`` (None when
    right), then its time (:func:`kernel_ms`); a wrong shape, or one that fails to run (say, too
    much shared memory for the device), is added to ``failures`` and not timed."""
    cells = []
    for shape in shapes:
        try:
            problem, cell = problem_of(run(shape)), "MISMATCH"
        except Exception as error:  # noqa: BLE001 - any launch error: report it, sweep the rest
            problem, cell = f"failed to run: {type(error).__name__}: {error}", "FAILED"
        if problem:
            failures.append(f"{label} {shape}: {problem}")
            cells.append(cell)
            continue
        cells.append(kernel_ms(lambda: run(shape)))
    return cells


def sweep_index(config, quick=False):
    """The region index of both maps plus the pooling forward that searches it, at each tile of
    INDEX_TILE_CHOICES and each tile sort (the CUDA kernel and tl.sort where the extension has
    CUDA; float32 features, no hit counts). Then the index alone (tile sort and prefix) at the
    default tile, per sort.

    Every cell's region counts and sample pixels are first checked equal to the first cell's (the
    index depends on neither the tile nor the sort). Returns the failures.
    """
    from lrc_fast.kernels import region_pool as pk

    device = "cuda" if CUDA else "cpu"
    methods = ("cuda", "sort") if CUDA and has_cuda_extension() else (None,)  # None: the default
    shapes = [(tile, method) for tile in pk.INDEX_TILE_CHOICES for method in methods]
    failures = []
    print("\n| K | " + " | ".join(f"tile {tile}{f' {m}' if m else ''} ms" for tile, m in shapes)
          + "".join(f" | index alone{f' {m}' if m else ''} ms" for m in methods) + " |")
    print("|---|" + "---|" * (len(shapes) + len(methods)))
    for k in _ks(config, quick):
        feat_q, feat_p, regions_q, regions_p = make_inputs(config["batch"], config["channels"],
                                                           config["size"], k, torch.float32, device)
        uniforms = torch.rand((2, config["batch"], k, config["num_samples"]), device=device)

        def run(shape):
            tile, method = shape
            index = pk.region_index(regions_q, k, tile, regions_p=regions_p, method=method)
            valid = (index.counts[0] > 0) & (index.counts[1] > 0)
            _, idx, _ = pk._pool_forward(feat_q, feat_p, index.pixels, index.cum, index.local, None,
                                         valid, uniforms, False, index.tile)
            return index.counts, idx

        expected = run(shapes[0])
        cells = sweep_cells(f"index K={k}", shapes, run,
                            lambda out: None if all(map(torch.equal, out, expected))
                            else "counts or sample pixels differ from the first cell's", failures)
        cells += sweep_cells(f"index alone K={k}", methods,
                             lambda method: pk.region_index(regions_q, k, regions_p=regions_p, method=method).cum,
                             lambda cum: None if torch.equal(cum[:, :, -1], expected[0])
                             else "counts differ from the first cell's", failures)
        print(f"| {k} | " + " | ".join(cells) + " |", flush=True)
    return failures


def sweep_search(config, quick=False):
    """The pooling forward alone (both views, channels_last float32 features, no hit counts) at
    each search width of SEARCH_BITS_CHOICES, on one index at the default tile: 1 bit is the binary
    search over the tiles the forward used until stop 27, the baseline of the wider ones.

    Every width's means and sample pixels are first checked equal, bit for bit, to the first's (the
    search finds the same tile). Returns the failures.
    """
    from lrc_fast.kernels import region_pool as pk

    device = "cuda" if CUDA else "cpu"
    failures = []
    print("\n| K | " + " | ".join(f"pooling forward, {bits}-bit search levels ms" for bits in pk.SEARCH_BITS_CHOICES)
          + " |")
    print("|---|" + "---|" * len(pk.SEARCH_BITS_CHOICES))
    for k in _ks(config, quick):
        feat_q, feat_p, regions_q, regions_p = make_inputs(config["batch"], config["channels"],
                                                           config["size"], k, torch.float32, device)
        feats = [f.contiguous(memory_format=torch.channels_last) for f in (feat_q, feat_p)]
        uniforms = torch.rand((2, config["batch"], k, config["num_samples"]), device=device)
        index = pk.region_index(regions_q, k, regions_p=regions_p)
        valid = (index.counts[0] > 0) & (index.counts[1] > 0)

        def run(bits):
            means, idx, _ = pk._pool_forward(*feats, index.pixels, index.cum, index.local, None, valid,
                                             uniforms, False, index.tile, bits)
            return means, idx

        expected = run(pk.SEARCH_BITS_CHOICES[0])
        cells = sweep_cells(f"search K={k}", pk.SEARCH_BITS_CHOICES, run,
                            lambda out: None if all(map(torch.equal, out, expected))
                            else "means or sample pixels differ from the default width's", failures)
        print(f"| {k} | " + " | ".join(cells) + " |", flush=True)
    return failures


def sweep_backward(config, quick=False):
    """The dense backward alone at each shape of GRAD_BLOCK_CHOICES (NCHW gradients) and of
    GRAD_BLOCK_CHOICES_CL (channels_last), beside one zero fill of a gradient in that layout (by
    torch, and as the scatter does it: 16-bit buffers as 32-bit words) and the scatter backward
    (its zero fill included; see BACKWARD_METHODS).

    Every shape's gradient, and the scatter's, is first checked equal (bit for bit: the same
    products, only the tiling differs) to the layout's default shape's; a mismatch is reported
    and the shape not timed. Returns the failures.
    """
    from lrc_fast.kernels import region_pool as pk

    device = "cuda" if CUDA else "cpu"
    failures = []
    for layout, choices in [("NCHW", pk.GRAD_BLOCK_CHOICES), ("channels_last", pk.GRAD_BLOCK_CHOICES_CL)]:
        print("\n| dtype | K | layout | zero fill of one gradient ms | the same as 32-bit words ms | "
              + " | ".join(f"{shape} ms" for shape in choices) + " | scatter ms |")
        print("|---|---|---|---|---|" + "---|" * (len(choices) + 1))
        for dtype in ((torch.float32,) if quick else config["dtypes"]):
            for k in _ks(config, quick):
                feat, _, regions, _ = make_inputs(config["batch"], config["channels"], config["size"], k,
                                                  dtype, device)
                if layout == "channels_last":
                    feat = feat.to(memory_format=torch.channels_last)
                index = pk.region_index(regions, k)
                valid = index.counts[0] > 0
                uniforms = torch.rand((1, config["batch"], k, config["num_samples"]), device=device)
                means, idx, hits = pk._pool_forward(feat, None, index.pixels, index.cum, index.local, None,
                                                    valid, uniforms, True, index.tile)
                grad_means = torch.randn_like(means)
                size, layouts = list(feat.shape), [layout == "channels_last"]
                args = (grad_means, hits, regions, None, None, size, dtype, layouts, config["num_samples"], [0])
                (expected,) = pk._pool_backward(*args)

                def differs(grad):
                    return None if torch.equal(grad, expected) else "gradient differs from the default shape's"

                cells = [kernel_ms(lambda: torch.zeros_like(feat)),
                         kernel_ms(lambda: pk._zero_gradient(size, dtype, layouts[0], device))] + sweep_cells(
                    f"{dtype} K={k} {layout}", choices, lambda shape: pk._pool_backward(*args, blocks=shape)[0],
                    differs, failures)
                cells += sweep_cells(f"{dtype} K={k} {layout} scatter", ["scatter"],
                                     lambda _: pk._pool_scatter_backward(grad_means, idx, size, dtype, layouts,
                                                                         config["num_samples"], [0])[0],
                                     differs, failures)
                print(f"| {str(dtype).replace('torch.', '')} | {k} | {layout} | " + " | ".join(cells) + " |",
                      flush=True)
    return failures


def sweep_infonce(config, quick=False):
    """The InfoNCE kernels (forward + backward) alone at each shape of BLOCK_CHOICES, then at the
    default shape with ``normalize=False`` (what normalising the region means costs).

    Region means as the loss makes them (float32, B x K x D), about 10 % of the regions invalid;
    float32 features mean tf32x3 logits, bfloat16 features tf32. Every shape's rows and gradients
    are first checked against the default shape's (only the order of float32 sums differs; the
    tolerance is the precision's).
    Returns the failures.
    """
    from lrc_fast.kernels import region_infonce as ri

    device = "cuda" if CUDA else "cpu"
    failures = []
    print("\n| logits | K | " + " | ".join(f"{shape} ms" for shape in ri.BLOCK_CHOICES)
          + " | default shape, normalize=False ms |")
    print("|---|---|" + "---|" * (len(ri.BLOCK_CHOICES) + 1))
    for precision in (("tf32x3",) if quick else ("tf32x3", "tf32")):
        for k in _ks(config, quick):
            g = torch.Generator(device=device).manual_seed(k)
            shape = (config["batch"], k, config["channels"])
            means_q = torch.randn(shape, generator=g, device=device).requires_grad_(True)
            means_p = (means_q.detach() + 0.5 * torch.randn(shape, generator=g, device=device))
            means_p.requires_grad_(True)
            valid = torch.rand(shape[:2], generator=g, device=device) > 0.1
            upstream = torch.rand(shape[:2], generator=g, device=device)

            def step(blocks, normalize=True):
                # stacked inside the step: autograd runs a node's backward on the stream of its
                # forward, so a stack made before a CUDA graph capture broke the capture (stop 25)
                means = torch.stack([means_q, means_p])  # (2, B, M, D), as the loss passes them
                rows = ri.region_infonce(means, valid, 0.1, normalize, precision=precision, blocks=blocks)
                return (rows.detach(), *torch.autograd.grad(rows, [means_q, means_p], upstream))

            def differs(outputs):
                return next((f"{name} differ from the default shape's" for name, got, want
                             in zip(("rows", "d_q", "d_p"), outputs, expected)
                             if not torch.allclose(got, want, rtol=1e-4, atol=atol * float(want.abs().max()))),
                            None)

            # Shapes differ only in the order of float32 sums, but tf32 rounds each product's
            # operands to 10 bits, so a different order moves tf32 gradients more: on an H200 at
            # K=1024 the shapes' gradients spread by 2.3e-4 of the largest in tf32 (1.5e-6 in
            # tf32x3), against tf32's own error of 3.1e-3 from float64 (benchmarks/RESULTS.md).
            atol = {"tf32x3": 1e-5, "tf32": 1e-3}[precision]

            expected = step(ri.BLOCK_CHOICES[0])
            cells = sweep_cells(f"InfoNCE {precision} K={k}", ri.BLOCK_CHOICES, step, differs, failures)
            # the same loss without L2 normalisation (no normalising launch, no normalisation
            # backward): what normalising costs. Before stop 25 the kernels normalised every row
            # they loaded, and this column measured that cost
            cells.append(kernel_ms(lambda: step(None, normalize=False)))
            print(f"| {precision} | {k} | " + " | ".join(cells) + " |", flush=True)
    return failures


def sweep_overlap(config, quick=False):
    """Would the channels_last step gain from zero-filling both gradients on a second stream while
    other kernels run? (An experiment: the loss fills them in its backward, one after the other.)

    Per dtype and K, CUDA graph replays (ms): the InfoNCE backward then both zero fills on one
    stream, and the same launches with the fills on a second stream (forked before, joined
    after); then the whole channels_last step as it is, and with both fills forked to a second
    stream at its start, under the forward and the InfoNCE backward, and joined where the scatter
    backward takes them (:func:`with_early_fills`; its loss and gradients first checked equal to
    the default step's, bit for bit). The fill is bound by DRAM bandwidth and the other kernels
    by latency, so the second of each pair could approach the longer of the two. The timings need
    CUDA (streams); on the CPU the check alone runs. The two second-stream cells are experiments:
    if one's capture fails, that cell alone falls back to ``do_bench`` (marked), and the others
    are still replays. Returns the failed checks.
    """
    from lrc_fast.kernels import region_infonce as ri
    from lrc_fast.kernels import region_pool as pk

    failures = []
    device = "cuda" if CUDA else "cpu"
    if not CUDA:
        print("\nfill / InfoNCE overlap: needs CUDA (two streams); the early fills' check only")
    else:
        print("\n| dtype | K | InfoNCE backward, then both zero fills ms | the fills on a second stream ms "
              "| channels_last step ms | the step, fills forked at its start ms |")
        print("|---|---|---|---|---|---|")
        streams = side_streams()
    for dtype in ((torch.float32,) if quick else config["dtypes"]):
        for k in _ks(config, quick):
            batch, channels, size = config["batch"], config["channels"], config["size"]
            feat_q, feat_p, regions_q, regions_p = make_inputs(batch, channels, size, k, dtype, device)
            cl_feats = [f.to(memory_format=torch.channels_last).requires_grad_(True) for f in (feat_q, feat_p)]
            del feat_q, feat_p
            problem = early_fills_differ(*cl_feats, regions_q, regions_p, k, config["num_samples"])
            if problem:
                failures.append(f"overlap {dtype} K={k}: {problem}")
                print(f"CHECK FAILED {dtype} K={k}: {problem}", flush=True)
                continue
            if not CUDA:
                continue
            g = torch.Generator(device="cuda").manual_seed(k)
            means = torch.randn((2, batch, k, channels), generator=g, device="cuda")
            valid = torch.rand((batch, k), generator=g, device="cuda") > 0.1
            options = (0.1, True, False, "tf32x3" if dtype == torch.float32 else "tf32", None)
            _, lse, unit = ri.infonce_forward_pass(means, valid, options)
            grad_rows = torch.rand((batch, k), generator=g, device="cuda")
            shape = [batch, channels, size, size]

            def fills():
                return [pk._zero_gradient(shape, dtype, True, "cuda") for _ in range(2)]

            def one_stream():
                return ri.infonce_backward_pass(grad_rows, means, unit, valid, lse, options), fills()

            def two_streams():
                side = other_stream(streams)
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    grads = fills()
                d_means = ri.infonce_backward_pass(grad_rows, means, unit, valid, lse, options)
                # joined, as a scatter into the buffers would need (no kernel here uses them on
                # this stream, so they need no record_stream)
                torch.cuda.current_stream().wait_stream(side)
                return d_means, grads

            step = step_fn("fused", *cl_feats, regions_q, regions_p, k, config["num_samples"])
            early = with_early_fills(step, cl_feats)
            print(f"| {str(dtype).replace('torch.', '')} | {k} | {kernel_ms(one_stream)} | "
                  f"{kernel_ms(two_streams, remember=False)} | {kernel_ms(step)} | "
                  f"{kernel_ms(early, remember=False)} |", flush=True)
            del step, early, cl_feats
            torch.cuda.empty_cache()
    return failures


def host_profile(config) -> int:
    """``--host``: the host's time to issue a fused step and the time per step in a row, then where
    the host's time goes (cProfile)."""
    import cProfile
    import pstats

    device = "cuda" if CUDA else "cpu"
    ks = (64, 256) if CUDA else config["ks"][-1:]
    print("| dtype | K | host time to issue a step ms | time per step, steps in a row ms |\n|---|---|---|---|")
    profiled = None
    for dtype in (torch.float32, torch.bfloat16):
        for k in ks:
            feat_q, feat_p, regions_q, regions_p = make_inputs(
                config["batch"], config["channels"], config["size"], k, dtype, device)
            feat_q.requires_grad_(True)
            feat_p.requires_grad_(True)
            fn = step_fn("fused", feat_q, feat_p, regions_q, regions_p, k, config["num_samples"])
            host, in_a_row = host_ms(fn, calls=20), back_to_back_ms(fn, calls=20)
            name = str(dtype).removeprefix("torch.")
            if host is None:  # the CPU smoke run has no launch queue: a step's median time instead
                print(f"| {name} | {k} | {cpu_median_ms(fn):.3f} (a step on the CPU) | needs CUDA |", flush=True)
            else:
                print(f"| {name} | {k} | {host:.3f} | {in_a_row:.3f} |", flush=True)
            if dtype == torch.bfloat16 and k == ks[0]:
                profiled = fn
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(100 if CUDA else 2):  # the interpreter takes a second a step
        profiled()
    profiler.disable()
    if CUDA:
        torch.cuda.synchronize()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    return 0


def index_sort() -> str:
    """Which tile sort the fused rows' region index uses here, as the package chooses it for the
    benchmark's int64 maps: a run whose extension did not build (CUDA) times the Triton sort, and
    its table must say so."""
    from lrc_fast.kernels import region_pool as pk

    maps = torch.zeros(1, 1, 1, dtype=torch.int64, device="cuda" if CUDA else "cpu")
    method = pk._index_method(maps, pk.INDEX_TILE_CHOICES[0])
    if method == "sort":
        return f"tl.sort ({pk._compiled_sort_refusal('cuda', maps, pk.INDEX_TILE_CHOICES[0])})"
    return {"cuda": "the CUDA tile sort", "network": "the gather network (Triton interpreter)"}[method]


# --sweep's tables, in the default order: the changes not yet timed on a GPU first, so that a run
# cut short by its time limit has those
SWEEPS = {"infonce": sweep_infonce, "search": sweep_search, "overlap": sweep_overlap,
          "backward": sweep_backward, "index": sweep_index}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only K=256 (on the CPU the smoke run's largest K), float32")
    parser.add_argument("--profile", action="store_true", help="the fused step's time per kernel instead")
    parser.add_argument("--bound", action="store_true",
                        help="only the DRAM traffic bound at the full-size setting (any device, no timing)")
    parser.add_argument("--sweep", nargs="?", const=",".join(SWEEPS), default=None, metavar="TABLES",
                        help="kernels alone at each launch shape instead: comma-separated tables of "
                             f"{', '.join(SWEEPS)} (default: all, in that order)")
    parser.add_argument("--host", action="store_true",
                        help="the host's time per fused step and where it goes (cProfile) instead")
    args = parser.parse_args(argv)
    tables = args.sweep.split(",") if args.sweep is not None else []
    unknown = [t for t in tables if t not in SWEEPS]
    if unknown:
        parser.error(f"unknown --sweep tables {unknown}; choose from {list(SWEEPS)}")
    if args.bound:
        print_bounds(FULL, "cuda" if CUDA else "cpu")
        return 0
    start = time.time()
    config = FULL if CUDA else SMOKE
    device = torch.cuda.get_device_name() if CUDA else "CPU (smoke run: tiny shapes, Triton interpreter)"
    print(f"device: {device}; B={config['batch']} D={config['channels']} "
          f"{config['size']}x{config['size']} N={config['num_samples']}; the fused path's region "
          f"index: {index_sort()}", flush=True)
    if (args.host or args.profile or tables) and not (CUDA or triton_usable("cpu")):
        print("the fused path needs CUDA or TRITON_INTERPRET=1")
        return 1
    if args.host:
        return host_profile(config)
    if args.profile:
        run_profile(config, quick=args.quick)
        return 0
    if tables:
        failures = []
        for table in tables:
            failures += SWEEPS[table](config, quick=args.quick)
        for reason in sorted(DO_BENCH_REASONS):
            print(f"\ncells marked (do_bench): {reason}")
        print("\nCORRECTNESS CHECK FAILED:\n" + "\n".join(failures) if failures else "")
        return 1 if failures else 0
    rows, failures = run(config, quick=args.quick)
    print(f"\n### region_contrast_loss forward+backward on {device}, B={config['batch']} "
          f"D={config['channels']} {config['size']}x{config['size']} N={config['num_samples']}, "
          f"region index: {index_sort()} ({time.time() - start:.0f} s)")
    print(markdown(rows))
    if failures:
        print("\nCORRECTNESS CHECK FAILED:\n" + "\n".join(failures))
        return 1
    return 0


# ----------------------------------------------------------------------------------------------
# pytest-benchmark (one K, float32; tiny shapes on CPU)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["fused", "reference", "floor"])
def test_region_contrast_loss_fwd_bwd(benchmark, path):
    config = FULL if CUDA else SMOKE
    k = 256 if CUDA else 16
    if path == "fused" and not (CUDA or triton_usable("cpu")):
        pytest.skip("the fused path needs CUDA or TRITON_INTERPRET=1")
    feat_q, feat_p, regions_q, regions_p = make_inputs(
        config["batch"], config["channels"], config["size"], k, torch.float32, "cuda" if CUDA else "cpu")
    feat_q.requires_grad_(True)
    feat_p.requires_grad_(True)
    fn = step_fn(path, feat_q, feat_p, regions_q, regions_p, k, config["num_samples"])

    def synced():
        out = fn()
        if CUDA:
            torch.cuda.synchronize()
        return out

    grads = benchmark(synced)
    assert grads[0].shape == feat_q.shape


if __name__ == "__main__":
    sys.exit(main())
