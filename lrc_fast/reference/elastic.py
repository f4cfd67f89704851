"""PyTorch reference for elastic positive pairs: the readable path and the test oracle.

Two pieces, each written with plain tensor operations so that it runs on any device, is
differentiable by autograd and can be read against scipy:

* :func:`gaussian_smooth` / :func:`field_from_uniform`: the classical Simard et al. field,
  ``alpha * gaussian_filter(2 u - 1, sigma)`` with scipy's kernel (``truncate=4``, radius
  ``int(truncate * sigma + 0.5)``) and scipy's default ``'reflect'`` boundary
  (``d c b a | a b c d | d c b a``), as two 1-D convolutions.
* :func:`elastic_warp`: ``grid_sample``-equivalent warping written as explicit gathers, so that
  the sampling arithmetic is spelled out and is exactly the arithmetic of the Triton kernel in
  :mod:`lrc_fast.kernels.elastic_warp`.

Conventions (shared with the Triton path)
-----------------------------------------
* ``displacement`` is ``(B, 2, H, W)`` in pixels; channel 0 is the row (y) displacement and
  channel 1 the column (x) displacement. Output pixel ``(i, j)`` samples the source at
  ``y = i + dy[i, j]``, ``x = j + dx[i, j]`` (scipy ``map_coordinates`` convention), computed
  as one float32 addition each (float64 when the displacement is float64).
* Images are sampled bilinearly around the padded coordinate (see :func:`source_coordinate`);
  taps outside the image contribute 0. This equals ``F.grid_sample(align_corners=True)``.
* Region ids are sampled by nearest neighbour at ``(floor(y + 0.5), floor(x + 0.5))`` (round
  half up). A pixel whose nearest source lies outside ``[0, H-1] x [0, W-1]`` gets
  ``ignore_index``, whatever the image padding. Only additions and ``floor`` are involved, so
  the ids are bit-for-bit those of the Triton kernel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PADDING_MODES = ("border", "zeros", "reflection")


def gaussian_radius(sigma: float, truncate: float = 4.0) -> int:
    """Half-width of scipy's Gaussian kernel: ``int(truncate * sigma + 0.5)``."""
    return int(truncate * float(sigma) + 0.5)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy's normalised 1-D Gaussian weights, in float64.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels, > 0.
    truncate : float
        The kernel is cut at ``int(truncate * sigma + 0.5)`` pixels.

    Returns
    -------
    torch.Tensor
        ``(2 r + 1,)`` float64 weights summing to one, equal to
        ``scipy.ndimage._filters._gaussian_kernel1d(sigma, 0, r)``.
    """
    radius = gaussian_radius(sigma, truncate)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 / (float(sigma) * float(sigma)) * x * x)
    return phi / phi.sum()


def reflect_indices(n: int, radius: int, device=None) -> torch.Tensor:
    """Source index of every position of a length-``n`` axis padded by ``radius`` on each side.

    scipy's ``'reflect'`` mode (half-sample symmetric, ``d c b a | a b c d | d c b a``) with
    period ``2 n``, so any radius works, also one larger than ``n``.

    Returns
    -------
    torch.Tensor
        ``(n + 2 radius,)`` int64 indices in ``[0, n)``.
    """
    m = torch.remainder(torch.arange(-radius, n + radius, device=device), 2 * n)
    return torch.where(m >= n, 2 * n - 1 - m, m)


def _smooth_axis(x: torch.Tensor, weights: torch.Tensor, dim: int) -> torch.Tensor:
    """Correlate ``x`` (N, H, W) with 1-D ``weights`` along ``dim`` (1 or 2), reflect boundary."""
    radius = (weights.numel() - 1) // 2
    n = x.shape[dim]
    # (N, H + 2r, W) or (N, H, W + 2r)
    padded = x.index_select(dim, reflect_indices(n, radius, x.device))
    kernel_shape = (1, 1, -1, 1) if dim == 1 else (1, 1, 1, -1)
    kernel = weights.to(device=x.device, dtype=x.dtype).view(kernel_shape)
    return F.conv2d(padded.unsqueeze(1), kernel).squeeze(1)  # (N, H, W)


def gaussian_smooth(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian smoothing of the last two axes, like ``scipy.ndimage.gaussian_filter``.

    Parameters
    ----------
    x : torch.Tensor
        ``(..., H, W)`` floating tensor.
    sigma : float
        Standard deviation in pixels, >= 0. ``sigma == 0`` returns ``x`` unchanged (as scipy).
    truncate : float
        Kernel radius ``int(truncate * sigma + 0.5)``.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``: rows (H) are filtered first, then columns (W), as scipy
        does, in ``x``'s precision. On CUDA, cuDNN may run the convolution in TF32
        (``torch.backends.cudnn.allow_tf32``); run it on CPU for an fp32-exact oracle.

    Example
    -------
    >>> x = torch.zeros(1, 9, 9); x[0, 4, 4] = 1.0
    >>> y = gaussian_smooth(x, 1.0)
    >>> round(float(y.sum()), 6)
    1.0
    """
    if sigma <= 1e-15:  # scipy skips such axes
        return x.clone()
    lead = x.shape[:-2]
    flat = x.reshape(-1, *x.shape[-2:])  # (N, H, W)
    weights = gaussian_kernel1d(sigma, truncate)  # (2r+1,)
    flat = _smooth_axis(flat, weights, dim=1)
    flat = _smooth_axis(flat, weights, dim=2)
    return flat.reshape(*lead, *x.shape[-2:])


