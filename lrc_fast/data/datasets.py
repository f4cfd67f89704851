"""Dataset layouts on disk and the PyTorch Dataset of axial CT slices.

Layouts read by :func:`find_cases`:

``"plain"``
    A folder of volumes, unlabelled, for pre-training: every volume file directly inside it
    (or those matching ``image_pattern``), each subfolder holding a DICOM series, and DICOM
    series stored directly in the folder.
``"pairs"``
    Image/label pairs matched by name: ``image_pattern`` and ``label_pattern`` each hold one
    ``*``, the case id (default ``"*_ct.nii.gz"`` and ``"*_label.nii.gz"``; for OpenKBP use
    ``"*_ct.nii.gz"`` and ``"*_oars.nii.gz"``). Patterns may name subfolders, e.g.
    ``"images/*.nii.gz"`` and ``"labels/*.nii.gz"``.
``"msd"``
    Medical Segmentation Decathlon / nnU-Net: ``imagesTr``, ``labelsTr`` and
    ``dataset.json``. The MSD ``"training"`` list is used when present; otherwise the
    nnU-Net v2 naming ``imagesTr/<case>_0000<file_ending>`` / ``labelsTr/<case><file_ending>``
    (channel 0 only). ``include_test=True`` adds the unlabelled test images.

Hidden files (names starting with ``.``, such as macOS ``._*`` copies) are ignored. Anything
else that cannot be used is reported once at the end of the scan, or raises with
``strict=True``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import PreprocessSettings, VolumeCache
from .io import (
    VOLUME_SUFFIXES,
    CTDataError,
    detached_data_files,
    dicom_series_ids,
    report_skipped,
    series_file_names,
    strip_volume_suffix,
    volume_suffix,
)
from .preprocess import (DEFAULT_ORIENTATION, DEFAULT_SPACING, Window, check_slice_size, crop_or_pad,
                         slice_with_neighbors)

LAYOUTS = ("auto", "plain", "pairs", "msd")
DEFAULT_IMAGE_PATTERN = "*_ct.nii.gz"
DEFAULT_LABEL_PATTERN = "*_label.nii.gz"


@dataclass(frozen=True)
class Case:
    """One volume on disk, with its label map when there is one.

    Attributes
    ----------
    case_id : str
        Unique name of the case (the unit of every split).
    image : pathlib.Path
        Volume file or DICOM series folder.
    label : pathlib.Path or None
        Label map file.
    series_id : str or None
        DICOM SeriesInstanceUID when ``image`` is a folder with several series.
    """

    case_id: str
    image: Path
    label: Path | None = None
    series_id: str | None = None

    def __post_init__(self):
        if not isinstance(self.case_id, str) or not self.case_id:
            raise ValueError(f"case_id must be a non-empty str; got {self.case_id!r}")
        object.__setattr__(self, "image", Path(self.image))
        if self.label is not None:
            object.__setattr__(self, "label", Path(self.label))


def _pattern_regex(pattern: str, name: str) -> re.Pattern:
    if not isinstance(pattern, str) or pattern.count("*") != 1 or any(c in pattern for c in "?[]"):
        raise ValueError(f"{name} must contain exactly one '*' (the case id) and no other wildcards; got {pattern!r}")
    if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
        raise ValueError(f"{name} must be a pattern relative to root and inside it; got {pattern!r}")
    before, after = pattern.split("*")
    return re.compile(re.escape(before) + "(.+)" + re.escape(after) + r"\Z")


def _match(root: Path, pattern: str, name: str) -> dict[str, Path]:
    regex = _pattern_regex(pattern, name)
    found = {}
    for path in sorted(root.glob(pattern)):
        rel = path.relative_to(root).as_posix()
        hit = regex.match(rel)
        if hit and not any(part.startswith(".") for part in Path(rel).parts):  # hidden files and folders
            found[hit.group(1)] = path
    return found


def _scan_plain(root: Path, image_pattern: str | None, skipped: list) -> list[Case]:
    if image_pattern is not None:
        return [Case(cid, path) for cid, path in _match(root, image_pattern, "image_pattern").items()]
    cases, loose = [], []
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            ids = dicom_series_ids(path)
            if not ids:
                skipped.append((str(path), "folder without a DICOM series"))
            cases.extend(_series_cases(path, ids))
        elif volume_suffix(path):
            cases.append(Case(strip_volume_suffix(path), path))
        else:
            loose.append(path)
    # the voxel data files of .mhd/.nhdr headers (e.g. LUNA16's .raw) are part of those volumes
    data_files = {f.resolve() for case in cases for f in detached_data_files(case.image)}
    loose = [p for p in loose if p.resolve() not in data_files]
    if loose:  # files without a volume ending: DICOM slices stored directly in root?
        ids = dicom_series_ids(root)
        used = series_file_names(root, ids)
        cases.extend(_series_cases(root, ids))
        expected = ", ".join("*" + s for s in VOLUME_SUFFIXES)
        skipped.extend((str(p), f"not a volume file (expected one of {expected} or a DICOM series)")
                       for p in loose if p.name not in used)
    return cases


def _series_cases(folder: Path, ids: Sequence[str]) -> list[Case]:
    """One case per DICOM series in ``folder``: named after the folder, numbered when several."""
    name = folder.name or folder.resolve().name  # Path(".").name is ""
    if len(ids) == 1:
        return [Case(name, folder)]
    return [Case(f"{name}_{k}", folder, series_id=sid) for k, sid in enumerate(ids)]


def _scan_pairs(root: Path, image_pattern: str, label_pattern: str, skipped: list) -> list[Case]:
    images = _match(root, image_pattern, "image_pattern")
    labels = _match(root, label_pattern, "label_pattern")
    images = {cid: p for cid, p in images.items() if p not in labels.values()}
    cases = []
    for cid, path in images.items():
        if cid in labels:
            cases.append(Case(cid, path, labels[cid]))
        else:
            expected = label_pattern.replace("*", cid)
            skipped.append((str(path), f"no label matching {label_pattern!r} (expected {expected})"))
    skipped.extend((str(p), f"label without an image matching {image_pattern!r}")
                   for cid, p in labels.items() if cid not in images)
    return cases


def _load_dataset_json(root: Path) -> dict:
    path = root / "dataset.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CTDataError(path, "missing: the 'msd' layout needs imagesTr/, labelsTr/ and dataset.json") from exc
    except ValueError as exc:
        raise CTDataError(path, f"is not valid JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise CTDataError(path, "must hold a JSON object")
    return info


def _listed_path(root: Path, item, key: str, where: str) -> Path:
    """``root / item[key]`` of a dataset.json entry (``item`` itself when it is a path string and
    ``key`` is "image"), or a CTDataError naming the entry."""
    value = item if isinstance(item, str) and key == "image" else (item.get(key) if isinstance(item, dict) else None)
    if not isinstance(value, str) or not value:
        raise CTDataError(root / "dataset.json", f"each {where!r} entry needs a path string under {key!r}; "
                                                 f"got {item!r}")
    return root / value


def _scan_msd(root: Path, include_test: bool, skipped: list) -> list[Case]:
    info = _load_dataset_json(root)
    cases = []
    if "training" in info:
        for name in ("training", "test"):
            if not isinstance(info.get(name, []), list):
                raise CTDataError(root / "dataset.json", f"{name!r} must be a list; got {type(info[name]).__name__}")
        for item in info["training"]:
            image = _listed_path(root, item, "image", "training")
            label = _listed_path(root, item, "label", "training")
            missing = [str(p) for p in (image, label) if not p.exists()]
            if missing:
                skipped.append((str(image), f"listed in dataset.json but missing: {', '.join(missing)}"))
            else:
                cases.append(Case(strip_volume_suffix(image), image, label))
        for item in info.get("test", []) if include_test else []:
            image = _listed_path(root, item, "image", "test")
            if image.exists():
                cases.append(Case(strip_volume_suffix(image), image))
            else:
                skipped.append((str(image), "listed in dataset.json but missing"))
        return cases
    ending = info.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or not ending:
        raise CTDataError(root / "dataset.json", f"'file_ending' must be a non-empty string; got {ending!r}")
    for folder in ("imagesTr", "labelsTr"):
        if not (root / folder).is_dir():
            raise CTDataError(root / folder, "missing: the 'msd' layout needs imagesTr/, labelsTr/ and dataset.json")
    for label in sorted((root / "labelsTr").glob(f"*{ending}")):
        if label.name.startswith("."):
            continue
        cid = label.name[: -len(ending)]
        image = root / "imagesTr" / f"{cid}_0000{ending}"
        if image.exists():
            cases.append(Case(cid, image, label))
        else:
            skipped.append((str(label), f"label without its image {image}"))
    if include_test:
        for image in sorted((root / "imagesTs").glob(f"*_0000{ending}")):
            if not image.name.startswith("."):
                cases.append(Case(image.name[: -len("_0000" + ending)], image))
    return cases


def find_cases(
    root: os.PathLike | str,
    layout: str = "auto",
    *,
    image_pattern: str | None = None,
    label_pattern: str | None = None,
    include_test: bool = False,
    strict: bool = False,
) -> list[Case]:
    """List the cases of a dataset folder.

    Parameters
    ----------
    root : path
        The dataset folder.
    layout : {"auto", "plain", "pairs", "msd"}
        ``"auto"`` picks ``"msd"`` when ``root/dataset.json`` exists, ``"pairs"`` when a
        ``label_pattern`` is given or files match the default ``"*_label.nii.gz"``, else
        ``"plain"``. See the module docstring.
    image_pattern, label_pattern : str, optional
        Glob patterns relative to ``root`` with one ``*`` standing for the case id.
    include_test : bool
        For ``"msd"``: also list the unlabelled test images.
    strict : bool
        Raise on anything unusable instead of skipping it with one warning at the end.

    Returns
    -------
    list of Case
        Sorted by case id.

    Raises
    ------
    ValueError
        Unknown ``layout`` or a malformed pattern: not exactly one ``*``, another wildcard,
        empty, absolute, or leading out of ``root`` (``..``).
    FileNotFoundError
        If ``root`` is not a folder.
    CTDataError
        Missing or invalid ``dataset.json``, duplicate case ids, or (with ``strict=True``)
        any skipped input.

    Example
    -------
    >>> cases = find_cases("/data/openkbp", "pairs", image_pattern="*_ct.nii.gz",
    ...                    label_pattern="*_oars.nii.gz")                     # doctest: +SKIP
    >>> cases[0]                                                             # doctest: +SKIP
    Case(case_id='pt_1', image=PosixPath('.../pt_1_ct.nii.gz'), label=PosixPath('.../pt_1_oars.nii.gz'), series_id=None)
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    if layout == "auto":
        if (root / "dataset.json").exists():
            layout = "msd"
        elif label_pattern is not None or _match(root, DEFAULT_LABEL_PATTERN, "label_pattern"):
            layout = "pairs"
        else:
            layout = "plain"
    skipped: list[tuple[str, str]] = []
    if layout == "plain":
        cases = _scan_plain(root, image_pattern, skipped)
    elif layout == "pairs":
        image_pattern = DEFAULT_IMAGE_PATTERN if image_pattern is None else image_pattern
        label_pattern = DEFAULT_LABEL_PATTERN if label_pattern is None else label_pattern
        cases = _scan_pairs(root, image_pattern, label_pattern, skipped)
    else:
        cases = _scan_msd(root, include_test, skipped)
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise CTDataError(root, f"case ids {duplicates} occur more than once; rename the files")
    report_skipped(skipped, strict, f"scanning {root} ({layout} layout)")
    return sorted(cases, key=lambda c: c.case_id)


