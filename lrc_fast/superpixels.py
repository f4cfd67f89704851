"""Felzenszwalb-Huttenlocher superpixels, batched, on CPU and GPU.

``felzenszwalb`` gives scikit-image's ``skimage.segmentation.felzenszwalb`` labels for every
single-channel slice of a batch. Backends:

``"cpu"``      the exact algorithm in C++ (``csrc/cpu``), slices in parallel over all cores;
``"cuda"``     the GPU backend (``csrc/cuda``): one kernel for the whole batch;
``"emulate"``  the GPU backend's round schedule executed sequentially on the CPU, so the GPU
               algorithm is checked on machines without a GPU;
``"skimage"``  a loop calling scikit-image, slice by slice (the reference).

The exactness contract: scikit-image sorts edge costs with numpy's unstable quicksort, so its
treatment of tied costs depends on the CPU. This package visits edges in the stable total order
(cost, edge index). On inputs whose edge costs have no ties the labels equal scikit-image's;
on every input the ``"cpu"``, ``"emulate"`` and ``"cuda"`` backends give identical labels.
"""
from __future__ import annotations

import math
import numbers
from functools import lru_cache

import numpy as np
import torch

from ._checks import check_bool
from ._ext import has_cuda_extension, require_extension

_BACKENDS = ("cpu", "cuda", "emulate", "skimage")
# The smoothing of scikit-image: scipy.ndimage.gaussian_filter(truncate=4.0) skips an axis
# whose sigma is at most 1e-15.
_TRUNCATE = 4.0
_SIGMA_EPS = 1e-15
# Minimum edges per cost window of the GPU schedule's main pass (csrc/felzenszwalb_schedule.h).
# Smaller windows re-offer fewer waiting edges per round; larger ones give the hub extension
# frontiers beyond its 2048-edge sort, which then skips. On real 512x512 CT, 2048 with the
# extension needs 231 rounds and 0.53 offers per edge, against 995 and 19.8 for one window
# without it (CPU emulation, benchmarks/RESULTS.md). To be tuned with bench_felzenszwalb's sweep.
_WINDOW = 2048


@lru_cache(maxsize=64)
def gaussian_taps(sigma: float) -> np.ndarray | None:
    """scipy's 1-D Gaussian taps for ``sigma`` (float64, length ``2 * radius + 1``).

    Computed with the same numpy operations as ``scipy.ndimage._gaussian_kernel1d``, so the
    compiled smoothing rounds exactly like scipy. ``None`` when scipy would skip smoothing.
    """
    if sigma <= _SIGMA_EPS:
        return None
    radius = int(_TRUNCATE * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (float(sigma) * float(sigma)) * x**2)
    phi = phi / phi.sum()
    taps = np.ascontiguousarray(phi[::-1])
    taps.setflags(write=False)
    return taps


def _taps_on(sigma: float, device: torch.device) -> torch.Tensor:
    """The taps as a float64 tensor on ``device``, cached so repeated calls copy nothing."""
    return _taps_cached(float(sigma), str(device))


@lru_cache(maxsize=32)  # bounded: a loop may draw sigma anew for each call
def _taps_cached(sigma: float, device: str) -> torch.Tensor:
    taps = gaussian_taps(sigma)
    host = torch.from_numpy(taps.copy()) if taps is not None else torch.empty(0, dtype=torch.float64)
    return host.to(device)


def _check_params(scale, sigma, min_size) -> tuple[float, float, int]:
    for name, value in (("scale", scale), ("sigma", sigma)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
        if not math.isfinite(float(value)) or float(value) < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, numbers.Integral):
        raise TypeError(f"min_size must be an integer, got {min_size!r} of type {type(min_size).__name__}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    # any min_size above the pixel count merges each slice into one region; int64 for the extension
    return float(scale), float(sigma), min(int(min_size), 2**62)


def _check_launch(launch) -> None:
    ok = (isinstance(launch, (tuple, list)) and len(launch) == 2
          and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in launch))
    if not ok or not 1 <= launch[0] <= 8 or launch[1] not in (256, 512, 1024):
        raise ValueError(f"launch must be (CTAs per slice in 1..8, threads per CTA in 256/512/1024), got {launch!r}")


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) not in (2, 3):
        raise ValueError(
            f"images must be one slice (H, W) or a batch of slices (B, H, W), got shape {tuple(shape)}"
        )
    if len(shape) == 3 and shape[2] in (3, 4) and shape[0] >= 8 and shape[1] >= 8:
        raise ValueError(
            f"images has shape {tuple(shape)}, which looks like one RGB/RGBA colour image; felzenszwalb "
            "segments single-channel slices (H, W) or batches (B, H, W). Convert colour images to one "
            "channel first, e.g. skimage.color.rgb2gray(image). Slices that really are 3 or 4 pixels "
            "wide can be passed one at a time as (H, W) arrays."
        )
    if min(shape) == 0:
        raise ValueError(f"images is empty (shape {tuple(shape)}); every dimension must be at least 1")
    h, w = shape[-2], shape[-1]
    if 4 * h * w >= 2**31:
        raise ValueError(
            f"slices of {h}x{w} pixels are too large: edge indices are int32, so H * W must stay below 2**29"
        )


