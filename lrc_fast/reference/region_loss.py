"""PyTorch reference for the localized region contrast (LRC) loss: the readable path and the oracle.

Every step is a few vectorised tensor operations: no Python loop over images or regions and no
``(B, K, H, W)`` one-hot. The Triton path (:mod:`lrc_fast.kernels.region_pool`,
:mod:`lrc_fast.kernels.region_infonce`) computes the same quantities with the same random numbers,
so given one generator state both backends draw the very same sample pixels.

Steps (shapes for ``B`` images of ``H x W`` pixels, ``D`` channels, ``K`` region ids, ``M`` kept
regions per image, ``N`` samples per region):

1. :func:`region_index` -- per image, the pixels grouped by region id in raster order
   (a stable sort of the ids), with each region's offset and pixel count.
2. :func:`select_regions` -- regions present in both views; at most ``max_regions`` of them.
3. :func:`draw_uniforms` -- one ``(2, B, M, N)`` float32 draw from the generator.
4. :func:`sample_pixels` -- sample ``n`` of region ``k`` is its pixel number
   ``floor(u * count)`` (uniform, with replacement).
5. :func:`region_pool` -- the mean of the sampled feature vectors, accumulated in float32.
6. :func:`region_infonce` -- the K-region InfoNCE term of every region.
7. :func:`reduce_rows` -- ``'mean'``, ``'sum'`` or ``'none'``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NORM_EPS = 1e-12  # as torch.nn.functional.normalize
SUBSETS = ("largest", "random")
REDUCTIONS = ("mean", "sum", "none")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 features, float32 for every other floating dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _keys(regions: torch.Tensor, num_regions: int) -> torch.Tensor:
    """``(B, H*W)`` int64 sort keys: the id where ``0 <= id < K``, else ``K`` (ignored)."""
    flat = regions.reshape(regions.shape[0], -1)
    return torch.where((flat >= 0) & (flat < num_regions), flat, num_regions).long()


def region_index(regions: torch.Tensor, num_regions: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group each image's pixels by region id (a stable sort), with region offsets and counts.

    Ids outside ``[0, num_regions)`` (negative: ignore) go to an extra last bucket.

    Parameters
    ----------
    regions : torch.Tensor
        ``(B, H, W)`` integer region ids.
    num_regions : int
        ``K``, the number of region ids.

    Returns
    -------
    pixels : torch.Tensor
        ``(B, H*W)`` int32: a permutation of ``0 .. H*W-1`` per image; region ``k``'s pixels, in
        raster order, are ``pixels[b, offsets[b, k] : offsets[b, k] + counts[b, k]]``.
    offsets, counts : torch.Tensor
        ``(B, K)`` int32.
    """
    batch = regions.shape[0]
    key = _keys(regions, num_regions)  # (B, HW)
    pixels = torch.sort(key, dim=1, stable=True).indices.to(torch.int32)  # (B, HW)
    counts = torch.zeros(batch, num_regions + 1, dtype=torch.int64, device=regions.device)
    counts.scatter_add_(1, key, torch.ones_like(key))  # (B, K+1)
    offsets = counts.cumsum(1) - counts  # (B, K+1), exclusive
    return (pixels, offsets[:, :num_regions].to(torch.int32).contiguous(),
            counts[:, :num_regions].to(torch.int32).contiguous())


