"""The whole fused loss as one autograd node: region pooling, InfoNCE and the reduction.

:func:`lrc_fast.region_contrast_loss` on the Triton backend could chain the pooling's and the
InfoNCE's own autograd Functions (:mod:`.region_pool`, :mod:`.region_infonce`) and the torch
reduction, but every node costs host time on each step (about a quarter of the step's host time
without kernels, measured on the CPU with the launches stubbed). Here one Function runs the same
launches: forward the pooling, the InfoNCE and the reduction; backward the reduction's gradient
(:func:`lrc_fast.reference.region_loss.reduce_rows_backward`), the InfoNCE's and the pooling's.
The values and gradients are those of the chained Functions, bit for bit.
"""
from __future__ import annotations

import torch

from ..reference.region_loss import reduce_rows, reduce_rows_backward, valid_count
from .region_infonce import infonce_backward_pass, infonce_forward_pass
from .region_pool import RegionIndex, pool_backward_pass, pool_forward_pass, pool_inputs


class RegionContrastFunction(torch.autograd.Function):
    """``(feat_q, feat_p, ...) -> loss``; differentiable in the two feature maps."""

    @staticmethod
    def forward(ctx, feat_q, feat_p, regions, regions_p, pixels, cum, local, ids, valid, uniforms,
                slot_of, tile, infonce_options, reduction):
        means, _, samples = pool_forward_pass(ctx, feat_q, feat_p, pixels, cum, local, ids, valid,
                                              uniforms, tile)  # (2, B, M, D), _, hits or idx
        rows, lse, unit = infonce_forward_pass(means, valid, infonce_options)  # (B, M) each, (2, B, M, D)
        count = valid_count(valid) if reduction == "mean" else None  # () once, for both passes
        ctx.save_for_backward(samples, regions, regions_p, slot_of, means, unit, valid, lse, count)
        ctx.infonce_options, ctx.reduction = infonce_options, reduction
        return reduce_rows(rows, valid, reduction, count)

    @staticmethod
    def backward(ctx, grad):
        samples, regions, regions_p, slot_of, means, unit, valid, lse, count = ctx.saved_tensors
        grad_rows = reduce_rows_backward(grad, valid, ctx.reduction, count)  # (B, M), expanded
        d_means = infonce_backward_pass(grad_rows, means, unit, valid, lse, ctx.infonce_options)
        grads = pool_backward_pass(ctx, d_means, samples, regions, regions_p, slot_of)
        return (*grads, *([None] * 12))


def region_contrast_triton(feat_q: torch.Tensor, feat_p: torch.Tensor, index: RegionIndex,
                           valid: torch.Tensor, uniforms: torch.Tensor, ids: torch.Tensor | None,
                           slot_of: torch.Tensor | None, temperature: float, normalize: bool,
                           include_self: bool, precision: str, reduction: str) -> torch.Tensor:
    """The loss from the index, the kept regions and the sample uniforms (see ``_loss_triton``).

    Parameters
    ----------
    feat_q, feat_p : torch.Tensor
        ``(B, D, H, W)``, one shape and dtype, any strides.
    index : RegionIndex
        Of ``r_q`` (and ``r_p``), from :func:`lrc_fast.kernels.region_pool.region_index`.
    valid, uniforms, ids, slot_of
        As :func:`lrc_fast.kernels.region_pool.region_pool` (``uniforms`` ``(2, B, M, N)``).
    temperature, normalize, include_self, precision
        As :func:`lrc_fast.kernels.region_infonce.region_infonce`.
    reduction : {'mean', 'sum', 'none'}

    Returns
    -------
    torch.Tensor
        A float32 scalar, or ``(B,)`` for ``reduction='none'``.
    """
    options = (float(temperature), bool(normalize), bool(include_self), precision, None)
    return RegionContrastFunction.apply(feat_q, feat_p, *pool_inputs(index, valid, uniforms, ids, slot_of),
                                        options, reduction)