def _numpy_as_float64(images: np.ndarray) -> np.ndarray:
    """skimage's img_as_float64 (uint8 / 255, int16 / 32767 clipped at -1, floats unchanged)."""
    from skimage.util import img_as_float64

    if images.dtype.kind not in "biuf":
        raise TypeError(f"images must have a real dtype (bool, integer or float), got {images.dtype}")
    out = np.ascontiguousarray(img_as_float64(images), dtype=np.float64)  # native byte order
    return out if out.flags.writeable else out.copy()  # torch.from_numpy warns on read-only arrays


def _torch_as_float64(images: torch.Tensor) -> torch.Tensor:
    """The same conversion as skimage's img_as_float64, in torch on the tensor's device."""
    dt = images.dtype
    if dt.is_complex:
        raise TypeError(f"images must have a real dtype (bool, integer or float), got {dt}")
    if dt == torch.bool or dt.is_floating_point:
        return images.to(torch.float64).contiguous()
    info = torch.iinfo(dt)
    scaled = images.to(torch.float64) * (1.0 / info.max)
    if info.min < 0:
        scaled = scaled.clamp_min(-1.0)
    return scaled.contiguous()


@lru_cache(maxsize=None)
def _slices_at_once(device_index: int, cluster: int) -> int:
    """How many slices of a (cluster, 1024) launch the device runs at once (a host query)."""
    with torch.cuda.device(device_index):
        return require_extension().felzenszwalb_cuda_max_active_teams(cluster, 1024)


def _default_launch(batch: int, device: torch.device) -> tuple[int, int]:
    """(CTAs per slice, threads per CTA) for the CUDA backend.

    From the launch sweeps of bench_felzenszwalb.py (benchmarks/RESULTS.md, 512x512 phantom and
    real CT). On an H200 at B=16, clusters of 6 CTAs were fastest (13.9-14.3 ms; 4 CTAs
    14.9-15.2 ms; 7 and 8 CTAs 18.4-24.7 ms, as only 15 such clusters fit on the GPU at once
    and the 16th slice ran in a second wave; one CTA 25.5-27.0 ms). At B=256 two CTAs per slice
    (2,367-2,840 slices/s; one CTA 4% faster on real CT, 5% slower on the phantom). So the
    largest cluster of 6 or 4 CTAs whose slices all run at once, as the device reports
    (cudaOccupancyMaxActiveClusters), else 2. 1024 threads per CTA won at 1, 2 and 4 CTAs on an
    H100. Clusters need sm_90.
    """
    props = torch.cuda.get_device_properties(device)
    if props.major < 9:
        return 1, 1024
    index = device.index if device.index is not None else torch.cuda.current_device()
    for cluster in (6, 4):
        if batch <= _slices_at_once(index, cluster):
            return cluster, 1024
    return 2, 1024


