"""Triton kernels for per-region sampling and mean pooling, and the dense feature gradient.

Region index (:func:`region_index`), on the device, in two kernels and a few scans
    A stable counting sort of the pixels of each image by region id. The image is cut into
    tiles of ``TILE`` pixels. Each program sorts its tile's ``(id, lane)`` pairs, packed in
    int32, with a bitonic network in registers (partners fetched by ``tl.gather``). A pixel's
    rank within its id is its sorted position minus the start of its id's run, found by a
    branchless binary search. Pass 1 writes the per-tile histogram ``(B, T, K+1)``. PyTorch
    cumsums then give every region's offset and each tile's starting slot per id. Pass 2 writes
    each pixel to ``start[tile, id] + rank``. The result equals the reference's
    ``torch.sort(ids, stable=True)`` bit for bit. It reads the ids twice and writes one int32
    per pixel, with no global sort. (``tl.sort``/``tl.flip`` and custom scans would do the
    same, but the Triton interpreter runs them element by element, which makes them unusable
    in CPU tests.)

Pooling forward (:class:`RegionPoolFunction`)
    One program per (image, region). It turns the ``(B, M, N)`` uniforms into sample pixels
    (``pixels[offset + min(floor(u * count), count - 1)]``, the reference's arithmetic),
    gathers the ``N x D`` features (any strides, so channels_last too), and writes their float32
    mean. When the features need a gradient it also counts, with int32 atomics, how often each
    pixel was drawn: ``hits`` ``(B, H*W)`` int32, the only state the backward needs besides
    the region ids.

Pooling backward
    A pixel can only have been drawn for its own region, so
    ``grad[b, :, pixel] = hits[b, pixel] / N * grad_mean[b, slot(region id), :]``.
    One dense pass writes every element of the feature gradient exactly once, zeros included:
    no separate zero fill, no atomics on the feature gradient, deterministic. It reads 4 bytes
    of ``hits`` per pixel and, where a pixel was drawn, its region id.

Index widths: pixel indices within an image are int32 (``H*W < 2**31``); everything that
multiplies by the batch index, a stride or ``K + 1`` is computed in int64, because ``B*D*H*W``
or ``B*T*(K+1)`` may exceed ``2**31``.

The launchers are registered as ``torch.library`` custom ops (``lrc_fast::region_index``,
``lrc_fast::region_pool_forward``, ``lrc_fast::region_pool_backward``) so that
``torch.compile`` treats them as opaque; eager calls go to the launchers directly.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_TILE = 1024  # pixels sorted per program in the region index
_MAX_INDEX_ENTRIES = 1 << 24  # grow the tile (up to _MAX_TILE) to keep (B, T, K+1) below this
_MAX_TILE = 4096
_POOL_TILE = 4096  # N x D elements gathered per loop step of the pooling forward
_GRAD_PIXELS = 128  # pixels per program of the dense backward
_GRAD_CHANNELS = 64  # channels per inner step of the dense backward


# ----------------------------------------------------------------------------------------------
# Region index: stable counting sort of pixels by region id
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
def _sorted_tile(reg_ptr, s_rb, s_rh, s_rw, W, HW, K, b, t,
                 LOG: tl.constexpr, FLAT: tl.constexpr):
    # the tile's region keys in sorted order, with the lane each came from (a stable sort:
    # equal keys keep lane order). Key K is the ignore bucket (negative or >= K ids), K + 1 the
    # padding past the image end. Returns (keys, lanes, rank of each element within its key).
    lane = tl.arange(0, 1 << LOG)
    pix = t * (1 << LOG) + lane  # pixel index in the image
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
    rank = lane - _count_below(key, key, LOG)  # position minus the start of the key's run
    return key, comp & ((1 << LOG) - 1), rank


@triton.jit
def _tile_count_kernel(reg_ptr, s_rb, s_rh, s_rw, W, HW, K, hist_ptr, n_tiles,
                       LOG: tl.constexpr, FLAT: tl.constexpr):
    # hist[b, t, k] = number of pixels of tile t of image b with key k (k <= K)
    t = tl.program_id(0)
    b = tl.program_id(1)
    key, _, rank = _sorted_tile(reg_ptr, s_rb, s_rh, s_rw, W, HW, K, b, t, LOG, FLAT)
    run_start = tl.arange(0, 1 << LOG) - rank
    count = _count_below(key, key + 1, LOG) - run_start
    row = hist_ptr + (b.to(tl.int64) * n_tiles + t) * (K + 1)
    tl.store(row + key, count, mask=(rank == 0) & (key <= K))


@triton.jit
def _tile_scatter_kernel(reg_ptr, s_rb, s_rh, s_rw, W, HW, K, start_ptr, pixels_ptr, n_tiles,
                         LOG: tl.constexpr, FLAT: tl.constexpr):
    # pixels[b, start[b, t, k] + rank] = pixel, for every pixel of tile t with key k
    t = tl.program_id(0)
    b = tl.program_id(1)
    key, lane, rank = _sorted_tile(reg_ptr, s_rb, s_rh, s_rw, W, HW, K, b, t, LOG, FLAT)
    keep = key <= K
    row = start_ptr + (b.to(tl.int64) * n_tiles + t) * (K + 1)
    dest = tl.load(row + key, mask=keep, other=0) + rank
    tl.store(pixels_ptr + b.to(tl.int64) * HW + dest, t * (1 << LOG) + lane, mask=keep)


def _flat_pixels(tensor: torch.Tensor) -> bool:
    """Whether pixel ``h * W + w`` sits at ``(h * W + w) * stride(-1)`` (contiguous, channels_last)."""
    return tensor.shape[-2] == 1 or tensor.stride(-2) == tensor.shape[-1] * tensor.stride(-1)


def _index_tile(batch: int, pixels: int, num_regions: int) -> int:
    """Pixels per program: 1024 (fewer for small images), more when ``(B, T, K+1)`` gets large."""
    tile = max(16, min(_TILE, triton.next_power_of_2(pixels)))
    while tile < _MAX_TILE and batch * triton.cdiv(pixels, tile) * (num_regions + 1) > _MAX_INDEX_ENTRIES:
        tile *= 2
    return tile


def max_index_regions(tile: int) -> int:
    """Largest ``K`` whose ``(key, lane)`` pairs still pack into int32 for this tile size."""
    return (2 ** 31) // tile - 2


def _region_index(regions: torch.Tensor, num_regions: int, tile: int) -> tuple[torch.Tensor, ...]:
    batch, height, width = regions.shape
    hw = height * width
    n_tiles = triton.cdiv(hw, tile)
    flat = _flat_pixels(regions)
    dev = regions.device
    log = tile.bit_length() - 1
    hist = torch.zeros((batch, n_tiles, num_regions + 1), dtype=torch.int32, device=dev)  # (B, T, K+1)
    grid = (n_tiles, batch)
    _tile_count_kernel[grid](regions, *regions.stride(), width, hw, num_regions, hist, n_tiles,
                             LOG=log, FLAT=flat, num_warps=4)
    counts = hist.sum(1, dtype=torch.int32)  # (B, K+1)
    offsets = counts.cumsum(1, dtype=torch.int32) - counts  # (B, K+1), exclusive
    start = hist.cumsum(1, dtype=torch.int32)  # (B, T, K+1) -> first slot of each (tile, id)
    start -= hist
    start += offsets.unsqueeze(1)
    del hist
    pixels = torch.empty((batch, hw), dtype=torch.int32, device=dev)  # (B, HW)
    _tile_scatter_kernel[grid](regions, *regions.stride(), width, hw, num_regions, start, pixels,
                               n_tiles, LOG=log, FLAT=flat, num_warps=4)
    return (pixels, offsets[:, :num_regions].contiguous(), counts[:, :num_regions].contiguous())


@torch.library.custom_op("lrc_fast::region_index", mutates_args=())
def _region_index_op(regions: torch.Tensor, num_regions: int,
                     tile: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _region_index(regions, num_regions, tile)


@_region_index_op.register_fake
def _(regions, num_regions, tile):
    batch, height, width = regions.shape
    return (regions.new_empty((batch, height * width), dtype=torch.int32),
            regions.new_empty((batch, num_regions), dtype=torch.int32),
            regions.new_empty((batch, num_regions), dtype=torch.int32))


def region_index(regions: torch.Tensor, num_regions: int, tile: int | None = None):
    """Group each image's pixels by region id on the device (Triton stable counting sort).

    Same result as :func:`lrc_fast.reference.region_loss.region_index`, bit for bit.

    Parameters
    ----------
    regions : torch.Tensor
        ``(B, H, W)`` integer ids, any strides; ids outside ``[0, num_regions)`` are ignored
        (sorted into a last bucket).
    num_regions : int
        ``K``.
    tile : int, optional
        Pixels per program, a power of two >= 16 (default 1024, or the image size rounded up to
        a power of two when smaller; larger, up to 4096, when the ``(B, T, K+1)`` int32 table of
        per-tile counts would exceed 2**24 entries).

    Returns
    -------
    pixels : torch.Tensor
        ``(B, H*W)`` int32 pixels grouped by region, raster order within a region.
    offsets, counts : torch.Tensor
        ``(B, K)`` int32.

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
    if torch.compiler.is_compiling():
        return _region_index_op(regions, num_regions, tile)
    return _region_index(regions, num_regions, tile)


