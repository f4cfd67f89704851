"""Preparing CT the way the LRC paper does: orient, resample, window HU to [0, 1], cut slices.

The default target spacing is 2.5 x 1.0 x 1.0 mm in ``(z, y, x)`` order (SimpleITK's own
``GetSpacing()`` order is ``(x, y, z)``; see :mod:`lrc_fast.data.io`).

HU windows
----------
:data:`WINDOW_PRESETS` holds named ``(low, high)`` windows in HU. ``"abdomen"`` is
``[-175, 250]``, the clip used by the BTCV / UNETR / Swin-UNETR abdominal pipelines
(MONAI's ``ScaleIntensityRanged(a_min=-175, a_max=250)``) and the project default. The others
are the standard radiology display windows written as level/width:

========== ============ ==================================================================
name       [low, high]  source
========== ============ ==================================================================
abdomen    [-175, 250]  BTCV/UNETR clip (level 37.5, width 425)
head_neck  [-160, 240]  soft-tissue neck window, level 40 / width 400 (OpenKBP organs)
lung       [-1350, 150] lung window, level -600 / width 1500
bone       [-500, 1300] bone window, level 400 / width 1800
brain      [0, 80]      brain window, level 40 / width 80
========== ============ ==================================================================
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch

from .io import CTDataError, check_spacing, read_image, spacing_zyx

#: Target voxel size in mm, array order (z, y, x), as in the LRC paper.
DEFAULT_SPACING = (2.5, 1.0, 1.0)

#: Named HU windows ``(low, high)``; see the module docstring for their sources.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (-175.0, 250.0),
    "head_neck": (-160.0, 240.0),
    "lung": (-1350.0, 150.0),
    "bone": (-500.0, 1300.0),
    "brain": (0.0, 80.0),
}

#: Canonical orientation volumes are turned to (a pure axis permutation/flip, no resampling):
#: array axis x runs to the patient's Left, y to Posterior, z to Superior. Axial slices are then
#: shown the radiological way: patient right on the image's left, anterior at the top.
DEFAULT_ORIENTATION = "LPS"

# Heuristic for "is this CT in HU?": real CT holds air (about -1000 HU) or scanner padding
# (-1024, -2048 or -3024) in at least 1 % of its voxels, and its 99th percentile is below
# metal-artefact levels. Normalised data ([0, 1], [0, 255]), raw stored values without the
# rescale intercept (0..4095) and MR all have a 1st percentile >= about 0 and fail.
CT_P1_RANGE = (-3100.0, -500.0)
CT_P99_RANGE = (-200.0, 4000.0)

Window = Union[str, Sequence[float]]


def resolve_window(window: Window) -> tuple[float, float]:
    """Turn a preset name or a ``(low, high)`` pair into a checked float pair.

    Raises
    ------
    ValueError
        Unknown preset name, not two finite numbers, or ``low >= high``.

    Example
    -------
    >>> resolve_window("abdomen")
    (-175.0, 250.0)
    """
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise ValueError(f"window {window!r} is not a preset; use one of {sorted(WINDOW_PRESETS)} or (low, high)")
        return WINDOW_PRESETS[window]
    try:
        low, high = (float(v) for v in window)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"window must be a preset name or (low, high) in HU; got {window!r}") from exc
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"window must satisfy low < high (finite HU values); got {window!r}")
    return low, high


def window_hu(x, window: Window = "abdomen"):
    """Clip HU to a window and scale it linearly to [0, 1].

    Parameters
    ----------
    x : np.ndarray or torch.Tensor, any shape
        CT values in HU.
    window : str or (low, high)
        A key of :data:`WINDOW_PRESETS` or a pair of HU values; default ``"abdomen"`` =
        ``(-175, 250)``.

    Returns
    -------
    np.ndarray or torch.Tensor, same shape, float32
        ``(clip(x, low, high) - low) / (high - low)``, within [0, 1] also where float32
        rounding of a non-integer window would pass 1; a tensor stays on its device.

    Raises
    ------
    TypeError
        If ``x`` is neither a numpy array nor a torch tensor.
    ValueError
        If ``window`` is not a preset or a valid pair.

    Example
    -------
    >>> window_hu(np.array([-1000.0, -175.0, 37.5, 250.0, 3000.0]))
    array([0. , 0. , 0.5, 1. , 1. ], dtype=float32)
    """
    low, high = resolve_window(window)
    width = high - low  # a division (not a reciprocal product) maps an integer `high` to exactly 1.0
    # the last clamp: with a window such as (0.1, 0.3), float32(0.3) - float32(0.1) exceeds
    # float32(0.2), and the top of the window would map to 1.0000001
    if isinstance(x, torch.Tensor):
        return ((x.to(torch.float32).clamp(low, high) - low) / width).clamp_(0.0, 1.0)
    if isinstance(x, np.ndarray):
        out = np.clip(x.astype(np.float32, copy=True), low, high)
        out -= np.float32(low)
        out /= np.float32(width)
        return np.clip(out, 0.0, 1.0, out=out)
    raise TypeError(f"x must be a numpy array or a torch tensor; got {type(x).__name__}")


def check_volume_3d(image: sitk.Image, path) -> None:
    """Raise :class:`CTDataError` naming ``path`` unless ``image`` is a scalar 3D volume.

    A single-slice 3D file (depth 1) counts as 2D.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        n = image.GetNumberOfComponentsPerPixel()
        raise CTDataError(path, f"has {n} components per voxel; a scalar CT volume is needed")
    if image.GetDimension() != 3:
        size = image.GetSize()
        raise CTDataError(path, f"is {image.GetDimension()}D with size {size} (x, y[, z]); a 3D volume is needed")
    if min(image.GetSize()) < 2:
        raise CTDataError(path, f"has size {image.GetSize()} (x, y, z): a single slice, but a 3D volume is needed")