def _segment(images64: torch.Tensor, scale: float, sigma: float, min_size: int, backend: str,
             launch: tuple[int, int] | None = None, window: int = _WINDOW, extend: bool = True,
             seed: int = 0, slots: bool = False):
    """Run a compiled backend on a (B, H, W) float64 tensor: (labels, counts, stats).

    Backends: "cpu", "emulate", "cuda" (see the module docstring) and "simt": the CUDA kernel's
    own source run on the CPU by the SIMT simulator of ``csrc/simt`` (slow, for tests: every
    CUDA thread a fiber, ``launch`` as for "cuda", default (1, 256); ``seed`` 0 runs the
    threads in order, any other seed in a random interleaving).
    ``window`` is the minimum number of edges per cost window of the schedule's main pass;
    ``extend`` runs the hub extension after each main-pass round (both: felzenszwalb_schedule.h).
    ``slots`` runs the main pass on the slot engine instead (felzenszwalb_schedule.h, "slot
    engine"): one CTA, each window's roots in shared memory, every window drained before the
    next; ``window`` and ``extend`` then apply only where it hands the pass to the global rounds.
    On CUDA it needs 224 KB of shared memory per CTA (sm_90: H100, H200).
    ``stats`` (B, 5) int64 describes the schedule's work: rounds of the main and the min_size
    pass, the edges offered in phase A of each pass, and the edges the hub extension decided.
    "cuda", "simt" and "emulate" give the same stats for the same ``window`` and ``extend``;
    "cpu" gives zeros.
    """
    ext = require_extension()
    k = scale / 255.0  # skimage: scale = float(scale) / 255.
    if backend == "cuda":
        cluster, threads = launch if launch is not None else _default_launch(images64.shape[0], images64.device)
        return ext.felzenszwalb_cuda(images64, _taps_on(sigma, images64.device), k, min_size, cluster, threads,
                                     window, extend, slots)
    taps = _taps_on(sigma, torch.device("cpu"))
    if backend == "simt":
        cluster, threads = launch if launch is not None else (1, 256)
        return ext.felzenszwalb_simt(images64, taps, k, min_size, cluster, threads, window, extend, seed, slots)[:3]
    return ext.felzenszwalb_cpu(images64, taps, k, min_size, backend == "emulate", window, extend, slots)


