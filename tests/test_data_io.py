"""Reading and writing volumes: file round trips, DICOM series, and unreadable input."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lrc_fast.data import CTDataError, array_to_image, read_dicom_series, read_image, spacing_zyx, write_image
from lrc_fast.data.io import (detached_data_files, dicom_series_files, source_stamp, strip_volume_suffix,
                             volume_suffix)

pydicom = pytest.importorskip("pydicom")
DICOMDIR_TESTS = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files", "dicomdirtests")
CT5N = os.path.join(DICOMDIR_TESTS, "98892001", "CT5N")  # 5 slices of 2.5 mm, file names in reverse z order
CT2 = os.path.join(DICOMDIR_TESTS, "77654033", "CT2")  # 4 slices, gaps 202.5, 1.25, 1.25 mm
CT2N = os.path.join(DICOMDIR_TESTS, "98892001", "CT2N")  # 2 localizers with different orientations


def _volume(seed=0, shape=(5, 7, 9)):
    return np.random.default_rng(seed).integers(-1024, 2000, size=shape).astype(np.int16)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_round_trip_keeps_values_and_geometry(tmp_path, suffix):
    array = _volume()
    direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # a proper non-identity rotation
    image = array_to_image(array, spacing=(2.5, 0.8, 0.7), origin=(-10.0, 20.5, 3.25), direction=direction)
    path = write_image(image, tmp_path / f"vol{suffix}")
    back = read_image(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)
    assert spacing_zyx(back) == pytest.approx((2.5, 0.8, 0.7), rel=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), (-10.0, 20.5, 3.25), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), direction, atol=1e-6)


def test_array_to_image_axis_order():
    image = array_to_image(np.zeros((4, 5, 6), np.float32), spacing=(3.0, 2.0, 1.0))
    assert image.GetSize() == (6, 5, 4)  # SimpleITK: (x, y, z)
    assert image.GetSpacing() == (1.0, 2.0, 3.0)
    assert spacing_zyx(image) == (3.0, 2.0, 1.0)
    assert sitk.GetArrayViewFromImage(image).shape == (4, 5, 6)


@pytest.mark.parametrize("bad", [(1.0, 2.0), (1.0, 0.0, 1.0), (1.0, -2.0, 1.0), "abc"])
def test_array_to_image_rejects_bad_spacing(bad):
    with pytest.raises(ValueError, match="spacing"):
        array_to_image(np.zeros((2, 2, 2)), spacing=bad)


def test_array_to_image_rejects_2d():
    with pytest.raises(ValueError, match="3D"):
        array_to_image(np.zeros((4, 4)))


def test_write_image_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="must end in one of"):
        write_image(array_to_image(_volume()), tmp_path / "vol.png")
    with pytest.raises(ValueError, match="SimpleITK.Image"):
        write_image(_volume(), tmp_path / "vol.nii.gz")


def test_suffix_helpers():
    assert volume_suffix("a/pt_1_CT.NII.GZ") == ".nii.gz"
    assert volume_suffix("x.mhd") == ".mhd"
    assert volume_suffix("notes.txt") is None
    assert strip_volume_suffix("pt_1_ct.nii.gz") == "pt_1_ct"


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        read_image(tmp_path / "nope.nii.gz")


def test_corrupt_file_names_it(tmp_path):
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(CTDataError, match="corrupt.nii.gz.*could not read") as info:
        read_image(path)
    assert info.value.path == path


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_file_names_it(tmp_path, suffix, keep):
    # SimpleITK's NIfTI reader alone returns truncated files with made-up voxels; we refuse them.
    good = write_image(array_to_image(_volume(shape=(20, 30, 30))), tmp_path / f"good{suffix}")
    data = good.read_bytes()
    bad = tmp_path / f"truncated{suffix}"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CTDataError, match=f"truncated{suffix}") as info:
        read_image(bad)
    assert "No such file" not in str(info.value)  # ITK's stale errno line is left out


def _pydicom_stack(folder):
    """Independent oracle: sort by position along the slice normal, rescale to HU."""
    slices = [pydicom.dcmread(os.path.join(folder, f)) for f in os.listdir(folder)]
    normal = np.cross(*np.reshape(np.array(slices[0].ImageOrientationPatient, float), (2, 3)))
    slices.sort(key=lambda s: float(np.dot(np.array(s.ImagePositionPatient, float), normal)))
    array = np.stack([s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept) for s in slices])
    positions = np.array([s.ImagePositionPatient for s in slices], float)
    return array, positions, [s.filename for s in slices]


def test_dicom_series_sorted_by_position_like_pydicom():
    image = read_dicom_series(CT5N)
    expected, positions, files = _pydicom_stack(CT5N)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected)
    gaps = np.diff(positions[:, 2])
    assert spacing_zyx(image) == pytest.approx((gaps.mean(), 0.488281, 0.488281), rel=1e-5)
    assert spacing_zyx(image)[0] == pytest.approx(2.5, rel=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), positions[0], atol=1e-4)  # first slice = lowest z
    assert [os.path.basename(f) for f in dicom_series_files(CT5N)] == [os.path.basename(f) for f in files]
    # the file names sort the other way round, so a name sort would be wrong
    assert sorted(os.listdir(CT5N)) != [os.path.basename(f) for f in files]


def test_dicom_series_matches_simpleitk_series_reader():
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(CT5N))
    direct = reader.Execute()
    ours = read_image(CT5N)  # a folder reads as a series
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(direct))
    assert ours.GetSpacing() == direct.GetSpacing()
    assert ours.GetOrigin() == direct.GetOrigin()
    assert ours.GetDirection() == direct.GetDirection()


def test_dicom_series_independent_of_file_names(tmp_path):
    names = sorted(os.listdir(CT5N))
    for i, name in enumerate(names):  # rename so the lexical order is scrambled differently
        shutil.copy(os.path.join(CT5N, name), tmp_path / f"slice_{(i * 3) % len(names)}.dcm")
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(read_dicom_series(tmp_path)), sitk.GetArrayFromImage(read_dicom_series(CT5N))
    )


def test_dicom_series_nonuniform_gaps_is_an_error():
    # the sort order is still right ...
    _, _, files = _pydicom_stack(CT2)
    assert [os.path.basename(f) for f in dicom_series_files(CT2)] == [os.path.basename(f) for f in files]
    # ... but SimpleITK alone would average the 202.5 and 1.25 mm gaps into one spacing
    with pytest.raises(CTDataError, match="CT2: non-uniform slice gaps"):
        read_dicom_series(CT2)


def test_dicom_series_mixed_orientations_is_an_error():
    with pytest.raises(CTDataError, match="CT2N: the slices of this series have different orientations"):
        read_dicom_series(CT2N)


def test_dicom_folder_with_two_series_needs_series_id(tmp_path):
    for folder, tag in ((CT5N, "a"), (CT2, "b")):
        for name in os.listdir(folder):
            shutil.copy(os.path.join(folder, name), tmp_path / f"{tag}{name}")
    with pytest.raises(CTDataError, match="holds 2 DICOM series"):
        read_dicom_series(tmp_path)
    ct5n_uid = sitk.ImageSeriesReader.GetGDCMSeriesIDs(CT5N)[0]
    image = read_dicom_series(tmp_path, series_id=ct5n_uid)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(read_dicom_series(CT5N)))
    with pytest.raises(CTDataError, match="has no DICOM series 'nope'"):
        read_dicom_series(tmp_path, series_id="nope")


@pytest.mark.parametrize("keep_bytes", [0, 100, "half"])
@pytest.mark.parametrize("which", [0, -1, 2])  # the first, last and a middle slice by position
def test_a_damaged_slice_is_an_error_not_a_shorter_volume(tmp_path, keep_bytes, which):
    # GDCM leaves out a file it cannot parse: a damaged first or last slice would go unnoticed
    # (the gaps stay uniform), a middle one would be reported as non-uniform gaps
    for name in os.listdir(CT5N):
        shutil.copy(os.path.join(CT5N, name), tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a slice")  # other files are no slices
    (tmp_path / ".DS_Store").write_bytes(b"")
    assert sitk.GetArrayFromImage(read_dicom_series(tmp_path)).shape[0] == 5
    damaged = Path(dicom_series_files(tmp_path)[which])
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2 if keep_bytes == "half" else keep_bytes])
    with pytest.raises(CTDataError, match=rf"1 file\(s\) look like slices but could not be read as DICOM "
                                          rf".*\['{damaged.name}'\]; repair or remove them"):
        read_dicom_series(tmp_path)


def test_a_damaged_slice_with_another_series_beside_it(tmp_path):
    for folder, tag in ((CT5N, "a"), (CT2, "b")):
        for name in os.listdir(folder):
            shutil.copy(os.path.join(folder, name), tmp_path / f"{tag}{name}.dcm")
    ct5n_uid = sitk.ImageSeriesReader.GetGDCMSeriesIDs(CT5N)[0]
    assert sitk.GetArrayFromImage(read_dicom_series(tmp_path, series_id=ct5n_uid)).shape[0] == 5
    damaged = Path(dicom_series_files(tmp_path, ct5n_uid)[-1])
    damaged.write_bytes(b"")
    with pytest.raises(CTDataError, match=damaged.name):
        read_dicom_series(tmp_path, series_id=ct5n_uid)


def test_folder_without_dicom_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CTDataError, match="no DICOM series"):
        read_image(tmp_path)


def test_source_stamp_tracks_size_mtime_and_series_files(tmp_path):
    path = write_image(array_to_image(_volume()), tmp_path / "v.nii.gz")
    first = source_stamp(path)
    assert first.size == path.stat().st_size and first.n_files == 1
    write_image(array_to_image(_volume(seed=1, shape=(6, 7, 9))), path)
    os.utime(path, ns=(first.mtime_ns + 10**9, first.mtime_ns + 10**9))
    second = source_stamp(path)
    assert second != first and second.mtime_ns == first.mtime_ns + 10**9
    series = source_stamp(CT5N)
    assert series.n_files == 5
    assert series.size == sum(os.path.getsize(os.path.join(CT5N, f)) for f in os.listdir(CT5N))


def test_source_stamp_of_a_header_counts_its_data_file(tmp_path):
    path = write_image(array_to_image(_volume(1)), tmp_path / "v.mhd", compress=False)
    assert detached_data_files(path) == [tmp_path / "v.raw"]
    before = source_stamp(path)
    data = (tmp_path / "v.raw").read_bytes()
    (tmp_path / "v.raw").write_bytes(data[::-1])  # new voxels, same size, header untouched
    os.utime(tmp_path / "v.raw", ns=(before.mtime_ns + 10 ** 9, before.mtime_ns + 10 ** 9))
    assert source_stamp(path) != before and source_stamp(path).n_files == 2


def test_detached_data_files_forms(tmp_path):
    for k in range(1, 4):
        (tmp_path / f"s{k:02d}.raw").write_bytes(b"x")
    header = "NDims = 3\nElementType = MET_SHORT\nElementDataFile = {}\n"
    (tmp_path / "a.mhd").write_text(header.format("s%02d.raw 1 3 1"))
    (tmp_path / "b.mhd").write_text(header.format("LIST") + "s02.raw\ns03.raw\n")
    (tmp_path / "c.mhd").write_text(header.format("LOCAL"))
    (tmp_path / "d.nhdr").write_text("NRRD0004\ntype: short\ndata file: s01.raw\n")
    (tmp_path / "e.mhd").write_text(header.format("missing.raw"))
    assert [f.name for f in detached_data_files(tmp_path / "a.mhd")] == ["s01.raw", "s02.raw", "s03.raw"]
    assert [f.name for f in detached_data_files(tmp_path / "b.mhd")] == ["s02.raw", "s03.raw"]
    assert detached_data_files(tmp_path / "c.mhd") == detached_data_files(tmp_path / "e.mhd") == []
    assert [f.name for f in detached_data_files(tmp_path / "d.nhdr")] == ["s01.raw"]
    assert detached_data_files(tmp_path / "s01.raw") == []


def test_write_image_needs_a_lower_case_ending(tmp_path):
    # ITK reads a.MHA but writes it as a.mhd + a.zraw (and refuses .NII.GZ)
    for name in ("a.MHA", "b.NII.GZ"):
        with pytest.raises(ValueError, match="lower-case volume ending"):
            write_image(array_to_image(_volume()), tmp_path / name)
    assert list(tmp_path.iterdir()) == []