def tile_index(regions: torch.Tensor, num_regions: int, tile: int,
               regions_p: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The region index in the fused path's tiled layout: the oracle of its tile sorts.

    Each image is cut into tiles of ``tile`` pixels in raster order (the last one padded), and
    each tile's pixels are stably sorted by key (the id when ``0 <= id < K``, else ``K``; padding
    last), as :func:`lrc_fast.kernels.region_pool.region_index` does before its prefix over the
    tiles, for one map or two (``V`` = 1 or 2).

    Parameters
    ----------
    regions : torch.Tensor
        ``(B, H, W)`` integer region ids.
    num_regions : int
        ``K``.
    tile : int
        Pixels per tile, >= 1.
    regions_p : torch.Tensor, optional
        A second ``(B, H, W)`` map (the warped view).

    Returns
    -------
    pixels : torch.Tensor
        ``(V, B, H*W)`` int32: ``pixels[v, b, t * tile + i]`` is tile ``t``'s ``i``-th pixel in
        (key, raster) order.
    hist, local : torch.Tensor
        ``(V, B, T, K)`` int32: id ``k``'s pixel count in tile ``t``, and where its run starts in
        the sorted tile (the fused path writes ``local`` only where ``hist > 0``).
    """
    maps = regions if regions_p is None else torch.stack([regions.long(), regions_p.long()])  # (V, B, H, W)
    views = 1 if regions_p is None else 2
    batch = views * regions.shape[0]  # the views' images, one after another
    key = _keys(maps.reshape(batch, *regions.shape[1:]), num_regions)  # (V*B, HW)
    hw = key.shape[1]
    n_tiles = -(-hw // tile)
    key = F.pad(key, (0, n_tiles * tile - hw), value=num_regions + 1).view(batch, n_tiles, tile)  # (VB, T, tile)
    order = torch.sort(key, dim=2, stable=True).indices  # (VB, T, tile): padding sorts last
    first = torch.arange(n_tiles, device=regions.device)[:, None] * tile  # (T, 1)
    pixels = (order + first).reshape(batch, -1)[:, :hw].to(torch.int32)  # (VB, HW)
    counts = torch.zeros(batch, n_tiles, num_regions + 2, dtype=torch.int64, device=regions.device)
    counts.scatter_add_(2, key, torch.ones_like(key))  # (VB, T, K+2)
    starts = counts.cumsum(2) - counts  # (VB, T, K+2): runs in key order
    table = (views, regions.shape[0], n_tiles, num_regions)
    return (pixels.view(views, regions.shape[0], hw), counts[..., :num_regions].to(torch.int32).view(table),
            starts[..., :num_regions].to(torch.int32).view(table))


def select_regions(counts_q: torch.Tensor, counts_p: torch.Tensor, max_regions: int | None,
                   subset: str, generator: torch.Generator | None):
    """The regions that enter the loss: present in both views, at most ``max_regions`` per image.

    Parameters
    ----------
    counts_q, counts_p : torch.Tensor
        ``(B, K)`` pixel counts of each region id in the two views.
    max_regions : int or None
        Keep at most this many regions per image (None: all ``K``).
    subset : {'largest', 'random'}
        Which regions to keep when an image has more than ``max_regions``: the largest
        (``counts_q + counts_p``, ties to the smaller id), or a uniformly random subset drawn
        from ``generator`` (one ``(B, K)`` float64 draw, made only in this case).
    generator : torch.Generator or None

    Returns
    -------
    sel : torch.Tensor or None
        ``(B, M)`` int64 kept ids (None when all ``K`` ids are kept, ``M = K``).
    valid : torch.Tensor
        ``(B, M)`` bool: the kept region is present in both views.
    slot_of : torch.Tensor or None
        ``(B, K)`` int32 position of each id in ``sel`` (-1 when dropped); None with ``sel``.
    """
    batch, num_regions = counts_q.shape
    present = torch.minimum(counts_q, counts_p) > 0  # (B, K): counts are >= 0
    if max_regions is None or max_regions >= num_regions:
        return None, present, None
    ids = torch.arange(num_regions, device=counts_q.device)  # (K,)
    if subset == "largest":
        size = counts_q.long() + counts_p.long()  # (B, K)
        score = torch.where(present, size * num_regions + (num_regions - 1 - ids), -1 - ids)
    else:
        draw = torch.rand((batch, num_regions), generator=generator, device=counts_q.device,
                          dtype=torch.float64)  # (B, K)
        score = torch.where(present, draw, -1.0 - ids.double())
    # every score is distinct, so the kept set does not depend on topk's tie handling
    sel = torch.topk(score, max_regions, dim=1, sorted=True).indices  # (B, M)
    valid = present.gather(1, sel)  # (B, M)
    slots = torch.arange(max_regions, device=sel.device, dtype=torch.int32).expand(batch, -1)
    slot_of = torch.full((batch, num_regions), -1, dtype=torch.int32, device=sel.device)
    slot_of.scatter_(1, sel, slots)  # (B, K)
    return sel, valid, slot_of


def take_regions(table: torch.Tensor, sel: torch.Tensor | None) -> torch.Tensor:
    """``table[b, sel[b, m]]`` as a contiguous ``(B, M)`` tensor (``table`` itself when ``sel`` is None)."""
    return table if sel is None else table.gather(1, sel).contiguous()


def draw_uniforms(views: int, batch: int, regions: int, num_samples: int,
                  generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """The one ``(views, B, M, N)`` float32 uniform draw that fixes every sample point."""
    return torch.rand((views, batch, regions, num_samples), generator=generator, device=device,
                      dtype=torch.float32)


def sample_pixels(pixels: torch.Tensor, offsets: torch.Tensor, counts: torch.Tensor,
                  valid: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Sample pixels of each region uniformly with replacement.

    Parameters
    ----------
    pixels : torch.Tensor
        ``(B, H*W)`` int32 from :func:`region_index`.
    offsets, counts : torch.Tensor
        ``(B, M)`` int32 of the kept regions.
    valid : torch.Tensor
        ``(B, M)`` bool; invalid regions get no samples.
    uniforms : torch.Tensor
        ``(B, M, N)`` float32 in ``[0, 1)``.

    Returns
    -------
    torch.Tensor
        ``(B, M, N)`` int32 flat pixel index ``h * W + w`` in the image; -1 for invalid regions.
        Sample ``n`` is pixel number ``min(floor(u * count), count - 1)`` of the region (float32
        product, as the Triton kernel computes it).
    """
    batch, regions, num_samples = uniforms.shape
    count = counts.long().unsqueeze(-1)  # (B, M, 1)
    rank = torch.minimum((uniforms * count.to(torch.float32)).long(), count - 1)  # (B, M, N)
    keep = valid.unsqueeze(-1)  # (B, M, 1)
    pos = torch.where(keep, offsets.long().unsqueeze(-1) + rank, 0)  # (B, M, N)
    idx = pixels.long().gather(1, pos.reshape(batch, -1)).reshape(batch, regions, num_samples)
    return torch.where(keep, idx, -1).to(torch.int32)


