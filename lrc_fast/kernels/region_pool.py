"""Triton kernels for per-region sampling and mean pooling, and the dense feature gradient.

Region index (:func:`region_index`, :class:`RegionIndex`), on the device: one kernel and a cumsum
    The image is cut into tiles of ``TILE`` pixels. Each program sorts its tile's
    ``(id, lane)`` pairs, packed in int32, with a bitonic network in registers (partners
    fetched by ``tl.gather``), and writes the tile's pixels in that order: a stable sort by id,
    so each id's pixels form one run in raster order. A pixel's rank within its run is its
    sorted position minus the run's start, found by a branchless binary search. At the end of
    each run the program writes the run's length ``hist[b, t, k]`` and start
    ``local[b, t, k]``. One in-place PyTorch cumsum over the tiles turns ``hist`` into ``cum``,
    whose last row is every region's pixel count. Region ``k``'s pixel number ``r`` in raster
    order is then in the tile ``t`` with ``cum[t-1, k] <= r < cum[t, k]``, at position
    ``local[t, k] + r - cum[t-1, k]`` of that tile's run. The pooling finds ``t`` by a binary
    search over the tiles, per sample. There is no global scatter: the ids are read once and one
    int32 is written per pixel. (``tl.sort``/``tl.flip`` and custom scans would do the same
    sort, but the Triton interpreter runs them element by element, which makes them unusable
    in CPU tests.)

Pooling forward (:class:`RegionPoolFunction`)
    One program per (image, region). It turns the ``(B, M, N)`` uniforms into sample pixels
    (pixel number ``min(floor(u * count), count - 1)`` of the region, the reference's
    arithmetic, located through the index), gathers the ``N x D`` features (any strides, so
    channels_last too), and writes their float32 mean. When the features need a gradient it
    also counts, with int32 atomics, how often each pixel was drawn: ``hits`` ``(B, H*W)``
    int32, the only state the backward needs besides the region ids.

Pooling backward
    A pixel can only have been drawn for its own region, so
    ``grad[b, :, pixel] = hits[b, pixel] / N * grad_mean[b, slot(region id), :]``.
    One dense pass writes every element of the feature gradient exactly once, zeros included:
    no separate zero fill, no atomics on the feature gradient, deterministic. It reads 4 bytes
    of ``hits`` per pixel and, where a pixel was drawn, its region id.

Index widths: pixel indices within an image are int32 (``H*W < 2**31``); everything that
multiplies by the batch index, a stride or ``K`` is computed in int64, because ``B*D*H*W``
or ``B*T*K`` may exceed ``2**31``.

The launchers are registered as ``torch.library`` custom ops (``lrc_fast::region_index``,
``lrc_fast::region_pool_forward``, ``lrc_fast::region_pool_backward``) so that
``torch.compile`` treats them as opaque; eager calls go to the launchers directly.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

_TILE = 1024  # pixels sorted per program in the region index
_MAX_INDEX_ENTRIES = 1 << 24  # grow the tile (up to _MAX_TILE) to keep (B, T, K) below this
_MAX_TILE = 4096
_POOL_TILE = 4096  # N x D elements gathered per loop step of the pooling forward
# (pixels per program, channels per inner step, warps) of the dense backward: the shapes
# `bench_loss.py --sweep` times, the first is the default. 16 channels per step keep 16 values per
# thread: the sm_90 build (compiled on a CPU by Triton 3.9) needs 56 registers per thread at
# (128, 16, 4) in float32 NCHW, where the old 64 channels per step needed 241, which leaves room
# for only 2 programs per SM in a kernel that must keep many stores in flight.
GRAD_BLOCK_CHOICES = ((128, 16, 4), (256, 16, 8), (128, 8, 4), (64, 16, 2), (128, 64, 4))


# ----------------------------------------------------------------------------------------------
# Region index: each tile's pixels sorted by region id, and a prefix table over tiles
# ----------------------------------------------------------------------------------------------

@triton.jit
def _bitonic_sort(x, LOG: tl.constexpr):
    # ascending sort of a 1-D block of 2**LOG distinct values: a bitonic network whose
    # compare-exchange partners are fetched with tl.gather
    lane = tl.arange(0, 1 << LOG)
    for s in tl.static_range(1, LOG + 1):
        for r in tl.static_range(s):
            partner = tl.gather(x, lane ^ (1 << (s - 1 - r)), 0)
            ascending = (lane & (1 << s)) == 0
            lower = (lane & (1 << (s - 1 - r))) == 0
            x = tl.where(lower == ascending, tl.minimum(x, partner), tl.maximum(x, partner))
    return x


@triton.jit
def _count_below(sorted_keys, target, LOG: tl.constexpr):
    # number of entries of the sorted block that are < target, per element of target
    pos = tl.zeros(target.shape, dtype=tl.int32)
    for r in tl.static_range(LOG):
        cand = pos + (1 << (LOG - 1 - r))
        probe = tl.gather(sorted_keys, cand - 1, 0)
        pos = tl.where(probe < target, cand, pos)
    # pos = min(count, 2**LOG - 1) here; one more probe tells 2**LOG - 1 from 2**LOG
    return pos + (tl.gather(sorted_keys, pos, 0) < target).to(tl.int32)


@triton.jit
def _tile_sort_kernel(reg_ptr, s_rb, s_rh, s_rw, W, HW, K, pixels_ptr, hist_ptr, local_ptr,
                      n_tiles, LOG: tl.constexpr, FLAT: tl.constexpr):
    # One tile of 2**LOG pixels of image b: its pixels sorted by key (stable), and for every
    # id k < K present in the tile, hist[b, t, k] = its pixel count and local[b, t, k] = where
    # its run starts in the sorted tile. Key K is the ignore bucket (negative or >= K ids), K + 1
    # the padding past the image end; neither gets a table entry.
    t = tl.program_id(0)
    b = tl.program_id(1)
    lane = tl.arange(0, 1 << LOG)
    pix = t * (1 << LOG) + lane  # (TILE,) pixel index in the image
    inside = pix < HW
    if FLAT:
        offs = pix.to(tl.int64) * s_rw
    else:
        offs = (pix // W).to(tl.int64) * s_rh + (pix % W).to(tl.int64) * s_rw
    rid = tl.load(reg_ptr + b.to(tl.int64) * s_rb + offs, mask=inside, other=-1)
    key = tl.where((rid >= 0) & (rid < K), rid, K)
    key = tl.where(inside, key, K + 1).to(tl.int32)
    comp = _bitonic_sort(key * (1 << LOG) + lane, LOG)  # (key, lane) pairs, packed in int32
    key = comp >> LOG
    # padding sorts last, so position `lane` holds a pixel of the image exactly where pix < HW
    tl.store(pixels_ptr + b.to(tl.int64) * HW + pix, t * (1 << LOG) + (comp & ((1 << LOG) - 1)),
             mask=inside)
    rank = lane - _count_below(key, key, LOG)  # position minus the start of the key's run
    next_key = tl.gather(key, tl.minimum(lane + 1, (1 << LOG) - 1), 0)
    run_end = ((next_key != key) | (lane == (1 << LOG) - 1)) & (key < K)
    row = (b.to(tl.int64) * n_tiles + t) * K
    tl.store(hist_ptr + row + key, rank + 1, mask=run_end)
    tl.store(local_ptr + row + key, lane - rank, mask=run_end)


def _flat_pixels(tensor: torch.Tensor) -> bool:
    """Whether pixel ``h * W + w`` sits at ``(h * W + w) * stride(-1)`` (contiguous, channels_last)."""
    return tensor.shape[-2] == 1 or tensor.stride(-2) == tensor.shape[-1] * tensor.stride(-1)


def _index_tile(batch: int, pixels: int, num_regions: int) -> int:
    """Pixels per program: 1024 (fewer for small images), more when ``(B, T, K)`` gets large."""
    tile = max(16, min(_TILE, triton.next_power_of_2(pixels)))
    while tile < _MAX_TILE and batch * triton.cdiv(pixels, tile) * num_regions > _MAX_INDEX_ENTRIES:
        tile *= 2
    return tile


def max_index_regions(tile: int) -> int:
    """Largest ``K`` whose ``(key, lane)`` pairs still pack into int32 for this tile size."""
    return (2 ** 31) // tile - 2


class RegionIndex(NamedTuple):
    """Where each region's pixels are, for ``B`` images cut into ``T`` tiles of ``tile`` pixels.

    Region ``k``'s pixel number ``r`` in raster order (``0 <= r < counts[b, k]``) lies in the
    tile ``t`` with ``cum[b, t-1, k] <= r < cum[b, t, k]``, at
    ``pixels[b, t * tile + local[b, t, k] + r - cum[b, t-1, k]]`` (``cum[b, -1, k]`` read as 0).
    """

    pixels: torch.Tensor  # (B, H*W) int32: each tile's pixels, stably sorted by region id
    cum: torch.Tensor  # (B, T, K) int32: pixels of id k in tiles 0..t
    local: torch.Tensor  # (B, T, K) int32: start of id k's run in tile t (where t has id k)
    counts: torch.Tensor  # (B, K) int32: pixels of id k in the image
    tile: int


def _region_index(regions: torch.Tensor, num_regions: int, tile: int) -> tuple[torch.Tensor, ...]:
    batch, height, width = regions.shape
    hw = height * width
    n_tiles = triton.cdiv(hw, tile)
    dev = regions.device
    pixels = torch.empty((batch, hw), dtype=torch.int32, device=dev)  # (B, HW)
    hist = torch.zeros((batch, n_tiles, num_regions), dtype=torch.int32, device=dev)  # (B, T, K)
    local = torch.empty((batch, n_tiles, num_regions), dtype=torch.int32, device=dev)  # (B, T, K)
    if batch * hw == 0:
        return pixels, hist, local, torch.zeros((batch, num_regions), dtype=torch.int32, device=dev)
    _tile_sort_kernel[(n_tiles, batch)](regions, *regions.stride(), width, hw, num_regions,
                                        pixels, hist, local, n_tiles, LOG=tile.bit_length() - 1,
                                        FLAT=_flat_pixels(regions), num_warps=4)
    cum = hist.cumsum_(1)  # (B, T, K), in place: prefix over the tiles
    return pixels, cum, local, cum[:, -1].clone(memory_format=torch.contiguous_format)  # no alias


@torch.library.custom_op("lrc_fast::region_index", mutates_args=())
def _region_index_op(regions: torch.Tensor, num_regions: int,
                     tile: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _region_index(regions, num_regions, tile)


@_region_index_op.register_fake
def _(regions, num_regions, tile):
    batch, height, width = regions.shape
    table = (batch, triton.cdiv(height * width, tile), num_regions)
    return (regions.new_empty((batch, height * width), dtype=torch.int32),
            regions.new_empty(table, dtype=torch.int32), regions.new_empty(table, dtype=torch.int32),
            regions.new_empty((batch, num_regions), dtype=torch.int32))


def region_index(regions: torch.Tensor, num_regions: int, tile: int | None = None) -> RegionIndex:
    """Index each image's pixels by region id on the device (one Triton kernel and a cumsum).

    It holds the same information as :func:`lrc_fast.reference.region_loss.region_index` (every
    region's pixels in raster order) without the global scatter: see :class:`RegionIndex` for
    how pixel number ``r`` of a region is found.

    Parameters
    ----------
    regions : torch.Tensor
        ``(B, H, W)`` integer ids, any strides; ids outside ``[0, num_regions)`` are ignored.
    num_regions : int
        ``K``.
    tile : int, optional
        Pixels per program, a power of two >= 16 (default 1024, or the image size rounded up to
        a power of two when smaller; larger, up to 4096, when the ``(B, T, K)`` int32 tables
        would exceed 2**24 entries).

    Returns
    -------
    RegionIndex
        ``pixels (B, H*W)``, ``cum (B, T, K)``, ``local (B, T, K)``, ``counts (B, K)``, all
        int32, and ``tile``.

    Raises
    ------
    ValueError
        ``tile`` not a power of two >= 16, or ``num_regions`` above
        :func:`max_index_regions` (``(id, lane)`` pairs are packed into int32).
    """
    batch, height, width = regions.shape
    tile = tile or _index_tile(batch, height * width, num_regions)
    if tile < 16 or tile & (tile - 1):
        raise ValueError(f"tile must be a power of two >= 16, got {tile}.")
    if num_regions > max_index_regions(tile):
        raise ValueError(f"num_regions={num_regions} is too large for the Triton region index "
                         f"(at most {max_index_regions(tile)} with {tile}-pixel tiles); use "
                         "backend='reference'.")
    index = _region_index_op if torch.compiler.is_compiling() else _region_index
    return RegionIndex(*index(regions, num_regions, tile), tile)


# ----------------------------------------------------------------------------------------------
# Pooling forward: sample, gather, mean (and count the hits for the backward)
# ----------------------------------------------------------------------------------------------

@triton.jit
def _pool_fwd_kernel(feat_ptr, s_fb, s_fd, s_fh, s_fw, W, HW, D,
                     pixels_ptr, cum_ptr, local_ptr, counts_ptr, ids_ptr, valid_ptr, u_ptr,
                     means_ptr, idx_ptr, hits_ptr, M, N, K, n_tiles, tile, steps,
                     FLAT: tl.constexpr, COUNT_HITS: tl.constexpr, IDENTITY: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    m = tl.program_id(0)
    b = tl.program_id(1)
    bm = b.to(tl.int64) * M + m
    if IDENTITY:
        rid = m.to(tl.int64)
    else:
        rid = tl.load(ids_ptr + bm).to(tl.int64)
    count = tl.load(counts_ptr + b.to(tl.int64) * K + rid)
    n_take = N * (tl.load(valid_ptr + bm) != 0).to(tl.int32)  # 0 for invalid regions
    cum_col = cum_ptr + b.to(tl.int64) * n_tiles * K + rid  # cum[b, :, rid], stride K
    local_col = local_ptr + b.to(tl.int64) * n_tiles * K + rid
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    feat_b = feat_ptr + b.to(tl.int64) * s_fb
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        in_n = n < N
        take = n < n_take
        u = tl.load(u_ptr + bm * N + n, mask=take, other=0.0)
        rank = tl.minimum((u * count.to(tl.float32)).to(tl.int32), count - 1)
        # the sample's tile: t = number of tiles t' < T - 1 with cum[t'] <= rank (binary search)
        t = tl.zeros([BLOCK_N], dtype=tl.int32)
        for s in range(steps):
            cand = t + (1 << (steps - 1 - s))
            probe_ok = take & (cand < n_tiles)
            probe = tl.load(cum_col + (cand - 1).to(tl.int64) * K, mask=probe_ok, other=0)
            t = tl.where(probe_ok & (probe <= rank), cand, t)
        before = tl.load(cum_col + (t - 1).to(tl.int64) * K, mask=take & (t > 0), other=0)
        start = tl.load(local_col + t.to(tl.int64) * K, mask=take, other=0)
        pix = tl.load(pixels_ptr + b.to(tl.int64) * HW + t * tile + start + rank - before,
                      mask=take, other=0)
        tl.store(idx_ptr + bm * N + n, tl.where(take, pix, -1), mask=in_n)
        if COUNT_HITS:
            tl.atomic_add(hits_ptr + b.to(tl.int64) * HW + pix, 1, mask=take)
        if FLAT:
            offs = pix.to(tl.int64) * s_fw
        else:
            offs = (pix // W).to(tl.int64) * s_fh + (pix % W).to(tl.int64) * s_fw
        x = tl.load(feat_b + offs[:, None] + d[None, :].to(tl.int64) * s_fd,
                    mask=take[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
        acc += tl.sum(x.to(tl.float32), axis=0)
    tl.store(means_ptr + bm * D + d, acc / N, mask=d_mask)


def _pool_forward(feat, pixels, cum, local, counts, ids, valid, uniforms, count_hits, tile):
    batch, channels, height, width = feat.shape
    regions, num_samples = uniforms.shape[1:]
    dev = feat.device
    means = torch.empty((batch, regions, channels), dtype=torch.float32, device=dev)  # (B, M, D)
    idx = torch.empty((batch, regions, num_samples), dtype=torch.int32, device=dev)  # (B, M, N)
    hits = torch.zeros((batch, height * width) if count_hits else (0,), dtype=torch.int32, device=dev)
    if batch * regions == 0:
        return means, idx, hits
    n_tiles, num_regions = cum.shape[1:]
    block_d = max(16, triton.next_power_of_2(channels))
    block_n = max(16, min(triton.next_power_of_2(num_samples), _POOL_TILE // block_d))
    _pool_fwd_kernel[(regions, batch)](
        feat, *feat.stride(), width, height * width, channels,
        pixels, cum, local, counts, counts if ids is None else ids, valid, uniforms,
        means, idx, hits, regions, num_samples, num_regions, n_tiles, tile,
        (n_tiles - 1).bit_length(),
        FLAT=_flat_pixels(feat), COUNT_HITS=count_hits, IDENTITY=ids is None,
        BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4)
    return means, idx, hits


@torch.library.custom_op("lrc_fast::region_pool_forward", mutates_args=())
def _pool_forward_op(feat: torch.Tensor, pixels: torch.Tensor, cum: torch.Tensor,
                     local: torch.Tensor, counts: torch.Tensor, ids: torch.Tensor | None,
                     valid: torch.Tensor, uniforms: torch.Tensor, count_hits: bool,
                     tile: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _pool_forward(feat, pixels, cum, local, counts, ids, valid, uniforms, count_hits, tile)


@_pool_forward_op.register_fake
def _(feat, pixels, cum, local, counts, ids, valid, uniforms, count_hits, tile):
    batch, channels, height, width = feat.shape
    regions, num_samples = uniforms.shape[1:]
    return (feat.new_empty((batch, regions, channels), dtype=torch.float32),
            feat.new_empty((batch, regions, num_samples), dtype=torch.int32),
            feat.new_empty((batch, height * width) if count_hits else (0,), dtype=torch.int32))


# ----------------------------------------------------------------------------------------------
# Pooling backward: one dense pass over the feature gradient
# ----------------------------------------------------------------------------------------------

@triton.jit
def _pool_bwd_kernel(gmeans_ptr, hits_ptr, reg_ptr, s_rb, s_rh, s_rw, slot_ptr, K,
                     grad_ptr, s_gb, s_gd, s_gh, s_gw, W, HW, D, M, N,
                     IDENTITY: tl.constexpr, FLAT_R: tl.constexpr, FLAT_G: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    pblk = tl.program_id(0)
    b = tl.program_id(1)
    pix = pblk * BLOCK_P + tl.arange(0, BLOCK_P)  # (BLOCK_P,)
    inside = pix < HW
    hits = tl.load(hits_ptr + b.to(tl.int64) * HW + pix, mask=inside, other=0)
    drawn = hits > 0  # drawn pixels have an id in [0, K) and a kept slot
    if FLAT_R:
        r_offs = pix.to(tl.int64) * s_rw
    else:
        r_offs = (pix // W).to(tl.int64) * s_rh + (pix % W).to(tl.int64) * s_rw
    rid = tl.load(reg_ptr + b.to(tl.int64) * s_rb + r_offs, mask=drawn, other=0).to(tl.int64)
    if IDENTITY:
        slot = rid
    else:
        slot = tl.load(slot_ptr + b.to(tl.int64) * K + rid, mask=drawn, other=0).to(tl.int64)
    weight = hits.to(tl.float32)  # gradient = weight * grad_mean / N
    g_rows = gmeans_ptr + (b.to(tl.int64) * M + slot) * D  # (BLOCK_P,) row pointers
    if FLAT_G:
        g_offs = pix.to(tl.int64) * s_gw
    else:
        g_offs = (pix // W).to(tl.int64) * s_gh + (pix % W).to(tl.int64) * s_gw
    out_b = grad_ptr + b.to(tl.int64) * s_gb
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_mask = d < D
        g = tl.load(g_rows[:, None] + d[None, :], mask=drawn[:, None] & d_mask[None, :], other=0.0)
        val = g * weight[:, None] / N  # (BLOCK_P, BLOCK_D)
        tl.store(out_b + g_offs[:, None] + d[None, :].to(tl.int64) * s_gd,
                 val.to(grad_ptr.dtype.element_ty), mask=inside[:, None] & d_mask[None, :])


def _gradient_buffer(size, dtype, channels_last, device) -> torch.Tensor:
    """Uninitialised feature gradient in the features' layout (channels_last or contiguous)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(size, dtype=dtype, device=device, memory_format=layout)


def _pool_backward(grad_means, hits, regions, slot_of, size, dtype, channels_last, num_samples,
                   blocks=GRAD_BLOCK_CHOICES[0]):
    batch, channels, height, width = size
    block_p, block_d, warps = blocks
    grad = _gradient_buffer(size, dtype, channels_last, grad_means.device)  # every element written
    if grad.numel() == 0:
        return grad
    regions_kept = grad_means.shape[1]
    identity = slot_of is None
    slots = regions if identity else slot_of  # placeholder pointer when unused
    grid = (triton.cdiv(height * width, block_p), batch)
    _pool_bwd_kernel[grid](
        grad_means, hits, regions, *regions.stride(), slots,
        0 if identity else slot_of.shape[1],
        grad, *grad.stride(), width, height * width, channels, regions_kept, num_samples,
        IDENTITY=identity, FLAT_R=_flat_pixels(regions), FLAT_G=_flat_pixels(grad),
        BLOCK_P=block_p, BLOCK_D=max(8, min(block_d, triton.next_power_of_2(channels))),
        num_warps=warps)
    return grad


@torch.library.custom_op("lrc_fast::region_pool_backward", mutates_args=())
def _pool_backward_op(grad_means: torch.Tensor, hits: torch.Tensor, regions: torch.Tensor,
                      slot_of: torch.Tensor | None, size: list[int], dtype: torch.dtype,
                      channels_last: bool, num_samples: int) -> torch.Tensor:
    return _pool_backward(grad_means, hits, regions, slot_of, size, dtype, channels_last, num_samples)


@_pool_backward_op.register_fake
def _(grad_means, hits, regions, slot_of, size, dtype, channels_last, num_samples):
    return _gradient_buffer(size, dtype, channels_last, grad_means.device)


class RegionPoolFunction(torch.autograd.Function):
    """Autograd for the sampled region means of one view.

    Forward: ``(means (B, M, D) float32, idx (B, M, N) int32)``; ``idx`` is not differentiable.
    Backward: the dense feature gradient in ``feat``'s dtype, channels_last when ``feat`` is
    (contiguous otherwise). Only ``hits`` and the region map are kept for it, not ``feat``.
    Gradients are not materialised: no zero tensor is built for ``idx``.
    """

    @staticmethod
    def forward(ctx, feat, regions, pixels, cum, local, counts, ids, valid, uniforms, slot_of, tile):
        count_hits = ctx.needs_input_grad[0]
        args = (feat, pixels, cum, local, counts, ids, valid, uniforms, count_hits, tile)
        forward = _pool_forward_op if torch.compiler.is_compiling() else _pool_forward
        means, idx, hits = forward(*args)
        ctx.mark_non_differentiable(idx)
        ctx.set_materialize_grads(False)
        if count_hits:
            ctx.save_for_backward(hits, regions, slot_of)
            channels_last = (feat.is_contiguous(memory_format=torch.channels_last)
                             and not feat.is_contiguous())
            ctx.layout = (list(feat.shape), feat.dtype, channels_last, uniforms.shape[2])
        return means, idx

    @staticmethod
    def backward(ctx, grad_means, grad_idx):
        if grad_means is None:  # the means did not reach the output
            return (None,) * 11
        hits, regions, slot_of = ctx.saved_tensors
        backward = _pool_backward_op if torch.compiler.is_compiling() else _pool_backward
        grad = backward(grad_means.float().contiguous(), hits, regions, slot_of, *ctx.layout)
        return (grad,) + (None,) * 10


def region_pool(feat: torch.Tensor, regions: torch.Tensor, index: RegionIndex, valid: torch.Tensor,
                uniforms: torch.Tensor, ids: torch.Tensor | None = None,
                slot_of: torch.Tensor | None = None):
    """Sampled region means of one view with the fused Triton kernels (differentiable in ``feat``).

    Sample ``n`` of kept region ``m`` (id ``k``) is region ``k``'s pixel number
    ``min(floor(u * count), count - 1)`` in raster order, as in
    :func:`lrc_fast.reference.region_loss.sample_pixels`.

    Parameters
    ----------
    feat : torch.Tensor
        ``(B, D, H, W)`` float32/bfloat16/float16, any strides (contiguous, channels_last, ...).
    regions : torch.Tensor
        ``(B, H, W)`` integer ids the index was built from (read by the backward).
    index : RegionIndex
        From :func:`region_index` of ``regions``.
    valid : torch.Tensor
        ``(B, M)`` bool: kept regions that get samples (each must have pixels).
    uniforms : torch.Tensor
        ``(B, M, N)`` float32 in ``[0, 1)``.
    ids : torch.Tensor, optional
        ``(B, M)`` integer id of each kept region; None when region ``m`` is id ``m``.
    slot_of : torch.Tensor, optional
        ``(B, K)`` int32 position of each id among the kept regions (-1 when dropped); None
        when region ``m`` is id ``m``. Given together with ``ids``.

    Returns
    -------
    means : torch.Tensor
        ``(B, M, D)`` float32; zero for invalid regions.
    idx : torch.Tensor
        ``(B, M, N)`` int32 sampled pixels ``h * W + w`` (-1 for invalid regions).
    """
    return RegionPoolFunction.apply(
        feat, regions, index.pixels, index.cum, index.local, index.counts,
        None if ids is None else ids.contiguous(), valid.contiguous(), uniforms.contiguous(),
        None if slot_of is None else slot_of.contiguous(), index.tile)
