"""Triton kernels for per-region sampling and mean pooling, and the dense feature gradient.

Region index (:func:`region_index`, :class:`RegionIndex`), on the device: two kernels
    The image is cut into tiles of ``TILE`` pixels. Each program sorts its tile's
    ``(id, lane)`` pairs, packed in int32, and writes the tile's pixels in that order: a stable
    sort by id, so each id's pixels form one run in raster order. A pixel's rank within its run
    is its sorted position minus the run's start. Three sorts give the same bits (tests compare
    them): on a GPU, the compiled extension's CUDA kernel when it has one
    (``csrc/cuda/region_index_cuda.cu``: a radix sort, 8 bits of the id a pass, ranked by warps
    with ``__match_any_sync``; the CPU tests run it on the SIMT simulator), else ``tl.sort`` with
    a max-scan for the run starts; under the Triton interpreter, which runs ``tl.sort`` and custom
    scans element by element, a bitonic network of ``tl.gather`` stages and a branchless binary
    search. At the end of each run the program writes the run's length ``hist[v, b, t, k]`` and
    start ``local[v, b, t, k]`` (``v``: the region map). A second kernel, a prefix sum over the
    tiles in place, turns ``hist`` into ``cum``, whose last row is every region's pixel count.
    Region ``k``'s pixel number ``r`` in raster order is then in the tile ``t`` with
    ``cum[t-1, k] <= r < cum[t, k]``, at position ``local[t, k] + r - cum[t-1, k]`` of that
    tile's run. The pooling finds ``t`` by a search over the tiles, per sample, of 8 probes a
    level (:data:`SEARCH_BITS_CHOICES`). There is no global scatter: the ids are read once and
    one int32 is written per pixel.

Views: the loss has two views (the slice and its warped copy), each with its features and
    usually its own region map. Every kernel takes both views' pointers and strides and runs both
    in one launch (the grid's last axis is the view; the prefix over the tiles runs on one
    (V * B, T, K) table), so a loss step launches each kernel once:
    six launches in all, the index's two and the InfoNCE's two among them (with the CUDA
    tile sort, five Triton launches and one CUDA launch, and no zero fill of the counts).

Pooling forward (:class:`RegionPoolFunction`)
    One program per (region, image, view). It turns the ``(V, B, M, N)`` uniforms into sample pixels
    (pixel number ``min(floor(u * count), count - 1)`` of the region, the reference's
    arithmetic, with ``count`` the last entry of the region's prefix column and the pixel located
    through the index), gathers the ``N x D`` features (any strides, so
    channels_last too), and writes their float32 mean and the sample pixels ``idx``. When the
    dense backward will run it also counts, with int32 atomics, how often each pixel was drawn:
    ``hits`` ``(V, B, H*W)`` int32, the only state that backward needs besides the region ids.

Pooling backward
    A pixel can only have been drawn for its own region, so
    ``grad[b, :, pixel] = hits[b, pixel] / N * grad_mean[b, slot(region id), :]``. Two ways to
    write it, bit for bit the same, both deterministic and without atomics on the gradient
    (``BACKWARD_METHODS``; the second when every gradient is channels_last and N <= 256):

    * dense: one pass per view (one launch for both) writes every element of the feature
      gradient exactly once, zeros included, with no separate zero fill. It reads 4 bytes of
      ``hits`` per pixel and, where a pixel was drawn, its region id.
    * scatter: a zero fill, then one program per (region, image, view) reads its row of the
      forward's sample pixels ``idx``, counts each pixel's draws in the row (a pixel is only in
      its own region's row) and writes the pixels once each. The forward then counts no hits.

Index widths: pixel indices within an image are int32 (``H*W < 2**31``); everything that
multiplies by the batch index, a stride or ``K`` is computed in int64, because ``B*D*H*W``
or ``B*T*K`` may exceed ``2**31``.

The launchers are registered as ``torch.library`` custom ops (``lrc_fast::region_index``,
``lrc_fast::region_pool_forward``, ``lrc_fast::region_pool_backward``,
``lrc_fast::region_pool_scatter_backward``) so that
``torch.compile`` treats them as opaque; eager calls go to the launchers directly.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .._ext import has_cpu_extension, has_cuda_extension, require_extension
from ._host import cdiv, next_power_of_2, on_device

# pixels per program of the region index: the tiles `bench_loss.py --sweep` times (with the
# pooling that searches them); the first is the default (fewer for small images, more when the
# tables get large, see _index_tile). In Triton each gets min(4, tile // 256) warps (at least 1):
# 8 keys per thread up to 1024 pixels, 16 and 32 at 2048 and 4096; the CUDA sort's CTA has 256
# threads (tile / 256 keys each, at least 1).
# In the sm_90 build (CPU compile), tl.sort and the run starts of a 256-pixel tile take one warp,
# no barrier and 58 % of the instructions per pixel of a 1024-pixel tile, but the (V, B, T, K)
# tables grow 4 times and the search over them by up to one level (two steps by halves).
INDEX_TILE_CHOICES = (1024, 256, 512, 2048, 4096)
_MAX_INDEX_ENTRIES = 1 << 24  # grow the tile (up to _MAX_TILE) to keep (V, B, T, K) below this
_MAX_TILE = 4096
_POOL_TILE = 4096  # N x D elements gathered per loop step of the pooling forward
# log2 of the branching of the pooling forward's search for a sample's tile (_pool_fwd_kernel):
# the widths `bench_loss.py --sweep` times, the first is the default. 1 bit searches as stops
# 13-26 did, by halves: 8 dependent loads at 256 tiles (512 x 512, tile 1024); 3 bits take 3
# levels of 8 probes. Either way cum[t - 1] comes from the probes: the old search loaded it after.
# In the sm_90 build (Triton 3.6, D=64, channels_last) the kernel at 3 bits takes 40 registers in
# float32 and 47 in bfloat16 (12 and 10 programs per SM), the old one 39 and 40 (12). Not timed.
SEARCH_BITS_CHOICES = (3, 1, 2, 4)
# (pixels per program, channels per inner step, warps) of the dense backward: the shapes
# `bench_loss.py --sweep` times, the first is the default. 16 channels per step keep 16 values per
# thread: the sm_90 build (compiled on a CPU by Triton 3.9) needs 56 registers per thread at
# (128, 16, 4) in float32 NCHW, where the old 64 channels per step needed 241, which leaves room
# for only 2 programs per SM in a kernel that must keep many stores in flight.
GRAD_BLOCK_CHOICES = ((128, 16, 4), (256, 16, 8), (128, 8, 4), (64, 16, 2), (128, 64, 4))
# The same for channels_last gradients, where a pixel's D channels are contiguous: shapes that
# write whole pixels (64 channels: 256 contiguous bytes in float32) beside the NCHW default, which
# writes 64-byte pieces of four pixels' rows per step. The first is the default; it is the NCHW
# default until a GPU sweep times the others (stop 18: the channels_last backward took 1.08x the
# NCHW one in float32, 1.20x in bfloat16). Since the scatter (below), the dense pass writes
# channels_last gradients only when the other view's are not, or above 256 samples a region.
GRAD_BLOCK_CHOICES_CL = ((128, 16, 4), (32, 64, 4), (64, 64, 4), (16, 64, 2), (64, 64, 8))
# How the backward writes the feature gradient (module docstring): "dense", one pass over every
# pixel, or "scatter", a zero fill then the drawn pixels from the sample lists. Scatter for
# channels_last gradients, where a sample's D channels are one contiguous run of whole 32-byte
# sectors (ideal at D=64: 256 bytes in float32, 128 in bfloat16): the zero fill runs at the
# floor's speed and the scatter adds those runs, 26 MB for both views in float32 at K=64 (B=16,
# N=50), 420 MB at K=1024 (2,147 MB of gradients). In NCHW a sample's D channels lie in D
# different sectors, each partly written, so dense there, and where some view needing a gradient
# is not channels_last. Timed on an H200 (stop 25, benchmarks/RESULTS.md): the scatter took
# 0.10-0.15 ms off each channels_last step at K <= 256 and was slower in NCHW at every K; at bf16
# K=1024 the dense pass was 0.045 ms faster (left: one point).
BACKWARD_METHODS = ("dense", "scatter")
# How many of its row's samples the scatter's duplicate search compares each sample with a step:
# compiled for sm_90 by Triton 3.6 (float32, channels_last, N=50, D=64), 16 take 56 registers
# per thread (9 programs per SM); comparing all 64 at once took 196 (2 per SM).
_SCATTER_COMPARE = 16
# The search takes ceil(N / 64) * ceil(N / 16) steps a row (4 at the paper's N=50, 64 at 256,
# 1,024 at 1,024): above this many samples a region the dense pass, whose cost does not grow
# with N.
_SCATTER_MAX_SAMPLES = 256


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
def _pixel_offsets(pix, W, s_h, s_w, FLAT: tl.constexpr, WIDE: tl.constexpr):
    # element offsets of flat pixels h * W + w in a tensor with strides (s_h, s_w): int64 when
    # WIDE, else int32 (the caller knows they stay below 2**31); FLAT when the pixels are
    # (h * W + w) * s_w apart (contiguous, channels_last): no division
    if WIDE:
        pix = pix.to(tl.int64)
    if FLAT:
        offs = pix * s_w
    else:
        offs = (pix // W) * s_h + (pix % W) * s_w
    return offs


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _tile_sort_kernel(reg_a, s_ab, s_ah, s_aw, reg_b, s_bb, s_bh, s_bw, W, HW, K, B,
                      pixels_ptr, hist_ptr, local_ptr, n_tiles,
                      LOG: tl.constexpr, FLAT: tl.constexpr, NETWORK: tl.constexpr):
    # One tile of 2**LOG pixels of image b of map v (a or b): its pixels sorted by key (stable),
    # and for every id k < K present in the tile, hist[v, b, t, k] = its pixel count and
    # local[v, b, t, k] = where its run starts in the sorted tile. Key K is the ignore bucket
    # (negative or >= K ids), K + 1 the padding past the image end; neither gets a table entry.
    t = tl.program_id(0)
    b = tl.program_id(1)
    v = tl.program_id(2)
    if v == 0:
        reg, s_rh, s_rw = reg_a + b.to(tl.int64) * s_ab, s_ah, s_aw
    else:
        reg, s_rh, s_rw = reg_b + b.to(tl.int64) * s_bb, s_bh, s_bw
    image = v.to(tl.int64) * B + b  # row of the (V, B, ...) outputs
    lane = tl.arange(0, 1 << LOG)
    pix = t * (1 << LOG) + lane  # (TILE,) pixel index in the image
    inside = pix < HW
    rid = tl.load(reg + _pixel_offsets(pix, W, s_rh, s_rw, FLAT, True), mask=inside, other=-1)
    key = tl.where((rid >= 0) & (rid < K), rid, K)
    key = tl.where(inside, key, K + 1).to(tl.int32)
    packed = key * (1 << LOG) + lane  # (key, lane) pairs, packed in int32: all distinct
    if NETWORK:  # a bitonic network of tl.gather stages: fast under the interpreter
        comp = _bitonic_sort(packed, LOG)
        key = comp >> LOG
        rank = lane - _count_below(key, key, LOG)  # position minus the start of the key's run
    else:  # tl.sort: exchanges in registers and shuffles, ~1/4 of the network's barriers on sm_90
        comp = tl.sort(packed)
        key = comp >> LOG
        previous = tl.gather(key, tl.maximum(lane - 1, 0), 0)
        starts = tl.where((lane == 0) | (previous != key), lane, 0)
        rank = lane - tl.associative_scan(starts, 0, _max_combine)  # minus the run's start
    # padding sorts last, so position `lane` holds a pixel of the image exactly where pix < HW
    tl.store(pixels_ptr + image * HW + pix, t * (1 << LOG) + (comp & ((1 << LOG) - 1)), mask=inside)
    next_key = tl.gather(key, tl.minimum(lane + 1, (1 << LOG) - 1), 0)
    run_end = ((next_key != key) | (lane == (1 << LOG) - 1)) & (key < K)
    row = (image * n_tiles + t) * K
    tl.store(hist_ptr + row + key, rank + 1, mask=run_end)
    tl.store(local_ptr + row + key, lane - rank, mask=run_end)


@triton.jit
def _tile_prefix_kernel(hist_ptr, T, K, BT: tl.constexpr, BK: tl.constexpr):
    # In place, hist[r, :, k] becomes its prefix sum over the T tiles, for BK ids k of row r of
    # the (V * B, T, K) table: BT tiles a step, the sum of the tiles before carried
    k = tl.program_id(0) * BK + tl.arange(0, BK)  # (BK,) ids
    row = hist_ptr + tl.program_id(1).to(tl.int64) * T * K  # int64: V * B * T * K may pass 2**31
    carry = tl.zeros((BK,), dtype=tl.int32)
    for t0 in range(0, T, BT):
        t = t0 + tl.arange(0, BT)  # (BT,) tiles
        at = row + t[:, None].to(tl.int64) * K + k[None, :]  # (BT, BK)
        live = (t[:, None] < T) & (k[None, :] < K)
        block = tl.load(at, mask=live, other=0)
        tl.store(at, tl.cumsum(block, axis=0) + carry[None, :], mask=live)
        carry += tl.sum(block, axis=0)


_PREFIX_BLOCK = (64, 64)  # (tiles, ids) per step of _tile_prefix_kernel


def _tile_prefix(hist: torch.Tensor) -> torch.Tensor:
    """``hist.cumsum_(2)`` of the ``(V, B, T, K)`` int32 table, in one Triton launch (torch's
    cumulative sum over that axis took 0.10 ms at every K on an H200, beside the tile sort's
    0.26 ms)."""
    views, batch, n_tiles, num_regions = hist.shape
    bt, bk = _PREFIX_BLOCK
    if hist.numel() > 0:
        with on_device(hist):
            _tile_prefix_kernel[(cdiv(num_regions, bk), views * batch)](hist, n_tiles, num_regions,
                                                                         BT=bt, BK=bk, num_warps=4)
    return hist


def _flat_pixels(*tensors: torch.Tensor) -> bool:
    """Whether in every tensor pixel ``h * W + w`` sits at ``(h * W + w) * stride(-1)``
    (contiguous, channels_last)."""
    return all(t.shape[-2] == 1 or t.stride(-2) == t.shape[-1] * t.stride(-1) for t in tensors)


def _wide_offsets(*feats: torch.Tensor) -> bool:
    """Whether an element offset inside one image of these ``(B, D, H, W)`` tensors can reach
    2**31, so that the gather must compute its offsets in int64. Int32 offsets take half the
    registers: compiled for sm_90 by Triton 3.6 (the GPU machines' version), the pooling forward
    on NCHW features needs 126 registers per thread with them and 218 without (4 programs per SM
    instead of 2); Triton 3.9 needs 56 either way."""
    return any(sum((size - 1) * stride for size, stride in zip(f.shape[1:], f.stride()[1:])) >= 2 ** 31
               for f in feats)


def _index_tile(batch: int, pixels: int, num_regions: int) -> int:
    """Pixels per program: 1024 (fewer for small images), more when ``(V, B, T, K)`` gets large."""
    tile = max(16, min(INDEX_TILE_CHOICES[0], next_power_of_2(pixels)))
    while tile < _MAX_TILE and batch * cdiv(pixels, tile) * num_regions > _MAX_INDEX_ENTRIES:
        tile *= 2
    return tile


def max_index_regions(tile: int) -> int:
    """Largest ``K`` whose ``(key, lane)`` pairs still pack into int32 for this tile size."""
    return (2 ** 31) // tile - 2


class RegionIndex(NamedTuple):
    """Where each region's pixels are, for ``V`` region maps (1 or 2) of ``B`` images, cut into
    ``T`` tiles of ``tile`` pixels.

    In map ``v``, region ``k``'s pixel number ``r`` in raster order (``0 <= r < counts[v, b, k]``)
    lies in the tile ``t`` with ``cum[v, b, t-1, k] <= r < cum[v, b, t, k]``, at
    ``pixels[v, b, t * tile + local[v, b, t, k] + r - cum[v, b, t-1, k]]`` (``cum[..., -1, k]``
    read as 0).
    """

    pixels: torch.Tensor  # (V, B, H*W) int32: each tile's pixels, stably sorted by region id
    cum: torch.Tensor  # (V, B, T, K) int32: pixels of id k in tiles 0..t
    local: torch.Tensor  # (V, B, T, K) int32: start of id k's run in tile t (where t has id k)
    counts: torch.Tensor  # (V, B, K) int32: pixels of id k in the image (a view of cum[:, :, -1])
    tile: int
    maps: tuple  # (regions, regions_p or None): the maps indexed, the second in the first's dtype


# How a tile is sorted (region_index's `method`): the compiled CUDA kernel, the same kernel on the
# CPU SIMT simulator (for tests: slow), Triton's tl.sort, or Triton's gather network.
INDEX_METHODS = ("cuda", "simt", "sort", "network")


def _tile_sort(regions, regions_p, num_regions, tile, method):
    """``(pixels (V, B, HW), hist (V, B, T, K), local (V, B, T, K))`` int32 of one tile sort."""
    if method == "cuda":
        return require_extension().region_index_cuda(regions, regions_p, num_regions, tile)
    if method == "simt":
        return require_extension().region_index_simt(regions, regions_p, num_regions, tile, 0)
    batch, height, width = regions.shape
    views = 1 if regions_p is None else 2
    other = regions if regions_p is None else regions_p
    hw = height * width
    n_tiles = cdiv(hw, tile)
    dev = regions.device
    pixels = torch.empty((views, batch, hw), dtype=torch.int32, device=dev)  # (V, B, HW)
    table = (views, batch, n_tiles, num_regions)
    hist = torch.zeros(table, dtype=torch.int32, device=dev)  # (V, B, T, K)
    local = torch.empty(table, dtype=torch.int32, device=dev)  # (V, B, T, K)
    if batch * hw > 0:
        with on_device(regions):
            _tile_sort_kernel[(n_tiles, batch, views)](
                regions, *regions.stride(), other, *other.stride(), width, hw, num_regions, batch,
                pixels, hist, local, n_tiles, LOG=tile.bit_length() - 1,
                FLAT=_flat_pixels(regions, other),
                NETWORK=method == "network", num_warps=max(1, min(4, tile // 256)))
    return pixels, hist, local


def _region_index(regions: torch.Tensor, regions_p: torch.Tensor | None, num_regions: int,
                  tile: int, method: str) -> tuple[torch.Tensor, ...]:
    pixels, hist, local = _tile_sort(regions, regions_p, num_regions, tile, method)
    if pixels.numel() == 0:
        return pixels, hist, local, hist.new_zeros(hist.shape[:2] + hist.shape[3:])  # (V, B, K)
    cum = _tile_prefix(hist)  # (V, B, T, K), in place: prefix over the tiles
    return pixels, cum, local, cum[:, :, -1]  # counts: a view of the last tile's prefix


@torch.library.custom_op("lrc_fast::region_index", mutates_args=())
def _region_index_op(regions: torch.Tensor, regions_p: torch.Tensor | None, num_regions: int,
                     tile: int, method: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    pixels, cum, local, counts = _region_index(regions, regions_p, num_regions, tile, method)
    return pixels, cum, local, counts.clone()  # a custom op's outputs may not alias each other


@_region_index_op.register_fake
def _(regions, regions_p, num_regions, tile, method):
    batch, height, width = regions.shape
    views = 1 if regions_p is None else 2
    table = (views, batch, cdiv(height * width, tile), num_regions)
    return (regions.new_empty((views, batch, height * width), dtype=torch.int32),
            regions.new_empty(table, dtype=torch.int32), regions.new_empty(table, dtype=torch.int32),
            regions.new_empty((views, batch, num_regions), dtype=torch.int32))


def _one_dtype(regions: torch.Tensor, regions_p: torch.Tensor | None):
    """Both maps in one dtype, as the kernels give them one pointer type: int64 when they differ,
    so that no id wraps (an int64 id of -2**32 must stay ignored, not become region 0)."""
    if regions_p is None or regions_p.dtype == regions.dtype:
        return regions, regions_p
    return regions.long(), regions_p.long()


_COMPILED_SORT_DTYPES = (torch.int32, torch.int64)  # the id dtypes the CUDA kernel reads


def _index_method(regions: torch.Tensor, tile: int) -> str:
    """The default tile sort: the CUDA kernel for CUDA int32/int64 maps and tiles of at most
    4096 pixels when the extension has CUDA, else tl.sort; the gather network under the
    interpreter (CPU tensors)."""
    if not regions.is_cuda:
        return "network"
    return "sort" if _compiled_sort_refusal("cuda", regions, tile) else "cuda"


def _compiled_sort_refusal(method: str, regions: torch.Tensor, tile: int) -> str | None:
    """Why the CUDA kernel cannot sort these maps here (``method`` ``'cuda'``, or ``'simt'``: on
    the simulator), or None when it can."""
    if regions.dtype not in _COMPILED_SORT_DTYPES:
        return (f"method={method!r} sorts int32 or int64 region maps, got {regions.dtype}; "
                "use method='sort' (or convert the maps).")
    if tile > _MAX_TILE:
        return f"method={method!r} takes tiles of at most {_MAX_TILE} pixels, got {tile}."
    if method == "cuda" and not (regions.is_cuda and has_cuda_extension()):
        return ("method='cuda' needs CUDA region maps and lrc_fast._C built with CUDA; got "
                f"maps on {regions.device}, extension with CUDA: {has_cuda_extension()}.")
    if method == "simt" and regions.is_cuda:
        return ("method='simt' runs the CUDA kernel on the CPU simulator: it needs CPU "
                f"region maps, got maps on {regions.device}.")
    if method == "simt" and not (has_cpu_extension() and require_extension().simt_available()):
        return ("method='simt' needs lrc_fast._C (the compiled extension) on x86-64 Linux, "
                "where its SIMT simulator runs; it is not available here.")
    return None


def region_index(regions: torch.Tensor, num_regions: int, tile: int | None = None, *,
                 regions_p: torch.Tensor | None = None, method: str | None = None) -> RegionIndex:
    """Index each image's pixels by region id on the device (two kernels: the tile sort, then the
    prefix over the tiles).

    It holds the same information as :func:`lrc_fast.reference.region_loss.region_index` (every
    region's pixels in raster order) without the global scatter: see :class:`RegionIndex` for
    how pixel number ``r`` of a region is found. With ``regions_p`` both maps are indexed by the
    same launches (``V = 2``).

    Parameters
    ----------
    regions : torch.Tensor
        ``(B, H, W)`` integer ids, any strides; ids outside ``[0, num_regions)`` are ignored.
    num_regions : int
        ``K``.
    tile : int, optional
        Pixels per program, a power of two >= 16, at most 4096 for the CUDA kernel (default
        1024, or the image size rounded up to a power of two when smaller; larger, up to 4096,
        when the ``(V, B, T, K)`` int32 tables would exceed 2**24 entries).
    regions_p : torch.Tensor, optional
        A second map of the same shape and device (the warped view), any strides. When the two
        dtypes differ both maps are indexed as int64 (``maps`` holds those copies).
    method : str, optional
        How each tile is sorted, one of :data:`INDEX_METHODS`; all give the same index:
        ``'cuda'``, the compiled extension's CUDA kernel (CUDA tensors, an extension built with
        CUDA); ``'simt'``, that kernel run by the CPU SIMT simulator (CPU tensors; slow, for
        tests); ``'sort'``, Triton's ``tl.sort``; ``'network'``, a bitonic network of
        ``tl.gather`` stages (fast under the Triton interpreter, which runs ``tl.sort`` element
        by element). The CUDA kernel reads int32 and int64 maps only. None: ``'cuda'`` where
        it applies and the extension has it, else ``'sort'``, on CUDA; ``'network'`` on CPU
        tensors.

    Returns
    -------
    RegionIndex
        ``pixels (V, B, H*W)``, ``cum (V, B, T, K)``, ``local (V, B, T, K)``,
        ``counts (V, B, K)``, all int32, ``tile``, and the ``maps`` indexed (the pooling's
        backward reads their ids).

    Raises
    ------
    ValueError
        ``tile`` not a power of two >= 16, ``num_regions`` above :func:`max_index_regions`
        (``(id, lane)`` pairs are packed into int32), ``method`` not one of
        :data:`INDEX_METHODS`, or not one for these maps, this tile and this installation.
    """
    batch, height, width = regions.shape
    regions, regions_p = _one_dtype(regions, regions_p)
    views = 1 if regions_p is None else 2
    tile = tile or _index_tile(views * batch, height * width, num_regions)
    if tile < 16 or tile & (tile - 1):
        raise ValueError(f"tile must be a power of two >= 16, got {tile}.")
    if num_regions > max_index_regions(tile):
        raise ValueError(f"num_regions={num_regions} is too large for the Triton region index "
                         f"(at most {max_index_regions(tile)} with {tile}-pixel tiles); use "
                         "backend='reference'.")
    method = _index_method(regions, tile) if method is None else _check_method(method, regions, tile)
    index = _region_index_op if torch.compiler.is_compiling() else _region_index
    return RegionIndex(*index(regions, regions_p, num_regions, tile, method), tile, (regions, regions_p))


def _check_method(method, regions: torch.Tensor, tile: int) -> str:
    """``method`` when it can sort these maps here, else a ValueError saying why."""
    if method not in INDEX_METHODS:
        raise ValueError(f"method must be one of {INDEX_METHODS}, got {method!r}.")
    refusal = _compiled_sort_refusal(method, regions, tile) if method in ("cuda", "simt") else None
    if refusal:
        raise ValueError(refusal)
    return method


# ----------------------------------------------------------------------------------------------
# Pooling forward: sample, gather, mean (and count the hits for the backward)
# ----------------------------------------------------------------------------------------------

@triton.jit
def _pool_fwd_kernel(feat_a, s_ab, s_ad, s_ah, s_aw, feat_b, s_bb, s_bd, s_bh, s_bw, W, HW, D,
                     pixels_ptr, cum_ptr, local_ptr, index_views, ids_ptr, valid_ptr, u_ptr,
                     means_ptr, idx_ptr, hits_ptr, B, M, N, K, n_tiles, tile, levels,
                     SEARCH: tl.constexpr, SEARCH_BITS: tl.constexpr, FLAT: tl.constexpr,
                     WIDE: tl.constexpr, COUNT_HITS: tl.constexpr,
                     IDENTITY: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    m = tl.program_id(0)
    b = tl.program_id(1)
    v = tl.program_id(2)  # the view: features a or b
    if v == 0:
        feat, s_fd, s_fh, s_fw = feat_a + b.to(tl.int64) * s_ab, s_ad, s_ah, s_aw
    else:
        feat, s_fd, s_fh, s_fw = feat_b + b.to(tl.int64) * s_bb, s_bd, s_bh, s_bw
    image = tl.minimum(v, index_views - 1).to(tl.int64) * B + b  # this view's map in the index
    vbm = (v.to(tl.int64) * B + b) * M + m  # row of the (V, B, M, ...) outputs
    bm = b.to(tl.int64) * M + m
    if IDENTITY:
        rid = m.to(tl.int64)
    else:
        rid = tl.load(ids_ptr + bm).to(tl.int64)
    n_take = N * (tl.load(valid_ptr + bm) != 0).to(tl.int32)  # 0 for invalid regions
    cum_col = cum_ptr + image * n_tiles * K + rid  # cum[iv, b, :, rid], stride K
    # the last tile's prefix: all pixels. tl.cast, not .to: on a GPU an n_tiles of 1 (an image in
    # one tile) is a compile-time constant, a plain int without .to
    count = tl.load(cum_col + tl.cast(n_tiles - 1, tl.int64) * K)
    local_col = local_ptr + image * n_tiles * K + rid
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        in_n = n < N
        take = n < n_take
        u = tl.load(u_ptr + vbm * N + n, mask=take, other=0.0)
        rank = tl.minimum((u * count.to(tl.float32)).to(tl.int32), count - 1)
        # the sample's tile: t = number of tiles t' < T - 1 with cum[t'] <= rank (cum is
        # nondecreasing in t'), found by a SEARCH-ary search in `levels` dependent loads of SEARCH
        # probes (the last repeats a bound of the level above: masking it cost the sm_90 build 16
        # registers); before = cum[t - 1], the largest probe <= rank (0 when t = 0)
        t = tl.zeros([BLOCK_N], dtype=tl.int32)
        before = tl.zeros([BLOCK_N], dtype=tl.int32)
        k = tl.arange(0, SEARCH)
        for level in range(levels):
            stride = 1 << (SEARCH_BITS * (levels - 1 - level))
            cand = t[:, None] + (k[None, :] + 1) * stride  # (BLOCK_N, SEARCH): probe index + 1
            probe_ok = take[:, None] & (cand < n_tiles)
            probe = tl.load(cum_col + (cand - 1).to(tl.int64) * K, mask=probe_ok, other=0)
            below = probe_ok & (probe <= rank[:, None])  # a prefix of the SEARCH probes
            t += tl.sum(below.to(tl.int32), axis=1) * stride
            before = tl.maximum(before, tl.max(tl.where(below, probe, 0), axis=1))
        start = tl.load(local_col + t.to(tl.int64) * K, mask=take, other=0)
        pix = tl.load(pixels_ptr + image * HW + t * tile + start + rank - before, mask=take, other=0)
        tl.store(idx_ptr + vbm * N + n, tl.where(take, pix, -1), mask=in_n)
        if COUNT_HITS:
            tl.atomic_add(hits_ptr + (v.to(tl.int64) * B + b) * HW + pix, 1, mask=take)
        rows = feat + _pixel_offsets(pix, W, s_fh, s_fw, FLAT, WIDE)[:, None]  # (BLOCK_N, 1) pointers
        x = tl.load(rows + (d[None, :].to(tl.int64) if WIDE else d[None, :]) * s_fd,
                    mask=take[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
        acc += tl.sum(x.to(tl.float32), axis=0)
    tl.store(means_ptr + vbm * D + d, acc / N, mask=d_mask)


def _pool_forward(feat, feat_p, pixels, cum, local, ids, valid, uniforms, count_hits, tile,
                  search_bits=SEARCH_BITS_CHOICES[0]):
    batch, channels, height, width = feat.shape
    views, _, regions, num_samples = uniforms.shape
    other = feat if feat_p is None else feat_p
    dev = feat.device
    means = torch.empty((views, batch, regions, channels), dtype=torch.float32, device=dev)  # (V, B, M, D)
    idx = torch.empty((views, batch, regions, num_samples), dtype=torch.int32, device=dev)  # (V, B, M, N)
    hits = torch.zeros((views, batch, height * width) if count_hits else (0,), dtype=torch.int32,
                       device=dev)  # (V, B, HW)
    if batch * regions == 0:
        return means, idx, hits
    index_views, _, n_tiles, num_regions = cum.shape
    block_d = max(16, next_power_of_2(channels))
    block_n = max(16, min(next_power_of_2(num_samples), _POOL_TILE // block_d))
    with on_device(feat):
        _pool_fwd_kernel[(regions, batch, views)](
            feat, *feat.stride(), other, *other.stride(), width, height * width, channels,
            pixels, cum, local, index_views, valid if ids is None else ids, valid, uniforms, means,
            idx, hits,
            batch, regions, num_samples, num_regions, n_tiles, tile,
            -(-(n_tiles - 1).bit_length() // search_bits), SEARCH=1 << search_bits, SEARCH_BITS=search_bits,
            FLAT=_flat_pixels(feat, other), WIDE=_wide_offsets(feat, other), COUNT_HITS=count_hits,
            IDENTITY=ids is None, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4)
    return means, idx, hits


@torch.library.custom_op("lrc_fast::region_pool_forward", mutates_args=())
def _pool_forward_op(feat: torch.Tensor, feat_p: torch.Tensor | None, pixels: torch.Tensor,
                     cum: torch.Tensor, local: torch.Tensor, ids: torch.Tensor | None,
                     valid: torch.Tensor, uniforms: torch.Tensor,
                     count_hits: bool, tile: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _pool_forward(feat, feat_p, pixels, cum, local, ids, valid, uniforms, count_hits, tile)


@_pool_forward_op.register_fake
def _(feat, feat_p, pixels, cum, local, ids, valid, uniforms, count_hits, tile):
    batch, channels, height, width = feat.shape
    views, _, regions, num_samples = uniforms.shape
    return (feat.new_empty((views, batch, regions, channels), dtype=torch.float32),
            feat.new_empty((views, batch, regions, num_samples), dtype=torch.int32),
            feat.new_empty((views, batch, height * width) if count_hits else (0,), dtype=torch.int32))


# ----------------------------------------------------------------------------------------------
# Pooling backward: one dense pass over the feature gradients
# ----------------------------------------------------------------------------------------------

@triton.jit
def _pool_bwd_kernel(gmeans_ptr, hits_ptr, first_view,
                     reg_a, s_rab, s_rah, s_raw, reg_b, s_rbb, s_rbh, s_rbw, slot_ptr, K,
                     grad_a, s_gab, s_gad, s_gah, s_gaw, grad_b, s_gbb, s_gbd, s_gbh, s_gbw,
                     W, HW, D, B, M, N,
                     IDENTITY: tl.constexpr, FLAT_R: tl.constexpr, FLAT_G: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    pblk = tl.program_id(0)
    b = tl.program_id(1)
    v = first_view + tl.program_id(2)  # the view: gradient a or b
    if v == 0:
        reg, s_rh, s_rw = reg_a + b.to(tl.int64) * s_rab, s_rah, s_raw
        out, s_gd, s_gh, s_gw = grad_a + b.to(tl.int64) * s_gab, s_gad, s_gah, s_gaw
    else:
        reg, s_rh, s_rw = reg_b + b.to(tl.int64) * s_rbb, s_rbh, s_rbw
        out, s_gd, s_gh, s_gw = grad_b + b.to(tl.int64) * s_gbb, s_gbd, s_gbh, s_gbw
    vb = v.to(tl.int64) * B + b
    pix = pblk * BLOCK_P + tl.arange(0, BLOCK_P)  # (BLOCK_P,)
    inside = pix < HW
    hits = tl.load(hits_ptr + vb * HW + pix, mask=inside, other=0)
    drawn = hits > 0  # drawn pixels have an id in [0, K) and a kept slot
    rid = tl.load(reg + _pixel_offsets(pix, W, s_rh, s_rw, FLAT_R, True), mask=drawn, other=0).to(tl.int64)
    if IDENTITY:
        slot = rid
    else:
        slot = tl.load(slot_ptr + b.to(tl.int64) * K + rid, mask=drawn, other=0).to(tl.int64)
    weight = hits.to(tl.float32)  # gradient = weight * grad_mean / N
    g_rows = gmeans_ptr + (vb * M + slot) * D  # (BLOCK_P,) row pointers
    g_offs = _pixel_offsets(pix, W, s_gh, s_gw, FLAT_G, True)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_mask = d < D
        g = tl.load(g_rows[:, None] + d[None, :], mask=drawn[:, None] & d_mask[None, :], other=0.0)
        val = g * weight[:, None] / N  # (BLOCK_P, BLOCK_D)
        tl.store(out + g_offs[:, None] + d[None, :].to(tl.int64) * s_gd,
                 val.to(grad_a.dtype.element_ty), mask=inside[:, None] & d_mask[None, :])


@triton.jit
def _pool_scatter_kernel(gmeans_ptr, idx_ptr, first_view,
                         grad_a, s_gab, s_gad, s_gah, s_gaw, grad_b, s_gbb, s_gbd, s_gbh, s_gbw,
                         W, D, B, M, N,
                         FLAT_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    m = tl.program_id(0)
    b = tl.program_id(1)
    v = first_view + tl.program_id(2)  # the view: gradient a or b
    if v == 0:
        out, s_gd, s_gh, s_gw = grad_a + b.to(tl.int64) * s_gab, s_gad, s_gah, s_gaw
    else:
        out, s_gd, s_gh, s_gw = grad_b + b.to(tl.int64) * s_gbb, s_gbd, s_gbh, s_gbw
    vbm = (v.to(tl.int64) * B + b) * M + m  # row of the (V, B, M, ...) inputs
    row = idx_ptr + vbm * N
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        pix = tl.load(row + n, mask=n < N, other=-1)  # -1: no sample (invalid region, past N)
        # how often the row drew each pixel, and whether an earlier sample drew it too: only the
        # first writes, so every element is written once (no race, no atomics)
        hits = tl.zeros([BLOCK_N], dtype=tl.int32)
        repeat = tl.zeros([BLOCK_N], dtype=tl.int32)
        for j0 in range(0, N, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            other = tl.load(row + j, mask=j < N, other=-2)
            same = (pix[:, None] == other[None, :]).to(tl.int32)  # (BLOCK_N, BLOCK_J)
            hits += tl.sum(same, axis=1)
            repeat += tl.sum(same * (j[None, :] < n[:, None]).to(tl.int32), axis=1)
        first = (pix >= 0) & (repeat == 0)
        weight = hits.to(tl.float32)  # gradient = weight * grad_mean / N, as the dense pass
        offs = _pixel_offsets(pix, W, s_gh, s_gw, FLAT_G, True)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            d_mask = d < D
            g = tl.load(gmeans_ptr + vbm * D + d, mask=d_mask, other=0.0)  # (BLOCK_D,)
            val = g[None, :] * weight[:, None] / N  # (BLOCK_N, BLOCK_D)
            tl.store(out + offs[:, None] + d[None, :].to(tl.int64) * s_gd,
                     val.to(grad_a.dtype.element_ty), mask=first[:, None] & d_mask[None, :])


def _gradient_buffer(size, dtype, channels_last, device) -> torch.Tensor:
    """Uninitialised feature gradient in the features' layout (channels_last or contiguous)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(size, dtype=dtype, device=device, memory_format=layout)