def check_ct_intensity(array: np.ndarray, path) -> None:
    """Raise :class:`CTDataError` naming ``path`` unless ``array`` looks like CT in HU.

    The test: finite values (every voxel), 1st percentile within :data:`CT_P1_RANGE` (air or
    padding is present) and 99th percentile within :data:`CT_P99_RANGE`. Percentiles are
    computed on at most about one million evenly strided voxels. Data normalised to [0, 1] or [0, 255],
    stored values without the rescale intercept, and MR fail it. Volumes cropped tightly
    inside the body also fail; turn the check off for them (``check_intensity=False``).
    """
    flat = array.reshape(-1)
    # every voxel, not the sample: one NaN would spread through resampling into the cache
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        raise CTDataError(path, "contains NaN or infinite values; CT in HU is needed")
    sample = flat[:: max(1, flat.size // 1_000_000)].astype(np.float32)
    p1, p99 = np.percentile(sample, [1, 99])
    if not (CT_P1_RANGE[0] <= p1 <= CT_P1_RANGE[1] and CT_P99_RANGE[0] <= p99 <= CT_P99_RANGE[1]):
        raise CTDataError(
            path,
            f"intensities do not look like CT in HU (1st/99th percentiles {p1:.4g}/{p99:.4g}; expected "
            f"1st in {list(CT_P1_RANGE)} and 99th in {list(CT_P99_RANGE)}). Convert to HU, or pass "
            "check_intensity=False if this volume is known to be CT.",
        )


def check_orientation(orientation: str | None) -> str | None:
    """``orientation`` if it is None or a valid three-letter code, else a ValueError naming it.

    A valid code has one letter of each pair L/R, A/P and S/I, in any order (``"LPS"``,
    ``"RAS"``, ``"SPL"``); ITK accepts nothing else.

    Example
    -------
    >>> check_orientation("RAS")
    'RAS'
    """
    if orientation is None:
        return None
    valid = isinstance(orientation, str) and len(orientation) == 3 and all(
        sum(letter in pair for letter in orientation) == 1 for pair in ("LR", "AP", "SI"))
    if not valid:
        raise ValueError(f"orientation must be None or three capital letters, one of each pair L/R, A/P and "
                         f"S/I (e.g. 'LPS' or 'RAS'); got {orientation!r}")
    return orientation


def orient(image: sitk.Image, orientation: str | None) -> sitk.Image:
    """Permute/flip axes so the direction matches ``orientation`` (e.g. ``"LPS"``); exact, no resampling.

    ``None`` returns ``image`` unchanged.

    Raises
    ------
    ValueError
        ``orientation`` is not a valid code (:func:`check_orientation`).
    """
    if check_orientation(orientation) is None:
        return image
    return sitk.DICOMOrient(image, orientation)


def orientation_of(image: sitk.Image) -> str:
    """The three-letter orientation code of ``image`` (``"LPS"`` for the identity direction)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def resampled_size(
    size_zyx: Sequence[int], spacing_in: Sequence[float], spacing_out: Sequence[float]
) -> tuple[int, ...]:
    """Voxel count per axis after resampling: ``round(size * spacing_in / spacing_out)``, at least 1."""
    return tuple(max(1, int(round(n * a / b))) for n, a, b in zip(size_zyx, spacing_in, spacing_out))


def resample(
    image: sitk.Image,
    spacing: Sequence[float] = DEFAULT_SPACING,
    is_label: bool = False,
    default_value: float | None = None,
) -> sitk.Image:
    """Resample a 3D image to a new voxel size, keeping origin and direction.

    The first voxel centre stays where it is; the size becomes
    ``round(size * old_spacing / new_spacing)`` per axis. CT is interpolated linearly into
    float32; labels with nearest neighbour, keeping their pixel type. There is no
    anti-aliasing (as in MONAI ``Spacingd`` and nnU-Net).

    Parameters
    ----------
    image : SimpleITK.Image
        3D volume.
    spacing : (z, y, x) floats
        New voxel size in mm, array order. Default :data:`DEFAULT_SPACING` = (2.5, 1.0, 1.0).
    is_label : bool
        Nearest-neighbour interpolation for label maps.
    default_value : float, optional
        Value outside the source grid: -1024 (air) for CT and 0 for labels by default.

    Returns
    -------
    SimpleITK.Image
        Resampled image; ``spacing_zyx(result) == spacing``.

    Raises
    ------
    ValueError
        If ``spacing`` is not 3 positive numbers or ``image`` is not 3D.

    Example
    -------
    >>> from lrc_fast.data.io import array_to_image
    >>> img = array_to_image(np.zeros((10, 20, 20), np.float32), spacing=(5.0, 0.5, 0.5))
    >>> resample(img, (2.5, 1.0, 1.0)).GetSize()
    (10, 10, 20)
    """
    spacing = check_spacing(spacing, "spacing")
    if image.GetDimension() != 3:
        raise ValueError(f"image must be 3D; got a {image.GetDimension()}D image")
    old = spacing_zyx(image)
    if not is_label and image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    if np.allclose(old, spacing, rtol=1e-6, atol=0.0):
        return image
    size_zyx = resampled_size(tuple(reversed(image.GetSize())), old, spacing)
    if default_value is None:
        default_value = 0.0 if is_label else -1024.0
    return sitk.Resample(
        image,
        tuple(reversed(size_zyx)),
        sitk.Transform(),
        sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear,
        image.GetOrigin(),
        tuple(reversed(spacing)),
        image.GetDirection(),
        float(default_value),
        image.GetPixelID(),
    )


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether two images share size, spacing (0.1 %), origin (1 % of a voxel) and direction."""
    if a.GetSize() != b.GetSize():
        return False
    sa, sb = np.array(a.GetSpacing()), np.array(b.GetSpacing())
    if not np.allclose(sa, sb, rtol=1e-3, atol=0):
        return False
    if np.abs(np.array(a.GetOrigin()) - np.array(b.GetOrigin())).max() > 0.01 * sa.min():
        return False
    return np.abs(np.array(a.GetDirection()) - np.array(b.GetDirection())).max() <= 1e-3


@dataclass
class PreparedVolume:
    """A preprocessed volume in array order.

    Attributes
    ----------
    image : np.ndarray, (D, H, W) float32
        HU windowed to [0, 1].
    label : np.ndarray, (D, H, W) uint8 or int16, or None
        Label map on the same grid.
    spacing : (z, y, x) floats
        Voxel size in mm after resampling.
    origin, direction : tuples
        SimpleITK-order physical origin and direction of voxel (0, 0, 0).
    source_spacing : (z, y, x) floats
        Voxel size of the file as read.
    """

    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    source_spacing: tuple[float, float, float]


def _label_array(label: sitk.Image, path) -> np.ndarray:
    array = sitk.GetArrayFromImage(label)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise CTDataError(path, "label volume has non-integer values; class ids are needed")
    if array.size and array.min() < 0:
        raise CTDataError(path, f"label volume has negative class ids (min {array.min()})")
    if array.size and array.max() > np.iinfo(np.int16).max:
        raise CTDataError(path, f"label volume has class id {array.max()} > 32767")
    return array.astype(np.uint8 if (array.size == 0 or array.max() <= 255) else np.int16)


def prepare_volume(
    image_path: os.PathLike | str,
    label_path: os.PathLike | str | None = None,
    *,
    spacing: Sequence[float] | None = DEFAULT_SPACING,
    window: Window = "abdomen",
    orientation: str | None = DEFAULT_ORIENTATION,
    check_intensity: bool = True,
    series_id: str | None = None,
) -> PreparedVolume:
    """Read a CT volume (and its label map), orient, resample and window it.

    Steps: read with SimpleITK; check it is a scalar 3D volume and (optionally) CT in HU;
    turn it to ``orientation``; resample to ``spacing`` (linear); window to [0, 1]. The label
    map is read, turned to the same orientation, checked to lie on the image's grid, and
    resampled with nearest neighbour onto the resampled image's grid.

    Parameters
    ----------
    image_path : path
        CT file (NIfTI, NRRD, MHA/MHD) or DICOM series folder.
    label_path : path, optional
        Label map file or folder on the same grid as the image.
    spacing : (z, y, x) floats or None
        Target voxel size in mm (default 2.5 x 1 x 1); None keeps the native grid.
    window : str or (low, high)
        HU window, a key of :data:`WINDOW_PRESETS` or a pair (default ``"abdomen"``).
    orientation : str or None
        Target orientation code (default ``"LPS"``); None keeps the stored axis order.
    check_intensity : bool
        Run :func:`check_ct_intensity` on the image.
    series_id : str, optional
        DICOM SeriesInstanceUID when the image folder holds several series.

    Returns
    -------
    PreparedVolume
        ``image`` (D, H, W) float32 in [0, 1], ``label`` (D, H, W) uint8/int16 or None.

    Raises
    ------
    FileNotFoundError
        If a path does not exist.
    CTDataError (a ValueError)
        Naming the file: unreadable, not 3D, not CT, bad label values, or a label grid
        different from the image grid.
    ValueError
        Bad ``spacing``, ``window`` or ``orientation``.

    Example
    -------
    >>> from lrc_fast.data import write_phantom_dataset
    >>> case = write_phantom_dataset("phantom", n_cases=1)[0]
    >>> vol = prepare_volume(case.image, case.label)
    >>> vol.image.shape, vol.spacing
    ((77, 384, 384), (2.5, 1.0, 1.0))
    """
    window = resolve_window(window)
    check_orientation(orientation)
    if spacing is not None:
        spacing = check_spacing(spacing, "spacing")
    image = read_image(image_path, series_id)
    check_volume_3d(image, image_path)
    if check_intensity:
        check_ct_intensity(sitk.GetArrayViewFromImage(image), image_path)
    source_spacing = spacing_zyx(image)
    image = orient(image, orientation)
    label = None
    if label_path is not None:
        label = read_image(label_path)
        check_volume_3d(label, label_path)
        label = orient(label, orientation_of(image))
        if not same_grid(image, label):
            raise CTDataError(
                label_path,
                f"label grid (size {label.GetSize()}, spacing {label.GetSpacing()}, origin "
                f"{label.GetOrigin()}) does not match its image {image_path} (size {image.GetSize()}, "
                f"spacing {image.GetSpacing()}, origin {image.GetOrigin()}); all in (x, y, z) order",
            )
        label.CopyInformation(image)
    target = spacing if spacing is not None else spacing_zyx(image)
    image = resample(image, target)
    hu = sitk.GetArrayFromImage(image)
    label_array = None
    if label is not None:
        label = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, label.GetPixelID())
        label_array = _label_array(label, label_path)
    return PreparedVolume(
        image=window_hu(hu, window),
        label=label_array,
        spacing=spacing_zyx(image),
        origin=tuple(image.GetOrigin()),
        direction=tuple(image.GetDirection()),
        source_spacing=source_spacing,
    )


def slice_with_neighbors(volume, index: int, n_neighbors: int = 0):
    """One axial slice, optionally with its 2.5D neighbours as channels.

    Parameters
    ----------
    volume : np.ndarray or torch.Tensor, (D, H, W)
        Volume in array order.
    index : int
        Slice index, ``0 <= index < D``.
    n_neighbors : int
        Slices taken on each side; out-of-range neighbours repeat the edge slice.

    Returns
    -------
    same type as ``volume``, (1 + 2 * n_neighbors, H, W)
        Channels ordered ``index - n, ..., index, ..., index + n``; the centre slice is
        channel ``n_neighbors``.

    Raises
    ------
    ValueError
        Volume not 3D, index out of range, or negative ``n_neighbors``.

    Example
    -------
    >>> slice_with_neighbors(np.arange(3)[:, None, None] * np.ones((3, 2, 2)), 0, 1)[:, 0, 0]
    array([0., 0., 1.])
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D (D, H, W); got shape {tuple(volume.shape)}")
    depth = volume.shape[0]
    if not 0 <= index < depth:
        raise ValueError(f"index must be in [0, {depth}); got {index}")
    if n_neighbors < 0:
        raise ValueError(f"n_neighbors must be >= 0; got {n_neighbors}")
    rows = np.clip(np.arange(index - n_neighbors, index + n_neighbors + 1), 0, depth - 1)
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    block = volume[lo:hi]  # contiguous read, at most 1 + 2n slices
    return block[rows - lo] if isinstance(block, np.ndarray) else block[torch.from_numpy(rows - lo)]


def check_slice_size(size, name: str = "slice_size") -> tuple[int, int]:
    """``size`` as ``(H, W)`` ints, or a ValueError naming it: two positive whole numbers needed.

    Example
    -------
    >>> check_slice_size([256, 256.0])
    (256, 256)
    """
    try:
        ok = len(size) == 2 and all(not isinstance(s, bool) and int(s) == s and s >= 1 for s in size)
    except (TypeError, ValueError):  # not a sequence, or items that are not numbers
        ok = False
    if not ok:
        raise ValueError(f"{name} must be (H, W): two positive ints, or None; got {size!r}")
    return int(size[0]), int(size[1])


def crop_or_pad(array, size: Sequence[int] | None, pad_value: float = 0.0):
    """Centre-crop or pad the last two axes to ``size`` = (H, W); None returns ``array``.

    Works on numpy arrays of shape (..., H, W). Padding splits the extra rows/columns with the
    smaller half first, and cropping takes the centred window.

    Raises
    ------
    ValueError
        If ``size`` is not two positive ints.
    """
    if size is None:
        return array
    check_slice_size(size, "size")
    out = array
    for axis, target in zip((-2, -1), size):
        n = out.shape[axis]
        if n > target:
            start = (n - target) // 2
            out = np.take(out, np.arange(start, start + target), axis=axis)
        elif n < target:
            before = (target - n) // 2
            widths = [(0, 0)] * out.ndim
            widths[axis] = (before, target - n - before)
            out = np.pad(out, widths, constant_values=pad_value)
    return out
