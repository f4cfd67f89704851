"""Reading and writing CT volumes with SimpleITK: NIfTI, NRRD, MHA/MHD and DICOM series folders.

Axis orders
-----------
SimpleITK reports sizes, spacings and origins in ``(x, y, z)`` order, while
``sitk.GetArrayFromImage`` returns arrays indexed ``(z, y, x)``. Everything public in
``lrc_fast.data`` uses the array order: shapes are ``(D, H, W)`` and spacings are
``(z, y, x)`` in millimetres; :func:`spacing_zyx` and :func:`array_to_image` convert between
the two orders.
"""
from __future__ import annotations

import gzip
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

#: File name endings read as single-file volumes (case-insensitive). Folders are read as DICOM series.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

# Relative tolerance on slice gaps before a DICOM series counts as non-uniform.
_DICOM_GAP_RTOL = 0.01


class CTDataError(ValueError):
    """A volume that cannot be used: unreadable, not 3D, not CT, or a mismatched label.

    The message always names the file; ``path`` holds it too.
    """

    def __init__(self, path: os.PathLike | str, message: str):
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


class SkippedInputWarning(UserWarning):
    """Issued once at the end of a folder scan or cache build, listing every skipped input."""


def report_skipped(skipped: Sequence[tuple[str, str]], strict: bool, action: str) -> None:
    """Report inputs that were left out: raise when ``strict``, else one warning listing them all.

    Parameters
    ----------
    skipped : list of (path, reason)
        What was left out and why.
    strict : bool
        Raise :class:`CTDataError` (naming the first path, listing all) instead of warning.
    action : str
        What was being done, for the message (e.g. ``"scanning /data/ct"``).
    """
    if not skipped:
        return
    lines = "\n".join(f"  {path}: {reason}" for path, reason in skipped)
    message = f"{len(skipped)} input(s) skipped while {action}:\n{lines}"
    if strict:
        raise CTDataError(skipped[0][0], f"strict mode: {message}")
    warnings.warn(message, SkippedInputWarning, stacklevel=3)


def volume_suffix(path: os.PathLike | str) -> str | None:
    """The recognised volume ending of ``path`` (e.g. ``".nii.gz"``), or None."""
    name = Path(path).name.lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def strip_volume_suffix(path: os.PathLike | str) -> str:
    """File name without its volume ending: ``"pt_1_ct.nii.gz" -> "pt_1_ct"``."""
    name = Path(path).name
    suffix = volume_suffix(name)
    return name[: -len(suffix)] if suffix else name


def spacing_zyx(image: sitk.Image) -> tuple[float, ...]:
    """Spacing of ``image`` in array order ``(z, y, x)`` (SimpleITK reports ``(x, y, z)``)."""
    return tuple(float(s) for s in reversed(image.GetSpacing()))


def array_to_image(
    array: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
) -> sitk.Image:
    """Wrap a ``(D, H, W)`` array as a SimpleITK image.

    Parameters
    ----------
    array : np.ndarray, shape (D, H, W)
        Voxel values, indexed ``(z, y, x)``.
    spacing : sequence of 3 floats
        Voxel size in mm in array order ``(z, y, x)``.
    origin, direction : optional
        Physical origin and direction cosines in SimpleITK order ``(x, y, z)``; the default is
        the origin at 0 and the identity direction.

    Returns
    -------
    SimpleITK.Image
        With ``GetSpacing() == tuple(reversed(spacing))``.

    Raises
    ------
    ValueError
        If ``array`` is not 3D or ``spacing`` does not hold 3 positive numbers.

    Example
    -------
    >>> img = array_to_image(np.zeros((4, 5, 6), np.int16), spacing=(2.5, 1.0, 0.5))
    >>> img.GetSize(), img.GetSpacing()
    ((6, 5, 4), (0.5, 1.0, 2.5))
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"array must be 3D (D, H, W); got shape {array.shape}")
    spacing = check_spacing(spacing, "spacing")
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(spacing)))
    if origin is not None:
        image.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in direction))
    return image


def check_spacing(spacing: Sequence[float], name: str) -> tuple[float, float, float]:
    """Return ``spacing`` as 3 positive floats, or raise a ValueError naming ``name``."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be 3 positive numbers (z, y, x) in mm; got {spacing!r}") from exc
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name} must be 3 positive numbers (z, y, x) in mm; got {spacing!r}")
    return values  # type: ignore[return-value]