def _zero_gradient(size, dtype, channels_last, device) -> torch.Tensor:
    """A zero feature gradient in the features' layout. A 16-bit buffer is filled as 32-bit words:
    on an H200 (stop 22) torch's fill wrote float32 at 4.6 TB/s (2,147 MB in 0.463 ms) but
    bfloat16 at 3.3 TB/s (1,074 MB in 0.322 ms)."""
    grad = _gradient_buffer(size, dtype, channels_last, device)
    words = grad.as_strided((grad.numel(),), (1,))  # the whole fresh buffer, dense from offset 0
    if grad.element_size() == 2 and grad.numel() % 2 == 0:
        words = words.view(torch.int32)
    words.zero_()
    return grad


def _pool_backward(grad_means, hits, regions, regions_p, slot_of, size, dtype, channels_last,
                   num_samples, views, blocks=None):
    """The feature gradients of the views listed in ``views`` (a sub-list of [0, 1]), in order.

    ``channels_last`` holds one layout flag per view of ``grad_means`` ``(V, B, M, D)``;
    ``blocks`` is ``(pixels, channels, warps)``, by default the first of
    ``GRAD_BLOCK_CHOICES_CL`` when every gradient is channels_last, else of ``GRAD_BLOCK_CHOICES``.
    """
    batch, channels, height, width = size
    if blocks is None:
        all_cl = all(channels_last[v] for v in views)
        blocks = (GRAD_BLOCK_CHOICES_CL if all_cl else GRAD_BLOCK_CHOICES)[0]
    block_p, block_d, warps = blocks
    # every element of each buffer is written by the kernel
    grads = [_gradient_buffer(size, dtype, channels_last[v], grad_means.device) for v in views]
    if not grads or grads[0].numel() == 0:
        return grads
    regions_other = regions if regions_p is None else regions_p
    grad_a, grad_b = grads[0], grads[-1]  # the kernel writes view first_view + program_id(2)
    identity = slot_of is None
    slots = regions if identity else slot_of  # placeholder pointer when unused
    grid = (cdiv(height * width, block_p), batch, len(views))
    with on_device(grad_means):
        _pool_bwd_kernel[grid](
            grad_means, hits, views[0], regions, *regions.stride(), regions_other,
            *regions_other.stride(),
            slots, 0 if identity else slot_of.shape[1],
            grad_a, *grad_a.stride(), grad_b, *grad_b.stride(),
            width, height * width, channels, batch, grad_means.shape[2], num_samples,
            IDENTITY=identity, FLAT_R=_flat_pixels(regions, regions_other),
            FLAT_G=_flat_pixels(grad_a, grad_b),
            BLOCK_P=block_p, BLOCK_D=max(8, min(block_d, next_power_of_2(channels))),
            num_warps=warps)
    return grads


