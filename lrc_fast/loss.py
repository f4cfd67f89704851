"""The localized region contrast (LRC) loss of Yan et al. (MICCAI 2023), for any PyTorch trainer.

For decoder features ``f_q``, ``f_p`` ``(B, D, H, W)`` of a slice and its elastically warped copy,
and region maps ``r_q``, ``r_p`` ``(B, H, W)`` (ids ``0..K-1``, negative = ignore):

* **pooling** -- for every region ``k`` present in both views, ``N`` points are drawn uniformly
  with replacement from region ``k`` of ``f_q`` and, independently, ``N`` from region ``k`` of
  ``f_p``; their feature means are ``q_k`` and ``p_k`` (accumulated in float32, float64 for
  float64 features);
* **loss** -- with L2-normalised means and temperature ``tau``, per image::

      L = - sum_k log( e^{q_k.p_k/tau} / sum_j [ e^{q_k.p_j/tau} + [j != k] e^{q_k.q_j/tau} ] )

  The positive is ``(q_k, p_k)``; the negatives are every other valid region of the same image,
  in both views.

Choices (all documented in :func:`region_contrast_loss`):

* ``q_k.q_k`` is left out of the denominator, because the paper's text calls the negatives "the
  rest of the local regions". After normalisation the self term is the constant ``e^{1/tau}``.
  It carries no gradient of its own. It only puts a floor under the loss (``log 2`` for a
  perfect match) and shrinks the gradient of every other term. ``include_self=True`` gives the
  formula as printed.
* ``temperature=0.1``. The paper's local temperature is not in any public code (there is no
  official implementation). 0.1 is the value used by the related region and local contrast
  methods (DetCon, and Chaitanya et al. 2020 for decoder-level local contrast in medical
  images). With unit vectors it spreads the logits over ``[-10, 10]``.
* ``num_samples=50``: the paper's best N.

Backends: ``'triton'`` (fused kernels of :mod:`lrc_fast.kernels.region_pool` and
:mod:`lrc_fast.kernels.region_infonce`; CUDA, or CPU under ``TRITON_INTERPRET=1``) and
``'reference'`` (:mod:`lrc_fast.reference.region_loss`, pure PyTorch, any device). Given one
generator state both draw the very same sample pixels.
"""
from __future__ import annotations

import numbers

import torch
from torch import nn

from ._checks import check_bool
from ._ext import float32_matmul_exact, triton_available, triton_usable
from .reference import region_loss as _ref

_BACKENDS = (None, "triton", "reference")
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_FEATURE_DTYPES = _TRITON_DTYPES + (torch.float64,)
_REGION_DTYPES = (torch.int64, torch.int32)


# ----------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------