def field_from_uniform(uniform: torch.Tensor, alpha: float, sigma: float,
                       truncate: float = 4.0) -> torch.Tensor:
    """Displacement ``alpha * gaussian_filter(2 u - 1, sigma)`` from uniform [0, 1) draws.

    Parameters
    ----------
    uniform : torch.Tensor
        ``(B, 2, H, W)`` float32 draws in ``[0, 1)`` (``torch.rand``).
    alpha, sigma, truncate : float
        Scale (pixels), Gaussian standard deviation (pixels) and truncation.

    Returns
    -------
    torch.Tensor
        ``(B, 2, H, W)`` float32 displacement in pixels (channel 0: rows, 1: columns).
    """
    noise = uniform * 2.0 - 1.0  # (B, 2, H, W) in [-1, 1), exact in float32
    return gaussian_smooth(noise, sigma, truncate) * alpha


# ----------------------------------------------------------------------------------------------
# Coarse mode: the field on a grid of control points, upsampled by Catmull-Rom interpolation
# ----------------------------------------------------------------------------------------------

def coarse_shape(height: int, width: int, spacing: int) -> tuple[int, int]:
    """Control points per axis: nodes at pixels ``0, s, 2 s, ...`` up to the first at or past the
    last pixel, i.e. ``ceil((n - 1) / s) + 1`` (``n`` itself at ``s = 1``)."""
    return (height + spacing - 2) // spacing + 1, (width + spacing - 2) // spacing + 1


def catmull_rom_weights(spacing: int, phases: int | None = None) -> torch.Tensor:
    """``(phases, 4)`` float32 Catmull-Rom weights of nodes ``k-1 .. k+2`` for a pixel at
    ``k * spacing + p``, row ``p`` (``t = p / spacing``); computed in float64, then rounded.

    ``phases`` (default ``spacing``) rows: an axis of ``n`` pixels needs ``min(spacing, n)``, so a
    spacing far beyond the image costs nothing. Row 0 is ``(0, 1, 0, 0)``: pixels on a node take
    its value exactly. Every row sums to one, and the interpolant reproduces polynomials up to
    degree 2 (Keys' cubic convolution, ``a = -0.5``).
    """
    rows = spacing if phases is None else min(spacing, phases)
    t = torch.arange(rows, dtype=torch.float64) / spacing  # (rows,)
    return torch.stack([((-0.5 * t + 1.0) * t - 0.5) * t,
                        (1.5 * t - 2.5) * t * t + 1.0,
                        ((-1.5 * t + 2.0) * t + 0.5) * t,
                        (0.5 * t - 0.5) * t * t], dim=1).to(torch.float32)


def _interpolate_axis(coarse: torch.Tensor, n: int, spacing: int, dim: int) -> torch.Tensor:
    """Catmull-Rom along ``dim`` of ``coarse`` to ``n`` pixels; node indices clamped at the ends."""
    nodes = coarse.shape[dim]
    weights = catmull_rom_weights(spacing, n).to(coarse.device)  # (min(s, n), 4)
    pixel = torch.arange(n, device=coarse.device)
    k, p = pixel // spacing, pixel % spacing  # (n,) cell and phase
    view = (-1, 1) if dim == coarse.dim() - 2 else (-1,)
    out = None
    for a in range(4):  # ((w0 c0 + w1 c1) + w2 c2) + w3 c3, as the Triton kernel sums
        taps = coarse.index_select(dim, (k + a - 1).clamp(0, nodes - 1))
        term = taps * weights[p, a].view(view)
        out = term if out is None else out + term
    return out


