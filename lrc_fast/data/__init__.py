"""CT data for lrc_fast: SimpleITK I/O, resampling and HU windowing, cached slice datasets,
volume-level splits, and the synthetic abdominal phantom that is the project's default data.

Arrays are ``(D, H, W)`` = ``(z, y, x)`` and spacings ``(z, y, x)`` in mm throughout (SimpleITK
itself reports ``(x, y, z)``).

Example
-------
>>> from lrc_fast.data import write_phantom_dataset, load_slice_dataset
>>> cases = write_phantom_dataset("phantom", n_cases=2, seed=0)
>>> ds = load_slice_dataset("phantom", cache_dir="phantom_cache", spacing=None, labelled=True)
>>> ds[0]["image"].shape, ds[0]["label"].shape
(torch.Size([1, 256, 256]), torch.Size([256, 256]))
"""
from __future__ import annotations

import os
from pathlib import Path

from .cache import CachedVolume, PreprocessSettings, VolumeCache, default_cache_dir
from .datasets import Case, CTSliceDataset, dataset_labels, find_cases, load_slice_dataset
from .io import (
    CTDataError,
    SkippedInputWarning,
    array_to_image,
    read_dicom_series,
    read_image,
    spacing_zyx,
    write_image,
)
from .phantom import PHANTOM_LABELS, make_phantom, phantom_slice, write_phantom_dataset
from .preprocess import (
    DEFAULT_SPACING,
    WINDOW_PRESETS,
    PreparedVolume,
    prepare_volume,
    resample,
    slice_with_neighbors,
    window_hu,
)
from .splits import PAPER_LABELLED_SIZES, labelled_subset, split_cases


def shared_data_dir() -> Path | None:
    """The real-CT folder beside the project (``../shared/data``), or None when absent.

    ``$LRC_FAST_SHARED_DATA`` overrides the location. The folder holds OpenKBP head & neck CT
    (``openkbp-train/``) and an abdominal DICOM series (``totalseg-abdomen/``).
    """
    override = os.environ.get("LRC_FAST_SHARED_DATA")
    path = Path(override) if override else Path(__file__).resolve().parents[3] / "shared" / "data"
    return path if path.is_dir() else None


__all__ = [
    "CTDataError",
    "CTSliceDataset",
    "CachedVolume",
    "Case",
    "DEFAULT_SPACING",
    "PAPER_LABELLED_SIZES",
    "PHANTOM_LABELS",
    "PreparedVolume",
    "PreprocessSettings",
    "SkippedInputWarning",
    "VolumeCache",
    "WINDOW_PRESETS",
    "array_to_image",
    "dataset_labels",
    "default_cache_dir",
    "find_cases",
    "labelled_subset",
    "load_slice_dataset",
    "make_phantom",
    "phantom_slice",
    "prepare_volume",
    "read_dicom_series",
    "read_image",
    "resample",
    "shared_data_dir",
    "slice_with_neighbors",
    "spacing_zyx",
    "split_cases",
    "window_hu",
    "write_image",
    "write_phantom_dataset",
]