@torch.library.custom_op("lrc_fast::region_pool_backward", mutates_args=())
def _pool_backward_op(grad_means: torch.Tensor, hits: torch.Tensor, regions: torch.Tensor,
                      regions_p: torch.Tensor | None, slot_of: torch.Tensor | None, size: list[int],
                      dtype: torch.dtype, channels_last: list[bool], num_samples: int,
                      views: list[int]) -> list[torch.Tensor]:
    return _pool_backward(grad_means, hits, regions, regions_p, slot_of, size, dtype, channels_last,
                          num_samples, views)


@_pool_backward_op.register_fake
def _(grad_means, hits, regions, regions_p, slot_of, size, dtype, channels_last, num_samples, views):
    return [_gradient_buffer(size, dtype, channels_last[v], grad_means.device) for v in views]


def _pool_scatter_backward(grad_means, idx, size, dtype, channels_last, num_samples, views,
                           block_n=None):
    """The feature gradients of ``views`` as :func:`_pool_backward`'s, bit for bit: a zero fill,
    then one program per (region, image, view) writes the pixels its row of ``idx (V, B, M, N)``
    drew. ``block_n``: samples written per step (by default the next power of two of ``N``,
    16 to 64)."""
    batch, channels, height, width = size
    grads = [_zero_gradient(size, dtype, channels_last[v], grad_means.device) for v in views]
    regions = idx.shape[2]
    if not grads or grads[0].numel() == 0 or regions * num_samples == 0:
        return grads
    grad_a, grad_b = grads[0], grads[-1]  # the kernel writes view first_view + program_id(2)
    block_n = block_n or max(16, min(64, next_power_of_2(num_samples)))
    with on_device(grad_means):
        _pool_scatter_kernel[(regions, batch, len(views))](
            grad_means, idx, views[0], grad_a, *grad_a.stride(), grad_b, *grad_b.stride(),
            width, channels, batch, regions, num_samples, FLAT_G=_flat_pixels(grad_a, grad_b),
            BLOCK_N=block_n, BLOCK_J=_SCATTER_COMPARE, BLOCK_D=max(16, min(64, next_power_of_2(channels))),
            num_warps=4)
    return grads