def upsample_field(coarse: torch.Tensor, spacing: int, height: int, width: int) -> torch.Tensor:
    """Field at every pixel from its values at the control points, Catmull-Rom per axis.

    Parameters
    ----------
    coarse : torch.Tensor
        ``(B, 2, Hc, Wc)`` float32 values at nodes ``(k s, l s)``, ``(Hc, Wc) =``
        :func:`coarse_shape` ``(height, width, spacing)``.
    spacing : int
        Node spacing ``s`` in pixels, >= 1.
    height, width : int
        Output size.

    Returns
    -------
    torch.Tensor
        ``(B, 2, height, width)`` float32: along W (x) first, then along H (y), each a
        left-to-right sum of four weighted nodes (the Triton kernels fuse each step into
        ``fma`` instructions, so they agree to a few float32 roundings, not bit for bit).
    """
    along_w = _interpolate_axis(coarse, width, spacing, dim=3)  # (B, 2, Hc, W)
    return _interpolate_axis(along_w, height, spacing, dim=2)  # (B, 2, H, W)


def coarse_field_from_uniform(uniform: torch.Tensor, alpha: float, sigma: float, spacing: int,
                              height: int, width: int, truncate: float = 4.0) -> torch.Tensor:
    """The coarse-mode field: ``field_from_uniform(uniform, alpha / s, sigma / s)`` on the control
    grid, upsampled by :func:`upsample_field`.

    The scale ``alpha / s`` gives the field the dense field's variance: a node stands for an
    ``s x s`` block of pixels, whose noise sum has ``s`` times the standard deviation of one
    draw, and the Gaussian, ``sigma / s`` wide in nodes, has ``s**2`` times the peak weight.

    Parameters
    ----------
    uniform : torch.Tensor
        ``(B, 2, Hc, Wc)`` float32 draws in ``[0, 1)``, ``(Hc, Wc) =`` :func:`coarse_shape`.
    alpha, sigma : float
        Scale and smoothness in pixels, as for the dense field.
    spacing : int
        Node spacing in pixels; 1 gives :func:`field_from_uniform` exactly.
    height, width : int
        Field size in pixels.
    truncate : float
        Kernel radius ``int(truncate * sigma / spacing + 0.5)`` nodes.

    Returns
    -------
    torch.Tensor
        ``(B, 2, height, width)`` float32 displacement in pixels.
    """
    coarse = field_from_uniform(uniform, alpha / spacing, sigma / spacing, truncate)
    return upsample_field(coarse, spacing, height, width)