def _skimage_loop(images64: np.ndarray, scale: float, sigma: float, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    from skimage.segmentation import felzenszwalb as sk_felzenszwalb

    labels = np.stack(
        [sk_felzenszwalb(s, scale=scale, sigma=sigma, min_size=min_size, channel_axis=None) for s in images64]
    ).astype(np.int64)
    counts = labels.reshape(labels.shape[0], -1).max(axis=1) + 1
    return labels, counts


def felzenszwalb(images, scale: float = 1.0, sigma: float = 0.8, min_size: int = 20, *,
                 return_counts: bool = False, backend: str | None = None, check_finite: bool = True,
                 launch: tuple[int, int] | None = None):
    """Felzenszwalb-Huttenlocher superpixels of each slice, as scikit-image computes them.

    Parameters
    ----------
    images : (H, W) or (B, H, W) numpy array or torch tensor, any real dtype
        Single-channel slices. Converted like ``skimage.util.img_as_float64``: floats are
        used as they are, uint8 is divided by 255, int16 by 32767 (clipped at -1), and so on.
        For CT, window the HU values to [0, 1] first (``scale`` is relative to that range).
    scale : float, default 1.0
        Observation level; larger gives fewer, larger regions. As in scikit-image the merge
        threshold is ``scale / 255 / size``.
    sigma : float, default 0.8
        Standard deviation of the Gaussian pre-smoothing (scipy's, mode 'reflect', truncate 4).
    min_size : int, default 20
        Regions smaller than this are merged into a neighbour afterwards.
    return_counts : bool, default False
        Also return K, the number of regions of each slice.
    backend : {None, "cpu", "cuda", "emulate", "skimage"}
        None picks ``"cuda"`` for CUDA tensors and ``"cpu"`` otherwise. ``"cpu"``, ``"emulate"``
        and ``"skimage"`` run on the host (a CUDA tensor is copied there and the result back).
    check_finite : bool, default True
        Refuse NaN and Inf. On a CUDA tensor this check synchronises with the device; a
        training loop that feeds windowed CT can pass False (non-finite pixels then never
        merge in the main pass; nothing is read out of bounds).
    launch : (int, int), optional
        CUDA backend only (an error with another backend; ignored when ``backend=None`` picks
        the CPU): (CTAs per slice, threads per CTA). CTAs per slice above 1 use a
        thread-block cluster and need an sm_90 GPU. Default: the largest cluster of 6 or 4 CTAs
        (1024 threads) whose whole batch the device runs at once, else (2, 1024); (1, 1024)
        before sm_90.

    Returns
    -------
    labels : int64 array or tensor, the shape of ``images``
        Region ids 0..K-1 of each slice, numbered in order of first appearance in raster order
        (scikit-image's numbering). numpy in, numpy out; torch in, torch out on the same device.
    counts : (B,) or () int64, only with ``return_counts``
        K of each slice.

    Raises
    ------
    TypeError
        ``images`` is not a numpy array or a dense torch tensor with data (sparse and meta
        tensors are refused), or not of a real dtype; a parameter has the wrong type
        (``return_counts`` and ``check_finite`` must be bools).
    ValueError
        Bad shape (not 2-D or 3-D, empty, or ``(H, W, 3)``/``(H, W, 4)`` with ``H, W >= 8``,
        which looks like a colour image), NaN or Inf, negative ``scale``, ``sigma`` or
        ``min_size``, an unknown backend, ``launch`` with a host backend, or ``"cuda"`` without
        a CUDA tensor.

    Notes
    -----
    Ties: scikit-image's edge sort is unstable, so when edge costs tie its labels depend on the
    CPU it runs on. Here edges are visited in the stable order (cost, edge index): the labels
    equal scikit-image's on every input without tied edge costs, and the compiled backends agree
    with each other on every input.

    Example
    -------
    >>> import numpy as np, lrc_fast
    >>> img = np.zeros((6, 8)); img[:, 4:] = 1.0
    >>> lrc_fast.felzenszwalb(img, scale=1, sigma=0, min_size=2)
    array([[0, 0, 0, 0, 1, 1, 1, 1],
           [0, 0, 0, 0, 1, 1, 1, 1],
           [0, 0, 0, 0, 1, 1, 1, 1],
           [0, 0, 0, 0, 1, 1, 1, 1],
           [0, 0, 0, 0, 1, 1, 1, 1],
           [0, 0, 0, 0, 1, 1, 1, 1]])
    """
    if not isinstance(images, (np.ndarray, torch.Tensor)):
        raise TypeError(f"images must be a numpy array or a torch tensor, got {type(images).__name__}")
    if isinstance(images, torch.Tensor) and (images.layout != torch.strided or images.device.type == "meta"):
        raise TypeError(f"images must be a dense tensor with data (torch.strided, not on 'meta'), got "
                        f"layout {images.layout} on {images.device}; convert sparse input with .to_dense()")
    scale, sigma, min_size = _check_params(scale, sigma, min_size)
    return_counts = check_bool("return_counts", return_counts)
    check_finite = check_bool("check_finite", check_finite)
    if backend is not None and backend not in _BACKENDS:
        raise ValueError(f"backend must be None or one of {_BACKENDS}, got {backend!r}")
    if launch is not None:
        _check_launch(launch)
        if backend not in (None, "cuda"):
            raise ValueError(f"launch applies to the CUDA backend only, got backend={backend!r}")
    _check_shape(tuple(images.shape))
    single = images.ndim == 2

    is_numpy = isinstance(images, np.ndarray)
    if is_numpy:
        images64 = torch.from_numpy(_numpy_as_float64(images))
    else:
        images64 = _torch_as_float64(images.detach())
    if single:
        images64 = images64.unsqueeze(0)
    if check_finite and not bool(torch.isfinite(images64).all()):
        raise ValueError("images contains NaN or Inf; felzenszwalb needs finite values")

    device = images64.device
    if backend is None:
        backend = "cuda" if device.type == "cuda" else "cpu"
    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend='cuda' needs a CUDA tensor, got images on {device}")
        if not has_cuda_extension():
            raise ValueError("backend='cuda': lrc_fast._C was built without CUDA; reinstall on a machine with "
                             "a CUDA torch and toolkit (or FORCE_CUDA=1)")
        labels, counts, _ = _segment(images64, scale, sigma, min_size, "cuda", launch)
    elif backend == "skimage":
        lab, cnt = _skimage_loop(images64.cpu().numpy(), scale, sigma, min_size)
        labels, counts = torch.from_numpy(lab).to(device), torch.from_numpy(cnt).to(device)
    else:
        labels, counts, _ = _segment(images64.cpu(), scale, sigma, min_size, backend)
        labels, counts = labels.to(device), counts.to(device)

    if single:
        labels, counts = labels[0], counts[0]
    if is_numpy:
        labels, counts = labels.numpy(), counts.numpy()
    return (labels, counts) if return_counts else labels