@torch.library.custom_op("lrc_fast::region_pool_scatter_backward", mutates_args=())
def _pool_scatter_backward_op(grad_means: torch.Tensor, idx: torch.Tensor, size: list[int],
                              dtype: torch.dtype, channels_last: list[bool], num_samples: int,
                              views: list[int]) -> list[torch.Tensor]:
    return _pool_scatter_backward(grad_means, idx, size, dtype, channels_last, num_samples, views)


@_pool_scatter_backward_op.register_fake
def _(grad_means, idx, size, dtype, channels_last, num_samples, views):
    return [_gradient_buffer(size, dtype, channels_last[v], grad_means.device) for v in views]


def _backward_method(channels_last: list[bool], views: list[int], num_samples: int) -> str:
    """How the gradients of ``views`` are written: ``'scatter'`` when every one is channels_last
    and there are at most ``_SCATTER_MAX_SAMPLES`` samples a region, else ``'dense'`` (see
    ``BACKWARD_METHODS``)."""
    scatter = views and all(channels_last[v] for v in views) and num_samples <= _SCATTER_MAX_SAMPLES
    return "scatter" if scatter else "dense"


def _is_channels_last(feat: torch.Tensor) -> bool:
    return feat.is_contiguous(memory_format=torch.channels_last) and not feat.is_contiguous()