def sampling_coordinates(displacement: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Source coordinates ``(y, x)``, each ``(B, H, W)``, of every output pixel.

    ``y = i + displacement[:, 0]``, ``x = j + displacement[:, 1]``: one addition each, in
    float32 (float64 when the displacement is float64).
    """
    dtype = torch.float64 if displacement.dtype == torch.float64 else torch.float32
    _, _, height, width = displacement.shape
    d = displacement.to(dtype)
    rows = torch.arange(height, device=d.device, dtype=dtype).view(1, height, 1)
    cols = torch.arange(width, device=d.device, dtype=dtype).view(1, 1, width)
    return rows + d[:, 0], cols + d[:, 1]


def source_coordinate(c: torch.Tensor, size: int, padding: str) -> torch.Tensor:
    """Map a sampling coordinate to the one the bilinear taps are taken around.

    ``'border'`` clamps to ``[0, size-1]``. ``'zeros'`` leaves it (clamped to
    ``[-2, size+1]``, where every tap is already outside, so ``floor`` stays finite).
    ``'reflection'`` mirrors at ``0`` and ``size-1`` (period ``2 (size-1)``) like
    ``grid_sample(padding_mode='reflection', align_corners=True)``, then clamps.
    Autograd gives the derivative the Triton backward uses (clamp: 1 on the closed range).
    """
    hi = float(size - 1)
    if padding == "border":
        return c.clamp(0.0, hi)
    if padding == "zeros":
        return c.clamp(-2.0, hi + 2.0)
    span = max(hi, 1.0)  # size 1: everything maps to 0 after the clamp
    a = torch.where(c < 0, -c, c)
    flips = torch.floor(a / span)
    extra = a - flips * span
    odd = flips - 2.0 * torch.floor(flips * 0.5)
    return torch.where(odd == 0, extra, span - extra).clamp(0.0, hi)


def _gather_pixels(flat: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, width: int):
    """``flat`` (B, C, H*W) at integer-valued float ``rows``/``cols`` (B, H, W), clamped in range."""
    b, c, hw = flat.shape
    height = hw // width
    index = rows.clamp(0, height - 1).long() * width + cols.clamp(0, width - 1).long()  # (B, H, W)
    # reshape: the coordinates take the displacement's strides, which may be any (a transposed field)
    return flat.gather(2, index.reshape(b, 1, hw).expand(b, c, hw)).view(b, c, *rows.shape[1:])


def warp_regions(regions: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                 ignore_index: int = -1) -> torch.Tensor:
    """Nearest-neighbour region ids at source coordinates ``y``, ``x`` (B, H, W).

    Returns ``regions[b, floor(y + 0.5), floor(x + 0.5)]`` where that pixel lies in the image,
    ``ignore_index`` elsewhere; same dtype as ``regions`` (B, H, W).
    """
    height, width = regions.shape[-2:]
    yn = torch.floor(y + 0.5)  # (B, H, W)
    xn = torch.floor(x + 0.5)
    inside = (yn >= 0) & (yn <= height - 1) & (xn >= 0) & (xn <= width - 1)
    ids = _gather_pixels(regions.unsqueeze(1).flatten(2), yn, xn, width).squeeze(1)  # (B, H, W)
    return torch.where(inside, ids, torch.full_like(ids, ignore_index))


def warp_images(images: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                padding: str = "border") -> torch.Tensor:
    """Bilinear samples of ``images`` (B, C, H, W) at ``y``, ``x`` (B, H, W); differentiable.

    Computed in float32 (float64 for float64 images) and returned in ``images.dtype``.
    """
    height, width = images.shape[-2:]
    compute = torch.float64 if images.dtype == torch.float64 else torch.float32
    flat = images.to(compute).flatten(2)  # (B, C, H*W)
    ys = source_coordinate(y, height, padding)
    xs = source_coordinate(x, width, padding)
    y0 = torch.floor(ys)
    x0 = torch.floor(xs)
    wy = ys - y0  # (B, H, W)
    wx = xs - x0
    out = None
    for dy, dx, weight in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx),
                           (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
        rows, cols = y0 + dy, x0 + dx
        valid = ((rows >= 0) & (rows <= height - 1) & (cols >= 0) & (cols <= width - 1)).unsqueeze(1)
        tap = torch.where(valid, _gather_pixels(flat, rows, cols, width), 0.0)  # (B, C, H, W)
        term = weight.unsqueeze(1) * tap
        out = term if out is None else out + term
    return out.to(images.dtype)


def elastic_warp(images: torch.Tensor, regions: torch.Tensor, displacement: torch.Tensor,
                 padding: str = "border", ignore_index: int = -1):
    """Reference warp of images (bilinear) and region ids (nearest) by one displacement field.

    Parameters
    ----------
    images : torch.Tensor
        ``(B, C, H, W)`` floating.
    regions : torch.Tensor
        ``(B, H, W)`` integer ids; negative ids are copied like any other id.
    displacement : torch.Tensor
        ``(B, 2, H, W)`` floating, pixels (channel 0: rows, 1: columns). Must be finite.
    padding : {'border', 'zeros', 'reflection'}
        How image samples outside the image are formed (``grid_sample`` semantics).
    ignore_index : int
        Id given to pixels whose nearest source pixel is outside the image.

    Returns
    -------
    tuple of torch.Tensor
        ``(B, C, H, W)`` warped images (``images.dtype``) and ``(B, H, W)`` warped ids
        (``regions.dtype``). Differentiable with respect to images and displacement.

    Example
    -------
    >>> img = torch.rand(1, 1, 4, 5); reg = torch.arange(20).view(1, 4, 5)
    >>> out, ids = elastic_warp(img, reg, torch.zeros(1, 2, 4, 5))
    >>> bool(torch.equal(out, img)), bool(torch.equal(ids, reg))
    (True, True)
    """
    y, x = sampling_coordinates(displacement)  # (B, H, W) each
    return warp_images(images, y, x, padding), warp_regions(regions, y, x, ignore_index)


def displacement_std(alpha: float, sigma: float, truncate: float = 4.0) -> float:
    """Standard deviation (pixels) of one field component away from the border.

    ``alpha * sqrt(1/3) * sum(w**2)`` for the separable weights ``w`` (uniform(-1, 1) noise has
    variance 1/3); about ``alpha / (sigma * sqrt(12 pi))`` for sigma >= 1.
    """
    if sigma <= 1e-15:
        return alpha * math.sqrt(1.0 / 3.0)
    w = gaussian_kernel1d(sigma, truncate)
    return float(alpha * math.sqrt(1.0 / 3.0) * (w * w).sum())