def _check_int(name: str, value, minimum: int, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "an int or None" if allow_none else "an int"
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def _check_options(num_samples, temperature, num_regions, max_regions, subset, reduction, backend):
    """Validate the scalar options; return them normalised."""
    num_samples = _check_int("num_samples", num_samples, 1)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a real number, got {temperature!r}.")
    given = temperature
    try:
        temperature = float(temperature)
    except OverflowError:  # an int beyond float range
        temperature = float("inf")
    if not (temperature > 0 and temperature != float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {given!r}.")
    if 1.0 / temperature > torch.finfo(torch.float32).max:  # the logits are scaled in float32
        raise ValueError(f"temperature must be at least 1 / float32 max (~2.9e-39), got {given!r}.")
    num_regions = _check_int("num_regions", num_regions, 1, allow_none=True)
    max_regions = _check_int("max_regions", max_regions, 1, allow_none=True)
    if subset not in _ref.SUBSETS:
        raise ValueError(f"subset must be 'largest' or 'random', got {subset!r}.")
    if reduction not in _ref.REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be None, 'triton' or 'reference', got {backend!r}.")
    return num_samples, temperature, num_regions, max_regions


def _check_features(name: str, feat) -> None:
    if not isinstance(feat, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(feat).__name__}.")
    if feat.dim() != 4:
        raise ValueError(f"{name} must have shape (B, D, H, W), got {tuple(feat.shape)}.")
    if feat.dtype not in _FEATURE_DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16 or float16 (float64 on the reference "
                         f"backend), got {feat.dtype}; convert with {name}.float().")
    if feat.shape[1] < 1:
        raise ValueError(f"{name} must have at least one channel, got shape {tuple(feat.shape)}.")


def _check_regions(name: str, regions, feat: torch.Tensor) -> None:
    if not isinstance(regions, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(regions).__name__}.")
    if regions.dtype not in _REGION_DTYPES:
        raise ValueError(f"{name} must hold int64 or int32 region ids (negative = ignore), got "
                         f"dtype {regions.dtype}; convert with {name}.long().")
    expected = (feat.shape[0],) + tuple(feat.shape[2:])
    if tuple(regions.shape) != expected:
        raise ValueError(f"{name} must have shape (B, H, W) = {expected} to match the features "
                         f"{tuple(feat.shape)}, got {tuple(regions.shape)}.")
    if regions.device != feat.device:
        raise ValueError(f"{name} is on {regions.device} but the features are on {feat.device}; "
                         "put them on one device.")


def _resolve_generator(generator, device: torch.device):
    """None, a seed (a new generator on ``device``) or a generator on ``device``'s type."""
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        if generator.device.type != device.type:
            raise ValueError(f"generator lives on {generator.device} but the features are on "
                             f"{device}; create it with torch.Generator(device={str(device)!r}) "
                             "or pass an int seed.")
        return generator
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        if not -(2 ** 63) <= generator < 2 ** 64:  # torch's seed range
            raise ValueError(f"generator: an int seed must be in [-2**63, 2**64), got {generator}.")
        return torch.Generator(device=device).manual_seed(int(generator))
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got "
                    f"{type(generator).__name__}.")


def _resolve_backend(backend, feat: torch.Tensor) -> str:
    if backend is None:
        fast = triton_available() and triton_usable(feat) and feat.dtype in _TRITON_DTYPES
        return "triton" if fast else "reference"
    if backend == "triton":
        if feat.dtype not in _TRITON_DTYPES:
            raise ValueError(f"backend='triton' takes float32, bfloat16 or float16 features, got "
                             f"{feat.dtype}; use backend='reference' for it.")
        if not triton_usable(feat):
            raise ValueError(f"backend='triton' needs triton and a CUDA tensor (or a CPU tensor with "
                             f"TRITON_INTERPRET=1 set before import); got a tensor on {feat.device}. "
                             "Use backend=None or 'reference'.")
    return backend


def _infer_num_regions(*maps: torch.Tensor) -> int:
    """``max id + 1`` over the maps (at least 1). This reads a value back: one device sync."""
    tops = [m.max().long() for m in maps if m.numel() > 0]
    if not tops:
        return 1
    return max(int(torch.stack(tops).max().item()) + 1, 1)


def _zero_loss(feat_q, feat_p, reduction):
    """Loss for inputs without pixels or images: zeros wired to both features (zero gradients)."""
    tie = feat_q.sum() * 0 + feat_p.sum() * 0
    acc = _ref.accumulation_dtype(feat_q.dtype)
    if reduction == "none":
        return torch.zeros(feat_q.shape[0], dtype=acc, device=feat_q.device) + tie
    return tie.to(acc)


# ----------------------------------------------------------------------------------------------
# the fused path
# ----------------------------------------------------------------------------------------------

def _loss_triton(feat_q, feat_p, regions_q, regions_p, *, num_regions, num_samples, temperature,
                 max_regions, subset, normalize, include_self, reduction, generator):
    """Fused Triton pipeline; draws random numbers exactly like the reference."""
    from .kernels.region_contrast import region_contrast_triton
    from .kernels.region_pool import region_index

    batch = feat_q.shape[0]
    index = region_index(regions_q, num_regions, regions_p=regions_p)  # one or two maps
    sel, valid, slot_of = _ref.select_regions(index.counts[0], index.counts[-1], max_regions, subset,
                                              generator)  # (B, M)
    uniforms = _ref.draw_uniforms(2, batch, valid.shape[1], num_samples, generator, feat_q.device)
    exact = feat_q.dtype == torch.float32 and float32_matmul_exact()
    precision = "tf32x3" if exact else "tf32"
    # one autograd node: pooling (means q_k, p_k), InfoNCE per region, reduction
    return region_contrast_triton(feat_q, feat_p, index, valid, uniforms, sel, slot_of, temperature,
                                  normalize, include_self, precision, reduction)


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------

def region_contrast_loss(feat_q: torch.Tensor, feat_p: torch.Tensor, regions_q: torch.Tensor,
                         regions_p: torch.Tensor | None = None, *, num_samples: int = 50,
                         temperature: float = 0.1, num_regions: int | None = None,
                         max_regions: int | None = None, subset: str = "largest",
                         normalize: bool = True, include_self: bool = False,
                         reduction: str = "mean", generator=None,
                         backend: str | None = None) -> torch.Tensor:
    """Localized region contrast loss between two views' decoder features.

    For each region present in both views, ``num_samples`` points are drawn uniformly with
    replacement from the region in each view. Their feature means ``q_k``, ``p_k`` enter a
    K-region InfoNCE: positive ``(q_k, p_k)``, negatives every other valid region of the same
    image in both views::

        L_b = - sum_k log( e^{q_k.p_k/tau} / sum_j [ e^{q_k.p_j/tau} + [j != k] e^{q_k.q_j/tau} ] )

    Valid regions are those with at least one pixel in both views (ids in
    ``[0, num_regions)``). Invalid regions give no term and are no one's negative. Defined
    results, never NaN:

    * one valid region (K=1): the denominator is the positive alone, so the loss is 0 and so is
      its gradient (with ``include_self=True`` it is ``log(1 + e^{(|q|^2 - q.p)/tau})``);
    * a region missing from one view: dropped in both;
    * no valid region (e.g. every pixel ignored): loss 0 with an all-zero feature gradient;
    * a region whose sampled mean is zero (say, features all zero there): with ``normalize`` its
      direction is undefined; as ``F.normalize`` it is divided by ``eps = 1e-12`` instead of its
      norm, which keeps the loss finite but scales its gradient by ``1e12`` (inf in float16).

    Parameters
    ----------
    feat_q, feat_p : torch.Tensor
        ``(B, D, H, W)`` float32, bfloat16 or float16 (float64 on the reference backend); same
        shape, dtype and device; contiguous, channels_last or any strides. Accumulation is
        float32 (float64 for float64 features). On the Triton path the logits of float32
        features are float32-accurate (``tf32x3`` tensor-core products) unless ``torch.set_float32_matmul_precision`` is
        'high' or 'medium', then ``tf32`` like 16-bit features (a third of the tensor-core
        work, 10-bit mantissas). With many regions, channels_last features and 'high' are the
        fast setting.
    regions_q : torch.Tensor
        ``(B, H, W)`` int64 or int32 region ids of the query view; negative ids are ignored.
    regions_p : torch.Tensor, optional
        Region ids of the warped view (``r_q`` warped with the same field). None: both views use
        ``regions_q`` (one region index is built and shared).
    num_samples : int
        ``N`` points per region and view (default 50, the paper's best).
    temperature : float
        ``tau > 0`` (default 0.1, see the module docstring).
    num_regions : int, optional
        ``K``, an upper bound on the ids (e.g. the superpixel op's count or a fixed cap). Ids
        ``>= num_regions`` are ignored like negative ids. **Pass it in training loops**: with
        None, ``K = max id + 1`` is read from the device, which synchronises with the host. Every
        other step stays on the device.
    max_regions : int, optional
        Keep at most this many regions per image (regions present in both views only). The cost
        of the InfoNCE grows as ``M^2``.
    subset : {'largest', 'random'}
        Which regions ``max_regions`` keeps: the largest by ``|k in r_q| + |k in r_p|`` (ties to
        the smaller id), or a uniformly random subset (a draw from ``generator``).
    normalize : bool
        L2-normalise the region means (default True).
    include_self : bool
        Keep ``e^{q_k.q_k/tau}`` in the denominator, the formula exactly as printed (default
        False: the paper's text, "the rest of the local regions").
    reduction : {'mean', 'sum', 'none'}
        ``'mean'`` (default): total over images / number of valid regions kept in the batch
        (after ``max_regions``; 0 when there are none). ``'sum'``: the paper's sum over regions
        and images. ``'none'``: ``(B,)``, each image's sum over its regions.
    generator : torch.Generator or int, optional
        Source of the sample points (and of the random subset). It lives on the features' device;
        an int is a seed for a new generator there; None uses the global RNG. The same seed gives
        the same result, on both backends. Under ``torch.compile`` use None (and
        ``torch.manual_seed``) for one graph: dynamo cannot trace a generator, so a generator
        or a seed costs a graph break around the draw.
    backend : {None, 'triton', 'reference'}
        None: the fused Triton path for float32/bf16/fp16 on CUDA (or on CPU under
        ``TRITON_INTERPRET=1``), else the PyTorch reference. The Triton path is deterministic
        (no floating-point atomics).

    Returns
    -------
    torch.Tensor
        Scalar (``'mean'``, ``'sum'``) or ``(B,)`` (``'none'``), float32 (float64 for float64
        features), differentiable with respect to both features. The Triton backward is first
        order: with ``create_graph=True`` its gradient carries no graph, so second-order
        gradients need the reference backend.

    Raises
    ------
    TypeError
        Non-tensor inputs, non-integer counts, non-bool ``normalize``/``include_self``, a
        generator of the wrong type.
    ValueError
        Mismatched shapes, devices or dtypes; region maps not int64/int32; unsupported feature
        dtypes; a non-positive ``num_samples``, ``temperature``, ``num_regions`` or
        ``max_regions``; a ``temperature`` whose inverse overflows float32; an unknown
        ``subset``, ``reduction`` or ``backend``; ``'triton'`` where it cannot run; a generator
        on another device, or an int seed outside ``[-2**63, 2**64)``.

    Example
    -------
    >>> feat_q = torch.randn(2, 16, 32, 48, requires_grad=True)
    >>> feat_p = torch.randn(2, 16, 32, 48, requires_grad=True)
    >>> regions = torch.arange(32 * 48).reshape(1, 32, 48).expand(2, -1, -1) // 128
    >>> loss = region_contrast_loss(feat_q, feat_p, regions, num_regions=12, generator=0,
    ...                             backend="reference")
    >>> loss.backward()
    >>> loss.shape, feat_q.grad.shape
    (torch.Size([]), torch.Size([2, 16, 32, 48]))
    """
    num_samples, temperature, num_regions, max_regions = _check_options(
        num_samples, temperature, num_regions, max_regions, subset, reduction, backend)
    _check_features("feat_q", feat_q)
    _check_features("feat_p", feat_p)
    if feat_p.shape != feat_q.shape:
        raise ValueError(f"feat_p must have the shape of feat_q {tuple(feat_q.shape)}, got "
                         f"{tuple(feat_p.shape)}.")
    if feat_p.dtype != feat_q.dtype:
        raise ValueError(f"feat_p must have the dtype of feat_q ({feat_q.dtype}), got {feat_p.dtype}.")
    if feat_p.device != feat_q.device:
        raise ValueError(f"feat_p is on {feat_p.device} but feat_q on {feat_q.device}; put both "
                         "on one device.")
    _check_regions("regions_q", regions_q, feat_q)
    if regions_p is regions_q:
        regions_p = None
    if regions_p is not None:
        _check_regions("regions_p", regions_p, feat_q)
    normalize = check_bool("normalize", normalize)
    include_self = check_bool("include_self", include_self)
    generator = _resolve_generator(generator, feat_q.device)
    backend = _resolve_backend(backend, feat_q)
    if feat_q.numel() == 0:
        return _zero_loss(feat_q, feat_p, reduction)
    if num_regions is None:
        num_regions = _infer_num_regions(regions_q, *(() if regions_p is None else (regions_p,)))
    options = dict(num_regions=num_regions, num_samples=num_samples, temperature=temperature,
                   max_regions=max_regions, subset=subset, normalize=normalize,
                   include_self=include_self, reduction=reduction, generator=generator)
    if backend == "triton":
        return _loss_triton(feat_q, feat_p, regions_q, regions_p, **options)
    return _ref.region_contrast_loss_reference(feat_q, feat_p, regions_q, regions_p, **options)


class RegionContrastLoss(nn.Module):
    """:func:`region_contrast_loss` as a module; the options are fixed at construction.

    Parameters
    ----------
    num_samples, temperature, num_regions, max_regions, subset, normalize, include_self, reduction, backend
        As in :func:`region_contrast_loss` (checked here, when the module is built).

    Example
    -------
    >>> criterion = RegionContrastLoss(num_regions=12, backend="reference")
    >>> feat = torch.randn(2, 8, 16, 16)
    >>> regions = torch.arange(256).reshape(1, 16, 16).expand(2, -1, -1) // 32
    >>> criterion(feat, feat.flip(-1), regions, generator=0).shape
    torch.Size([])
    """

    def __init__(self, num_samples: int = 50, temperature: float = 0.1, num_regions: int | None = None,
                 max_regions: int | None = None, subset: str = "largest", normalize: bool = True,
                 include_self: bool = False, reduction: str = "mean", backend: str | None = None):
        super().__init__()
        self.num_samples, self.temperature, self.num_regions, self.max_regions = _check_options(
            num_samples, temperature, num_regions, max_regions, subset, reduction, backend)
        self.subset = subset
        self.normalize = check_bool("normalize", normalize)
        self.include_self = check_bool("include_self", include_self)
        self.reduction = reduction
        self.backend = backend

    def forward(self, feat_q: torch.Tensor, feat_p: torch.Tensor, regions_q: torch.Tensor,
                regions_p: torch.Tensor | None = None, generator=None) -> torch.Tensor:
        """Loss of one batch; ``generator`` as in :func:`region_contrast_loss`."""
        return region_contrast_loss(
            feat_q, feat_p, regions_q, regions_p, num_samples=self.num_samples,
            temperature=self.temperature, num_regions=self.num_regions,
            max_regions=self.max_regions, subset=self.subset, normalize=self.normalize,
            include_self=self.include_self, reduction=self.reduction, generator=generator,
            backend=self.backend)

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, temperature={self.temperature}, "
                f"num_regions={self.num_regions}, max_regions={self.max_regions}, "
                f"subset={self.subset!r}, normalize={self.normalize}, "
                f"include_self={self.include_self}, reduction={self.reduction!r}")


