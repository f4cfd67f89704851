"""Elastic positive pairs: ``x_p = T_e(x_q)``, ``r_p = T_e(r_q)`` for a whole batch.

The field is the classical Simard et al. one used in the CT literature (scipy
``gaussian_filter`` of uniform(-1, 1) noise, times ``alpha``, then ``map_coordinates``). On CUDA
the noise is drawn on the device, smoothed by two banded-matrix Triton kernels (sides up to
:data:`MAX_TRITON_FIELD_SIDE`) and applied by one fused Triton kernel that writes the bilinear
image and the nearest-neighbour region map together. On CPU the same arithmetic runs through the PyTorch reference (:mod:`lrc_fast.reference.elastic`),
which is also the test oracle.

Conventions
-----------
* ``displacement`` is ``(B, 2, H, W)`` float, in pixels: channel 0 moves rows (y), channel 1
  moves columns (x). Output pixel ``(i, j)`` samples the source at ``(i + dy, j + dx)``.
* Images: bilinear, ``grid_sample(align_corners=True)`` semantics for ``padding``.
* Regions: nearest source pixel ``(floor(y + 0.5), floor(x + 0.5))``; ``ignore_index`` where that
  pixel lies outside the image. Negative (ignored) source ids are copied unchanged.

Default strength (512 x 512 CT slices at about 1 mm)
----------------------------------------------------
``sigma = 16`` px and ``alpha = 400`` px. Each displacement component then has standard deviation
``alpha / (sigma * sqrt(12 pi))`` = 4.07 px (4 mm; :func:`lrc_fast.reference.elastic.displacement_std`
gives the exact discrete value), the displacement length is about 5.8 px RMS, and the field is
smooth over organ-sized distances (correlation ``exp(-d^2 / (4 sigma^2))``: 0.78 at 16 px, 0.37
at 32 px). Its spatial derivative has standard deviation ``std / (sigma sqrt 2)`` = 0.18, so folding
(a derivative below -1) is a more-than-5-sigma event. This is a gentle, anatomically plausible
deformation: stronger than SSL-ALPNet's ``alpha=10, sigma=5`` at 256 px (about 0.3 px) and weaker
than nnU-Net v1's range (``alpha`` up to 900 with ``sigma`` 9-13, up to about 16 px).

Coarse mode (``spacing=s``)
---------------------------
The noise is drawn only at control points ``s`` pixels apart (``Hc = ceil((H - 1) / s) + 1`` per
axis), smoothed there as above with ``sigma / s`` nodes and scaled by ``alpha / s``, and
interpolated to every pixel by Catmull-Rom splines (cubic, through the nodes, node indices clamped
at the edges). A node stands for an ``s x s`` block of pixels, so ``alpha / s`` keeps the dense
field's variance, as long as the Gaussian spans a node or more (``sigma / s`` >= about 1;
unsmoothed, ``sigma = 0``, the coarse field has ``s**2`` times less variance). The edges differ
more: at ``sigma = 16``, ``s = 8`` the variance is 5.9% lower at the first pixel and 8.9% at the
last corner (the last node lies past the last pixel). It is a different field distribution from the
dense one: a spline of ``s**2`` times fewer noise values. Its second-order statistics are nearly
the dense field's while ``s <= sigma / 2``: at ``sigma = 16``, ``s = 8``, the variance away from
the border is 0.2% lower and the correlation at 16 px 0.7796 instead of 0.7788; the slope variance
relative to the variance is 0.3% lower on average and up to 8% lower between nodes. At
``s = sigma`` these become 2.8%, 0.7878 and up to 33% (exact, from the field's linear map of the noise,
as tests/test_elastic.py computes it; docs/elastic.md has the table). Its values are sums of fewer
uniform draws, so they are a little less Gaussian. ``s = 1`` is the dense field itself. On CUDA one
kernel smooths the grid by direct taps and interpolates its node rows along x to every pixel
column (``1 / s`` of a field), and the warp interpolates along y as it goes, so the
full-resolution field is never stored: the pair costs about one read of the image and region map
and one write of each.
"""
from __future__ import annotations