def region_pool(feat: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of the sampled feature vectors of each region, accumulated in float32.

    Parameters
    ----------
    feat : torch.Tensor
        ``(B, D, H, W)`` features (any memory layout).
    idx : torch.Tensor
        ``(B, M, N)`` int32 sample pixels from :func:`sample_pixels`.
    valid : torch.Tensor
        ``(B, M)`` bool.

    Returns
    -------
    torch.Tensor
        ``(B, M, D)`` float32 (float64 for float64 features); zero for invalid regions.
    """
    batch, channels = feat.shape[:2]
    regions, num_samples = idx.shape[1:]
    flat = feat.flatten(2)  # (B, D, HW): a view for contiguous and channels_last
    gather_idx = idx.clamp_min(0).long().reshape(batch, 1, regions * num_samples)
    samples = flat.gather(2, gather_idx.expand(batch, channels, -1))  # (B, D, M*N)
    samples = samples.to(accumulation_dtype(feat.dtype))
    means = samples.reshape(batch, channels, regions, num_samples).mean(-1).transpose(1, 2)
    return torch.where(valid.unsqueeze(-1), means, 0)  # (B, M, D)


def region_infonce(means_q: torch.Tensor, means_p: torch.Tensor, valid: torch.Tensor,
                   temperature: float, normalize: bool = True, include_self: bool = False) -> torch.Tensor:
    """The InfoNCE term of every region, in the region-mean precision.

    ``loss[b, k] = logsumexp_j( a[k, j] for valid j ; c[k, j] for valid j != k ) - a[k, k]`` with
    ``a = q p^T / tau`` and ``c = q q^T / tau`` of the (L2-normalised) region means. With
    ``include_self`` the ``j == k`` term of ``c`` is kept (the formula as printed in the paper).

    Parameters
    ----------
    means_q, means_p : torch.Tensor
        ``(B, M, D)`` region means of the two views.
    valid : torch.Tensor
        ``(B, M)`` bool.
    temperature : float
    normalize : bool
        L2-normalise the means first (``F.normalize``, eps 1e-12).
    include_self : bool

    Returns
    -------
    torch.Tensor
        ``(B, M)``; 0 for invalid regions (their logits are replaced by zeros, so the masked
        log-sum-exp and its gradient stay finite).
    """
    q = F.normalize(means_q, dim=-1, eps=NORM_EPS) if normalize else means_q  # (B, M, D)
    p = F.normalize(means_p, dim=-1, eps=NORM_EPS) if normalize else means_p  # (B, M, D)
    regions = valid.shape[1]
    logits_qp = q @ p.transpose(1, 2) / temperature  # (B, M, M): a[k, j] = q_k . p_j / tau
    logits_qq = q @ q.transpose(1, 2) / temperature  # (B, M, M): c[k, j] = q_k . q_j / tau
    column = valid.unsqueeze(1)  # (B, 1, M)
    row = valid.unsqueeze(2)  # (B, M, 1)
    keep_qq = column if include_self else column & ~torch.eye(regions, dtype=torch.bool,
                                                                device=valid.device)
    neg_inf = torch.tensor(float("-inf"), dtype=logits_qp.dtype, device=logits_qp.device)
    logits_qp = torch.where(row, torch.where(column, logits_qp, neg_inf), 0)
    logits_qq = torch.where(row, torch.where(keep_qq, logits_qq, neg_inf), 0)
    lse = torch.logsumexp(torch.cat([logits_qp, logits_qq], dim=2), dim=2)  # (B, M)
    positive = torch.diagonal(logits_qp, dim1=1, dim2=2)  # (B, M)
    return torch.where(valid, lse - positive, 0)


def valid_count(valid: torch.Tensor) -> torch.Tensor:
    """The ``'mean'`` reduction's denominator: ``max(#valid, 1)``, a 0-d int64 tensor."""
    return valid.sum().clamp_min(1)


def reduce_rows(rows: torch.Tensor, valid: torch.Tensor, reduction: str,
                count: torch.Tensor | None = None) -> torch.Tensor:
    """``'none'``: per-image sums ``(B,)``; ``'sum'``: their total; ``'mean'``: total / max(#valid, 1).

    ``count`` is :func:`valid_count` of ``valid`` when the caller already has it (``'mean'`` only).
    """
    if reduction == "none":
        return rows.sum(1)  # (B,)
    total = rows.sum()  # one reduction over (B, M)
    if reduction == "sum":
        return total
    return total / (valid_count(valid) if count is None else count)


def reduce_rows_backward(grad: torch.Tensor, valid: torch.Tensor, reduction: str,
                         count: torch.Tensor | None = None) -> torch.Tensor:
    """The gradient of :func:`reduce_rows` with respect to ``rows``, as autograd computes it.

    ``grad`` is the gradient of its output (``(B,)`` for ``'none'``, a scalar otherwise); returns
    a ``(B, M)`` view (expanded, not materialised) of every row's gradient. ``count`` as in
    :func:`reduce_rows`.
    """
    batch, regions = valid.shape
    if reduction == "none":
        return grad[:, None].expand(batch, regions)
    if reduction == "mean":
        grad = grad / (valid_count(valid) if count is None else count)
    return grad.expand(batch, regions)


def region_sample_mean_reference(feat: torch.Tensor, regions: torch.Tensor, num_regions: int,
                                 num_samples: int, generator: torch.Generator | None):
    """Reference :func:`lrc_fast.region_sample_mean`: ``(means (B, K, D), valid (B, K), idx (B, K, N))``.

    Draws ``(1, B, K, N)`` uniforms with :func:`draw_uniforms`.
    """
    batch = feat.shape[0]
    pixels, offsets, counts = region_index(regions, num_regions)
    valid = counts > 0  # (B, K)
    uniforms = draw_uniforms(1, batch, num_regions, num_samples, generator, feat.device)[0]
    idx = sample_pixels(pixels, offsets, counts, valid, uniforms)  # (B, K, N)
    return region_pool(feat, idx, valid), valid, idx


def region_contrast_loss_reference(feat_q: torch.Tensor, feat_p: torch.Tensor, regions_q: torch.Tensor,
                                   regions_p: torch.Tensor | None, *, num_regions: int, num_samples: int,
                                   temperature: float, max_regions: int | None, subset: str,
                                   normalize: bool, include_self: bool, reduction: str,
                                   generator: torch.Generator | None) -> torch.Tensor:
    """Reference :func:`lrc_fast.region_contrast_loss` on already checked inputs.

    Random numbers are drawn in this order: the ``(B, K)`` subset draw (only for
    ``subset='random'`` with more ids than ``max_regions``), then ``(2, B, M, N)`` sample
    uniforms (view q first).
    """
    batch = feat_q.shape[0]
    pix_q, off_q, cnt_q = region_index(regions_q, num_regions)
    if regions_p is None:
        pix_p, off_p, cnt_p = pix_q, off_q, cnt_q
    else:
        pix_p, off_p, cnt_p = region_index(regions_p, num_regions)
    sel, valid, _ = select_regions(cnt_q, cnt_p, max_regions, subset, generator)  # (B, M)
    uniforms = draw_uniforms(2, batch, valid.shape[1], num_samples, generator, feat_q.device)
    idx_q = sample_pixels(pix_q, take_regions(off_q, sel), take_regions(cnt_q, sel), valid, uniforms[0])
    idx_p = sample_pixels(pix_p, take_regions(off_p, sel), take_regions(cnt_p, sel), valid, uniforms[1])
    means_q = region_pool(feat_q, idx_q, valid)  # (B, M, D)
    means_p = region_pool(feat_p, idx_p, valid)  # (B, M, D)
    rows = region_infonce(means_q, means_p, valid, temperature, normalize, include_self)  # (B, M)
    return reduce_rows(rows, valid, reduction)