class PoolPlan(NamedTuple):
    """What :func:`pool_backward_pass` needs besides the saved tensors."""

    size: list  # (B, D, H, W) of the features
    dtype: torch.dtype
    layouts: list  # channels_last or not, per view's features
    num_samples: int
    views: list  # the views whose features need a gradient
    method: str  # of BACKWARD_METHODS


def pool_forward_pass(ctx, feat, feat_p, pixels, cum, local, ids, valid, uniforms, tile):
    """The pooling forward inside an autograd.Function whose first two inputs are the views'
    features: ``(means, idx, samples)``, ``samples`` what the backward reads (``hits`` for the
    dense pass, counted only then; ``idx`` for the scatter); ``ctx.pool`` gets a
    :class:`PoolPlan`."""
    views = [v for v, needs in enumerate(ctx.needs_input_grad[:2]) if needs]
    layouts = [_is_channels_last(f) for f in ((feat,) if feat_p is None else (feat, feat_p))]
    method = _backward_method(layouts, views, uniforms.shape[3])
    forward = _pool_forward_op if torch.compiler.is_compiling() else _pool_forward
    means, idx, hits = forward(feat, feat_p, pixels, cum, local, ids, valid, uniforms,
                               bool(views) and method == "dense", tile)
    ctx.pool = PoolPlan(list(feat.shape), feat.dtype, layouts, uniforms.shape[3], views, method)
    return means, idx, hits if method == "dense" else idx