def dataset_labels(root: os.PathLike | str) -> dict[int, str]:
    """Class ids and names from ``root/dataset.json`` (MSD ``{"1": "liver"}`` or nnU-Net v2 ``{"liver": 1}``).

    Raises
    ------
    CTDataError
        If ``dataset.json`` is missing, invalid, or has no usable ``"labels"``.
    """
    info = _load_dataset_json(Path(root))
    labels = info.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise CTDataError(Path(root) / "dataset.json", "has no 'labels' object")
    try:
        if all(str(k).lstrip("-").isdigit() for k in labels):
            return {int(k): str(v) for k, v in sorted(labels.items(), key=lambda kv: int(kv[0]))}
        return {int(v): str(k) for k, v in sorted(labels.items(), key=lambda kv: int(kv[1]))}
    except (TypeError, ValueError) as exc:
        raise CTDataError(Path(root) / "dataset.json", f"'labels' must map ids to names: {exc}") from exc


class CTSliceDataset(Dataset):
    """Axial slices of cached CT volumes, for pre-training (unlabelled) or fine-tuning (labelled).

    Index ``i`` runs over the kept slices of every volume, volume by volume, in order; the
    order never depends on randomness. Memory maps are opened lazily in each process, so the
    dataset pickles small and works with DataLoader workers and ``DistributedSampler``.

    Parameters
    ----------
    volumes : sequence of CachedVolume
        From :meth:`VolumeCache.prepare_all`.
    labelled : bool
        Return labels too; every volume must have one.
    n_neighbors : int
        2.5D context: slices taken on each side as extra channels (edges repeat).
    slice_size : (H, W), optional
        Centre-crop or zero-pad every slice to this size (needed for batching volumes whose
        in-plane sizes differ). Padding is 0 in the image (the window's lower bound) and 0
        (background) in the label.
    min_foreground : float
        Keep only slices where at least this fraction of pixels lies above the window's
        lower bound (drops empty slices, e.g. outside a treatment region). 0 keeps all.

    Items
    -----
    dict with
        ``"image"``: (C, H, W) float32 in [0, 1], ``C = 1 + 2 * n_neighbors`` (centre slice at
        channel ``n_neighbors``); ``"label"`` (labelled only): (H, W) int64;
        ``"volume"``: int, index into ``volumes``; ``"slice"``: int, the slice index ``z``.

    Raises
    ------
    ValueError
        Empty ``volumes``, ``labelled`` with unlabelled volumes, bad ``n_neighbors``,
        ``slice_size`` or ``min_foreground``, or a ``min_foreground`` that keeps no slice.

    Example
    -------
    >>> from lrc_fast.data import VolumeCache, write_phantom_dataset
    >>> volumes = VolumeCache("cache").prepare_all(write_phantom_dataset("phantom", n_cases=1))
    >>> ds = CTSliceDataset(volumes, labelled=True, slice_size=(256, 256))
    >>> ds[0]["image"].shape, ds[0]["label"].dtype
    (torch.Size([1, 256, 256]), torch.int64)
    """

    def __init__(
        self,
        volumes: Sequence,
        *,
        labelled: bool = False,
        n_neighbors: int = 0,
        slice_size: Sequence[int] | None = None,
        min_foreground: float = 0.0,
    ):
        volumes = list(volumes)
        if not volumes:
            raise ValueError("volumes is empty: no usable volume was found or prepared")
        slice_size, min_foreground = _check_slice_options(n_neighbors, slice_size, min_foreground)
        if labelled:
            missing = [v.case_id for v in volumes if not v.has_label]
            if missing:
                raise ValueError(f"labelled=True but cases {missing} have no label; pass labelled=False or drop them")
        self.volumes = volumes
        self.labelled = bool(labelled)
        self.n_neighbors = n_neighbors
        self.slice_size = slice_size
        # Kept slices: (volume index, z) pairs stored as flat arrays.
        keep = [
            np.flatnonzero(np.asarray(v.foreground) >= min_foreground) if min_foreground > 0 else np.arange(v.shape[0])
            for v in volumes
        ]
        if not any(len(k) for k in keep):
            best = max(float(np.max(v.foreground, initial=0.0)) for v in volumes)
            raise ValueError(f"min_foreground={min_foreground} keeps no slice: the largest foreground fraction "
                             f"of any slice is {best:.4g}; lower it (0 keeps every slice)")
        self._volume_of = np.concatenate([np.full(len(k), i, np.int64) for i, k in enumerate(keep)])
        self._slice_of = np.concatenate(keep).astype(np.int64)
        self._open: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self._slice_of)

    @property
    def case_ids(self) -> list[str]:
        """Case id of each volume, in volume order."""
        return [v.case_id for v in self.volumes]

    def volume_index(self, index: int) -> int:
        """Which volume item ``index`` comes from."""
        return int(self._volume_of[index])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_open"] = {}  # memory maps are reopened in the receiving process
        return state

    def _arrays(self, v: int):
        if v not in self._open:
            self._open[v] = (self.volumes[v].image(), self.volumes[v].label() if self.labelled else None)
        return self._open[v]

    def __getitem__(self, index: int) -> dict:
        if isinstance(index, torch.Tensor):
            index = int(index)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} slices")
        index %= n
        v, z = int(self._volume_of[index]), int(self._slice_of[index])
        image, label = self._arrays(v)
        channels = np.asarray(slice_with_neighbors(image, z, self.n_neighbors), dtype=np.float32)  # (C, H, W)
        channels = np.ascontiguousarray(crop_or_pad(channels, self.slice_size))
        item = {"image": torch.from_numpy(channels), "volume": v, "slice": z}
        if self.labelled:
            target = crop_or_pad(np.asarray(label[z], dtype=np.int64), self.slice_size)  # (H, W)
            item["label"] = torch.from_numpy(np.ascontiguousarray(target))
        return item