def region_sample_mean(feat: torch.Tensor, regions: torch.Tensor, num_samples: int = 50, *,
                       num_regions: int | None = None, generator=None, return_indices: bool = False,
                       backend: str | None = None):
    """Mean of ``num_samples`` points drawn uniformly with replacement from each region.

    Parameters
    ----------
    feat : torch.Tensor
        ``(B, D, H, W)`` float32, bfloat16 or float16 (float64 on the reference backend), any
        memory layout.
    regions : torch.Tensor
        ``(B, H, W)`` int64 or int32 ids; negative ids (and ids ``>= num_regions``) are ignored.
    num_samples : int
        ``N`` points per region (default 50).
    num_regions : int, optional
        ``K``. None: ``max id + 1``, read from the device (one host sync).
    generator : torch.Generator or int, optional
        On ``feat``'s device, or an int seed. One ``(1, B, K, N)`` float32 uniform draw.
    return_indices : bool
        Also return the sampled pixels.
    backend : {None, 'triton', 'reference'}
        As in :func:`region_contrast_loss`.

    Returns
    -------
    means : torch.Tensor
        ``(B, K, D)`` float32 (float64 for float64 features), differentiable in ``feat``; zero
        for empty regions.
    valid : torch.Tensor
        ``(B, K)`` bool: the region has at least one pixel.
    indices : torch.Tensor
        Only with ``return_indices``: ``(B, K, N)`` int32 flat pixel ``h * W + w`` of every
        sample, -1 for empty regions.

    Raises
    ------
    TypeError, ValueError
        As :func:`region_contrast_loss`.

    Example
    -------
    >>> feat = torch.randn(2, 4, 8, 8)
    >>> regions = torch.arange(64).reshape(1, 8, 8).expand(2, -1, -1) // 16
    >>> means, valid = region_sample_mean(feat, regions, 10, num_regions=4, generator=0,
    ...                                   backend="reference")
    >>> means.shape, bool(valid.all())
    (torch.Size([2, 4, 4]), True)
    """
    num_samples, _, num_regions, _ = _check_options(num_samples, 1.0, num_regions, None, "largest",
                                                    "mean", backend)
    return_indices = check_bool("return_indices", return_indices)
    _check_features("feat", feat)
    _check_regions("regions", regions, feat)
    generator = _resolve_generator(generator, feat.device)
    backend = _resolve_backend(backend, feat)
    if num_regions is None:
        num_regions = _infer_num_regions(regions)
    batch, channels = feat.shape[:2]
    if feat.numel() == 0:
        acc = _ref.accumulation_dtype(feat.dtype)
        means = feat.new_zeros((batch, num_regions, channels), dtype=acc) + feat.sum().to(acc) * 0
        valid = torch.zeros((batch, num_regions), dtype=torch.bool, device=feat.device)
        idx = torch.full((batch, num_regions, num_samples), -1, dtype=torch.int32, device=feat.device)
    elif backend == "triton":
        from .kernels.region_pool import region_index, region_pool
        index = region_index(regions, num_regions)
        valid = index.counts[0] > 0  # (B, K)
        uniforms = _ref.draw_uniforms(1, batch, num_regions, num_samples, generator, feat.device)
        means, idx = region_pool((feat,), index, valid, uniforms)  # (1, B, K, D), (1, B, K, N)
        means, idx = means[0], idx[0]
    else:
        means, valid, idx = _ref.region_sample_mean_reference(feat, regions, num_regions,
                                                             num_samples, generator)
    return (means, valid, idx) if return_indices else (means, valid)