def pool_backward_pass(ctx, grad_means, samples, regions, regions_p, slot_of) -> list:
    """``[grad_feat, grad_feat_p]`` (None where not needed) from ``grad_means (V, B, M, D)`` and
    the forward's ``samples``."""
    plan = ctx.pool
    compiling = torch.compiler.is_compiling()
    grad_means = grad_means.float().contiguous()
    if plan.method == "scatter":
        backward = _pool_scatter_backward_op if compiling else _pool_scatter_backward
        computed = backward(grad_means, samples, plan.size, plan.dtype, plan.layouts, plan.num_samples,
                            plan.views)
    else:
        backward = _pool_backward_op if compiling else _pool_backward
        computed = backward(grad_means, samples, regions, regions_p, slot_of, plan.size, plan.dtype,
                            plan.layouts, plan.num_samples, plan.views)
    grads = [None, None]
    for v, grad in zip(plan.views, computed):
        grads[v] = grad
    return grads


class RegionPoolFunction(torch.autograd.Function):
    """Autograd for the sampled region means of one or two views, in one launch each way.

    Forward: ``(means (V, B, M, D) float32, idx (V, B, M, N) int32)``; ``idx`` is not
    differentiable. Backward: each view's dense feature gradient in its dtype, channels_last when
    its features are (contiguous otherwise). Only ``hits`` (or ``idx``, see
    :func:`pool_forward_pass`) and the region maps are kept for it, not the features. Gradients
    are not materialised: no zero tensor is built for ``idx``.
    """

    @staticmethod
    def forward(ctx, feat, feat_p, regions, regions_p, pixels, cum, local, ids, valid, uniforms,
                slot_of, tile):
        means, idx, samples = pool_forward_pass(ctx, feat, feat_p, pixels, cum, local, ids, valid,
                                                uniforms, tile)
        if ctx.pool.views:
            ctx.save_for_backward(samples, regions, regions_p, slot_of)
            if ctx.pool.method == "scatter":
                idx = idx.clone()  # the caller's own: editing it must not move the backward's samples
        ctx.mark_non_differentiable(idx)
        ctx.set_materialize_grads(False)
        return means, idx

    @staticmethod
    def backward(ctx, grad_means, grad_idx):
        if grad_means is None:  # the means did not reach the output
            return (None,) * 12
        grads = pool_backward_pass(ctx, grad_means, *ctx.saved_tensors)
        return (*grads, *([None] * 10))