def _check_slice_options(n_neighbors, slice_size, min_foreground) -> tuple[tuple[int, int] | None, float]:
    """Check :class:`CTSliceDataset`'s slice options; ``(slice_size, min_foreground)`` normalised."""
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 0:
        raise ValueError(f"n_neighbors must be an int >= 0; got {n_neighbors!r}")
    if slice_size is not None:
        slice_size = check_slice_size(slice_size, "slice_size")
    try:
        fraction = float(min_foreground)
    except (TypeError, ValueError):
        fraction = float("nan")
    if isinstance(min_foreground, bool) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"min_foreground must be a number in [0, 1]; got {min_foreground!r}")
    return slice_size, fraction


def load_slice_dataset(
    source: os.PathLike | str | Sequence[Case],
    *,
    layout: str = "auto",
    cache_dir: os.PathLike | str | None = None,
    labelled: bool = False,
    n_neighbors: int = 0,
    slice_size: Sequence[int] | None = None,
    min_foreground: float = 0.0,
    spacing: Sequence[float] | None = DEFAULT_SPACING,
    window: Window = "abdomen",
    orientation: str | None = DEFAULT_ORIENTATION,
    check_intensity: bool = True,
    image_pattern: str | None = None,
    label_pattern: str | None = None,
    strict: bool = False,
) -> CTSliceDataset:
    """Find, preprocess (cached) and wrap a dataset as a :class:`CTSliceDataset`, in one call.

    Parameters
    ----------
    source : path or sequence of Case
        A dataset folder (scanned with :func:`find_cases`) or cases already chosen, e.g. by
        :func:`lrc_fast.data.split_cases`.
    layout, image_pattern, label_pattern
        For :func:`find_cases`.
    cache_dir : path, optional
        Cache folder; default :func:`lrc_fast.data.default_cache_dir`.
    labelled, n_neighbors, slice_size, min_foreground
        For :class:`CTSliceDataset`.
    spacing, window, orientation, check_intensity
        For :class:`PreprocessSettings`.
    strict : bool
        Raise instead of skipping unusable inputs (skips are reported in one warning).

    Returns
    -------
    CTSliceDataset

    Raises
    ------
    ValueError, CTDataError, FileNotFoundError
        As the functions it calls; ``ValueError`` too when no case is usable.

    Example
    -------
    >>> from lrc_fast.data import write_phantom_dataset
    >>> cases = write_phantom_dataset("phantom", n_cases=2)
    >>> ds = load_slice_dataset("phantom", cache_dir="phantom_cache", spacing=None)
    >>> ds[0]["image"].shape
    torch.Size([1, 256, 256])
    """
    _check_slice_options(n_neighbors, slice_size, min_foreground)  # before any volume is prepared
    if isinstance(source, (str, os.PathLike)):
        cases = find_cases(source, layout, image_pattern=image_pattern, label_pattern=label_pattern, strict=strict)
    else:
        cases = list(source)
        bad = [type(c).__name__ for c in cases if not isinstance(c, Case)]
        if bad:
            raise TypeError(f"source must be a folder or a sequence of Case; got items of type {sorted(set(bad))}")
    if labelled:
        unlabelled = [c.case_id for c in cases if c.label is None]
        if unlabelled:
            raise ValueError(f"labelled=True but cases {unlabelled} have no label file")
    settings = PreprocessSettings(
        spacing=spacing, window=window, orientation=orientation, check_intensity=check_intensity
    )
    volumes = VolumeCache(cache_dir, settings).prepare_all(cases, strict=strict)
    return CTSliceDataset(
        volumes, labelled=labelled, n_neighbors=n_neighbors, slice_size=slice_size, min_foreground=min_foreground
    )
