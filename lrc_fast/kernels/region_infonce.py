"""Triton kernels for the K-region InfoNCE of the LRC loss, forward and backward.

Per image, with ``q``, ``p`` the ``(M, D)`` (L2-normalised) region means of the two views,
``a = q p^T / tau`` and ``c = q q^T / tau``::

    loss[k] = lse[k] - a[k, k],   lse[k] = log( sum_j valid_j e^{a[k, j]} + sum_{j != k} valid_j e^{c[k, j]} )

(``include_self`` also keeps ``j == k`` in the second sum). Invalid regions get loss 0 and are
no one's negative.

Normalisation (:func:`_unit_rows_kernel`)
    One launch writes the L2-normalised rows of both views, ``(2, B, M, D)``, before the forward;
    the forward keeps them for the backward. Each row block of both kernels reads every other
    row block, so normalising at each load repeated the work for every row block of the grid.

Forward (:func:`_infonce_fwd_kernel`)
    One program per (image, block of ``BLOCK`` rows). It streams the column blocks (``BLOCK_N``
    regions each) of ``p`` and ``q``, computes both logit tiles with ``tl.dot`` and keeps an online
    log-sum-exp. It writes the per-region loss and ``lse``. Nothing ``(M, M)``-sized is stored.

Backward (:func:`_infonce_bwd_kernel`)
    With ``g[k]`` the incoming gradient of ``loss[k]`` and ``P = e^{a - lse}``, ``Q = e^{c - lse}``
    (row-normalised, masked)::

        dq[t] = ( sum_u g_t P[t,u] p_u + sum_u (g_t Q[t,u] + g_u Q[u,t]) q_u - g_t p_t ) / tau
        dp[t] = ( sum_u g_u P[u,t] q_u - g_t q_t ) / tau

    Two programs per (image, block ``t``), one per view, each make a single pass over the column
    blocks ``u``: the first recomputes ``a[t,u]`` and ``c[t,u]`` (``= c[u,t]``) and accumulates
    ``dq[t]``, the second recomputes ``a[u,t]`` and accumulates ``dp[t]``, in registers. This is
    deterministic: no atomics, no ``(M, M)`` buffer. One program used to do both; split, each
    holds one accumulator and fewer tiles (compiled for sm_90 at 64 rows, the backward went from
    848 bytes of spilled registers per thread to none, see :data:`BLOCK_CHOICES`). The
    gradient then goes through the normalisation: ``dm = (dy - y (y . dy)) / max(|m|, eps)``
    (``dy / eps`` below eps, as autograd of ``F.normalize``).

Precision: the logits use ``tl.dot`` with ``input_precision`` ``"tf32x3"`` for float32 features
(about float32 accuracy on the tensor cores) and ``"tf32"`` for bfloat16/float16 features. The
region means there are averages of 16-bit values, and tf32's 10-bit mantissa is finer than the
features' own 8 (bf16) or 11 (fp16) bits. On CPU (Triton interpreter) it is ``"ieee"``.
Accumulation, the log-sum-exp and the gradients are float32.

The launchers are registered as ``torch.library`` custom ops (``lrc_fast::region_infonce_forward``,
``lrc_fast::region_infonce_backward``) so that ``torch.compile`` treats them as opaque.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._host import cdiv, next_power_of_2, on_device

PRECISIONS = ("ieee", "tf32x3", "tf32")


@triton.jit
def _load_rows(ptr, b, rows, M, D, BLOCK_D: tl.constexpr):
    # (BLOCK, BLOCK_D) float32 rows of a (B, M, D) tensor, zero past M and D
    d = tl.arange(0, BLOCK_D)
    mask = (rows < M)[:, None] & (d < D)[None, :]
    return tl.load(ptr + (b.to(tl.int64) * M + rows)[:, None] * D + d[None, :], mask=mask, other=0.0)


@triton.jit
def _unit_rows_kernel(m_ptr, u_ptr, R, D, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    # u = m / max(|m|, eps) for BLOCK of the R rows of an (R, D) tensor (as F.normalize)
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: R * D may pass 2**31
    d = tl.arange(0, BLOCK_D)
    offsets = rows[:, None] * D + d[None, :]
    mask = (rows < R)[:, None] & (d < D)[None, :]
    x = tl.load(m_ptr + offsets, mask=mask, other=0.0)
    norm = tl.sqrt(tl.sum(x * x, axis=1))
    tl.store(u_ptr + offsets, x / tl.maximum(norm, 1e-12)[:, None], mask=mask)


@triton.jit
def _normalize_backward(ptr, b, rows, M, D, dy, BLOCK_D: tl.constexpr):
    # gradient of y = x / max(|x|, eps) with respect to x, given dy = dL/dy
    x = _load_rows(ptr, b, rows, M, D, BLOCK_D)
    norm = tl.sqrt(tl.sum(x * x, axis=1))
    denom = tl.maximum(norm, 1e-12)
    y = x / denom[:, None]
    radial = tl.where(norm >= 1e-12, tl.sum(y * dy, axis=1), 0.0)
    return (dy - y * radial[:, None]) / denom[:, None]


@triton.jit
def _infonce_fwd_kernel(uq_ptr, up_ptr, valid_ptr, rows_ptr, lse_ptr, M, D, inv_tau,
                        INCLUDE_SELF: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) rows
    b = tl.program_id(1)
    in_i = i < M
    valid_i = tl.load(valid_ptr + b * M + i, mask=in_i, other=0) != 0
    q_i = _load_rows(uq_ptr, b, i, M, D, BLOCK_D)  # (BLOCK, BLOCK_D)
    run_max = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros([BLOCK], dtype=tl.float32)
    positive = tl.zeros([BLOCK], dtype=tl.float32)
    for j0 in range(0, M, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)  # (BLOCK_N,) columns
        valid_j = tl.load(valid_ptr + b * M + j, mask=j < M, other=0) != 0
        p_j = _load_rows(up_ptr, b, j, M, D, BLOCK_D)
        q_j = _load_rows(uq_ptr, b, j, M, D, BLOCK_D)
        a = tl.dot(q_i, tl.trans(p_j), input_precision=PRECISION) * inv_tau  # (BLOCK, BLOCK_N)
        c = tl.dot(q_i, tl.trans(q_j), input_precision=PRECISION) * inv_tau
        diagonal = i[:, None] == j[None, :]
        positive += tl.sum(tl.where(diagonal, a, 0.0), axis=1)
        keep_a = valid_j[None, :] & in_i[:, None]
        if INCLUDE_SELF:
            keep_c = keep_a
        else:
            keep_c = keep_a & (i[:, None] != j[None, :])
        a = tl.where(keep_a, a, float("-inf"))
        c = tl.where(keep_c, c, float("-inf"))
        new_max = tl.maximum(run_max, tl.maximum(tl.max(a, axis=1), tl.max(c, axis=1)))
        # no finite logit so far (every term 0): shift by 0, not -inf, so no -inf - -inf = NaN.
        # A finite start such as -1e30 instead would lose rows whose logits all lie below it
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = (run_sum * tl.exp(run_max - shift)
                   + tl.sum(tl.exp(a - shift[:, None]), axis=1)
                   + tl.sum(tl.exp(c - shift[:, None]), axis=1))
        run_max = new_max
    lse = run_max + tl.log(tl.maximum(run_sum, 1e-30))  # run_sum > 0 on valid rows (the positive)
    tl.store(rows_ptr + b * M + i, tl.where(valid_i, lse - positive, 0.0), mask=in_i)
    tl.store(lse_ptr + b * M + i, tl.where(valid_i, lse, 0.0), mask=in_i)


@triton.jit
def _row_terms(valid_ptr, lse_ptr, grad_ptr, s_gb, s_gm, b, rows, M):
    # (valid, lse, g) of these rows of image b; g is 0 on invalid rows
    inside = rows < M
    valid = tl.load(valid_ptr + b * M + rows, mask=inside, other=0) != 0
    lse = tl.load(lse_ptr + b * M + rows, mask=inside, other=0.0)
    g = tl.where(valid, tl.load(grad_ptr + b * s_gb + rows * s_gm, mask=inside, other=0.0), 0.0)
    return valid, lse, g


@triton.jit
def _infonce_bwd_kernel(mq_ptr, mp_ptr, uq_ptr, up_ptr, valid_ptr, lse_ptr, grad_ptr, s_gb, s_gm,
                        dmq_ptr, dmp_ptr, M, D, inv_tau,
                        NORMALIZE: tl.constexpr, INCLUDE_SELF: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) this program's regions
    b = tl.program_id(1)
    valid_t, lse_t, g_t = _row_terms(valid_ptr, lse_ptr, grad_ptr, s_gb, s_gm, b, t, M)
    acc = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    if tl.program_id(2) == 0:  # dq[t]
        q_t = _load_rows(uq_ptr, b, t, M, D, BLOCK_D)  # (BLOCK, BLOCK_D)
        for u0 in range(0, M, BLOCK_N):
            u = u0 + tl.arange(0, BLOCK_N)  # (BLOCK_N,) the other regions
            valid_u, lse_u, g_u = _row_terms(valid_ptr, lse_ptr, grad_ptr, s_gb, s_gm, b, u, M)
            q_u = _load_rows(uq_ptr, b, u, M, D, BLOCK_D)
            p_u = _load_rows(up_ptr, b, u, M, D, BLOCK_D)
            keep_a = valid_t[:, None] & valid_u[None, :]  # (BLOCK, BLOCK_N)
            if INCLUDE_SELF:
                keep_c = keep_a
            else:
                keep_c = keep_a & (t[:, None] != u[None, :])
            # row t against column u of q p^T: a[t, u]
            a = tl.dot(q_t, tl.trans(p_u), input_precision=PRECISION) * inv_tau
            w = tl.exp(tl.where(keep_a, a - lse_t[:, None], float("-inf"))) * g_t[:, None]
            acc = tl.dot(w, p_u, acc, input_precision=PRECISION)
            # q q^T is symmetric: c[t, u] serves row t (normaliser lse_t) and row u (lse_u)
            c = tl.dot(q_t, tl.trans(q_u), input_precision=PRECISION) * inv_tau
            w = (tl.exp(tl.where(keep_c, c - lse_t[:, None], float("-inf"))) * g_t[:, None]
                 + tl.exp(tl.where(keep_c, c - lse_u[None, :], float("-inf"))) * g_u[None, :])
            acc = tl.dot(w, q_u, acc, input_precision=PRECISION)
        # the positive a[t, t] enters with sign -1
        d = (acc - g_t[:, None] * _load_rows(up_ptr, b, t, M, D, BLOCK_D)) * inv_tau
        m_ptr, out_ptr = mq_ptr, dmq_ptr
    else:  # dp[t]
        p_t = _load_rows(up_ptr, b, t, M, D, BLOCK_D)
        for u0 in range(0, M, BLOCK_N):
            u = u0 + tl.arange(0, BLOCK_N)
            valid_u, lse_u, g_u = _row_terms(valid_ptr, lse_ptr, grad_ptr, s_gb, s_gm, b, u, M)
            q_u = _load_rows(uq_ptr, b, u, M, D, BLOCK_D)
            keep_a = valid_t[:, None] & valid_u[None, :]
            # row u against column t of q p^T: a[u, t], laid out as [t, u]
            a = tl.dot(p_t, tl.trans(q_u), input_precision=PRECISION) * inv_tau
            w = tl.exp(tl.where(keep_a, a - lse_u[None, :], float("-inf"))) * g_u[None, :]
            acc = tl.dot(w, q_u, acc, input_precision=PRECISION)
        d = (acc - g_t[:, None] * _load_rows(uq_ptr, b, t, M, D, BLOCK_D)) * inv_tau
        m_ptr, out_ptr = mp_ptr, dmp_ptr
    if NORMALIZE:
        d = _normalize_backward(m_ptr, b, t, M, D, d, BLOCK_D)
    dd = tl.arange(0, BLOCK_D)
    out = (b.to(tl.int64) * M + t)[:, None] * D + dd[None, :]
    tl.store(out_ptr + out, d, mask=(t < M)[:, None] & (dd < D)[None, :])


# (rows per program, columns per step, warps, pipeline stages) that `bench_loss.py --sweep` times;
# the first three are what the default rule (:func:`_launch`) picks at D <= 64 with 64, 32 and 16
# rows. Stop 25 timed rows, warps and stages on an H200 (B=16, D=64, forward + backward as CUDA
# graph replays), with the columns equal to the rows and the backward before its split by view:
# the rule's rows beat 64 rows and 8 warps at every K, 0.031 against 0.053 ms at K=64, 0.095
# against 0.129 at K=256 and 0.708 against 0.852 at K=1024 in tf32x3 (benchmarks/RESULTS.md).
# Columns narrower than the rows are not timed yet. They shrink every (rows, columns) logit tile a
# program holds: compiled for sm_90 (Triton 3.6, tf32x3, D=64, the loss's launches at B=16), the
# backward with square tiles and both views in one program spilled 848 bytes per thread at 64
# rows (1 program per SM) and 392 at 32; split by view, it spills none at (64, 32, 4, 3) (2 per
# SM) and 32 bytes at (32, 16, 4, 3) (benchmarks/RESULTS.md, stop 27).
BLOCK_CHOICES = ((64, 32, 4, 3), (32, 16, 4, 3), (16, 16, 2, 2), (64, 64, 4, 3), (64, 16, 4, 3),
                 (32, 32, 4, 3))

# The default rule's smallest grid: it halves the rows per program (64, 32, then 16) until
# B * ceil(M / rows) reaches this many programs, about the SM count of an H100 or H200 (132). A row
# block streams every column block, so fewer rows mean more programs at the same work each.
_MIN_PROGRAMS = 128


def _launch(batch: int, regions: int, channels: int, blocks) -> tuple[int, int, int, int, int]:
    """``(BLOCK, BLOCK_N, BLOCK_D, num_warps, num_stages)``: ``blocks`` if given, else the default
    rule."""
    block_d = max(16, next_power_of_2(channels))
    if blocks is not None:
        rows, columns, warps, stages = blocks
        return rows, columns, block_d, warps, stages
    cap = 64 if block_d <= 64 else (32 if block_d <= 128 else 16)
    block = max(16, min(cap, next_power_of_2(regions)))
    while block > 16 and batch * cdiv(regions, block) < _MIN_PROGRAMS:
        block //= 2
    # 32 columns beside 64 rows, else 16: at D=64 on sm_90 the widest whose tf32x3 backward spills
    # at most 32 bytes per thread (BLOCK_CHOICES' comment)
    columns = 32 if block == 64 else 16
    if block_d <= 64:
        warps, stages = (4, 3) if block >= 32 else (2, 2)
    else:  # timed at D = 64 only: wider rows keep the earlier rule
        warps, stages = (8 if block * block_d >= 4096 else 4), 3
    return block, columns, block_d, warps, stages


def _launch_precision(tensor: torch.Tensor, precision: str) -> str:
    return precision if tensor.is_cuda else "ieee"


def _unit_rows(means: torch.Tensor) -> torch.Tensor:
    """``means / max(|means|, eps)`` along the last dimension, one launch (``(2, B, M, D)``)."""
    unit = torch.empty_like(means)
    rows, channels = means.numel() // max(means.shape[-1], 1), means.shape[-1]
    if unit.numel() == 0:
        return unit
    block_d = max(16, next_power_of_2(channels))
    block = max(1, 4096 // block_d)
    with on_device(means):
        _unit_rows_kernel[(cdiv(rows, block),)](means, unit, rows, channels, BLOCK=block, BLOCK_D=block_d)
    return unit


def _infonce_forward(means, valid, temperature, normalize, include_self, precision, blocks=None):
    # the kernels read every row block once per row block of the grid. On an H200 (stop 25's
    # sweep) they ran 11-45 % faster without normalising at each load; this one launch replaces
    # that work (its own time not yet measured)
    unit = _unit_rows(means) if normalize else means  # (2, B, M, D)
    unit_q, unit_p = unit[0], unit[1]  # (B, M, D) each, views of the contiguous stack
    batch, regions, channels = unit_q.shape
    rows = torch.empty((batch, regions), dtype=torch.float32, device=unit_q.device)  # (B, M)
    lse = torch.empty_like(rows)  # (B, M)
    if batch * regions == 0:
        return rows, lse, unit
    block, columns, block_d, warps, stages = _launch(batch, regions, channels, blocks)
    with on_device(unit_q):
        _infonce_fwd_kernel[(cdiv(regions, block), batch)](
            unit_q, unit_p, valid, rows, lse, regions, channels, 1.0 / temperature,
            INCLUDE_SELF=include_self, PRECISION=_launch_precision(unit_q, precision),
            BLOCK=block, BLOCK_N=columns, BLOCK_D=block_d, num_warps=warps, num_stages=stages)
    return rows, lse, unit


def _infonce_backward(grad_rows, means, unit, valid, lse, temperature, normalize, include_self, precision,
                      blocks=None):
    means_q, means_p = means[0], means[1]
    unit = unit if normalize else means  # what the forward's kernel read
    batch, regions, channels = means_q.shape
    d_means = torch.empty_like(means)  # (2, B, M, D)
    d_q, d_p = d_means[0], d_means[1]
    if batch * regions == 0:
        return d_means
    block, columns, block_d, warps, stages = _launch(batch, regions, channels, blocks)
    with on_device(means_q):
        # grid axis 2: 0 computes d_q, 1 d_p (one launch, twice the programs of the forward)
        _infonce_bwd_kernel[(cdiv(regions, block), batch, 2)](
            means_q, means_p, unit[0], unit[1], valid, lse, grad_rows, *grad_rows.stride(), d_q, d_p,
            regions, channels, 1.0 / temperature,
            NORMALIZE=normalize, INCLUDE_SELF=include_self, PRECISION=_launch_precision(means_q, precision),
            BLOCK=block, BLOCK_N=columns, BLOCK_D=block_d, num_warps=warps, num_stages=stages)
    return d_means


@torch.library.custom_op("lrc_fast::region_infonce_forward", mutates_args=())
def _infonce_forward_op(means: torch.Tensor, valid: torch.Tensor, temperature: float, normalize: bool,
                        include_self: bool, precision: str,
                        blocks: list[int] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, lse, unit = _infonce_forward(means, valid, temperature, normalize, include_self, precision, blocks)
    # a custom op's output may not alias its input, and without normalisation the backward reads
    # the means themselves: an empty placeholder, not a copy
    return rows, lse, unit if normalize else means.new_empty(0)


@_infonce_forward_op.register_fake
def _(means, valid, temperature, normalize, include_self, precision, blocks):
    shape = means.shape[1:3]
    return (means.new_empty(shape, dtype=torch.float32), means.new_empty(shape, dtype=torch.float32),
            torch.empty_like(means) if normalize else means.new_empty(0))


@torch.library.custom_op("lrc_fast::region_infonce_backward", mutates_args=())
def _infonce_backward_op(grad_rows: torch.Tensor, means: torch.Tensor, unit: torch.Tensor, valid: torch.Tensor,
                         lse: torch.Tensor, temperature: float, normalize: bool, include_self: bool,
                         precision: str, blocks: list[int] | None) -> torch.Tensor:
    return _infonce_backward(grad_rows, means, unit, valid, lse, temperature, normalize, include_self,
                             precision, blocks)


@_infonce_backward_op.register_fake
def _(grad_rows, means, unit, valid, lse, temperature, normalize, include_self, precision, blocks):
    return torch.empty_like(means)


def infonce_forward_pass(means, valid, options) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, lse, unit)``: ``rows`` and ``lse`` ``(B, M)`` float32, ``unit`` the L2-normalised
    means the kernels read (``(2, B, M, D)``), for the backward. Without normalisation the kernels
    read the means themselves and ``unit`` is unused (the means, or an empty tensor under
    ``torch.compile``). ``options`` is ``(temperature, normalize, include_self, precision,
    blocks)``. The custom op under ``torch.compile``."""
    forward = _infonce_forward_op if torch.compiler.is_compiling() else _infonce_forward
    return forward(means, valid, *options)