def region_pool(feats: tuple[torch.Tensor, ...], index: RegionIndex, valid: torch.Tensor,
                uniforms: torch.Tensor, ids: torch.Tensor | None = None,
                slot_of: torch.Tensor | None = None):
    """Sampled region means of one or two views with the fused Triton kernels (differentiable).

    Sample ``n`` of kept region ``m`` (id ``k``) in view ``v`` is region ``k``'s pixel number
    ``min(floor(u[v, b, m, n] * count), count - 1)`` in raster order, as in
    :func:`lrc_fast.reference.region_loss.sample_pixels`. Both views run in the same launches.

    Parameters
    ----------
    feats : tuple of torch.Tensor
        ``(feat,)`` or ``(feat_q, feat_p)``, each ``(B, D, H, W)`` float32/bfloat16/float16 with
        one shape and dtype, any strides (contiguous, channels_last, ...).
    index : RegionIndex
        From :func:`region_index` of the views' region maps; the backward reads the ids of its
        ``maps``. With one map indexed, both views sample from it.
    valid : torch.Tensor
        ``(B, M)`` bool: kept regions that get samples (each must have pixels in every map).
    uniforms : torch.Tensor
        ``(V, B, M, N)`` float32 in ``[0, 1)``, one slice per view.
    ids : torch.Tensor, optional
        ``(B, M)`` integer id of each kept region, distinct within an image (as
        :func:`lrc_fast.reference.region_loss.select_regions` keeps them); None when region
        ``m`` is id ``m``.
    slot_of : torch.Tensor, optional
        ``(B, K)`` int32 position of each id among the kept regions (-1 when dropped); None
        when region ``m`` is id ``m``. Given together with ``ids``.

    Returns
    -------
    means : torch.Tensor
        ``(V, B, M, D)`` float32; zero for invalid regions.
    idx : torch.Tensor
        ``(V, B, M, N)`` int32 sampled pixels ``h * W + w`` (-1 for invalid regions).

    Raises
    ------
    ValueError
        The two views' features differ in shape or dtype.
    """
    feat_p = feats[1] if len(feats) == 2 else None
    if feat_p is not None and (feat_p.shape != feats[0].shape or feat_p.dtype != feats[0].dtype):
        raise ValueError(f"the two views' features must have one shape and dtype, got "
                         f"{tuple(feats[0].shape)} {feats[0].dtype} and {tuple(feat_p.shape)} {feat_p.dtype}.")
    return RegionPoolFunction.apply(feats[0], feat_p, *pool_inputs(index, valid, uniforms, ids, slot_of))


def pool_inputs(index: RegionIndex, valid: torch.Tensor, uniforms: torch.Tensor,
                ids: torch.Tensor | None, slot_of: torch.Tensor | None) -> tuple:
    """What an autograd.Function running the pooling takes after the two views' features:
    ``(regions, regions_p, pixels, cum, local, ids, valid, uniforms, slot_of, tile)``,
    the tensors contiguous (see :class:`RegionPoolFunction`)."""
    regions, regions_p = index.maps
    return (regions, regions_p, index.pixels, index.cum, index.local,
            None if ids is None else ids.contiguous(), valid.contiguous(), uniforms.contiguous(),
            None if slot_of is None else slot_of.contiguous(), index.tile)