# ----------------------------------------------------------------------------------------------
# Pooling forward: sample, gather, mean (and count the hits for the backward)
# ----------------------------------------------------------------------------------------------

@triton.jit
def _pool_fwd_kernel(feat_ptr, s_fb, s_fd, s_fh, s_fw, W, HW, D,
                     pixels_ptr, offsets_ptr, counts_ptr, valid_ptr, u_ptr,
                     means_ptr, idx_ptr, hits_ptr, M, N,
                     FLAT: tl.constexpr, COUNT_HITS: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    m = tl.program_id(0)
    b = tl.program_id(1)
    bm = b.to(tl.int64) * M + m
    count = tl.load(counts_ptr + bm)
    offset = tl.load(offsets_ptr + bm)
    n_take = N * (tl.load(valid_ptr + bm) != 0).to(tl.int32)  # 0 for invalid regions
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
        pix = tl.load(pixels_ptr + b.to(tl.int64) * HW + offset + rank, mask=take, other=0)
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


def _pool_forward(feat, pixels, offsets, counts, valid, uniforms, count_hits):
    batch, channels, height, width = feat.shape
    regions, num_samples = uniforms.shape[1:]
    dev = feat.device
    means = torch.empty((batch, regions, channels), dtype=torch.float32, device=dev)  # (B, M, D)
    idx = torch.empty((batch, regions, num_samples), dtype=torch.int32, device=dev)  # (B, M, N)
    hits = torch.zeros((batch, height * width) if count_hits else (0,), dtype=torch.int32, device=dev)
    if batch * regions == 0:
        return means, idx, hits
    block_d = max(16, triton.next_power_of_2(channels))
    block_n = max(16, min(triton.next_power_of_2(num_samples), _POOL_TILE // block_d))
    _pool_fwd_kernel[(regions, batch)](
        feat, *feat.stride(), width, height * width, channels,
        pixels, offsets, counts, valid.to(torch.int8), uniforms,
        means, idx, hits, regions, num_samples,
        FLAT=_flat_pixels(feat), COUNT_HITS=count_hits, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=4)
    return means, idx, hits


@torch.library.custom_op("lrc_fast::region_pool_forward", mutates_args=())
def _pool_forward_op(feat: torch.Tensor, pixels: torch.Tensor, offsets: torch.Tensor,
                     counts: torch.Tensor, valid: torch.Tensor, uniforms: torch.Tensor,
                     count_hits: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _pool_forward(feat, pixels, offsets, counts, valid, uniforms, count_hits)


@_pool_forward_op.register_fake
def _(feat, pixels, offsets, counts, valid, uniforms, count_hits):
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


def _pool_backward(grad_means, hits, regions, slot_of, size, dtype, channels_last, num_samples):
    batch, channels, height, width = size
    grad = _gradient_buffer(size, dtype, channels_last, grad_means.device)  # every element written
    if grad.numel() == 0:
        return grad
    regions_kept = grad_means.shape[1]
    identity = slot_of is None
    slots = regions if identity else slot_of  # placeholder pointer when unused
    grid = (triton.cdiv(height * width, _GRAD_PIXELS), batch)
    _pool_bwd_kernel[grid](
        grad_means, hits, regions, *regions.stride(), slots,
        0 if identity else slot_of.shape[1],
        grad, *grad.stride(), width, height * width, channels, regions_kept, num_samples,
        IDENTITY=identity, FLAT_R=_flat_pixels(regions), FLAT_G=_flat_pixels(grad),
        BLOCK_P=_GRAD_PIXELS, BLOCK_D=max(16, min(_GRAD_CHANNELS, triton.next_power_of_2(channels))),
        num_warps=4)
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
    """

    @staticmethod
    def forward(ctx, feat, regions, pixels, offsets, counts, valid, uniforms, slot_of):
        count_hits = ctx.needs_input_grad[0]
        args = (feat, pixels, offsets, counts, valid, uniforms, count_hits)
        forward = _pool_forward_op if torch.compiler.is_compiling() else _pool_forward
        means, idx, hits = forward(*args)
        ctx.mark_non_differentiable(idx)
        if count_hits:
            ctx.save_for_backward(hits, regions, slot_of)
            channels_last = (feat.is_contiguous(memory_format=torch.channels_last)
                             and not feat.is_contiguous())
            ctx.layout = (list(feat.shape), feat.dtype, channels_last, uniforms.shape[2])
        return means, idx

    @staticmethod
    def backward(ctx, grad_means, grad_idx):
        hits, regions, slot_of = ctx.saved_tensors
        backward = _pool_backward_op if torch.compiler.is_compiling() else _pool_backward
        grad = backward(grad_means.float().contiguous(), hits, regions, slot_of, *ctx.layout)
        return grad, None, None, None, None, None, None, None


def region_pool(feat: torch.Tensor, regions: torch.Tensor, pixels: torch.Tensor,
                offsets: torch.Tensor, counts: torch.Tensor, valid: torch.Tensor,
                uniforms: torch.Tensor, slot_of: torch.Tensor | None = None):
    """Sampled region means of one view with the fused Triton kernels (differentiable in ``feat``).

    Parameters
    ----------
    feat : torch.Tensor
        ``(B, D, H, W)`` float32/bfloat16/float16, any strides (contiguous, channels_last, ...).
    regions : torch.Tensor
        ``(B, H, W)`` integer ids the index was built from (read by the backward).
    pixels : torch.Tensor
        ``(B, H*W)`` int32 from :func:`region_index`.
    offsets, counts : torch.Tensor
        ``(B, M)`` int32 of the kept regions.
    valid : torch.Tensor
        ``(B, M)`` bool: regions that get samples.
    uniforms : torch.Tensor
        ``(B, M, N)`` float32 in ``[0, 1)``.
    slot_of : torch.Tensor, optional
        ``(B, K)`` int32 position of each id among the kept regions; None when region ``m`` is
        id ``m``.

    Returns
    -------
    means : torch.Tensor
        ``(B, M, D)`` float32; zero for invalid regions.
    idx : torch.Tensor
        ``(B, M, N)`` int32 sampled pixels ``h * W + w`` (-1 for invalid regions).
    """
    return RegionPoolFunction.apply(feat, regions, pixels.contiguous(), offsets.contiguous(),
                                    counts.contiguous(), valid, uniforms.contiguous(),
                                    None if slot_of is None else slot_of.contiguous())