def infonce_backward_pass(grad_rows, means, unit, valid, lse, options) -> torch.Tensor:
    """``d_means (2, B, M, D)`` from ``grad_rows (B, M)`` and what the forward returned.

    ``grad_rows`` may have any strides: the kernel reads the expanded view a reduction's
    gradient is (stride 0) in place, without materialising it."""
    backward = _infonce_backward_op if torch.compiler.is_compiling() else _infonce_backward
    return backward(grad_rows.float(), means, unit, valid, lse, *options)


class RegionInfoNCEFunction(torch.autograd.Function):
    """Autograd for the per-region InfoNCE: ``(2, B, M, D)`` -> ``(B, M)`` float32."""

    @staticmethod
    def forward(ctx, means, valid, temperature, normalize, include_self, precision, blocks):
        ctx.options = (temperature, normalize, include_self, precision, blocks)
        rows, lse, unit = infonce_forward_pass(means, valid, ctx.options)
        ctx.save_for_backward(means, unit, valid, lse)
        return rows

    @staticmethod
    def backward(ctx, grad_rows):
        d_means = infonce_backward_pass(grad_rows, *ctx.saved_tensors, ctx.options)
        return d_means, None, None, None, None, None, None


def region_infonce(means: torch.Tensor, valid: torch.Tensor, temperature: float,
                   normalize: bool = True, include_self: bool = False, precision: str = "tf32x3",
                   blocks: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Per-region InfoNCE with the fused Triton kernels (differentiable in the means).

    Same value as :func:`lrc_fast.reference.region_loss.region_infonce` of ``means[0]``,
    ``means[1]``.

    Parameters
    ----------
    means : torch.Tensor
        ``(2, B, M, D)``: the region means of the query view, then of the warped view, stacked
        as :func:`lrc_fast.kernels.region_pool.region_pool` returns them (made float32 and
        contiguous). The gradient comes back stacked the same way.
    valid : torch.Tensor
        ``(B, M)`` bool.
    temperature : float
        ``tau > 0``.
    normalize, include_self : bool
        As in :func:`lrc_fast.region_contrast_loss`.
    precision : {'tf32x3', 'tf32', 'ieee'}
        ``tl.dot`` input precision on CUDA (the interpreter always computes in float32).
    blocks : tuple of 4 ints, optional
        ``(rows per program, columns per step, warps, pipeline stages)`` of both kernels, for
        tuning (see :data:`BLOCK_CHOICES`); rows and columns powers of two >= 16. None: 64 rows
        (32 for ``64 < D <= 128``, 16 above), halved down to 16 while ``B * ceil(M / rows) < 128``;
        32 columns beside 64 rows, else 16; at ``D <= 64`` 4 warps and 3 stages, or 2 and 2 at 16
        rows. Only the order of float32 sums depends on it.

    Returns
    -------
    torch.Tensor
        ``(B, M)`` float32; 0 for invalid regions.

    Raises
    ------
    TypeError
        ``blocks`` not a tuple of four ints.
    ValueError
        ``means`` not ``(2, B, M, D)``; an unknown ``precision``; in ``blocks``, rows or columns
        not a power of two >= 16, warps not a power of two <= 16, or stages < 1.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if blocks is not None:
        if not (isinstance(blocks, tuple) and len(blocks) == 4 and all(type(v) is int for v in blocks)):
            raise TypeError(f"blocks must be a tuple of 4 ints (rows, columns, warps, stages), got {blocks!r}.")
        rows, columns, warps, stages = blocks
        if (min(rows, columns) < 16 or rows & (rows - 1) or columns & (columns - 1)
                or warps not in (1, 2, 4, 8, 16) or stages < 1):
            raise ValueError(f"blocks: rows and columns must be powers of two >= 16, warps 1, 2, 4, 8 "
                             f"or 16 and stages >= 1, got {blocks!r}.")
        blocks = list(blocks)
    if means.dim() != 4 or means.shape[0] != 2:
        raise ValueError(f"means must have shape (2, B, M, D), got {tuple(means.shape)}.")
    return RegionInfoNCEFunction.apply(means.float().contiguous(), valid.contiguous(), float(temperature),
                                       bool(normalize), bool(include_self), precision, blocks)