def dicom_series_ids(folder: os.PathLike | str) -> tuple[str, ...]:
    """SeriesInstanceUIDs of the DICOM series directly inside ``folder`` (empty when none)."""
    return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def dicom_series_files(folder: os.PathLike | str, series_id: str | None = None) -> list[str]:
    """Files of one DICOM series in ``folder``, sorted by slice position along the slice normal.

    Parameters
    ----------
    folder : path
        A folder holding the series' files.
    series_id : str, optional
        SeriesInstanceUID; needed only when the folder holds more than one series.

    Returns
    -------
    list of str
        File paths, first slice first (GDCM's order: increasing position along the normal).

    Raises
    ------
    CTDataError
        If the folder holds no DICOM series, several series and no ``series_id``, or not
        the requested one.
    """
    return _series_files(folder, dicom_series_ids(folder), series_id)


def _series_files(folder, ids: Sequence[str], series_id: str | None) -> list[str]:
    """:func:`dicom_series_files` given the folder's series ``ids`` (one GDCM scan fewer)."""
    if not ids:
        raise CTDataError(folder, "no DICOM series found in this folder")
    if series_id is None:
        if len(ids) > 1:
            raise CTDataError(
                folder, f"holds {len(ids)} DICOM series {list(ids)}; pass series_id= to choose one"
            )
        series_id = ids[0]
    elif series_id not in ids:
        raise CTDataError(folder, f"has no DICOM series {series_id!r}; it holds {list(ids)}")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id))


def series_file_names(folder: os.PathLike | str, ids: Sequence[str]) -> set[str]:
    """Names of the files that belong to any of the series ``ids`` directly inside ``folder``."""
    return {os.path.basename(f) for i in ids for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), i)}


def read_dicom_series(folder: os.PathLike | str, series_id: str | None = None) -> sitk.Image:
    """Read a DICOM series folder as one 3D image, checking the slice geometry.

    Slices are sorted by their position along the slice normal (GDCM), rescaled to HU by the
    reader, and checked: one orientation for all slices, no duplicate positions, and uniform
    gaps (within 1 %). SimpleITK alone would only warn and average a non-uniform spacing.

    Parameters
    ----------
    folder : path
        Folder with the series' files.
    series_id : str, optional
        SeriesInstanceUID when the folder holds several series.

    Returns
    -------
    SimpleITK.Image
        3D image; ``GetSpacing()[2]`` is the measured slice gap.

    Raises
    ------
    CTDataError
        Naming the folder: no or ambiguous series, unreadable files (also a damaged slice that
        GDCM would leave out of the series: a file with DICOM's magic bytes, or named like the
        slices read, that belongs to no series), mixed orientations, duplicate or non-uniform
        slice positions.

    Example
    -------
    >>> image = read_dicom_series("ct_dicom/")           # doctest: +SKIP
    >>> spacing_zyx(image)                                # doctest: +SKIP
    (2.0, 0.9765625, 0.9765625)
    """
    ids = dicom_series_ids(folder)
    files = _series_files(folder, ids, series_id)
    unread = _unread_slices(folder, ids, files)
    if unread:
        raise CTDataError(
            folder,
            f"{len(unread)} file(s) look like slices but could not be read as DICOM (damaged or "
            f"truncated?): {unread[:5]}{' ...' if len(unread) > 5 else ''}; repair or remove them",
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise CTDataError(folder, f"could not read the DICOM series: {_itk_reason(exc)}") from exc
    if len(files) > 1:
        _check_series_geometry(folder, reader, files)
    return image


def _unread_slices(folder, ids: Sequence[str], files: list[str]) -> list[str]:
    """Names of the files directly in ``folder`` that GDCM left out of every series (it skips
    what it cannot parse, so a damaged first or last slice would vanish without a trace) but
    that look like slices: DICOM's magic bytes, or the name style that every file read has.

    ``ids``: the folder's series; ``files``: the chosen one's. Hidden files and ``DICOMDIR`` are
    not slices.
    """
    claimed = {os.path.basename(f) for f in files} if len(ids) == 1 else series_file_names(folder, ids)
    styles = {_name_style(name) for name in claimed}
    unread = []
    for entry in sorted(Path(folder).iterdir()):
        name = entry.name
        if name in claimed or name.startswith(".") or name.upper() == "DICOMDIR" or not entry.is_file():
            continue
        if _has_dicom_magic(entry) or (len(styles) == 1 and _name_style(name) in styles):
            unread.append(name)
    return unread


def _name_style(name: str) -> str:
    # a file name's extension, with all-digit ones (UID-like names such as CT.1.3.12.2...16573) alike
    suffix = Path(name).suffix.lower()
    return "digits" if suffix[1:].isdigit() else suffix


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)  # after the 128-byte preamble
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _check_series_geometry(folder, reader: sitk.ImageSeriesReader, files: list[str]) -> None:
    orientations, positions = [], []
    for i in range(len(files)):
        try:
            orientations.append(_dicom_floats(reader.GetMetaData(i, "0020|0037")))
            positions.append(_dicom_floats(reader.GetMetaData(i, "0020|0032")))
        except RuntimeError as exc:
            raise CTDataError(
                folder, f"slice {files[i]} has no ImagePositionPatient/ImageOrientationPatient"
            ) from exc
    orientations = np.asarray(orientations)  # (N, 6)
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        raise CTDataError(folder, "the slices of this series have different orientations")
    normal = np.cross(orientations[0, :3], orientations[0, 3:])
    along = np.asarray(positions) @ normal  # (N,) position along the slice normal, mm
    gaps = np.diff(along)
    if np.abs(gaps).min() < 1e-3:
        raise CTDataError(folder, "two slices share one position (duplicate or mixed acquisitions)")
    median = np.median(np.abs(gaps))
    if np.abs(np.abs(gaps) - median).max() > _DICOM_GAP_RTOL * median:
        raise CTDataError(
            folder,
            f"non-uniform slice gaps {np.round(np.abs(gaps), 3).tolist()} mm; "
            "resample or split the series before use",
        )