import math
import numbers

import torch

from ._ext import float32_matmul_exact, triton_available, triton_usable
from .reference import elastic as _ref

DEFAULT_ALPHA = 400.0
DEFAULT_SIGMA = 16.0

_BACKENDS = (None, "triton", "reference")
_TRITON_IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_REGION_DTYPES = (torch.int32, torch.int64)
# The Triton field multiplies by dense (n, n) banded float32 matrices, one per axis, cached per
# size: 64 MiB each at n = 4096. Longer sides take the reference (separable convolutions).
MAX_TRITON_FIELD_SIDE = 4096
# Gaussian kernel radius int(truncate * sigma + 0.5) above which sigma/truncate are refused: the
# reference builds 2 r + 1 taps and an n + 2 r reflected index (2**20: 16 MiB of float64 taps).
MAX_KERNEL_RADIUS = 2 ** 20


# ----------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------

def _check_real(name: str, value, *, minimum: float | None = None, strict: bool = False) -> float:
    # float and int first: the numbers.Real check is an abc lookup, on every call of a pair
    if type(value) not in (float, int) and (isinstance(value, bool)
                                            or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}.")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum}, got {value}.")
    return value


def _check_int(name: str, value, minimum: int) -> int:
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def _check_backend(backend, device: torch.device, dtype: torch.dtype) -> str:
    """Resolve ``backend`` for data of ``dtype`` on ``device``: Triton on CUDA, the reference
    elsewhere."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be None, 'triton' or 'reference', got {backend!r}.")
    if backend is None:
        fast = device.type == "cuda" and dtype in _TRITON_IMAGE_DTYPES and triton_available()
        return "triton" if fast else "reference"
    if backend == "triton" and not triton_usable(device):
        raise ValueError(
            f"backend='triton' needs triton and a CUDA tensor (or a CPU tensor with "
            f"TRITON_INTERPRET=1 set before import); got a tensor on {device}. "
            "Use backend=None or 'reference'.")
    return backend


def _field_backend(backend, device: torch.device, height: int, width: int) -> str:
    """The backend of a field of float32 noise on ``device``, resolved before anything is drawn."""
    resolved = _check_backend(backend, device, torch.float32)
    if resolved == "triton" and max(height, width) > MAX_TRITON_FIELD_SIDE:
        if backend == "triton":
            raise ValueError(f"backend='triton' smooths with dense (n, n) banded matrices and takes "
                             f"fields of sides up to {MAX_TRITON_FIELD_SIDE}, got {height} x {width}; "
                             "use backend=None or 'reference'.")
        return "reference"
    return resolved


def _warp_backend(backend, images4: torch.Tensor) -> str:
    """The backend of the warp of ``images4`` (B, C, H, W), resolved and checked."""
    backend = _check_backend(backend, images4.device, images4.dtype)
    if backend == "triton":
        if images4.dtype not in _TRITON_IMAGE_DTYPES:
            raise ValueError(f"backend='triton' takes float32/float16/bfloat16 images, got "
                             f"{images4.dtype}; use backend='reference' for it.")
        if images4.shape[-2] * images4.shape[-1] >= 2 ** 31:
            raise ValueError(f"backend='triton' indexes a slice with int32: H * W must be < 2**31, "
                             f"got {tuple(images4.shape[-2:])}; use backend='reference'.")
    return backend


def _check_pair_inputs(images, regions, padding, ignore_index):
    """Validate images/regions; return images as (B, C, H, W) and whether a channel was added."""
    for name, value in (("images", images), ("regions", regions)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
    if images.dim() not in (3, 4):
        raise ValueError(f"images must be (B, 1, H, W), (B, C, H, W) or (B, H, W), got shape "
                         f"{tuple(images.shape)}.")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point, got dtype {images.dtype}; convert with "
                         "images.float().")
    squeeze = images.dim() == 3
    images4 = images.unsqueeze(1) if squeeze else images  # (B, C, H, W)
    batch, _, height, width = images4.shape
    if height < 1 or width < 1:
        raise ValueError(f"images must have H, W >= 1, got shape {tuple(images.shape)}.")
    if regions.dtype not in _REGION_DTYPES:
        raise ValueError(f"regions must be an integer map of dtype int64 or int32, got dtype "
                         f"{regions.dtype}; convert with regions.long().")
    if tuple(regions.shape) != (batch, height, width):
        raise ValueError(f"regions must have shape (B, H, W) = {(batch, height, width)} to match "
                         f"images {tuple(images.shape)}, got {tuple(regions.shape)}.")
    if regions.device != images.device:
        raise ValueError(f"regions are on {regions.device} but images on {images.device}; put "
                         "both on one device.")
    if padding not in _ref.PADDING_MODES:
        raise ValueError(f"padding must be one of {_ref.PADDING_MODES}, got {padding!r}.")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}.")
    if not -(2 ** 31) <= ignore_index < 0:
        raise ValueError(f"ignore_index must be negative (negative ids mean 'ignore') and fit "
                         f"in int32, got {ignore_index}.")
    return images4, squeeze


def _check_displacement(displacement, images4: torch.Tensor, check_finite: bool) -> None:
    if not isinstance(displacement, torch.Tensor):
        raise TypeError(f"displacement must be a torch.Tensor, got {type(displacement).__name__}.")
    batch, _, height, width = images4.shape
    if tuple(displacement.shape) != (batch, 2, height, width):
        raise ValueError(f"displacement must have shape (B, 2, H, W) = {(batch, 2, height, width)} "
                         f"to match images, got {tuple(displacement.shape)}.")
    if not displacement.is_floating_point():
        raise ValueError(f"displacement must be floating point, got dtype {displacement.dtype}.")
    if displacement.device != images4.device:
        raise ValueError(f"displacement is on {displacement.device} but images on "
                         f"{images4.device}; put both on one device.")
    if check_finite and not bool(torch.isfinite(displacement).all()):
        raise ValueError("displacement has NaN or infinite values; pass a finite field (the "
                         "backends would disagree on such values).")


def _check_spacing(spacing) -> int:
    """None or an int >= 1; returned as an int, 1 meaning the dense field."""
    if spacing is None:
        return 1
    spacing = _check_int("spacing", spacing, 1)
    if spacing >= 2 ** 31:
        raise ValueError(f"spacing must be < 2**31 pixels, got {spacing}.")
    return spacing


def _upsample_backend(backend, device: torch.device, height: int, width: int) -> str:
    """The backend that upsamples a coarse field to (height, width), resolved before the draw."""
    resolved = _check_backend(backend, device, torch.float32)
    if resolved == "triton" and height * width >= 2 ** 31:
        if backend == "triton":
            raise ValueError(f"backend='triton' indexes a slice with int32: H * W must be < 2**31, "
                             f"got {height} x {width}; use backend='reference'.")
        return "reference"
    return resolved


def _field_plan(backend, device: torch.device, height: int, width: int, spacing: int):
    """``((Hc, Wc), backend)`` of a field drawn at ``spacing`` (``(H, W)`` at spacing 1),
    resolved before the draw."""
    grid = _ref.coarse_shape(height, width, spacing)
    if spacing == 1:
        return grid, _field_backend(backend, device, *grid)
    # a control grid is smoothed by direct taps (no banded matrices, so no side limit) on the
    # backend of its upsampling, whose int32 limit (H * W < 2**31) covers the grid's too
    return grid, _upsample_backend(backend, device, height, width)


def _resolve_device(generator, device) -> torch.device:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
    if device is None:
        return generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device is {device} but this torch has no CUDA device; use device='cpu'.")
    if generator is not None:
        gen_device = generator.device
        same_index = device.index is None or gen_device.index is None or device.index == gen_device.index
        if gen_device.type != device.type or not same_index:
            raise ValueError(f"generator lives on {gen_device} but device is {device}; create the "
                             f"generator with torch.Generator(device={str(device)!r}).")
    return device


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------

def random_elastic_field(batch: int, height: int, width: int, alpha: float, sigma: float,
                         generator: torch.Generator | None = None, device=None, *,
                         truncate: float = 4.0, backend: str | None = None,
                         spacing: int | None = None) -> torch.Tensor:
    """Random smooth displacement ``alpha * gaussian_filter(uniform(-1, 1), sigma)`` in pixels.

    The Simard et al. convention (scipy ``gaussian_filter`` with its default ``'reflect'``
    boundary and ``truncate=4``), drawn independently per image and per component. The noise is
    ``torch.rand(..., generator=generator)`` on the target device, so one seed gives one field.

    With ``spacing=s > 1`` the field is drawn on a grid of control points ``s`` pixels apart
    instead, with scale ``alpha / s`` and smoothness ``sigma / s`` nodes, and interpolated to
    every pixel by Catmull-Rom splines (the coarse mode, see the module docstring). That is a
    different field distribution with nearly the same second-order statistics for
    ``s <= sigma / 2``, and ``s**2`` times less noise to draw and smooth.

    Parameters
    ----------
    batch, height, width : int
        Field size; ``batch >= 0``, ``height, width >= 1``.
    alpha : float
        Scale in pixels, >= 0. The component standard deviation is about
        ``alpha / (sigma * sqrt(12 pi))`` (:func:`lrc_fast.reference.elastic.displacement_std`).
    sigma : float
        Gaussian standard deviation in pixels, >= 0 (0: unsmoothed noise, as scipy).
    generator : torch.Generator, optional
        Source of randomness; its device is the field's device when ``device`` is None.
    device : torch.device or str, optional
        Device of the field (default: the generator's, else CPU).
    truncate : float
        Kernel radius ``int(truncate * sigma + 0.5)``, > 0.
    backend : {None, 'triton', 'reference'}
        None: Triton kernels on CUDA for sides up to :data:`MAX_TRITON_FIELD_SIDE` (4096; in the
        coarse mode, fields with ``height * width < 2**31``, whatever the grid's sides), the
        PyTorch reference otherwise. The Triton smoothing multiplies on the tensor cores in
        ``tf32x3`` (about float32), or in ``tf32`` (about 3x less tensor-core work; largest field
        errors measured: 5.1e-4 of alpha at sigma 3 on an H200, 7.9e-5 at sigma 16 on an H100) where
        ``torch.set_float32_matmul_precision('high')`` or ``'medium'`` allows it. A coarse
        mode's control grid is smoothed by direct taps in float32, whatever that setting.
    spacing : int, optional
        Control-point spacing in pixels for the coarse mode; None or 1 (the same) draw the dense
        field. The noise is then ``(batch, 2, Hc, Wc)`` with ``Hc = ceil((height - 1) / s) + 1``
        (:func:`lrc_fast.reference.elastic.coarse_shape`), so a seed gives another field than
        in the dense mode.

    Returns
    -------
    torch.Tensor
        ``(batch, 2, height, width)`` float32; channel 0 is the row (y) displacement, channel 1
        the column (x) displacement.

    Raises
    ------
    TypeError
        A size is not an int, alpha/sigma not a real number, generator not a Generator.
    ValueError
        Negative sigma or alpha, alpha beyond float32, a kernel radius
        ``int(truncate * sigma + 0.5)`` over :data:`MAX_KERNEL_RADIUS`, a negative batch, a
        non-positive height, width or truncate, a spacing below 1, generator on another device,
        a CUDA device where torch has none, unknown backend, or 'triton' where it cannot run, for
        a dense field with a side over :data:`MAX_TRITON_FIELD_SIDE`, or for a coarse one with
        ``height * width >= 2**31``.

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> field = random_elastic_field(2, 64, 64, alpha=400.0, sigma=16.0, generator=g)
    >>> field.shape
    torch.Size([2, 2, 64, 64])
    """
    batch = _check_int("batch", batch, 0)
    height = _check_int("height", height, 1)
    width = _check_int("width", width, 1)
    alpha, sigma, truncate = _check_field_args(alpha, sigma, truncate)
    spacing = _check_spacing(spacing)
    device = _resolve_device(generator, device)
    grid, field_backend = _field_plan(backend, device, height, width, spacing)
    uniform = _draw_uniform(batch, *grid, generator, device)  # (B, 2, Hc, Wc)
    if spacing == 1:
        return _field(uniform, alpha, sigma, truncate, field_backend)
    return _coarse_field(uniform, alpha, sigma, truncate, spacing, height, width, field_backend)


def _check_field_args(alpha, sigma, truncate) -> tuple[float, float, float]:
    alpha = _check_real("alpha", alpha, minimum=0.0)
    sigma = _check_real("sigma", sigma, minimum=0.0)
    truncate = _check_real("truncate", truncate, minimum=0.0, strict=True)
    if alpha > torch.finfo(torch.float32).max:
        raise ValueError(f"alpha must fit in float32 (the field's dtype), got {alpha}.")
    if truncate * sigma + 0.5 >= MAX_KERNEL_RADIUS + 1:
        raise ValueError(f"sigma * truncate = {sigma} * {truncate} gives a Gaussian kernel radius "
                         f"over {MAX_KERNEL_RADIUS} pixels; use a smaller sigma or truncate.")
    return alpha, sigma, truncate


def _draw_uniform(batch: int, height: int, width: int, generator, device) -> torch.Tensor:
    """The one draw behind a field: ``(B, 2, H, W)`` float32 in ``[0, 1)``."""
    return torch.rand((batch, 2, height, width), generator=generator, device=device,
                      dtype=torch.float32)


def _field(uniform: torch.Tensor, alpha: float, sigma: float, truncate: float,
           backend: str) -> torch.Tensor:
    """The dense field of checked arguments from the draw, on the resolved backend."""
    if backend == "triton":
        from .kernels.elastic_warp import field_from_uniform_triton
        precision = "tf32x3" if float32_matmul_exact() else "tf32"  # as the loss's logits
        return field_from_uniform_triton(uniform, alpha, sigma, truncate, precision=precision)
    return _ref.field_from_uniform(uniform, alpha, sigma, truncate)


def _coarse_field(uniform: torch.Tensor, alpha: float, sigma: float, truncate: float, spacing: int,
                  height: int, width: int, backend: str) -> torch.Tensor:
    """The coarse field (B, 2, H, W) of checked arguments from the (B, 2, Hc, Wc) draw."""
    if backend == "triton":  # two launches: noise to node rows, node rows to pixels
        from .kernels.elastic_warp import field_from_rows_triton
        rows = _node_rows_triton(uniform, alpha, sigma, truncate, spacing, height, width)
        return field_from_rows_triton(rows, spacing, height, width)
    return _ref.coarse_field_from_uniform(uniform, alpha, sigma, spacing, height, width, truncate)


def _node_rows_triton(uniform: torch.Tensor, alpha: float, sigma: float, truncate: float,
                      spacing: int, height: int, width: int) -> torch.Tensor:
    """The (B, 2, Hc, W) node rows of the coarse field of the (B, 2, Hc, Wc) draw, in one launch;
    ``alpha`` and ``sigma`` in pixels (the grid takes them in nodes)."""
    from .kernels.elastic_warp import coarse_rows_triton
    return coarse_rows_triton(uniform, alpha / spacing, sigma / spacing, truncate, spacing, height, width)


def _warp(images4, regions, displacement, padding, ignore_index, backend):
    """Checked (B, C, H, W) warp on the backend from :func:`_warp_backend`."""
    if backend == "triton":
        from .kernels.elastic_warp import ElasticWarpFunction, elastic_warp_triton
        displacement = displacement.to(torch.float32)
        if torch.is_grad_enabled() and (images4.requires_grad or displacement.requires_grad):
            return ElasticWarpFunction.apply(images4, displacement, regions, padding, ignore_index)
        return elastic_warp_triton(images4, regions, displacement, padding, ignore_index)
    return _ref.elastic_warp(images4, regions, displacement, padding, ignore_index)


def elastic_warp(images: torch.Tensor, regions: torch.Tensor, displacement: torch.Tensor, *,
                 padding: str = "border", ignore_index: int = -1, backend: str | None = None,
                 check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp images (bilinear) and region maps (nearest) by one displacement field.

    Output pixel ``(i, j)`` samples the source at ``(y, x) = (i + dy, j + dx)``, computed in
    float32 (like scipy ``map_coordinates``). The image is bilinear with
    ``grid_sample(align_corners=True)`` padding semantics. The region id is the one of source pixel
    ``(floor(y + 0.5), floor(x + 0.5))``, or ``ignore_index`` when that pixel is outside the image.
    Both backends use the same coordinate arithmetic, so region ids agree bit for bit; the one
    exception is a float64 displacement, which the reference backend adds in float64 (for
    ``gradcheck``) and the Triton backend rounds to float32 first.

    Parameters
    ----------
    images : torch.Tensor
        ``(B, 1, H, W)``, ``(B, C, H, W)`` or ``(B, H, W)``; float32, float16 or bfloat16
        (float64 on the reference backend). Interpolated in float32.
    regions : torch.Tensor
        ``(B, H, W)`` int64 or int32 ids; negative ids (ignored) are copied unchanged.
    displacement : torch.Tensor
        ``(B, 2, H, W)`` floating, pixels; channel 0 rows (y), channel 1 columns (x). Finite.
    padding : {'border', 'zeros', 'reflection'}
        Image value outside the source: edge value, zero, or mirrored (about the edge pixels).
    ignore_index : int
        Negative id for region pixels whose source is outside the image (default -1).
    backend : {None, 'triton', 'reference'}
        None: the fused Triton kernel on CUDA, the PyTorch reference on CPU.
    check_finite : bool
        Raise on a NaN or infinite displacement (default). On CUDA the check waits for the GPU;
        training loops that pass fields they made themselves can turn it off. Unchecked
        non-finite values give backend-dependent results (the Triton kernel still never reads
        out of bounds; the reference may raise).

    Returns
    -------
    tuple of torch.Tensor
        ``(warped_images, warped_regions)`` with the shapes and dtypes of the inputs. The images
        are differentiable with respect to ``images`` and ``displacement`` (Triton backward:
        float32 atomics, not bitwise deterministic).

    Raises
    ------
    TypeError
        Inputs that are not tensors, ``ignore_index`` not an int.
    ValueError
        Mismatched shapes or devices, non-floating images or displacement, a non-finite
        displacement (``check_finite``), a non-integer region map, a non-negative
        ``ignore_index``, an unknown padding or backend, or float64 images with
        ``backend='triton'``.

    Example
    -------
    >>> images = torch.rand(2, 1, 32, 48)
    >>> regions = torch.randint(0, 10, (2, 32, 48))
    >>> field = random_elastic_field(2, 32, 48, alpha=40.0, sigma=4.0)
    >>> x_p, r_p = elastic_warp(images, regions, field)
    >>> x_p.shape, r_p.dtype
    (torch.Size([2, 1, 32, 48]), torch.int64)
    """
    images4, squeeze = _check_pair_inputs(images, regions, padding, ignore_index)
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be a bool, got {check_finite!r}.")
    _check_displacement(displacement, images4, check_finite)
    backend = _warp_backend(backend, images4)
    out_images, out_regions = _warp(images4, regions, displacement, padding, ignore_index, backend)
    return (out_images.squeeze(1) if squeeze else out_images), out_regions


def elastic_pair(images: torch.Tensor, regions: torch.Tensor, alpha: float = DEFAULT_ALPHA,
                 sigma: float = DEFAULT_SIGMA, generator: torch.Generator | None = None, *,
                 padding: str = "border", ignore_index: int = -1, truncate: float = 4.0,
                 backend: str | None = None,
                 spacing: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Elastic positive view of a batch: a random field per image, then the fused warp.

    Equal to ``elastic_warp(images, regions, random_elastic_field(B, H, W, alpha, sigma,
    generator, images.device, spacing=spacing))``, bit for bit (each with the same
    ``backend``), except that ``alpha=0`` returns copies of the inputs, non-finite pixels
    included; the noise is drawn either way, so the generator advances alike. In the coarse mode
    (``spacing > 1``) the Triton warp interpolates the field from the grid's node rows as it
    warps, so the full-resolution field is never stored (unless ``images`` need a gradient: the
    backward reads the field). The defaults (``alpha=400``, ``sigma=16`` px) suit
    512 x 512 CT slices at about 1 mm: each displacement component has a standard deviation of
    about 4.1 px, smooth over about 16-30 px, with negligible folding (see the module docstring).

    Parameters
    ----------
    images : torch.Tensor
        ``(B, 1, H, W)``, ``(B, C, H, W)`` or ``(B, H, W)`` float (the query view ``x_q``).
    regions : torch.Tensor
        ``(B, H, W)`` int64/int32 region ids ``r_q`` (negative = ignore).
    alpha, sigma : float
        Field scale and smoothness in pixels (see :func:`random_elastic_field`).
    generator : torch.Generator, optional
        On ``images.device``; the same seed gives the same pair.
    padding, ignore_index, backend
        As in :func:`elastic_warp`.
    truncate, spacing
        As in :func:`random_elastic_field`.

    Returns
    -------
    tuple of torch.Tensor
        ``(x_p, r_p)``: warped images (shape and dtype of ``images``) and region ids
        (``regions.dtype``; ``ignore_index`` where the source is outside the slice).

    Raises
    ------
    TypeError, ValueError
        As :func:`random_elastic_field` and :func:`elastic_warp`.

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> x_q = torch.rand(2, 1, 64, 64)
    >>> r_q = torch.randint(0, 20, (2, 64, 64))
    >>> x_p, r_p = elastic_pair(x_q, r_q, generator=g)
    >>> x_p.shape, r_p.shape
    (torch.Size([2, 1, 64, 64]), torch.Size([2, 64, 64]))
    """
    images4, squeeze = _check_pair_inputs(images, regions, padding, ignore_index)
    batch, _, height, width = images4.shape
    alpha, sigma, truncate = _check_field_args(alpha, sigma, truncate)
    spacing = _check_spacing(spacing)
    device = _resolve_device(generator, images4.device)
    # every backend resolved and checked before the draw: a refused call leaves the generator as it was
    grid, field_backend = _field_plan(backend, device, height, width, spacing)
    warp_backend = _warp_backend(backend, images4)
    uniform = _draw_uniform(batch, *grid, generator, device)  # (B, 2, Hc, Wc)
    if alpha == 0.0:  # the identity, exactly: no bilinear taps (0 * inf would be NaN)
        return images.clone(), regions.clone()
    if (spacing > 1 and field_backend == warp_backend == "triton"
            and not (torch.is_grad_enabled() and images4.requires_grad)):
        # two launches: noise to node rows, then the warp interpolating the field per pixel
        from .kernels.elastic_warp import warp_from_rows_triton
        rows = _node_rows_triton(uniform, alpha, sigma, truncate, spacing, height, width)  # (B, 2, Hc, W)
        out_images, out_regions = warp_from_rows_triton(images4, regions, rows, spacing, padding,
                                                        ignore_index)
    else:  # the field at every pixel (B, 2, H, W), then the warp
        field = (_field(uniform, alpha, sigma, truncate, field_backend) if spacing == 1 else
                 _coarse_field(uniform, alpha, sigma, truncate, spacing, height, width, field_backend))
        out_images, out_regions = _warp(images4, regions, field, padding, ignore_index, warp_backend)
    return (out_images.squeeze(1) if squeeze else out_images), out_regions
