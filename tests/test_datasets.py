"""Dataset layouts, the memory-mapped cache and its invalidation, and the slice Dataset with
DataLoader workers and DistributedSampler."""
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from lrc_fast.data import (
    Case,
    CTDataError,
    CTSliceDataset,
    PreprocessSettings,
    SkippedInputWarning,
    VolumeCache,
    array_to_image,
    dataset_labels,
    find_cases,
    load_slice_dataset,
    make_phantom,
    prepare_volume,
    window_hu,
    write_image,
    write_phantom_dataset,
)

SMALL = dict(shape=(12, 64, 64), spacing=(10.0, 6.0, 6.0))
NATIVE = dict(spacing=None)  # keep the phantom grid: fast, 64 x 64 slices


@pytest.fixture(scope="module")
def msd_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("msd")
    write_phantom_dataset(root, 3, seed=5, layout="msd", **SMALL)
    return root


@pytest.fixture(scope="module")
def volumes(msd_root, tmp_path_factory):
    cache = VolumeCache(tmp_path_factory.mktemp("cache"), **NATIVE)
    return cache.prepare_all(find_cases(msd_root))


# --------------------------------------------------------------------------- layouts
def test_msd_layout_and_labels(msd_root):
    cases = find_cases(msd_root, "msd")
    assert [c.case_id for c in cases] == ["phantom_000", "phantom_001", "phantom_002"]
    assert all(c.image.parent.name == "imagesTr" and c.label.parent.name == "labelsTr" for c in cases)
    assert dataset_labels(msd_root)[1] == "liver"


