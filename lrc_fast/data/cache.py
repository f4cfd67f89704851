"""Preprocess each volume once into memory-mapped ``.npy`` arrays under a cache folder.

Layout of a cache folder::

    cache/
      manifest.json                  # every entry: source path, size, mtime, spacing, window, shape
      <case_id>-<hash>/entry.json    # the same record for one entry, written last (commit marker)
      <case_id>-<hash>/image.npy     # (D, H, W) windowed CT in [0, 1], float16 by default
      <case_id>-<hash>/label.npy     # (D, H, W) uint8/int16 labels, when the case has them

The entry name hashes the source paths and the preprocessing settings, so volumes prepared
with other settings (another window or spacing) get their own entries and never overwrite
arrays another job is reading. An entry is reused when its source files still have the same
size and modification time; a changed source rebuilds it. Files are written to temporary
names and renamed, so several processes (DDP ranks, DataLoader workers) can share a cache.
Entries of settings no longer used stay until the folder is deleted.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .io import CTDataError, check_spacing, report_skipped, source_stamp
from .preprocess import (DEFAULT_ORIENTATION, DEFAULT_SPACING, Window, check_orientation, prepare_volume,
                         resolve_window)

#: Bumped when the cached content changes meaning; older entries are then rebuilt.
CACHE_FORMAT_VERSION = 1

_CACHE_DTYPES = ("float16", "float32")


def default_cache_dir() -> Path:
    """``$LRC_FAST_CACHE`` (``~`` expanded), else ``$XDG_CACHE_HOME/lrc_fast`` when that is an
    absolute path (the XDG spec ignores relative ones), else ``~/.cache/lrc_fast``."""
    if os.environ.get("LRC_FAST_CACHE"):
        return Path(os.environ["LRC_FAST_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # the XDG spec ignores relative paths
    return base / "lrc_fast"


@dataclass(frozen=True)
class PreprocessSettings:
    """How volumes are prepared; equal settings mean a cache entry can be reused.

    Parameters
    ----------
    spacing : (z, y, x) floats or None
        Target voxel size in mm (default 2.5 x 1 x 1); None keeps each volume's grid.
    window : str or (low, high)
        HU window (preset name or pair); stored resolved as two floats.
    orientation : str or None
        Orientation code the volumes are turned to (default ``"LPS"``).
    dtype : {"float16", "float32"}
        Storage type of the windowed image (float16 keeps 0.2 HU steps in a 425 HU window).
    check_intensity : bool
        Reject volumes that do not look like CT in HU. Not part of the cache key, but an entry
        built without the check is rebuilt (and so checked) when the check is on.

    Raises
    ------
    ValueError
        Bad spacing, window, orientation or dtype.
    """

    spacing: tuple[float, float, float] | None = DEFAULT_SPACING
    window: Window = "abdomen"
    orientation: str | None = DEFAULT_ORIENTATION
    dtype: str = "float16"
    check_intensity: bool = True

    def __post_init__(self):
        if self.spacing is not None:
            object.__setattr__(self, "spacing", check_spacing(self.spacing, "spacing"))
        object.__setattr__(self, "window", resolve_window(self.window))
        check_orientation(self.orientation)
        try:
            name = np.dtype(self.dtype).name  # "float16", np.float16 and np.dtype("float16") alike
        except TypeError:
            name = None
        if name not in _CACHE_DTYPES:
            raise ValueError(f"dtype must be one of {_CACHE_DTYPES}; got {self.dtype!r}")
        object.__setattr__(self, "dtype", name)

    def key(self) -> dict:
        """The settings that change the cached arrays (JSON-ready)."""
        return {
            "version": CACHE_FORMAT_VERSION,
            "spacing": list(self.spacing) if self.spacing is not None else None,
            "window": list(self.window),
            "orientation": self.orientation,
            "dtype": self.dtype,
        }


@dataclass(frozen=True)
class CachedVolume:
    """One cached case. The arrays open as read-only memory maps on demand.

    Attributes
    ----------
    case_id : str
    folder : pathlib.Path
        The entry folder holding ``image.npy`` (and ``label.npy``).
    shape : (D, H, W)
    spacing : (z, y, x) mm
    has_label : bool
    foreground : tuple of float, length D
        Per slice, the fraction of pixels above the window's lower bound.
    reused : bool
        True when the entry was found valid and not rebuilt.
    """

    case_id: str
    folder: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    has_label: bool
    foreground: tuple[float, ...] = field(repr=False)
    reused: bool = False

    def image(self) -> np.ndarray:
        """(D, H, W) windowed CT in [0, 1] as a read-only memory map."""
        return np.load(self.folder / "image.npy", mmap_mode="r")

    def label(self) -> np.ndarray | None:
        """(D, H, W) labels as a read-only memory map, or None."""
        return np.load(self.folder / "label.npy", mmap_mode="r") if self.has_label else None


def _entry_name(case, settings: PreprocessSettings) -> str:
    ident = json.dumps([
        str(Path(case.image).resolve()), case.series_id,
        str(Path(case.label).resolve()) if case.label else None, settings.key(),
    ])
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", case.case_id)[:60]
    return f"{safe}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class VolumeCache:
    """A folder of preprocessed volumes, reused across runs.

    Parameters
    ----------
    folder : path, optional
        Cache folder (created); default :func:`default_cache_dir`.
    settings : PreprocessSettings, optional
        Preprocessing; keyword arguments (``spacing=``, ``window=`` ...) build one instead.

    Example
    -------
    >>> from lrc_fast.data import find_cases, write_phantom_dataset
    >>> cases = write_phantom_dataset("phantom", n_cases=2, seed=0)
    >>> cache = VolumeCache("lrc_cache", window="abdomen")
    >>> volumes = cache.prepare_all(find_cases("phantom"))
    >>> volumes[0].image().shape
    (77, 384, 384)
    """

    def __init__(self, folder: os.PathLike | str | None = None, settings: PreprocessSettings | None = None, **kwargs):
        if settings is not None and kwargs:
            raise ValueError(f"pass settings= or keyword settings, not both; got settings and {sorted(kwargs)}")
        if settings is not None and not isinstance(settings, PreprocessSettings):
            raise TypeError(f"settings must be a PreprocessSettings; got {type(settings).__name__}")
        self.settings = settings if settings is not None else PreprocessSettings(**kwargs)
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.skipped: list[tuple[str, str]] = []

    def prepare(self, case) -> CachedVolume:
        """Return the cache entry of ``case``, building it if missing or stale.

        Raises
        ------
        FileNotFoundError, CTDataError
            As :func:`lrc_fast.data.prepare_volume`, naming the file.
        """
        volume, record = self._prepare(case)
        self._update_manifest({volume.folder.name: record})
        return volume

    def prepare_all(self, cases: Sequence, strict: bool = False) -> list[CachedVolume]:
        """Prepare many cases; bad ones are skipped and reported together at the end.

        Parameters
        ----------
        cases : sequence of Case
        strict : bool
            Raise :class:`CTDataError` listing the bad cases instead of warning.

        Returns
        -------
        list of CachedVolume
            In the order of ``cases``, without the skipped ones (listed in ``self.skipped``).

        Raises
        ------
        CTDataError
            With ``strict=True``, when any case failed.
        """
        volumes, records, self.skipped = [], {}, []
        for case in cases:
            try:
                volume, record = self._prepare(case)
            except (CTDataError, FileNotFoundError) as exc:
                self.skipped.append((str(getattr(exc, "path", None) or case.image), _reason(exc)))
                continue
            volumes.append(volume)
            records[volume.folder.name] = record
        self._update_manifest(records)
        report_skipped(self.skipped, strict, f"preparing volumes into {self.folder}")
        return volumes

    def manifest(self) -> dict:
        """Content of ``manifest.json``: ``{"version": ..., "entries": {name: record}}``."""
        return _read_json(self.folder / "manifest.json") or {"version": CACHE_FORMAT_VERSION, "entries": {}}

    def _prepare(self, case) -> tuple[CachedVolume, dict]:
        entry = self.folder / _entry_name(case, self.settings)
        sources = {
            "image": source_stamp(case.image, case.series_id).to_dict(),
            "label": source_stamp(case.label).to_dict() if case.label is not None else None,
            "series_id": case.series_id,
        }
        record = _read_json(entry / "entry.json")
        valid = (
            record is not None
            and record.get("sources") == sources
            and record.get("settings") == self.settings.key()
            and (record.get("intensity_checked", False) or not self.settings.check_intensity)
            and (entry / "image.npy").exists()
            and (case.label is None or (entry / "label.npy").exists())
        )
        if not valid:
            record = self._build(case, entry, sources)
        volume = CachedVolume(
            case_id=case.case_id,
            folder=entry,
            shape=tuple(record["shape"]),
            spacing=tuple(record["spacing"]),
            has_label=case.label is not None,
            foreground=tuple(record["foreground"]),
            reused=valid,
        )
        return volume, record

    def _build(self, case, entry: Path, sources: dict) -> dict:
        s = self.settings
        prepared = prepare_volume(
            case.image, case.label, spacing=s.spacing, window=s.window, orientation=s.orientation,
            check_intensity=s.check_intensity, series_id=case.series_id,
        )
        entry.mkdir(parents=True, exist_ok=True)
        (entry / "entry.json").unlink(missing_ok=True)  # invalid until the arrays are complete
        image = prepared.image.astype(s.dtype)  # (D, H, W)
        _atomic_write(entry / "image.npy", lambda f: np.save(f, image))
        if prepared.label is not None:
            _atomic_write(entry / "label.npy", lambda f: np.save(f, prepared.label))
        record = {
            "case_id": case.case_id,
            "sources": sources,
            "settings": s.key(),
            "intensity_checked": s.check_intensity,
            "shape": list(image.shape),
            "spacing": list(prepared.spacing),
            "source_spacing": list(prepared.source_spacing),
            "origin": list(prepared.origin),
            "direction": list(prepared.direction),
            "foreground": np.round((prepared.image > 0).mean(axis=(1, 2)), 4).tolist(),
        }
        _atomic_write(entry / "entry.json", lambda f: f.write(json.dumps(record).encode()))
        return record

    def _update_manifest(self, records: dict) -> None:
        if not records:
            return
        with _locked(self.folder / "manifest.lock"):  # ranks and workers may add entries at once
            self._merge_manifest(records)

    def _merge_manifest(self, records: dict) -> None:
        manifest = self.manifest()
        for name, record in records.items():
            manifest["entries"][name] = {
                "case_id": record["case_id"],
                "image": record["sources"]["image"],
                "label": record["sources"]["label"],
                "spacing": record["spacing"],
                "source_spacing": record["source_spacing"],
                "window": record["settings"]["window"],
                "orientation": record["settings"]["orientation"],
                "shape": record["shape"],
            }
        text = json.dumps(manifest, indent=1).encode()
        _atomic_write(self.folder / "manifest.json", lambda f: f.write(text))


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``path`` (created if missing) while the block runs; no lock
    where ``fcntl`` is missing (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    path = str(getattr(exc, "path", ""))
    return text[len(path) + 2:] if path and text.startswith(path + ": ") else text