def _dicom_floats(value: str) -> list[float]:
    return [float(v) for v in value.strip().split("\\")]


def read_image(path: os.PathLike | str, series_id: str | None = None) -> sitk.Image:
    """Read a volume file (NIfTI, NRRD, MHA/MHD) or a DICOM series folder.

    Parameters
    ----------
    path : path
        A volume file, or a folder holding one DICOM series.
    series_id : str, optional
        SeriesInstanceUID, for folders with several series.

    Returns
    -------
    SimpleITK.Image
        As stored (no resampling, no orientation change). CT from DICOM is in HU.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CTDataError
        If the file or series cannot be read (corrupt, truncated, unknown format); the
        message names the file.

    Example
    -------
    >>> path = write_image(array_to_image(np.zeros((48, 256, 256), np.int16)), "case_000.nii.gz")
    >>> image = read_image(path)
    >>> sitk.GetArrayFromImage(image).shape
    (48, 256, 256)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_dicom_series(path, series_id)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise CTDataError(path, f"could not read the file (corrupt, truncated or unknown format; "
                                f"{path.stat().st_size} bytes): {_itk_reason(exc)}") from exc
    if volume_suffix(path) in (".nii", ".nii.gz"):
        _check_nifti_complete(path)
    return image


def _check_nifti_complete(path: Path) -> None:
    """Raise unless the NIfTI file holds all its voxel bytes (and, if gzipped, a valid stream).

    ITK's NIfTI reader accepts truncated files and fills the missing voxels silently.
    """
    with open(path, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    try:
        if compressed:  # decompress it all: a truncated or damaged stream raises here
            with gzip.open(path, "rb") as handle:
                header = handle.read(540)
                total = len(header)
                while chunk := handle.read(1 << 22):
                    total += len(chunk)
        else:
            with open(path, "rb") as handle:
                header = handle.read(540)
            total = path.stat().st_size
    except (OSError, EOFError, zlib.error) as exc:
        raise CTDataError(path, f"corrupt or truncated file: {exc}") from exc
    for order in "<>":
        size = struct.unpack(order + "i", header[:4])[0]
        if size == 348:  # NIfTI-1: dim int16[8] @40, bitpix @72, vox_offset float32 @108
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            break
        if size == 540:  # NIfTI-2: bitpix int16 @14, dim int64[8] @16, vox_offset int64 @168
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        raise CTDataError(path, "not a NIfTI-1/2 file (bad header size)")
    needed = max(offset, 348) + int(np.prod([max(1, d) for d in dims[1 : dims[0] + 1]])) * bitpix // 8
    if total < needed:
        raise CTDataError(path, f"truncated: {total} bytes of voxel data and header, {needed} needed")


def _itk_reason(exc: BaseException) -> str:
    """The description in an ITK error: its "ITK ERROR: <Class>(<address>): <description>" line.

    ITK may add a "Reason: <strerror>" line whose errno is stale (a truncated .mha reads as "No
    such file or directory"), so that line is left out.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "ITK ERROR:" in line:
            description = line.split("ITK ERROR:", 1)[1].strip()
            return description.split("): ", 1)[1] if "): " in description else description
    return lines[-1] if lines else type(exc).__name__


def write_image(image: sitk.Image, path: os.PathLike | str, compress: bool = True) -> Path:
    """Write a SimpleITK image to ``path``; the format follows the file ending.

    Parameters
    ----------
    image : SimpleITK.Image
        The volume (use :func:`array_to_image` to wrap a numpy array).
    path : path
        Destination ending in one of :data:`VOLUME_SUFFIXES`; missing folders are created.
    compress : bool
        Compress where the format allows (always on for ``.nii.gz``).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        If ``path`` has no volume ending (lower-case: ITK reads ``.NII`` but does not write it), or
        ``image`` is not a SimpleITK image.

    Example
    -------
    >>> write_image(array_to_image(np.zeros((2, 3, 4), np.int16)), "x.nii.gz")
    PosixPath('x.nii.gz')
    """
    if not isinstance(image, sitk.Image):
        raise ValueError(f"image must be a SimpleITK.Image; got {type(image).__name__} (see array_to_image)")
    path = Path(path)
    if volume_suffix(path) is None:
        raise ValueError(f"path must end in one of {VOLUME_SUFFIXES}; got {str(path)!r}")
    if not path.name.endswith(volume_suffix(path)):  # ITK picks its writer by the exact ending
        raise ValueError(f"path must end in a lower-case volume ending (one of {VOLUME_SUFFIXES}) to be "
                         f"written; got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), compress)
    return path


# Header-only volume formats and the header key naming their detached voxel data file(s).
_DETACHED_DATA_KEYS = {".mhd": ("=", ("elementdatafile",)), ".nhdr": (":", ("data file", "datafile"))}


def detached_data_files(path: os.PathLike | str) -> list[Path]:
    """The voxel data files a MetaImage ``.mhd`` or detached NRRD ``.nhdr`` header names.

    Handles a single file name, ``LIST`` (one name a line after the key) and a numbered pattern
    (``slice%03d.raw 1 40 1``: first, last, step); names are relative to the header's folder.
    Only files that exist are returned; any other path, and a header with inline data
    (``LOCAL``), gives ``[]``.

    Example
    -------
    >>> detached_data_files("scan.nii.gz")
    []
    """
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix not in _DETACHED_DATA_KEYS or not path.is_file():
        return []
    sep, keys = _DETACHED_DATA_KEYS[suffix]
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for i, line in enumerate(lines):
        key, found, value = line.partition(sep)
        if not found or key.strip().lower() not in keys:
            continue
        parts = value.split()
        if not parts or parts[0].upper() == "LOCAL":
            return []
        if parts[0].upper() == "LIST":
            names = [name.strip() for name in lines[i + 1:] if name.strip()]
        elif "%" in parts[0] and len(parts) >= 4:
            try:
                first, last, step = (int(v) for v in parts[1:4])
                names = [parts[0] % k for k in range(first, last + (1 if step > 0 else -1), step)] if step else []
            except (TypeError, ValueError):
                names = []
        else:
            names = [value.strip()]
        files = [path.parent / name for name in names]
        return [f for f in files if f.is_file()]
    return []


@dataclass(frozen=True)
class SourceStamp:
    """What identifies a source on disk for cache invalidation: path, bytes, newest mtime, files."""

    path: str
    size: int
    mtime_ns: int
    n_files: int

    def to_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns, "n_files": self.n_files}


def source_stamp(path: os.PathLike | str, series_id: str | None = None) -> SourceStamp:
    """Size and modification time of a volume file, or of all files of a DICOM series.

    A ``.mhd`` or ``.nhdr`` header counts with the data files it names
    (:func:`detached_data_files`), so rewriting only the voxel data changes the stamp.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CTDataError
        If ``path`` is a folder without the requested DICOM series.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        files = [Path(f) for f in dicom_series_files(path, series_id)]
    else:
        files = [path, *detached_data_files(path)]
    stats = [f.stat() for f in files]
    return SourceStamp(
        path=str(path.resolve()),
        size=sum(s.st_size for s in stats),
        mtime_ns=max(s.st_mtime_ns for s in stats),
        n_files=len(files),
    )