def test_nnunet_v2_layout(tmp_path):
    ct, labels, spacing = make_phantom(0, **SMALL)
    for cid in ("abc_001", "abc_002"):
        write_image(array_to_image(np.rint(ct).astype(np.int16), spacing), tmp_path / "imagesTr" / f"{cid}_0000.nii.gz")
        write_image(array_to_image(labels, spacing), tmp_path / "labelsTr" / f"{cid}.nii.gz")
    write_image(array_to_image(np.rint(ct).astype(np.int16), spacing), tmp_path / "imagesTs" / "abc_900_0000.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "numTraining": 2, "file_ending": ".nii.gz"}))
    cases = find_cases(tmp_path)
    assert [(c.case_id, c.image.name, c.label.name) for c in cases] == [
        ("abc_001", "abc_001_0000.nii.gz", "abc_001.nii.gz"), ("abc_002", "abc_002_0000.nii.gz", "abc_002.nii.gz")]
    with_test = find_cases(tmp_path, include_test=True)
    assert [c.case_id for c in with_test] == ["abc_001", "abc_002", "abc_900"] and with_test[-1].label is None
    assert dataset_labels(tmp_path) == {0: "background", 1: "liver"}


def test_msd_missing_files_are_reported(msd_root, tmp_path):
    root = tmp_path / "msd"
    shutil.copytree(msd_root, root)
    (root / "labelsTr" / "phantom_001.nii.gz").unlink()
    with pytest.warns(SkippedInputWarning, match=r"(?s)1 input\(s\) skipped.*phantom_001.nii.gz: listed in dataset.json but missing: .*labelsTr/phantom_001.nii.gz"):
        cases = find_cases(root)
    assert [c.case_id for c in cases] == ["phantom_000", "phantom_002"]
    with pytest.raises(CTDataError, match="strict mode"):
        find_cases(root, strict=True)


def test_bad_dataset_json_is_an_error(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(CTDataError, match="dataset.json: is not valid JSON"):
        find_cases(tmp_path)


@pytest.mark.parametrize("info, match", [
    ({"training": [{"image": "./imagesTr/a.nii.gz"}]}, "each 'training' entry needs a path string under 'label'"),
    ({"training": ["./imagesTr/a.nii.gz"]}, "each 'training' entry needs a path string under 'label'"),
    ({"training": {"image": "a"}}, "'training' must be a list"),
    ({"training": [], "test": [{"label": "x"}]}, "'test' entry needs a path string under 'image'"),
    ({"file_ending": 3}, "'file_ending' must be a non-empty string"),
    ({"channel_names": {"0": "CT"}}, "labelsTr: missing"),
])
def test_malformed_dataset_json_names_the_entry(tmp_path, info, match):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(CTDataError, match=match):
        find_cases(tmp_path, include_test=True)


def test_pairs_layout_with_patterns_and_unmatched_files(tmp_path):
    ct, labels, spacing = make_phantom(1, **SMALL)
    ct = np.rint(ct).astype(np.int16)
    for cid in ("pt_1", "pt_2", "pt_3"):
        write_image(array_to_image(ct, spacing), tmp_path / f"{cid}_ct.nii.gz")
    for cid in ("pt_1", "pt_2", "pt_9"):
        write_image(array_to_image(labels, spacing), tmp_path / f"{cid}_oars.nii.gz")
    with pytest.warns(SkippedInputWarning) as record:
        cases = find_cases(tmp_path, "pairs", image_pattern="*_ct.nii.gz", label_pattern="*_oars.nii.gz")
    assert [(c.case_id, c.label.name) for c in cases] == [("pt_1", "pt_1_oars.nii.gz"), ("pt_2", "pt_2_oars.nii.gz")]
    message = str(record[0].message)
    assert "pt_3_ct.nii.gz: no label matching" in message and "pt_9_oars.nii.gz: label without an image" in message
    with pytest.raises(ValueError, match="exactly one"):
        find_cases(tmp_path, "pairs", image_pattern="*_*.nii.gz", label_pattern="*_oars.nii.gz")


def test_pairs_in_subfolders(tmp_path):
    ct, labels, spacing = make_phantom(1, **SMALL)
    write_image(array_to_image(np.rint(ct).astype(np.int16), spacing), tmp_path / "images" / "a7.nii.gz")
    write_image(array_to_image(labels, spacing), tmp_path / "labels" / "a7.nii.gz")
    cases = find_cases(tmp_path, image_pattern="images/*.nii.gz", label_pattern="labels/*.nii.gz")
    assert [(c.case_id, c.image.parent.name, c.label.parent.name) for c in cases] == [("a7", "images", "labels")]


@pytest.mark.parametrize("layout, patterns, match", [
    ("pairs", dict(image_pattern="/abs/*.nii.gz"), "image_pattern must be a pattern relative to root and inside it"),
    ("pairs", dict(label_pattern="../*_label.nii.gz"), "label_pattern must be a pattern relative to root"),
    ("plain", dict(image_pattern="sub/../../*.nii.gz"), "image_pattern must be a pattern relative to root"),
    ("pairs", dict(image_pattern=""), "image_pattern must contain exactly one"),  # not the default pattern
    ("auto", dict(label_pattern=""), "label_pattern must contain exactly one"),
])
def test_patterns_outside_root_or_empty_are_errors(tmp_path, layout, patterns, match):
    (tmp_path / "inner").mkdir()
    write_phantom_dataset(tmp_path, 1, layout="pairs", **SMALL)  # files the patterns could reach
    with pytest.raises(ValueError, match=match):
        find_cases(tmp_path / "inner" if ".." in str(patterns) else tmp_path, layout, **patterns)


def test_files_in_hidden_folders_are_ignored(tmp_path):
    ct, _, spacing = make_phantom(1, **SMALL)
    image = array_to_image(np.rint(ct).astype(np.int16), spacing)
    for folder in ("a", ".Trash", "b/.cache"):
        write_image(image, tmp_path / folder / "ct.nii.gz")
    assert [c.case_id for c in find_cases(tmp_path, "plain", image_pattern="*/ct.nii.gz", strict=True)] == ["a"]


def test_plain_layout_reports_what_it_cannot_use(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    ct5n = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files", "dicomdirtests", "98892001", "CT5N")
    write_phantom_dataset(tmp_path, 2, layout="plain", **SMALL)
    shutil.copytree(ct5n, tmp_path / "series_a")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "notes.txt").write_text("not a volume")
    (tmp_path / ".hidden.nii.gz").write_text("ignored")
    with pytest.warns(SkippedInputWarning) as record:
        cases = find_cases(tmp_path)
    assert [(c.case_id, c.image.name) for c in cases] == [
        ("phantom_000", "phantom_000.nii.gz"), ("phantom_001", "phantom_001.nii.gz"), ("series_a", "series_a")]
    assert len(record) == 1  # one report at the end
    message = str(record[0].message)
    assert "2 input(s) skipped" in message and "empty_dir: folder without a DICOM series" in message
    assert "notes.txt: not a volume file" in message
    with pytest.raises(CTDataError, match="empty_dir"):
        find_cases(tmp_path, strict=True)


def test_plain_layout_of_a_dicom_folder(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    ct5n = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files", "dicomdirtests", "98892001", "CT5N")
    shutil.copytree(ct5n, tmp_path / "ct")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every file is part of the series: nothing to report
        cases = find_cases(tmp_path / "ct")
    assert [(c.case_id, c.image) for c in cases] == [("ct", tmp_path / "ct")]


def test_plain_layout_of_metaimage_volumes(tmp_path):
    # LUNA16-style: each .mhd header names its .raw voxel file, which is part of the volume
    ct, _, spacing = make_phantom(1, **SMALL)
    for name in ("scan0.mhd", "scan1.mhd"):
        write_image(array_to_image(np.rint(ct).astype(np.int16), spacing), tmp_path / name, compress=False)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".mhd", ".mhd", ".raw", ".raw"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped
        cases = find_cases(tmp_path, strict=True)
    assert [c.case_id for c in cases] == ["scan0", "scan1"]


def test_plain_layout_of_the_current_folder(tmp_path, monkeypatch):
    pydicom = pytest.importorskip("pydicom")
    ct5n = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files", "dicomdirtests", "98892001", "CT5N")
    shutil.copytree(ct5n, tmp_path / "ct")
    monkeypatch.chdir(tmp_path / "ct")
    assert [c.case_id for c in find_cases(".")] == ["ct"]  # named after the folder, not ""


def test_find_cases_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        find_cases(tmp_path, "nifti")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        find_cases(tmp_path / "missing")


# --------------------------------------------------------------------------- cache
def test_cache_matches_prepare_volume_and_is_memory_mapped(msd_root, volumes):
    case = find_cases(msd_root)[1]
    direct = prepare_volume(case.image, case.label, spacing=None)
    vol = volumes[1]
    assert vol.case_id == "phantom_001" and vol.shape == direct.image.shape and vol.spacing == (10.0, 6.0, 6.0)
    image = vol.image()
    assert isinstance(image, np.memmap) and image.dtype == np.float16 and not image.flags.writeable
    np.testing.assert_allclose(image, direct.image, atol=2.5e-4)  # float16 step is 2**-12 near 1
    np.testing.assert_array_equal(vol.label(), direct.label)
    np.testing.assert_allclose(vol.foreground, (direct.image > 0).mean(axis=(1, 2)), atol=1e-4)


def test_cache_entry_built_unchecked_is_checked_when_asked(tmp_path):
    # check_intensity is not in the cache key, but an entry built without the check must not
    # let a volume that is not CT through a later run that checks
    ct, labels, spacing = make_phantom(0, **SMALL)
    unit = write_image(array_to_image(window_hu(ct.astype(np.float32)), spacing), tmp_path / "unit.nii.gz")
    case = Case("unit", unit)
    built = VolumeCache(tmp_path / "cache", check_intensity=False, **NATIVE).prepare(case)
    assert not built.reused
    checked = VolumeCache(tmp_path / "cache", check_intensity=True, **NATIVE)
    with pytest.warns(SkippedInputWarning, match="intensities do not look like CT"):
        assert checked.prepare_all([case]) == []
    assert len(checked.skipped) == 1 and "intensities do not look like CT" in checked.skipped[0][1]
    assert VolumeCache(tmp_path / "cache", check_intensity=False, **NATIVE).prepare(case).reused


def _phantom_case(tmp_path, seed=0):
    ct, labels, spacing = make_phantom(seed, **SMALL)
    image = write_image(array_to_image(np.rint(ct).astype(np.int16), spacing), tmp_path / "src" / "c_ct.nii.gz")
    label = write_image(array_to_image(labels, spacing), tmp_path / "src" / "c_label.nii.gz")
    return Case("c", image, label)


def test_cache_reuse_and_invalidation(tmp_path):
    case = _phantom_case(tmp_path)
    cache = VolumeCache(tmp_path / "cache", **NATIVE)
    first = cache.prepare(case)
    assert not first.reused
    stamp = (first.folder / "image.npy").stat().st_mtime_ns
    again = VolumeCache(tmp_path / "cache", **NATIVE).prepare(case)  # a new run
    assert again.reused and again.folder == first.folder
    assert (again.folder / "image.npy").stat().st_mtime_ns == stamp  # not rewritten
    # the manifest records source path, size, mtime, spacing and window
    entry = cache.manifest()["entries"][first.folder.name]
    assert entry["image"]["path"] == str(case.image.resolve())
    assert entry["image"]["size"] == case.image.stat().st_size
    assert entry["image"]["mtime_ns"] == case.image.stat().st_mtime_ns
    assert entry["spacing"] == [10.0, 6.0, 6.0] and entry["window"] == [-175.0, 250.0]

    # a changed source file: rebuilt in place, with the new content
    ct, _, spacing = make_phantom(1, **SMALL)
    write_image(array_to_image(np.rint(ct).astype(np.int16), spacing), case.image)
    future = case.image.stat().st_mtime_ns + 10**9
    os.utime(case.image, ns=(future, future))
    changed = cache.prepare(case)
    assert not changed.reused and changed.folder == first.folder
    np.testing.assert_allclose(changed.image(), window_hu(np.rint(ct).astype(np.float32)), atol=2.5e-4)
    assert cache.manifest()["entries"][first.folder.name]["image"]["mtime_ns"] == future

    # a changed label file alone also invalidates
    os.utime(case.label, ns=(future + 1, future + 1))
    assert not cache.prepare(case).reused

    # other settings: a separate entry, built fresh; the first stays valid
    wide = VolumeCache(tmp_path / "cache", window=(-1000, 1000), **NATIVE).prepare(case)
    assert not wide.reused and wide.folder != first.folder
    np.testing.assert_allclose(wide.image(), window_hu(np.rint(ct).astype(np.float32), (-1000, 1000)), atol=2.5e-4)
    assert cache.prepare(case).reused
    assert VolumeCache(tmp_path / "cache", window=(-1000, 1000), **NATIVE).prepare(case).reused


def _prepare_some(args):
    folder, cases = args
    VolumeCache(folder, **NATIVE).prepare_all(cases)


def test_concurrent_preparations_keep_every_manifest_entry(tmp_path):
    cases = write_phantom_dataset(tmp_path / "src", 8, seed=9, layout="plain", shape=(4, 32, 32),
                                  spacing=(10.0, 6.0, 6.0))
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(4) as pool:  # four workers, two cases each
        pool.map(_prepare_some, [(tmp_path / "cache", cases[i::4]) for i in range(4)])
    entries = VolumeCache(tmp_path / "cache", **NATIVE).manifest()["entries"]
    assert sorted(e["case_id"] for e in entries.values()) == [c.case_id for c in cases]


def test_default_cache_dir(monkeypatch, tmp_path):
    from lrc_fast.data import default_cache_dir
    monkeypatch.setenv("LRC_FAST_CACHE", "~/lrc_cache")
    assert default_cache_dir() == Path.home() / "lrc_cache"
    monkeypatch.delenv("LRC_FAST_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as the XDG spec says
    assert default_cache_dir() == Path.home() / ".cache" / "lrc_fast"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "lrc_fast"


def test_cache_rebuilds_incomplete_entries(tmp_path):
    case = _phantom_case(tmp_path)
    cache = VolumeCache(tmp_path / "cache", **NATIVE)
    vol = cache.prepare(case)
    (vol.folder / "image.npy").unlink()
    rebuilt = cache.prepare(case)
    assert not rebuilt.reused and rebuilt.image().shape == vol.shape
    (vol.folder / "entry.json").write_text("{broken")
    assert not cache.prepare(case).reused


def test_cache_float32_storage(tmp_path):
    case = _phantom_case(tmp_path)
    vol = VolumeCache(tmp_path / "cache", dtype="float32", **NATIVE).prepare(case)
    assert vol.image().dtype == np.float32
    np.testing.assert_array_equal(vol.image(), prepare_volume(case.image, spacing=None).image)


def test_prepare_all_skips_bad_volumes_and_reports_at_the_end(tmp_path):
    good = _phantom_case(tmp_path)
    corrupt = tmp_path / "src" / "corrupt_ct.nii.gz"
    corrupt.write_bytes(b"\x00" * 500)
    flat = tmp_path / "src" / "flat_ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((32, 32), -1000, np.int16)), str(flat))
    unit = write_image(array_to_image(np.random.default_rng(0).random((6, 20, 20)).astype(np.float32)), tmp_path / "src" / "unit_ct.nii.gz")
    cases = [Case("a", corrupt), good, Case("f", flat), Case("m", tmp_path / "missing.nii.gz"), Case("u", unit)]
    cache = VolumeCache(tmp_path / "cache", **NATIVE)
    with pytest.warns(SkippedInputWarning) as record:
        volumes = cache.prepare_all(cases)
    assert [v.case_id for v in volumes] == ["c"]
    assert len(record) == 1
    message = str(record[0].message)
    for text in ("corrupt_ct.nii.gz: could not read", "flat_ct.nii.gz: is 2D", "missing.nii.gz", "unit_ct.nii.gz: intensities do not look like CT"):
        assert text in message
    assert len(cache.skipped) == 4
    with pytest.raises(CTDataError, match="corrupt_ct.nii.gz: strict mode: 4 input"):
        cache.prepare_all(cases, strict=True)


def test_settings_validation():
    with pytest.raises(ValueError, match="dtype"):
        PreprocessSettings(dtype="int8")
    for code in ("XYZ", "LRS", "LLL", "lps", "RAS ", 3):
        with pytest.raises(ValueError, match="orientation must be None or three capital letters"):
            PreprocessSettings(orientation=code)
    assert PreprocessSettings(orientation="SPL").orientation == "SPL"
    for dtype in (np.float16, np.dtype("float16"), "float16"):  # one key for all spellings
        assert PreprocessSettings(dtype=dtype).dtype == "float16"
    with pytest.raises(ValueError, match="dtype must be one of"):
        PreprocessSettings(dtype=np.int16)
    with pytest.raises(ValueError, match="window"):
        PreprocessSettings(window=(5, 1))
    with pytest.raises(ValueError, match="not both"):
        VolumeCache("/tmp/unused_cache", PreprocessSettings(), window="lung")


# --------------------------------------------------------------------------- slice Dataset
def test_slice_dataset_items(volumes):
    ds = CTSliceDataset(volumes, labelled=True)
    assert len(ds) == sum(v.shape[0] for v in volumes) == 36
    item = ds[13]
    assert item["volume"] == 1 and item["slice"] == 1
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.float32
    assert item["label"].shape == (64, 64) and item["label"].dtype == torch.int64
    np.testing.assert_array_equal(item["image"][0].numpy(), volumes[1].image()[1].astype(np.float32))
    np.testing.assert_array_equal(item["label"].numpy(), volumes[1].label()[1])
    assert torch.equal(ds[-1]["image"], ds[35]["image"])
    assert torch.equal(ds[13]["image"], item["image"])  # deterministic
    with pytest.raises(IndexError):
        ds[36]
    assert ds.case_ids == ["phantom_000", "phantom_001", "phantom_002"] and ds.volume_index(25) == 2


def test_slice_dataset_25d_and_size(volumes):
    ds = CTSliceDataset(volumes, n_neighbors=2, slice_size=(48, 80))
    first = ds[12]  # slice 0 of volume 1: neighbours below the volume repeat slice 0
    assert first["image"].shape == (5, 48, 80) and "label" not in first
    mm = volumes[1].image().astype(np.float32)
    for channel, z in enumerate([0, 0, 0, 1, 2]):
        np.testing.assert_array_equal(first["image"][channel, :, 8:72].numpy(), mm[z, 8:56])
    assert torch.all(first["image"][:, :, :8] == 0)  # padding


def test_slice_dataset_min_foreground(volumes):
    fractions = np.concatenate([v.foreground for v in volumes])
    threshold = float(np.median(fractions))
    ds = CTSliceDataset(volumes, min_foreground=threshold)
    assert len(ds) == int((fractions >= threshold).sum()) < 36
    for i in range(len(ds)):
        item = ds[i]
        assert volumes[item["volume"]].foreground[item["slice"]] >= threshold


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_neighbors": -1}, "n_neighbors"), ({"slice_size": (0, 4)}, "slice_size"),
     ({"slice_size": 256}, r"slice_size must be \(H, W\): two positive ints, or None; got 256"),
     ({"slice_size": (None, 256)}, "slice_size must be"), ({"slice_size": (64.5, 64)}, "slice_size must be"),
     ({"min_foreground": 1.5}, r"min_foreground must be a number in \[0, 1\]; got 1.5"),
     ({"min_foreground": "half"}, r"min_foreground must be a number in \[0, 1\]; got 'half'"),
     ({"min_foreground": float("nan")}, r"min_foreground must be a number in \[0, 1\]; got nan")],
)
def test_slice_dataset_rejects_bad_arguments(volumes, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CTSliceDataset(volumes, **kwargs)


def test_slice_dataset_that_keeps_no_slice_is_an_error(volumes):
    best = max(max(v.foreground) for v in volumes)
    assert len(CTSliceDataset(volumes, min_foreground=best)) >= 1
    with pytest.raises(ValueError, match=f"keeps no slice: the largest foreground fraction of any slice is {best:.4g}"):
        CTSliceDataset(volumes, min_foreground=min(1.0, best + 1e-3))


def test_load_slice_dataset_checks_slice_options_before_preparing(msd_root, tmp_path):
    with pytest.raises(ValueError, match="min_foreground"):
        load_slice_dataset(msd_root, cache_dir=tmp_path / "cache", min_foreground=5, **NATIVE)
    assert not (tmp_path / "cache").exists()  # nothing was built


def test_slice_dataset_labelled_needs_labels(tmp_path, volumes):
    ct, _, spacing = make_phantom(2, **SMALL)
    path = write_image(array_to_image(np.rint(ct).astype(np.int16), spacing), tmp_path / "x.nii.gz")
    unlabelled = VolumeCache(tmp_path / "cache", **NATIVE).prepare(Case("x", path))
    with pytest.raises(ValueError, match=r"labelled=True but cases \['x'\]"):
        CTSliceDataset([volumes[0], unlabelled], labelled=True)
    with pytest.raises(ValueError, match="empty"):
        CTSliceDataset([])


def test_slice_dataset_pickles_without_open_memmaps(volumes):
    ds = CTSliceDataset(volumes, labelled=True)
    ds[0]  # opens a memory map
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # no array data inside
    clone = pickle.loads(blob)
    assert clone._open == {}
    for i in (0, 17, 35):
        assert torch.equal(clone[i]["image"], ds[i]["image"]) and torch.equal(clone[i]["label"], ds[i]["label"])


@pytest.mark.parametrize("context", [None, "spawn"])
def test_dataloader_workers_see_every_slice_once(volumes, context):
    ds = CTSliceDataset(volumes, labelled=True, n_neighbors=1)
    loader = DataLoader(ds, batch_size=5, num_workers=2, multiprocessing_context=context)
    batches = list(loader)  # one pass: spawning workers costs seconds
    seen = [(int(v), int(z)) for batch in batches for v, z in zip(batch["volume"], batch["slice"])]
    assert seen == [(ds[i]["volume"], ds[i]["slice"]) for i in range(len(ds))]
    batch = batches[0]
    assert batch["image"].shape == (5, 3, 64, 64) and batch["label"].shape == (5, 64, 64)
    assert torch.equal(batch["image"][3], ds[3]["image"])


@pytest.mark.parametrize("n_volumes", [3, 2])
def test_distributed_sampler_splits_slices_between_ranks(volumes, n_volumes):
    ds = CTSliceDataset(volumes[:n_volumes])  # 36 or 24 slices
    ranks = [list(DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=3)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(ds) // 2
    assert set(ranks[0]).isdisjoint(ranks[1]) and set(ranks[0]) | set(ranks[1]) == set(range(len(ds)))
    again = list(DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True, seed=3))
    assert again == ranks[0]
    loader = DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=3))
    got = torch.cat([b["image"] for b in loader])
    assert torch.equal(got, torch.stack([ds[i]["image"] for i in ranks[1]]))


def test_distributed_sampler_odd_length_pads_with_one_repeat(volumes):
    ds = CTSliceDataset(volumes, min_foreground=float(np.sort(np.concatenate([v.foreground for v in volumes]))[1]))
    assert len(ds) == 35
    ranks = [list(DistributedSampler(ds, num_replicas=2, rank=r, shuffle=False)) for r in range(2)]
    assert set(ranks[0]) | set(ranks[1]) == set(range(35)) and len(ranks[0] + ranks[1]) == 36


def test_load_slice_dataset_one_call(msd_root, tmp_path):
    ds = load_slice_dataset(msd_root, cache_dir=tmp_path / "cache", labelled=True, slice_size=(64, 64), **NATIVE)
    assert len(ds) == 36 and ds[0]["label"].shape == (64, 64)
    again = load_slice_dataset(find_cases(msd_root)[:1], cache_dir=tmp_path / "cache", **NATIVE)
    assert len(again) == 12 and all(v.reused for v in again.volumes)
    with pytest.raises(TypeError, match="sequence of Case"):
        load_slice_dataset(["not a case"], cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="have no label file"):
        load_slice_dataset([Case("x", msd_root / "imagesTr" / "phantom_000.nii.gz")], cache_dir=tmp_path / "cache", labelled=True)


def test_shared_data_dir_env_override(monkeypatch, tmp_path):
    from lrc_fast.data import shared_data_dir

    monkeypatch.setenv("LRC_FAST_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.setenv("LRC_FAST_SHARED_DATA", str(tmp_path / "absent"))
    assert shared_data_dir() is None


def test_case_normalises_paths():
    case = Case("a", "x/a.nii.gz", "x/a_label.nii.gz")
    assert case.image == Path("x/a.nii.gz") and case.label == Path("x/a_label.nii.gz")
    with pytest.raises(ValueError, match="case_id"):
        Case("", "x.nii.gz")
