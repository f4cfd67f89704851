"""The synthetic CT phantom: determinism, anatomy, HU ranges, label maps, and the files it writes."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from lrc_fast.data import PHANTOM_LABELS, find_cases, make_phantom, phantom_slice, read_image, write_phantom_dataset
from lrc_fast.data.phantom import DEFAULT_PHANTOM_SHAPE, DEFAULT_PHANTOM_SPACING

SMALL = dict(shape=(16, 96, 96), spacing=(8.0, 4.0, 4.0))  # 128 x 384 x 384 mm, fast


@pytest.fixture(scope="module")
def default_case():
    return make_phantom(7)


def test_same_seed_same_volume_other_seed_other_volume():
    a_ct, a_lab, _ = make_phantom(3, **SMALL)
    b_ct, b_lab, _ = make_phantom(3, **SMALL)
    np.testing.assert_array_equal(a_ct, b_ct)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_ct, c_lab, _ = make_phantom(4, **SMALL)
    assert not np.array_equal(a_lab, c_lab)
    assert np.abs(a_ct - c_ct).mean() > 10.0


def test_shapes_dtypes_and_label_ids(default_case):
    ct, labels, spacing = default_case
    assert ct.shape == labels.shape == DEFAULT_PHANTOM_SHAPE
    assert ct.dtype == np.float32 and labels.dtype == np.uint8
    assert spacing == DEFAULT_PHANTOM_SPACING
    assert set(np.unique(labels)) == set(PHANTOM_LABELS)  # every organ appears in the default field of view


def test_hu_ranges_are_ct_like(default_case):
    ct, labels, _ = default_case
    assert abs(np.median(ct[:, :8, :8]) + 1000) < 15  # air in the corners
    assert 500 < ct.max() < 1400  # cortical bone
    assert ct.min() > -1200
    mean = {name: ct[labels == k].mean() for k, name in PHANTOM_LABELS.items() if k}
    assert 50 < mean["liver"] < 180 and 50 < mean["spleen"] < 180
    assert mean["aorta"] > mean["liver"]  # enhanced blood pool
    assert -20 < mean["gallbladder"] < 40  # bile
    body = ct[(labels == 0) & (ct > -400)]
    assert np.percentile(body, 20) < -50  # fat is a large part of the non-organ body


def test_noise_and_texture_are_present(default_case):
    ct, labels, _ = default_case
    liver = ct[labels == 1]
    assert 6.0 < liver.std() < 40.0  # noise plus texture, like portal-venous CT
    assert len(np.unique(ct)) > 0.5 * ct.size  # continuous values, no flat regions


def test_organ_sides_follow_lps_orientation(default_case):
    # Array x runs to the patient's left, y to posterior: the liver is on the low-x side.
    _, labels, _ = default_case
    centre_x = lambda k: np.argwhere(labels == k)[:, 2].mean()  # noqa: E731
    centre_y = lambda k: np.argwhere(labels == k)[:, 1].mean()  # noqa: E731
    w = labels.shape[2] / 2
    assert centre_x(1) < w < centre_x(2)  # liver right, spleen left
    assert centre_x(3) < w < centre_x(4)  # right and left kidney
    assert centre_y(6) > centre_y(9)  # aorta behind the pancreas
    assert centre_y(3) > centre_y(8)  # kidneys behind the gallbladder


def test_organ_volumes_are_plausible_and_vary(default_case):
    volumes = []
    for seed in (0, 1):
        _, labels, spacing = make_phantom(seed)
        counts = np.bincount(labels.ravel(), minlength=len(PHANTOM_LABELS)) * np.prod(spacing) / 1e6  # litres
        volumes.append(counts)
        assert 0.6 < counts[1] < 3.5  # liver
        assert 0.05 < counts[2] < 0.5  # spleen
        assert 0.02 < counts[3] < 0.3 and 0.02 < counts[4] < 0.3  # kidneys (partly in view)
    assert np.all(np.abs(volumes[0][1:] - volumes[1][1:]) > 1e-4)  # every organ differs between cases


def test_anatomy_has_fixed_physical_size():
    # A finer grid over the same field of view gives the same organs, not rescaled ones.
    _, coarse, sp_c = make_phantom(5, shape=(16, 96, 96), spacing=(8.0, 4.0, 4.0))
    _, fine, sp_f = make_phantom(5, shape=(32, 192, 192), spacing=(4.0, 2.0, 2.0))
    for k in (1, 2, 5):
        v_c = (coarse == k).sum() * np.prod(sp_c)
        v_f = (fine == k).sum() * np.prod(sp_f)
        assert abs(v_c - v_f) / v_f < 0.1


def test_phantom_slice_varies_and_has_no_equal_neighbours():
    a = phantom_slice(200, 240, seed=0)
    b = phantom_slice(200, 240, seed=1)
    assert a.shape == (200, 240) and a.dtype == np.float32
    assert np.abs(a - b).mean() > 20
    np.testing.assert_array_equal(a, phantom_slice(200, 240, seed=0))
    for s in (a, phantom_slice(512, 512, seed=2)):
        assert np.all(s[:, 1:] != s[:, :-1]) and np.all(s[1:, :] != s[:-1, :])
        assert np.all(s[1:, 1:] != s[:-1, :-1]) and np.all(s[1:, :-1] != s[:-1, 1:])
        assert -1100 < s.min() and s.max() > 300  # air and bone


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: make_phantom(0, shape=(4, 8)), ValueError, "shape"),
        (lambda: make_phantom(0, shape=(4, 0, 8)), ValueError, "shape"),
        (lambda: make_phantom(0, spacing=(1.0, -1.0, 1.0)), ValueError, "spacing"),
        (lambda: make_phantom(1.5), TypeError, "seed"),
        (lambda: make_phantom(-1), ValueError, "seed must be >= 0"),
        (lambda: phantom_slice(10, 10, seed=(3, -2)), ValueError, "seed must be >= 0"),
        (lambda: write_phantom_dataset("/tmp/unused", 1, seed=-5), ValueError, "seed must be >= 0"),
        (lambda: phantom_slice(0, 10), ValueError, "height"),
        (lambda: phantom_slice(10, 10, fov_mm=-1.0), ValueError, "fov_mm"),
        (lambda: phantom_slice(10, 10, fov_mm=True), ValueError, "fov_mm must be a positive number; got True"),
        (lambda: make_phantom((True, 1)), TypeError, r"seed must be an int \(or a non-empty tuple of ints\)"),
        (lambda: make_phantom([]), TypeError, "non-empty tuple of ints"),
        (lambda: write_phantom_dataset("/tmp/unused", 1, layout="nifti"), ValueError, "layout"),
        (lambda: write_phantom_dataset("/tmp/unused", 0), ValueError, "n_cases"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("layout", ["msd", "pairs", "plain"])
def test_write_phantom_dataset_layouts_read_back(tmp_path, layout):
    cases = write_phantom_dataset(tmp_path, 2, seed=11, layout=layout, **SMALL)
    assert [c.case_id for c in cases] == ["phantom_000", "phantom_001"]
    found = find_cases(tmp_path)  # "auto" recognises every layout it writes
    assert [(c.case_id, c.image, c.label) for c in found] == [(c.case_id, c.image, c.label) for c in cases]
    ct, labels, spacing = make_phantom((11, 1), **SMALL)
    image = read_image(cases[1].image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), np.clip(np.rint(ct), -1024, 3071).astype(np.int16))
    assert image.GetSpacing() == tuple(reversed(spacing))
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    np.testing.assert_allclose(np.array(image.GetOrigin()) + np.array(image.GetSpacing()) * (np.array(image.GetSize()) - 1) / 2, 0, atol=1e-4)
    if layout == "plain":
        assert cases[1].label is None
    else:
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(cases[1].label)), labels)


def test_msd_dataset_json(tmp_path):
    write_phantom_dataset(tmp_path, 2, layout="msd", **SMALL)
    info = json.loads((tmp_path / "dataset.json").read_text())
    assert info["modality"] == {"0": "CT"}
    assert info["labels"] == {str(k): v for k, v in PHANTOM_LABELS.items()}
    assert info["numTraining"] == 2
    assert info["training"][1] == {"image": "./imagesTr/phantom_001.nii.gz", "label": "./labelsTr/phantom_001.nii.gz"}


def test_more_cases_keep_the_first_ones(tmp_path):
    one = write_phantom_dataset(tmp_path / "a", 1, seed=2, layout="plain", **SMALL)
    two = write_phantom_dataset(tmp_path / "b", 2, seed=2, layout="plain", **SMALL)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(one[0].image)), sitk.GetArrayFromImage(read_image(two[0].image)))


def test_rewriting_the_same_dataset_keeps_files(tmp_path):
    first = write_phantom_dataset(tmp_path, 2, seed=3, layout="pairs", **SMALL)
    stamps = [c.image.stat().st_mtime_ns for c in first]
    again = write_phantom_dataset(tmp_path, 3, seed=3, layout="pairs", **SMALL)  # one more case
    assert [c.image.stat().st_mtime_ns for c in again[:2]] == stamps and again[2].image.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".lrc_phantom.json"]
    assert find_cases(tmp_path)[2].case_id == "phantom_002"  # the hidden record is not reported
    forced = write_phantom_dataset(tmp_path, 1, seed=3, layout="pairs", overwrite=True, **SMALL)
    assert forced[0].image.stat().st_mtime_ns != stamps[0]
    other = write_phantom_dataset(tmp_path, 1, seed=4, layout="pairs", **SMALL)  # other seed: new content
    ct, _, _ = make_phantom((4, 0), **SMALL)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(other[0].image)), np.clip(np.rint(ct), -1024, 3071))


def test_phantom_slice_takes_numpy_numbers():
    np.testing.assert_array_equal(phantom_slice(16, 16, seed=np.int64(2), fov_mm=np.float32(400.0)),
                                  phantom_slice(16, 16, seed=2, fov_mm=400.0))


def test_rewriting_with_other_arguments_leaves_only_the_new_dataset(tmp_path):
    write_phantom_dataset(tmp_path, 3, seed=5, layout="msd", **SMALL)
    pairs = write_phantom_dataset(tmp_path, 2, seed=5, layout="pairs", **SMALL)  # another layout
    # the msd layout's folders go too: left empty, they failed a strict scan
    assert not any((tmp_path / name).exists() for name in ("dataset.json", "imagesTr", "labelsTr"))
    assert [(c.case_id, c.image) for c in find_cases(tmp_path, strict=True)] == [(c.case_id, c.image) for c in pairs]
    fewer = write_phantom_dataset(tmp_path, 1, seed=5, layout="pairs", **SMALL)  # fewer cases
    assert [c.case_id for c in find_cases(tmp_path)] == [c.case_id for c in fewer] == ["phantom_000"]
    assert json.loads((tmp_path / ".lrc_phantom.json").read_text())["cases"] == ["phantom_000"]
    (tmp_path / "notes.txt").write_text("not ours")  # files no call recorded stay
    write_phantom_dataset(tmp_path, 1, seed=6, layout="plain", **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [".lrc_phantom.json", "notes.txt",
                                                                         "phantom_000.nii.gz"]


def test_an_msd_folder_holding_other_files_stays(tmp_path):
    write_phantom_dataset(tmp_path, 1, seed=5, layout="msd", **SMALL)
    (tmp_path / "labelsTr" / "notes.txt").write_text("not ours")
    write_phantom_dataset(tmp_path, 1, seed=5, layout="plain", **SMALL)
    assert not (tmp_path / "imagesTr").exists()
    assert [p.name for p in (tmp_path / "labelsTr").iterdir()] == ["notes.txt"]


def test_interrupted_rewrite_is_not_kept(tmp_path, monkeypatch):
    write_phantom_dataset(tmp_path, 2, seed=7, layout="plain", **SMALL)
    from lrc_fast.data import phantom as phantom_module

    def crash(image, path):  # a write cut short: half a file, then the process dies
        path.write_bytes(b"\x1f\x8b half a gzip stream")
        raise KeyboardInterrupt

    monkeypatch.setattr(phantom_module, "write_image", crash)
    with pytest.raises(KeyboardInterrupt):
        write_phantom_dataset(tmp_path, 2, seed=7, layout="plain", overwrite=True, **SMALL)
    monkeypatch.undo()
    cases = write_phantom_dataset(tmp_path, 2, seed=7, layout="plain", **SMALL)  # an ordinary call
    ct, _, _ = make_phantom((7, 0), **SMALL)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(cases[0].image)), np.clip(np.rint(ct), -1024, 3071))
