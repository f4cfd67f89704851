"""Triton kernels for elastic positive pairs: Gaussian smoothing of the noise and the fused warp.

Field (:func:`field_from_uniform_triton`)
    The separable Gaussian with scipy's ``'reflect'`` boundary is a banded matrix per axis,
    ``K[i, m] = sum of w[d] over the taps d whose reflected index i + d is m``. The field is
    ``(alpha K_H) @ (2 u - 1) @ K_W^T`` per image and channel: two kernels, each a banded
    matrix product on the tensor cores (``tl.dot``, by default in ``tf32x3``: about float32
    accuracy, see :data:`FIELD_DOT_PRECISION`), looping only over the ``2 r + tile`` band.
    A direct 1-D convolution would issue ``2 r + 1`` loads per output and pass (129 at
    sigma 16); the banded product reads each input about ``(tile + 2 r) / tile`` times from
    cache and does the arithmetic on the tensor cores. The ``2 u - 1`` of the noise is folded
    into the first kernel's load.

Warp (:func:`elastic_warp_triton`, :class:`ElasticWarpFunction`)
    One kernel reads the displacement once and writes the bilinear image (all channels) and the
    nearest-neighbour region map. The coordinate arithmetic is that of
    :mod:`lrc_fast.reference.elastic` (``y = i + dy``, ``floor(y + 0.5)``: additions and floor
    only, so fused multiply-adds cannot change the region ids). The backward kernel scatters
    the image gradient with float32 atomics (order not deterministic) and writes the
    displacement gradient per pixel.

Coarse mode (:func:`coarse_rows_triton`, :func:`smooth_grid_triton`,
:func:`field_from_rows_triton`, :func:`warp_from_rows_triton`)
    A field given at control points ``S`` pixels apart is interpolated by Catmull-Rom splines in
    two steps, each a chain of explicit ``fma`` with weights from a table
    (:func:`lrc_fast.reference.elastic.catmull_rom_weights`): step 1 interpolates every node row
    along W (x) to every pixel column (``(B, 2, Hc, W)``, ``1 / S`` of a field); step 2, per
    pixel, along H (y) through four of those rows, loads coalesced across a program. One launch
    goes from the noise to the node rows: a program owns a band of node rows of one plane,
    smooths the noise along H then along W by direct taps (the control grid has ``S**2`` times
    fewer nodes than pixels) and does step 1, with a barrier between the steps; each step after
    the first reads only rows of the program's own band. A second launch does step 2: one kernel
    writes the field at every pixel, the other warps as above with the displacement
    interpolated per pixel, so the full field is never written or read. Both inline the same
    step 2, so they agree bit for bit. For a given grid (:func:`upsample_field_triton`,
    :func:`elastic_warp_coarse_triton`) a kernel of its own does step 1.

On CPU tensors the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..reference.elastic import (catmull_rom_weights, coarse_shape, gaussian_kernel1d,
                                 gaussian_radius, reflect_indices)
from ._host import cdiv, on_device

PADDING_CODES = {"border": 0, "zeros": 1, "reflection": 2}

# (BM, BN, BK, num_warps) of the smoothing passes: output rows and columns per program, the band
# chunk per tl.dot, warps. These are the shapes `bench_elastic.py --sweep` tries; the first is the
# default, the fastest of them on an H100 and on an H200 (benchmarks/RESULTS.md). tl.dot needs
# every block side >= 16; (128, 128, 64, 8) is not offered: compiled by Triton 3.6 its tf32x3
# column pass needs 256 KiB of shared memory, more than an sm_90 program may have (227 KiB).
SMOOTH_BLOCK_CHOICES = ((128, 64, 32, 4), (64, 64, 32, 4), (64, 128, 32, 4), (128, 128, 32, 8),
                        (64, 64, 64, 4), (128, 64, 64, 8), (64, 64, 16, 4))
_WARP_BLOCK = 1024  # output pixels per program
# nodes per chunk of the grid's smoothing passes; a program of _coarse_rows_kernel owns
# max(1, _BAND_NODES // Wc) node rows
_BAND_NODES = 256
_ROWS_BLOCK = 1024  # (node row, column) pairs per chunk of the upsampling's first step
# (output pixels, warps) per program of the kernels that do the upsampling's second step (the
# fused coarse warp, the field), the first the default; `bench_elastic.py --sweep` times them all
# (all bit for bit equal; (256, 4) was the fastest on an H200 at B=16 and B=256, benchmarks/
# RESULTS.md). A pixel loads 4 weights and 4 node-row values per component, coalesced.
COARSE_LAUNCH_CHOICES = ((256, 4), (512, 4), (1024, 4), (2048, 8))

# tl.dot precision of the smoothing passes. "tf32x3" (three TF32 products, ~float32 accuracy:
# field error ~1e-6 of alpha) is the default; "tf32" is about three times less tensor-core
# work, with a largest field error measured of 7.9e-5 of alpha at sigma 16 on an H100 (0.03 px
# at the defaults) and 5.1e-4 of alpha at sigma 3 on an H200 (bound: 2 * 2**-10 of alpha).
FIELD_DOT_PRECISION = "tf32x3"


# ----------------------------------------------------------------------------------------------
# Field: banded Gaussian matrices and the two smoothing passes
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def gaussian_band_matrix(n: int, sigma: float, truncate: float, device: torch.device,
                         transposed: bool = False) -> torch.Tensor:
    """``(n, n)`` float32 matrix ``K`` with ``(K @ v)[i]`` = scipy's reflect-mode Gaussian of ``v``.

    Built in float64 on the CPU (deterministic) and cached per device; ``transposed=True``
    gives ``K^T``, contiguous (the row pass's operand). Each call takes one cache entry: ``K^T``
    is not built from a cached ``K``, so a dense field holds exactly two entries (one per axis).
    """
    weights = gaussian_kernel1d(sigma, truncate)  # (2r+1,)
    radius = (weights.numel() - 1) // 2
    padded = reflect_indices(n, radius)  # (n + 2r,)
    taps = torch.arange(2 * radius + 1)
    source = padded[torch.arange(n)[:, None] + taps[None, :]]  # (n, 2r+1): index read by tap d of row i
    band = torch.zeros(n, n, dtype=torch.float64)
    band.scatter_add_(1, source, weights.expand(n, -1).contiguous())
    if transposed:
        band = band.t().contiguous()
    return band.to(device=device, dtype=torch.float32)


@triton.jit
def _tile_origin(pid, tiles_h, tiles_w, BM: tl.constexpr, BN: tl.constexpr):
    # program pid of a smoothing pass -> (plane, first output row, first output column)
    tile = pid % (tiles_h * tiles_w)
    return pid // (tiles_h * tiles_w), (tile // tiles_w) * BM, (tile % tiles_w) * BN


@triton.jit
def _band(first, size: tl.constexpr, n, radius, BK: tl.constexpr):
    # [start, end) of the inputs along an axis of length n that feed outputs first .. first +
    # size - 1 (a Gaussian of this radius), start rounded down to a multiple of BK, so the
    # smoothing pass loops over BK-aligned chunks of the band
    lo = tl.maximum(first - radius, 0)
    return (lo // BK) * BK, tl.minimum(tl.minimum(first + size, n) + radius, n)


@triton.jit
def _smooth_rows_kernel(u_ptr, kwt_ptr, t_ptr, H, W, radius, tiles_h, tiles_w,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                        PRECISION: tl.constexpr):
    # t[n] = (2 u[n] - 1) @ K_W^T : smoothing along each row (the W axis)
    n, row0, col0 = _tile_origin(tl.program_id(0), tiles_h, tiles_w, BM, BN)
    rows = row0 + tl.arange(0, BM)  # (BM,)
    cols = col0 + tl.arange(0, BN)  # (BN,)
    base = n.to(tl.int64) * H * W
    k_start, k_end = _band(col0, BN, W, radius, BK)  # input columns feeding these outputs
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(k_start, k_end, BK):
        ks = k0 + tl.arange(0, BK)  # (BK,)
        a_mask = (rows[:, None] < H) & (ks[None, :] < W)
        u = tl.load(u_ptr + base + rows[:, None] * W + ks[None, :], mask=a_mask, other=0.5)
        noise = 2.0 * u - 1.0  # (BM, BK), exact; masked entries are 0
        kwt = tl.load(kwt_ptr + ks[:, None] * W + cols[None, :],
                      mask=(ks[:, None] < W) & (cols[None, :] < W), other=0.0)  # (BK, BN)
        acc = tl.dot(noise, kwt, acc, input_precision=PRECISION)
    out_mask = (rows[:, None] < H) & (cols[None, :] < W)
    tl.store(t_ptr + base + rows[:, None] * W + cols[None, :], acc, mask=out_mask)


@triton.jit
def _smooth_cols_kernel(t_ptr, kh_ptr, f_ptr, alpha, H, W, radius, tiles_h, tiles_w,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                        PRECISION: tl.constexpr):
    # f[n] = (alpha K_H) @ t[n] : smoothing along each column (the H axis)
    n, row0, col0 = _tile_origin(tl.program_id(0), tiles_h, tiles_w, BM, BN)
    rows = row0 + tl.arange(0, BM)  # (BM,)
    cols = col0 + tl.arange(0, BN)  # (BN,)
    base = n.to(tl.int64) * H * W
    k_start, k_end = _band(row0, BM, H, radius, BK)  # input rows feeding these outputs
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(k_start, k_end, BK):
        ks = k0 + tl.arange(0, BK)  # (BK,)
        # (BM, BK) tile of alpha * K_H: alpha scales the band, so the product is the field
        kh = tl.load(kh_ptr + rows[:, None] * H + ks[None, :],
                     mask=(rows[:, None] < H) & (ks[None, :] < H), other=0.0) * alpha
        t = tl.load(t_ptr + base + ks[:, None] * W + cols[None, :],
                    mask=(ks[:, None] < H) & (cols[None, :] < W), other=0.0)  # (BK, BN)
        acc = tl.dot(kh, t, acc, input_precision=PRECISION)
    out_mask = (rows[:, None] < H) & (cols[None, :] < W)
    tl.store(f_ptr + base + rows[:, None] * W + cols[None, :], acc, mask=out_mask)


def _check_blocks(blocks) -> tuple[int, int, int, int]:
    if blocks is None:
        return SMOOTH_BLOCK_CHOICES[0]
    if not (isinstance(blocks, tuple) and len(blocks) == 4 and all(isinstance(b, int) for b in blocks)):
        raise TypeError(f"blocks must be a tuple of 4 ints (BM, BN, BK, num_warps), got {blocks!r}.")
    *sides, warps = blocks
    if any(b < 16 or b & (b - 1) for b in sides):
        raise ValueError(f"blocks: BM, BN and BK must be powers of two >= 16, got {tuple(sides)}.")
    if warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"blocks: num_warps must be 1, 2, 4, 8 or 16, got {warps}.")
    return blocks


def field_from_uniform_triton(uniform: torch.Tensor, alpha: float, sigma: float,
                              truncate: float = 4.0, precision: str | None = None,
                              blocks: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Triton twin of :func:`lrc_fast.reference.elastic.field_from_uniform`.

    Parameters
    ----------
    uniform : torch.Tensor
        ``(B, 2, H, W)`` float32 draws in ``[0, 1)``, on CUDA (or CPU under the interpreter).
    alpha, sigma, truncate : float
        As in the reference; ``sigma`` must be >= 0.
    precision : {'tf32x3', 'tf32', 'ieee'}, optional
        ``tl.dot`` input precision; default :data:`FIELD_DOT_PRECISION`. The interpreter
        always multiplies in float32.
    blocks : tuple of 4 ints, optional
        ``(BM, BN, BK, num_warps)`` of both smoothing kernels, for tuning (see
        :data:`SMOOTH_BLOCK_CHOICES`); default ``(128, 64, 32, 4)``. Only the order in which
        float32 products are summed depends on it.

    Returns
    -------
    torch.Tensor
        ``(B, 2, H, W)`` float32 displacement.

    Raises
    ------
    TypeError, ValueError
        ``blocks`` not four ints, block sides not powers of two >= 16, or a bad warp count.
    """
    bm, bn, bk, warps = _check_blocks(blocks)
    uniform = uniform.contiguous()
    batch, two, height, width = uniform.shape
    if sigma <= 1e-15:  # no smoothing, as scipy
        return (uniform * 2.0 - 1.0) * alpha
    field = torch.empty_like(uniform)
    if uniform.numel() == 0:
        return field
    precision = precision or FIELD_DOT_PRECISION
    rows_smoothed = _smooth_rows(uniform, sigma, truncate, precision, (bm, bn, bk, warps))
    kh = gaussian_band_matrix(height, float(sigma), float(truncate), uniform.device)  # (H, H)
    tiles_h, tiles_w = cdiv(height, bm), cdiv(width, bn)
    with on_device(field):
        _smooth_cols_kernel[(batch * two * tiles_h * tiles_w,)](
            rows_smoothed, kh, field, float(alpha), height, width, gaussian_radius(sigma, truncate),
            tiles_h, tiles_w, BM=bm, BN=bn, BK=bk, PRECISION=precision, num_warps=warps)
    return field


def _smooth_rows(uniform: torch.Tensor, sigma: float, truncate: float, precision: str,
                 blocks: tuple[int, int, int, int]) -> torch.Tensor:
    """The row pass, ``(2 u - 1) @ K_W^T`` per image and component: ``(B, 2, H, W)`` float32."""
    bm, bn, bk, warps = blocks
    batch, two, height, width = uniform.shape
    kwt = gaussian_band_matrix(width, float(sigma), float(truncate), uniform.device, True)  # (W, W)
    rows_smoothed = torch.empty_like(uniform)  # (B, 2, H, W)
    tiles_h, tiles_w = cdiv(height, bm), cdiv(width, bn)
    with on_device(uniform):
        _smooth_rows_kernel[(batch * two * tiles_h * tiles_w,)](
            uniform, kwt, rows_smoothed, height, width, gaussian_radius(sigma, truncate), tiles_h,
            tiles_w, BM=bm, BN=bn, BK=bk, PRECISION=precision, num_warps=warps)
    return rows_smoothed


# ----------------------------------------------------------------------------------------------
# Coarse mode: the control grid's smoothing, and Catmull-Rom upsampling in two steps
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def gaussian_taps(n: int, sigma: float, truncate: float, device: torch.device):
    """``(taps, index)`` of scipy's reflect-mode Gaussian along an axis of ``n`` nodes, cached per
    device: the ``(2 r + 1,)`` float32 weights and the ``(n + 2 r,)`` int32 source node of every
    position of the reflect-padded axis (:func:`lrc_fast.reference.elastic.reflect_indices`).
    ``sigma <= 1e-15`` (no smoothing, as scipy) gives the single tap 1: ``fma(1, v, 0) = v``."""
    taps = gaussian_kernel1d(sigma, truncate) if sigma > 1e-15 else torch.ones(1, dtype=torch.float64)
    radius = (taps.numel() - 1) // 2
    return (taps.to(device=device, dtype=torch.float32),
            reflect_indices(n, radius).to(device=device, dtype=torch.int32))


@triton.jit
def _taps_pass(src, src_row, taps_ptr, index_ptr, dst, dst_row, scale, radius, i, j, live,
               ALONG_H: tl.constexpr, NOISE: tl.constexpr, NODES: tl.constexpr):
    # dst[i, j] = scale * the Gaussian of the plane src along one axis (H or W), reflect
    # boundary, as direct taps: the sum of taps[d] * src at the reflected neighbour index[i + d]
    # (along H) or index[j + d] (along W), d = 0 .. 2 radius in order, with fma. A row of src
    # (dst) starts every src_row (dst_row) elements. NOISE reads src as 2 u - 1 (one rounding,
    # fused or not).
    acc = tl.zeros((NODES,), dtype=tl.float32)
    for d in range(0, 2 * radius + 1):
        if ALONG_H:
            node = tl.load(index_ptr + i + d, mask=live, other=0) * src_row + j
        else:
            node = i * src_row + tl.load(index_ptr + j + d, mask=live, other=0)
        value = tl.load(src + node, mask=live, other=0.0)
        if NOISE:
            value = 2.0 * value - 1.0
        acc = tl.fma(tl.load(taps_ptr + d), value, acc)
    tl.store(dst + i * dst_row + j, acc * scale, mask=live)


@triton.jit
def _catmull_rom_weights(w_ptr, phase, live):
    # the four weights of row `phase` of the (phases, 4) table, per pixel
    w = w_ptr + phase * 4
    return (tl.load(w, mask=live, other=0.0), tl.load(w + 1, mask=live, other=0.0),
            tl.load(w + 2, mask=live, other=0.0), tl.load(w + 3, mask=live, other=0.0))


@triton.jit
def _catmull_rom_sum(w0, w1, w2, w3, v0, v1, v2, v3):
    # ((w0 v0 + w1 v1) + w2 v2) + w3 v3 with explicit fma: the same roundings in every kernel
    # that inlines it, so the fused pair and the upsampled field agree bit for bit on a GPU too
    return tl.fma(w3, v3, tl.fma(w2, v2, tl.fma(w1, v1, w0 * v0)))


@triton.jit
def _catmull_rom_at(line_ptr, stride, pixel, nodes, w_ptr, S, live):
    # Catmull-Rom along one axis at `pixel`: nodes k-1 .. k+2 (clamped to [0, nodes)), k =
    # pixel // S, of the line of nodes at line_ptr, `stride` elements apart
    k = pixel // S
    w0, w1, w2, w3 = _catmull_rom_weights(w_ptr, pixel - k * S, live)
    v0 = tl.load(line_ptr + tl.maximum(k - 1, 0) * stride, mask=live, other=0.0)
    v1 = tl.load(line_ptr + k * stride, mask=live, other=0.0)
    v2 = tl.load(line_ptr + tl.minimum(k + 1, nodes - 1) * stride, mask=live, other=0.0)
    v3 = tl.load(line_ptr + tl.minimum(k + 2, nodes - 1) * stride, mask=live, other=0.0)
    return _catmull_rom_sum(w0, w1, w2, w3, v0, v1, v2, v3)


@triton.jit
def _node_rows(grid, w_ptr, rows, k, j, live, Wc, W, S):
    # Step 1 of the upsampling: rows[k, j] = Catmull-Rom along W (x) through the nodes of grid
    # row k, at pixel column j (grid and rows: one plane each)
    tl.store(rows + k * W + j, _catmull_rom_at(grid + k * Wc, 1, j, Wc, w_ptr, S, live), mask=live)


@triton.jit
def _coarse_rows_kernel(u_ptr, taps_ptr, index_h_ptr, index_w_ptr, rows_ptr, grid_ptr, w_ptr,
                        alpha, Hc, Wc, W, S, radius, band_rows, bands,
                        ROWS: tl.constexpr, NODES: tl.constexpr, PIXELS: tl.constexpr):
    # Noise to node rows in one launch. A program owns `band_rows` node rows of one plane and
    # runs three steps on them, a barrier between each: the Gaussian along H of the noise (it
    # reads the noise rows around its band) into its own rows of rows_ptr, then along W of those
    # times alpha into grid, then (ROWS) step 1 of the upsampling into its rows of rows_ptr again.
    # The last two read only the program's own rows, written by its other threads before the
    # barrier, so no program waits for another; step 1 reads only grid. rows_ptr is the
    # (B, 2, Hc, W) node rows with ROWS (W >= Wc elements a row), else a (B, 2, Hc, Wc) scratch
    # buffer (W = Wc).
    pid = tl.program_id(0)
    plane = (pid // bands).to(tl.int64)  # int64 plane offsets: B * 2 * Hc * W may overflow int32
    row0 = (pid % bands) * band_rows
    nodes = tl.minimum(band_rows, Hc - row0) * Wc
    noise, grid = u_ptr + plane * Hc * Wc, grid_ptr + plane * Hc * Wc
    mid = rows_ptr + plane * Hc * W  # the first pass's output, then (ROWS) the node rows
    for start in range(0, nodes, NODES):
        offs = start + tl.arange(0, NODES)  # (NODES,) flat nodes of the band
        _taps_pass(noise, Wc, taps_ptr, index_h_ptr, mid, W, 1.0, radius, row0 + offs // Wc,
                   offs % Wc, offs < nodes, ALONG_H=True, NOISE=True, NODES=NODES)
    tl.debug_barrier()
    for start in range(0, nodes, NODES):
        offs = start + tl.arange(0, NODES)
        _taps_pass(mid, W, taps_ptr, index_w_ptr, grid, Wc, alpha, radius, row0 + offs // Wc,
                   offs % Wc, offs < nodes, ALONG_H=False, NOISE=False, NODES=NODES)
    if ROWS:
        tl.debug_barrier()
        pixels = (nodes // Wc) * W
        for start in range(0, pixels, PIXELS):
            offs = start + tl.arange(0, PIXELS)  # (PIXELS,) flat (node row, column) of the band
            _node_rows(grid, w_ptr, mid, row0 + offs // W, offs % W, offs < pixels, Wc, W, S)


@triton.jit
def _upsample_rows_kernel(c_ptr, w_ptr, rows_ptr, Hc, Wc, W, S, tiles, BLOCK: tl.constexpr):
    # Step 1 alone, for a given grid: every node row of every plane at every pixel column
    pid = tl.program_id(0)
    plane = (pid // tiles).to(tl.int64)  # int64 plane offsets: B * 2 * Hc * W may overflow int32
    offs = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) flat (node row, column)
    _node_rows(c_ptr + plane * Hc * Wc, w_ptr, rows_ptr + plane * Hc * W, offs // W, offs % W,
               offs < Hc * W, Wc, W, S)


@triton.jit
def _coarse_column(rows_ptr, w_ptr, plane, i, j, live, Hc, W, S):
    # Step 2: plane `plane` (int64) of the field at pixels (i, j), Catmull-Rom along H (y)
    # through the node rows of step 1. A program's pixels share their rows, so the four loads
    # of a pixel are coalesced across the program.
    return _catmull_rom_at(rows_ptr + plane * Hc * W + j, W, i, Hc, w_ptr, S, live)


@triton.jit
def _upsample_field_kernel(rows_ptr, w_ptr, out_ptr, H, W, Hc, S, tiles, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // tiles).to(tl.int64)  # int64 plane offsets: B * 2 * H * W may overflow int32
    hw = H * W
    offs = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) flat output pixels
    live = offs < hw
    i = offs // W
    j = offs % W
    tl.store(out_ptr + b * 2 * hw + offs, _coarse_column(rows_ptr, w_ptr, b * 2, i, j, live, Hc, W, S),
             mask=live)
    tl.store(out_ptr + (b * 2 + 1) * hw + offs,
             _coarse_column(rows_ptr, w_ptr, b * 2 + 1, i, j, live, Hc, W, S), mask=live)


def _grid_steps(uniform: torch.Tensor, alpha: float, sigma: float, truncate: float,
                rows_of: tuple[int, int, int] | None):
    """Launch :func:`_coarse_rows_kernel` on a ``(B, 2, Hc, Wc)`` draw; ``rows_of`` is
    ``(spacing, height, width)`` for the node rows, None for the grid alone. Returns
    ``(grid, rows or None)``."""
    uniform = uniform.contiguous()
    batch, two, coarse_h, coarse_w = uniform.shape
    grid = torch.empty_like(uniform)  # (B, 2, Hc, Wc)
    if rows_of is None:
        spacing, width, weights = 1, coarse_w, None
        rows = torch.empty_like(uniform)  # (B, 2, Hc, Wc): the first pass's output only
    else:
        spacing, height, width = rows_of
        weights = catmull_rom_table(spacing, max(height, width), uniform.device)  # (phases, 4)
        # (B, 2, Hc, W), W >= Wc: also the first pass's output (see the kernel)
        rows = torch.empty((batch, two, coarse_h, width), dtype=torch.float32, device=uniform.device)
    if rows.numel() == 0:  # no node or no pixel column
        return grid, rows if rows_of is not None else None
    taps, index_h = gaussian_taps(coarse_h, float(sigma), float(truncate), uniform.device)
    _, index_w = gaussian_taps(coarse_w, float(sigma), float(truncate), uniform.device)
    band_rows = max(1, _BAND_NODES // coarse_w)
    bands = cdiv(coarse_h, band_rows)
    with on_device(uniform):
        _coarse_rows_kernel[(batch * two * bands,)](
            uniform, taps, index_h, index_w, rows, grid, taps if weights is None else weights,
            float(alpha), coarse_h, coarse_w, width, spacing, (taps.numel() - 1) // 2,
            band_rows, bands, ROWS=rows_of is not None, NODES=_BAND_NODES, PIXELS=_ROWS_BLOCK,
            num_warps=4)
    return grid, rows if rows_of is not None else None


def smooth_grid_triton(uniform: torch.Tensor, alpha: float, sigma: float,
                       truncate: float = 4.0) -> torch.Tensor:
    """The control grid of the coarse mode: :func:`lrc_fast.reference.elastic.field_from_uniform`
    by direct taps in float32.

    A grid is small (``(H / s)**2`` nodes), so its two passes, along H then along W as the
    reference, sum ``2 r + 1`` taps per node with ``fma`` instead of the dense field's banded
    matrix products: no tensor cores, so float32 whatever torch's matmul precision. One launch
    (:func:`coarse_rows_triton` runs the same kernel and goes on to the node rows).

    Parameters
    ----------
    uniform : torch.Tensor
        ``(B, 2, Hc, Wc)`` float32 draws in ``[0, 1)``, on CUDA (or CPU under the interpreter).
    alpha, sigma, truncate : float
        The grid's scale and smoothness in nodes (``alpha / s``, ``sigma / s``); ``sigma >= 0``
        (``<= 1e-15``: no smoothing, as scipy).

    Returns
    -------
    torch.Tensor
        ``(B, 2, Hc, Wc)`` float32 displacement at the nodes, in pixels.
    """
    return _grid_steps(uniform, alpha, sigma, truncate, None)[0]


def coarse_rows_triton(uniform: torch.Tensor, alpha: float, sigma: float, truncate: float,
                       spacing: int, height: int, width: int) -> torch.Tensor:
    """The node rows of the coarse field of a draw, in one launch: :func:`smooth_grid_triton`,
    then step 1 of the upsampling (:func:`upsample_rows_triton`), with the same arithmetic.

    ``uniform`` is the ``(B, 2, Hc, Wc)`` float32 draw with ``(Hc, Wc) = coarse_shape(height,
    width, spacing)``; ``alpha``, ``sigma`` and ``truncate`` as in :func:`smooth_grid_triton`
    (in nodes); ``height * width < 2**31``. Returns the ``(B, 2, Hc, width)`` float32 rows for
    :func:`field_from_rows_triton` or :func:`warp_from_rows_triton`. Raises ValueError for a
    draw of another shape.
    """
    _check_grid(uniform, spacing, height, width)
    return _grid_steps(uniform, alpha, sigma, truncate, (spacing, height, width))[1]


def _check_planes(tensor: torch.Tensor, name: str, sides: str, expected: tuple[int, int],
                  spacing: int, height: int, width: int, batch: int | None):
    """ValueError unless ``tensor`` is ``(B, 2) + expected`` (``B = batch`` when given): the
    kernels index it by the sizes a ``height x width`` field at ``spacing`` gives, so another
    shape would be read out of bounds."""
    if (tensor.dim() != 4 or tuple(tensor.shape[1:]) != (2, *expected)
            or (batch is not None and tensor.shape[0] != batch)):
        lead = "B" if batch is None else batch
        raise ValueError(f"{name} must be (B, 2, {sides}) = ({lead}, 2, {expected[0]}, {expected[1]}) "
                         f"for a {height} x {width} field at spacing {spacing}, got {tuple(tensor.shape)}.")


def _check_grid(coarse: torch.Tensor, spacing: int, height: int, width: int, batch: int | None = None):
    """ValueError unless ``coarse`` is the ``(B, 2, Hc, Wc)`` grid of a ``height x width`` field at
    ``spacing`` (and of ``batch`` images)."""
    _check_planes(coarse, "coarse", "Hc, Wc", coarse_shape(height, width, spacing), spacing, height,
                  width, batch)


def upsample_rows_triton(coarse: torch.Tensor, spacing: int, height: int, width: int) -> torch.Tensor:
    """Step 1 of the upsampling of a given grid: ``(B, 2, Hc, width)`` node rows, every node row
    interpolated along W (x) to every pixel column. ``coarse`` as in
    :func:`upsample_field_triton` (ValueError for another shape)."""
    _check_grid(coarse, spacing, height, width)
    coarse = coarse.contiguous()
    batch, two, coarse_h, coarse_w = coarse.shape
    rows = torch.empty((batch, two, coarse_h, width), dtype=torch.float32, device=coarse.device)
    weights = catmull_rom_table(spacing, max(height, width), coarse.device)  # (phases, 4)
    if rows.numel() > 0:
        tiles = cdiv(coarse_h * width, _ROWS_BLOCK)
        with on_device(coarse):
            _upsample_rows_kernel[(batch * two * tiles,)](
                coarse, weights, rows, coarse_h, coarse_w, width, spacing, tiles, BLOCK=_ROWS_BLOCK,
                num_warps=4)
    return rows


def _check_rows(rows: torch.Tensor, spacing: int, height: int, width: int, batch: int | None = None):
    """ValueError unless ``rows`` are the ``(B, 2, Hc, width)`` node rows of a ``height x width``
    field at ``spacing`` (of ``batch`` images)."""
    _check_planes(rows, "rows", "Hc, W", (coarse_shape(height, width, spacing)[0], width), spacing,
                  height, width, batch)


def field_from_rows_triton(rows: torch.Tensor, spacing: int, height: int, width: int) -> torch.Tensor:
    """Step 2 of the upsampling: the ``(B, 2, height, width)`` float32 field from the node rows
    of :func:`upsample_rows_triton` or :func:`coarse_rows_triton`, along H (y) at every pixel.
    Raises ValueError for rows of another shape."""
    _check_rows(rows, spacing, height, width)
    rows = rows.contiguous()
    batch, _, coarse_h, _ = rows.shape
    field = torch.empty((batch, 2, height, width), dtype=torch.float32, device=rows.device)
    if field.numel() == 0:
        return field
    weights = catmull_rom_table(spacing, max(height, width), rows.device)  # (phases, 4)
    block, warps = COARSE_LAUNCH_CHOICES[0]
    tiles = cdiv(height * width, block)
    with on_device(rows):
        _upsample_field_kernel[(batch * tiles,)](
            rows, weights, field, height, width, coarse_h, spacing, tiles, BLOCK=block,
            num_warps=warps)
    return field


def upsample_field_triton(coarse: torch.Tensor, spacing: int, height: int, width: int) -> torch.Tensor:
    """Triton twin of :func:`lrc_fast.reference.elastic.upsample_field`, in its order: along W
    (x) for every node row (:func:`upsample_rows_triton`), then along H (y) at every pixel
    (:func:`field_from_rows_triton`).

    ``coarse`` is ``(B, 2, Hc, Wc)`` float32 (on CUDA, or CPU under the interpreter) with
    ``(Hc, Wc) = coarse_shape(height, width, spacing)``; ``height * width < 2**31``. Returns the
    ``(B, 2, height, width)`` float32 field. Raises ValueError for a grid of another shape.
    """
    return field_from_rows_triton(upsample_rows_triton(coarse, spacing, height, width), spacing,
                                  height, width)


@functools.lru_cache(maxsize=16)
def catmull_rom_table(spacing: int, phases: int, device: torch.device) -> torch.Tensor:
    """:func:`lrc_fast.reference.elastic.catmull_rom_weights` on ``device``, cached: the
    ``min(spacing, phases)`` rows that pixels of sides up to ``phases`` use."""
    return catmull_rom_weights(spacing, phases).to(device)


# ----------------------------------------------------------------------------------------------
# Warp: fused bilinear image + nearest region map, and its backward
# ----------------------------------------------------------------------------------------------

@triton.jit
def _source_coordinate(c, size, PADDING: tl.constexpr):
    # Coordinate the bilinear taps are taken around, and its derivative d(result)/d(c).
    # Same expressions as lrc_fast.reference.elastic.source_coordinate.
    hi = size * 1.0 - 1.0
    if PADDING == 0:  # border
        s = tl.minimum(tl.maximum(c, 0.0), hi)
        grad = tl.where((c >= 0.0) & (c <= hi), 1.0, 0.0)
    elif PADDING == 1:  # zeros: every tap beyond [-2, size+1] is outside anyway
        s = tl.minimum(tl.maximum(c, -2.0), hi + 2.0)
        grad = tl.where((c >= -2.0) & (c <= hi + 2.0), 1.0, 0.0)
    else:  # reflection about 0 and size-1
        span = tl.maximum(hi, 1.0)
        a = tl.where(c < 0.0, -c, c)
        flips = tl.floor(tl.math.div_rn(a, span))
        extra = a - flips * span
        even = (flips - 2.0 * tl.floor(flips * 0.5)) == 0.0
        r = tl.where(even, extra, span - extra)
        sign = tl.where(c < 0.0, -1.0, 1.0) * tl.where(even, 1.0, -1.0)
        s = tl.minimum(tl.maximum(r, 0.0), hi)
        grad = tl.where((r >= 0.0) & (r <= hi), sign, 0.0)
    return s, grad


@triton.jit
def _warp_pixels(img_ptr, reg_ptr, out_img_ptr, out_reg_ptr, b, C, H, W, i, j, live, dy, dx,
                 ignore_index, PADDING: tl.constexpr):
    # Warps output pixels (i, j) of image b (int64) by (dy, dx), tensors of one shape.
    hw = H * W
    offs = i * W + j  # flat output pixels
    y = i.to(tl.float32) + dy  # sampling coordinates, as the reference
    x = j.to(tl.float32) + dx
    hi_y = H * 1.0 - 1.0
    hi_x = W * 1.0 - 1.0

    # region ids: nearest source pixel, ignore_index when it is outside the image
    yn = tl.floor(y + 0.5)
    xn = tl.floor(x + 0.5)
    inside = (yn >= 0.0) & (yn <= hi_y) & (xn >= 0.0) & (xn <= hi_x)
    src = tl.minimum(tl.maximum(yn, 0.0), hi_y).to(tl.int32) * W \
        + tl.minimum(tl.maximum(xn, 0.0), hi_x).to(tl.int32)
    ids = tl.load(reg_ptr + b * hw + src, mask=live & inside, other=0)
    ids = tl.where(inside, ids, ignore_index)
    tl.store(out_reg_ptr + b * hw + offs, ids, mask=live)

    # image: bilinear around the padded coordinate, taps outside the image are 0
    ys, _gy = _source_coordinate(y, H, PADDING)
    xs, _gx = _source_coordinate(x, W, PADDING)
    y0f = tl.floor(ys)
    x0f = tl.floor(xs)
    wy = ys - y0f
    wx = xs - x0f
    y0 = y0f.to(tl.int32)
    x0 = x0f.to(tl.int32)
    my0 = (y0 >= 0) & (y0 < H)
    my1 = (y0 + 1 >= 0) & (y0 + 1 < H)
    mx0 = (x0 >= 0) & (x0 < W)
    mx1 = (x0 + 1 >= 0) & (x0 + 1 < W)
    w00 = (1.0 - wy) * (1.0 - wx)
    w01 = (1.0 - wy) * wx
    w10 = wy * (1.0 - wx)
    w11 = wy * wx
    off00 = y0 * W + x0
    for c in range(C):
        base = (b * C + c) * hw
        v00 = tl.load(img_ptr + base + off00, mask=live & my0 & mx0, other=0.0).to(tl.float32)
        v01 = tl.load(img_ptr + base + off00 + 1, mask=live & my0 & mx1, other=0.0).to(tl.float32)
        v10 = tl.load(img_ptr + base + off00 + W, mask=live & my1 & mx0, other=0.0).to(tl.float32)
        v11 = tl.load(img_ptr + base + off00 + W + 1, mask=live & my1 & mx1, other=0.0).to(tl.float32)
        out = w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11
        tl.store(out_img_ptr + base + offs, out.to(out_img_ptr.dtype.element_ty), mask=live)


@triton.jit
def _elastic_warp_fwd_kernel(img_ptr, reg_ptr, disp_ptr, out_img_ptr, out_reg_ptr,
                             C, H, W, tiles, ignore_index,
                             PADDING: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // tiles).to(tl.int64)
    hw = H * W
    offs = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) flat output pixels
    live = offs < hw
    dy = tl.load(disp_ptr + b * 2 * hw + offs, mask=live, other=0.0)
    dx = tl.load(disp_ptr + (b * 2 + 1) * hw + offs, mask=live, other=0.0)
    _warp_pixels(img_ptr, reg_ptr, out_img_ptr, out_reg_ptr, b, C, H, W, offs // W, offs % W, live,
                 dy, dx, ignore_index, PADDING)


@triton.jit
def _elastic_warp_coarse_kernel(img_ptr, reg_ptr, rows_ptr, w_ptr, out_img_ptr, out_reg_ptr,
                                C, H, W, Hc, S, tiles, ignore_index,
                                PADDING: tl.constexpr, BLOCK: tl.constexpr):
    # the forward warp with the displacement interpolated on the fly (step 2) from the node rows
    # of _coarse_rows_kernel or _upsample_rows_kernel: the full-resolution field is never
    # written or read
    pid = tl.program_id(0)
    b = (pid // tiles).to(tl.int64)
    offs = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) flat output pixels
    live = offs < H * W
    i = offs // W
    j = offs % W
    dy = _coarse_column(rows_ptr, w_ptr, b * 2, i, j, live, Hc, W, S)
    dx = _coarse_column(rows_ptr, w_ptr, b * 2 + 1, i, j, live, Hc, W, S)
    _warp_pixels(img_ptr, reg_ptr, out_img_ptr, out_reg_ptr, b, C, H, W, i, j, live,
                 dy, dx, ignore_index, PADDING)


@triton.jit
def _elastic_warp_bwd_kernel(grad_out_ptr, img_ptr, disp_ptr, grad_img_ptr, grad_disp_ptr,
                             C, H, W, tiles,
                             PADDING: tl.constexpr, NEED_IMG: tl.constexpr,
                             NEED_DISP: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // tiles).to(tl.int64)
    hw = H * W
    offs = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
    live = offs < hw
    i = offs // W
    j = offs % W
    dy = tl.load(disp_ptr + b * 2 * hw + offs, mask=live, other=0.0)
    dx = tl.load(disp_ptr + (b * 2 + 1) * hw + offs, mask=live, other=0.0)
    y = i.to(tl.float32) + dy
    x = j.to(tl.float32) + dx
    ys, gy = _source_coordinate(y, H, PADDING)
    xs, gx = _source_coordinate(x, W, PADDING)
    y0f = tl.floor(ys)
    x0f = tl.floor(xs)
    wy = ys - y0f
    wx = xs - x0f
    y0 = y0f.to(tl.int32)
    x0 = x0f.to(tl.int32)
    m00 = live & (y0 >= 0) & (y0 < H) & (x0 >= 0) & (x0 < W)
    m01 = live & (y0 >= 0) & (y0 < H) & (x0 + 1 >= 0) & (x0 + 1 < W)
    m10 = live & (y0 + 1 >= 0) & (y0 + 1 < H) & (x0 >= 0) & (x0 < W)
    m11 = live & (y0 + 1 >= 0) & (y0 + 1 < H) & (x0 + 1 >= 0) & (x0 + 1 < W)
    off00 = y0 * W + x0
    grad_y = tl.zeros((BLOCK,), dtype=tl.float32)
    grad_x = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in range(C):
        base = (b * C + c) * hw
        g = tl.load(grad_out_ptr + base + offs, mask=live, other=0.0).to(tl.float32)
        if NEED_IMG:
            tl.atomic_add(grad_img_ptr + base + off00, g * ((1.0 - wy) * (1.0 - wx)), mask=m00)
            tl.atomic_add(grad_img_ptr + base + off00 + 1, g * ((1.0 - wy) * wx), mask=m01)
            tl.atomic_add(grad_img_ptr + base + off00 + W, g * (wy * (1.0 - wx)), mask=m10)
            tl.atomic_add(grad_img_ptr + base + off00 + W + 1, g * (wy * wx), mask=m11)
        if NEED_DISP:
            v00 = tl.load(img_ptr + base + off00, mask=m00, other=0.0).to(tl.float32)
            v01 = tl.load(img_ptr + base + off00 + 1, mask=m01, other=0.0).to(tl.float32)
            v10 = tl.load(img_ptr + base + off00 + W, mask=m10, other=0.0).to(tl.float32)
            v11 = tl.load(img_ptr + base + off00 + W + 1, mask=m11, other=0.0).to(tl.float32)
            grad_y += g * ((1.0 - wx) * (v10 - v00) + wx * (v11 - v01))
            grad_x += g * ((1.0 - wy) * (v01 - v00) + wy * (v11 - v10))
    if NEED_DISP:
        tl.store(grad_disp_ptr + b * 2 * hw + offs, grad_y * gy, mask=live)
        tl.store(grad_disp_ptr + (b * 2 + 1) * hw + offs, grad_x * gx, mask=live)


def _warp_operands(images: torch.Tensor, regions: torch.Tensor):
    """Contiguous images and regions, and empty outputs like them."""
    images, regions = images.contiguous(), regions.contiguous()
    return images, regions, torch.empty_like(images), torch.empty_like(regions)


def elastic_warp_triton(images: torch.Tensor, regions: torch.Tensor, displacement: torch.Tensor,
                        padding: str = "border", ignore_index: int = -1):
    """Fused warp, no autograd: ``(B, C, H, W)`` images and ``(B, H, W)`` ids in, same out.

    ``displacement`` is ``(B, 2, H, W)`` float32. Inputs are assumed checked (see
    :func:`lrc_fast.elastic_warp`).
    """
    images, regions, out_images, out_regions = _warp_operands(images, regions)
    displacement = displacement.contiguous()
    batch, channels, height, width = images.shape
    if batch == 0:
        return out_images, out_regions
    tiles = cdiv(height * width, _WARP_BLOCK)
    with on_device(images):
        _elastic_warp_fwd_kernel[(batch * tiles,)](
            images, regions, displacement, out_images, out_regions,
            channels, height, width, tiles, int(ignore_index),
            PADDING=PADDING_CODES[padding], BLOCK=_WARP_BLOCK, num_warps=4)
    return out_images, out_regions


def warp_from_rows_triton(images: torch.Tensor, regions: torch.Tensor, rows: torch.Tensor,
                          spacing: int, padding: str = "border", ignore_index: int = -1,
                          launch: tuple[int, int] | None = None):
    """Fused warp by the field :func:`field_from_rows_triton` would give, without writing it.

    Equal bit for bit to ``elastic_warp_triton(images, regions, field_from_rows_triton(rows,
    spacing, H, W), ...)``; no autograd: the warp does step 2 of the upsampling per pixel.
    ``rows`` is ``(B, 2, Hc, W)`` float32 from :func:`coarse_rows_triton` or
    :func:`upsample_rows_triton` (ValueError for another shape); the other inputs as in
    :func:`elastic_warp_triton`. ``launch`` is one of :data:`COARSE_LAUNCH_CHOICES` (pixels,
    warps per program; default the first), for tuning.
    """
    if launch not in (None,) + COARSE_LAUNCH_CHOICES:
        raise ValueError(f"launch must be None or one of {COARSE_LAUNCH_CHOICES}, got {launch!r}.")
    images, regions, out_images, out_regions = _warp_operands(images, regions)
    batch, channels, height, width = images.shape
    _check_rows(rows, spacing, height, width, batch)
    coarse_h = rows.shape[2]
    if batch * height * width == 0:
        return out_images, out_regions
    weights = catmull_rom_table(spacing, max(height, width), rows.device)  # (phases, 4)
    block, warps = launch or COARSE_LAUNCH_CHOICES[0]
    tiles = cdiv(height * width, block)
    with on_device(images):
        _elastic_warp_coarse_kernel[(batch * tiles,)](
            images, regions, rows.contiguous(), weights, out_images, out_regions, channels, height,
            width, coarse_h, spacing, tiles,
            int(ignore_index), PADDING=PADDING_CODES[padding], BLOCK=block, num_warps=warps)
    return out_images, out_regions


def elastic_warp_coarse_triton(images: torch.Tensor, regions: torch.Tensor, coarse: torch.Tensor,
                               spacing: int, padding: str = "border", ignore_index: int = -1,
                               launch: tuple[int, int] | None = None):
    """Fused warp by the field :func:`upsample_field_triton` would give, without writing it.

    :func:`upsample_rows_triton` (``(B, 2, Hc, W)``, ``1 / s`` of a field), then
    :func:`warp_from_rows_triton`: equal bit for bit to ``elastic_warp_triton(images, regions,
    upsample_field_triton(coarse, spacing, H, W), ...)``; no autograd. ``coarse`` is
    ``(B, 2, Hc, Wc)`` float32 (ValueError for another shape); the other inputs as in
    :func:`warp_from_rows_triton`.
    """
    batch, _, height, width = images.shape
    _check_grid(coarse, spacing, height, width, batch)
    rows = upsample_rows_triton(coarse, spacing, height, width)  # (B, 2, Hc, W)
    return warp_from_rows_triton(images, regions, rows, spacing, padding, ignore_index, launch)


def elastic_warp_triton_backward(grad_out: torch.Tensor, images: torch.Tensor,
                                 displacement: torch.Tensor, padding: str,
                                 need_images: bool, need_displacement: bool):
    """Gradients of the warped images with respect to ``images`` and ``displacement`` (or None)."""
    grad_out = grad_out.contiguous()
    batch, channels, height, width = images.shape
    grad_images = torch.zeros(images.shape, dtype=torch.float32, device=images.device) \
        if need_images else None
    grad_disp = torch.empty_like(displacement) if need_displacement else None
    if batch > 0:
        tiles = cdiv(height * width, _WARP_BLOCK)
        with on_device(grad_out):
            _elastic_warp_bwd_kernel[(batch * tiles,)](
                grad_out, images, displacement,
                grad_images if need_images else grad_out,
                grad_disp if need_displacement else grad_out,
                channels, height, width, tiles,
                PADDING=PADDING_CODES[padding], NEED_IMG=need_images, NEED_DISP=need_displacement,
                BLOCK=_WARP_BLOCK, num_warps=4)
    if grad_images is not None:
        grad_images = grad_images.to(images.dtype)
    return grad_images, grad_disp


class ElasticWarpFunction(torch.autograd.Function):
    """Autograd wrapper of the fused warp; differentiable in images and displacement."""

    @staticmethod
    def forward(ctx, images, displacement, regions, padding, ignore_index):
        out_images, out_regions = elastic_warp_triton(images, regions, displacement, padding,
                                                      ignore_index)
        ctx.save_for_backward(images.contiguous(), displacement.contiguous())
        ctx.padding = padding
        ctx.mark_non_differentiable(out_regions)
        return out_images, out_regions

    @staticmethod
    def backward(ctx, grad_images, _grad_regions):
        images, displacement = ctx.saved_tensors
        need_images, need_disp = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_images is None or not (need_images or need_disp):
            return None, None, None, None, None
        gi, gd = elastic_warp_triton_backward(grad_images, images, displacement, ctx.padding,
                                              need_images, need_disp)
        return gi, gd, None, None, None
