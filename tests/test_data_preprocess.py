"""Windowing, resampling (checked against SimpleITK and against exact physics), slicing, and
the checks on bad input in prepare_volume."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lrc_fast.data import (
    WINDOW_PRESETS,
    CTDataError,
    array_to_image,
    make_phantom,
    prepare_volume,
    resample,
    slice_with_neighbors,
    spacing_zyx,
    window_hu,
    write_image,
)
from lrc_fast.data.preprocess import crop_or_pad, resampled_size, resolve_window

# A proper rotation (det = +1) that mixes x and y: catches axis-order and direction mistakes.
ROTATION = (0.8, -0.6, 0.0, 0.6, 0.8, 0.0, 0.0, 0.0, 1.0)


def _small_phantom(seed=0):
    ct, labels, spacing = make_phantom(seed, shape=(12, 64, 64), spacing=(10.0, 6.0, 6.0))
    return np.rint(ct).astype(np.int16), labels, spacing


# --------------------------------------------------------------------------- windowing
def test_window_hu_values_by_hand():
    x = np.array([-3000.0, -175.0, -175.0 + 42.5, 37.5, 250.0, 3000.0])
    np.testing.assert_allclose(window_hu(x, (-175, 250)), [0.0, 0.0, 0.1, 0.5, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(window_hu(np.array([-1000.0, 0.0, 500.0]), "lung"), [350 / 1500, 1350 / 1500, 1.0], atol=1e-6)
    # the window's ends map exactly onto 0 and 1, for numpy and torch
    for window in WINDOW_PRESETS.values():
        ends = np.array(window, dtype=np.float32)
        assert window_hu(ends, window).tolist() == [0.0, 1.0]
        assert window_hu(torch.from_numpy(ends), window).tolist() == [0.0, 1.0]


def test_window_hu_numpy_and_torch_agree_and_are_float32():
    x = np.random.default_rng(0).uniform(-1500, 2500, size=(3, 37, 91)).astype(np.int16)
    for window in ["abdomen", "head_neck", (-50.5, 120.25)]:
        a = window_hu(x, window)
        t = window_hu(torch.from_numpy(x), window)
        assert a.dtype == np.float32 and t.dtype == torch.float32 and a.shape == x.shape
        assert a.min() >= 0.0 and a.max() <= 1.0
        low, high = resolve_window(window)
        expected = (np.clip(x.astype(np.float64), low, high) - low) / (high - low)
        np.testing.assert_allclose(a, expected, atol=1e-6)  # float32 rounding of values in [0, 1]
        np.testing.assert_allclose(t.numpy(), expected, atol=1e-6)


def test_window_hu_stays_within_0_1_for_non_integer_windows():
    # float32 rounding of the window's ends once mapped (0.1, 0.3)'s top to 1.0000001
    assert window_hu(np.array([0.3, 1.0]), (0.1, 0.3)).tolist() == [1.0, 1.0]
    assert window_hu(torch.tensor([0.3, 1.0]), (0.1, 0.3)).tolist() == [1.0, 1.0]
    rng = np.random.default_rng(1)
    for _ in range(200):
        low = rng.uniform(-1000, 1000)
        high = low + rng.uniform(1e-3, 500)
        x = rng.uniform(low - 10, high + 10, size=64)
        for out in (window_hu(x, (low, high)), window_hu(torch.from_numpy(x), (low, high)).numpy()):
            assert 0.0 <= out.min() and out.max() <= 1.0, (low, high)


def test_window_hu_keeps_input_unchanged():
    x = np.array([-1000.0, 100.0], dtype=np.float32)
    window_hu(x)
    np.testing.assert_array_equal(x, [-1000.0, 100.0])


def test_window_presets_are_ordered_pairs():
    assert WINDOW_PRESETS["abdomen"] == (-175.0, 250.0)
    for name, (low, high) in WINDOW_PRESETS.items():
        assert low < high, name


@pytest.mark.parametrize("bad", ["liver_typo", (250, -175), (0, 0), (1, 2, 3), (float("nan"), 1.0), 5])
def test_window_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="window"):
        window_hu(np.zeros(3), bad)


def test_window_rejects_bad_type():
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        window_hu([1.0, 2.0])


# --------------------------------------------------------------------------- resampling
def _ramp_image(size_zyx=(9, 21, 17), spacing=(3.0, 0.7, 0.9), origin=(5.0, -3.0, 12.0)):
    """f(p) = c . p + b evaluated at the physical centre p of every voxel."""
    image = array_to_image(np.zeros(size_zyx, np.float32), spacing, origin=origin, direction=ROTATION)
    coeff, offset = np.array([1.5, -2.0, 4.0]), 7.0
    return image, coeff, offset, _physical_points(image) @ coeff + offset


def _physical_points(image):
    """Physical (x, y, z) of every voxel centre, shape (D, H, W, 3)."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in reversed(size)), indexing="ij")
    index = np.stack([i, j, k], -1).astype(np.float64)  # (D, H, W, 3) in (x, y, z)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return np.array(image.GetOrigin()) + (index * np.array(image.GetSpacing())) @ direction.T


def test_resample_geometry_matches_simpleitk():
    image, *_ , values = _ramp_image()
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing((0.9, 0.7, 3.0))
    image.SetOrigin((5.0, -3.0, 12.0))
    image.SetDirection(ROTATION)
    out = resample(image, (2.5, 1.0, 1.0))
    size_xyz = (round(17 * 0.9 / 1.0), round(21 * 0.7 / 1.0), round(9 * 3.0 / 2.5))
    assert out.GetSize() == size_xyz == (15, 15, 11)
    assert out.GetSpacing() == (1.0, 1.0, 2.5) and spacing_zyx(out) == (2.5, 1.0, 1.0)
    assert out.GetOrigin() == image.GetOrigin()
    assert out.GetDirection() == image.GetDirection()
    # the same resampling done directly with SimpleITK
    ref = sitk.ResampleImageFilter()
    ref.SetSize(size_xyz)
    ref.SetOutputSpacing((1.0, 1.0, 2.5))
    ref.SetOutputOrigin(image.GetOrigin())
    ref.SetOutputDirection(image.GetDirection())
    ref.SetInterpolator(sitk.sitkLinear)
    ref.SetDefaultPixelValue(-1024.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(ref.Execute(image)))


def test_resample_linear_is_exact_on_a_physical_ramp():
    # Linear interpolation reproduces a linear function of the physical position exactly, so
    # any mix-up of axes, spacing order or direction shows up as a large error.
    image, coeff, offset, values = _ramp_image()
    source = array_to_image(values.astype(np.float32), (3.0, 0.7, 0.9), origin=(5.0, -3.0, 12.0), direction=ROTATION)
    out = resample(source, (2.5, 1.0, 1.0))
    points = _physical_points(out)
    expected = points @ coeff + offset
    # compare where the new voxel lies inside the source grid (no extrapolation)
    direction = np.array(ROTATION).reshape(3, 3)
    cont = ((points - np.array(source.GetOrigin())) @ direction) / np.array(source.GetSpacing())
    inside = np.all((cont >= 0) & (cont <= np.array(source.GetSize()) - 1), axis=-1)
    assert inside.sum() > 500
    got = sitk.GetArrayFromImage(out)
    # float32 values up to ~100 in magnitude: a few 1e-5 relative, so 2e-3 absolute
    np.testing.assert_allclose(got[inside], expected[inside], atol=2e-3)
    assert np.all(got[~np.all((cont >= -0.5) & (cont <= np.array(source.GetSize()) - 0.5), axis=-1)] == -1024.0)


def test_resample_labels_nearest_keeps_ids_and_type():
    labels = np.zeros((8, 20, 20), np.uint8)
    labels[2:6, 4:12, 5:15] = 3
    labels[3:5, 10:18, 2:8] = 7
    image = array_to_image(labels, (2.0, 1.5, 1.5), origin=(1.0, 2.0, 3.0))
    out = resample(image, (1.0, 0.5, 0.75), is_label=True)
    assert out.GetPixelID() == sitk.sitkUInt8
    got = sitk.GetArrayFromImage(out)
    assert set(np.unique(got)) == {0, 3, 7}
    ref = sitk.Resample(image, out, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    np.testing.assert_array_equal(got, sitk.GetArrayFromImage(ref))
    # volume of each class is kept up to the boundary voxels
    for cls in (3, 7):
        before = (labels == cls).sum() * 2.0 * 1.5 * 1.5
        after = (got == cls).sum() * 1.0 * 0.5 * 0.75
        assert abs(after - before) / before < 0.15


def test_resample_same_spacing_returns_float_copy():
    image = array_to_image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), (2.5, 1.0, 1.0))
    out = resample(image)
    assert out.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), np.arange(24).reshape(2, 3, 4))


def test_resampled_size_rounds_per_axis():
    assert resampled_size((128, 128, 128), (2.5, 5.078, 5.078), (2.5, 1.0, 1.0)) == (128, 650, 650)
    assert resampled_size((1, 3, 3), (1.0, 1.0, 1.0), (5.0, 5.0, 5.0)) == (1, 1, 1)


def test_resample_rejects_bad_spacing():
    image = array_to_image(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="spacing"):
        resample(image, (1.0, 1.0))


# --------------------------------------------------------------------------- prepare_volume
@pytest.fixture
def phantom_files(tmp_path):
    ct, labels, spacing = _small_phantom()
    image = write_image(array_to_image(ct, spacing, origin=(-189.0, -189.0, -55.0)), tmp_path / "ct.nii.gz")
    label = write_image(array_to_image(labels, spacing, origin=(-189.0, -189.0, -55.0)), tmp_path / "label.nii.gz")
    return image, label, ct, labels


def test_prepare_volume_windows_and_resamples(phantom_files):
    image, label, ct, labels = phantom_files
    vol = prepare_volume(image, label, spacing=(5.0, 3.0, 3.0), window="abdomen")
    assert vol.image.shape == (24, 128, 128) and vol.image.dtype == np.float32
    assert vol.label.shape == vol.image.shape and vol.label.dtype == np.uint8
    assert vol.spacing == (5.0, 3.0, 3.0) and vol.source_spacing == (10.0, 6.0, 6.0)
    assert 0.0 <= vol.image.min() and vol.image.max() <= 1.0
    # the label is the nearest-neighbour resampling of the source label onto the new grid
    src = array_to_image(labels, (10.0, 6.0, 6.0), origin=(-189.0, -189.0, -55.0))
    ref = sitk.Resample(src, resample(array_to_image(ct, (10.0, 6.0, 6.0), origin=(-189.0, -189.0, -55.0)), (5.0, 3.0, 3.0)),
                        sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    np.testing.assert_array_equal(vol.label, sitk.GetArrayFromImage(ref))
    # native grid: the image is exactly the windowed file
    native = prepare_volume(image, label, spacing=None, window=(-100, 200))
    np.testing.assert_allclose(native.image, window_hu(ct.astype(np.float32), (-100, 200)), atol=1e-6)
    np.testing.assert_array_equal(native.label, labels)


def test_prepare_volume_turns_flipped_files_to_lps(tmp_path, phantom_files):
    image, label, ct, labels = phantom_files
    reference = prepare_volume(image, label, spacing=None)
    # the same physical volume stored with the y axis reversed (direction diag(1, -1, 1))
    origin_y = -189.0 + (ct.shape[1] - 1) * 6.0
    kwargs = dict(origin=(-189.0, origin_y, -55.0), direction=(1, 0, 0, 0, -1, 0, 0, 0, 1))
    flipped_ct = write_image(array_to_image(ct[:, ::-1].copy(), (10.0, 6.0, 6.0), **kwargs), tmp_path / "f_ct.nii.gz")
    flipped_lab = write_image(array_to_image(labels[:, ::-1].copy(), (10.0, 6.0, 6.0), **kwargs), tmp_path / "f_lab.nii.gz")
    for img_path, lab_path in ((flipped_ct, flipped_lab), (image, flipped_lab), (flipped_ct, label)):
        vol = prepare_volume(img_path, lab_path, spacing=None)
        np.testing.assert_array_equal(vol.image, reference.image)
        np.testing.assert_array_equal(vol.label, reference.label)
        np.testing.assert_allclose(vol.direction, np.eye(3).ravel())
    # keeping the stored axis order: the flipped label does not line up index by index,
    # but it is the same physical grid, so it is turned to the image's orientation
    kept = prepare_volume(flipped_ct, label, spacing=None, orientation=None)
    np.testing.assert_array_equal(kept.label, labels[:, ::-1])


def test_label_on_another_grid_is_an_error(tmp_path, phantom_files):
    image, _, _, labels = phantom_files
    shifted = write_image(array_to_image(labels, (10.0, 6.0, 6.0), origin=(-180.0, -189.0, -55.0)), tmp_path / "shifted.nii.gz")
    with pytest.raises(CTDataError, match=r"shifted.nii.gz: label grid .* does not match its image .*ct.nii.gz"):
        prepare_volume(image, shifted)
    coarse = write_image(array_to_image(labels[:, ::2, ::2].copy(), (10.0, 12.0, 12.0), origin=(-189.0, -189.0, -55.0)),
                         tmp_path / "coarse.nii.gz")
    with pytest.raises(CTDataError, match="coarse.nii.gz: label grid"):
        prepare_volume(image, coarse)


def test_two_d_file_is_an_error(tmp_path):
    flat = sitk.GetImageFromArray(np.full((32, 32), -1000, np.int16))
    path = tmp_path / "slice2d.nii.gz"
    sitk.WriteImage(flat, str(path))
    with pytest.raises(CTDataError, match="slice2d.nii.gz: is 2D .* a 3D volume is needed"):
        prepare_volume(path)
    single = write_image(array_to_image(np.full((1, 32, 32), -1000, np.int16)), tmp_path / "single.nii.gz")
    with pytest.raises(CTDataError, match="single.nii.gz: .*a single slice"):
        prepare_volume(single)


def test_two_d_label_is_an_error(tmp_path, phantom_files):
    image = phantom_files[0]
    path = tmp_path / "label2d.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((64, 64), np.uint8)), str(path))
    with pytest.raises(CTDataError, match="label2d.nii.gz: is 2D"):
        prepare_volume(image, path)


@pytest.mark.parametrize(
    "name, make",
    [
        ("unit", lambda ct: window_hu(ct.astype(np.float32))),  # normalised to [0, 1]
        ("bytes", lambda ct: (window_hu(ct.astype(np.float32)) * 255).astype(np.uint8)),  # [0, 255]
        ("raw", lambda ct: (ct.astype(np.int32) + 1024).astype(np.uint16)),  # rescale intercept not applied
    ],
)
def test_non_ct_intensities_are_an_error(tmp_path, name, make):
    ct, _, spacing = _small_phantom()
    path = write_image(array_to_image(make(ct), spacing), tmp_path / f"{name}.nii.gz")
    with pytest.raises(CTDataError, match=f"{name}.nii.gz: intensities do not look like CT"):
        prepare_volume(path)
    vol = prepare_volume(path, check_intensity=False, spacing=None)  # the opt-out
    assert vol.image.shape == ct.shape


def test_ct_with_scanner_padding_passes(tmp_path):
    ct, _, spacing = _small_phantom()
    padded = ct.copy()
    padded[:, :20, :] = -3024  # circular-FOV padding fills the corners of many scanners' images
    path = write_image(array_to_image(padded, spacing), tmp_path / "padded.nii.gz")
    assert prepare_volume(path, spacing=None).image.shape == ct.shape


def test_nan_is_an_error(tmp_path):
    ct, _, spacing = _small_phantom()
    bad = ct.astype(np.float32)
    bad[3, 10, 10] = np.nan
    path = write_image(array_to_image(bad, spacing), tmp_path / "nan.mha")  # NIfTI I/O turns NaN into 0
    with pytest.raises(CTDataError, match="nan.mha: contains NaN"):
        prepare_volume(path)
    # over a million voxels the percentiles use a strided sample; the NaN check must not
    big = np.tile(ct.astype(np.float32), (60, 1, 1))  # (720, 64, 64): 2.9 M voxels, a sample stride of 2
    big[5, 3, 3] = np.nan  # voxel 5 * 4096 + 3 * 64 + 3, an odd index: not in the sample
    path = write_image(array_to_image(big, spacing), tmp_path / "big_nan.mha")
    with pytest.raises(CTDataError, match="big_nan.mha: contains NaN"):
        prepare_volume(path, spacing=None)


def test_bad_label_values_are_errors(tmp_path, phantom_files):
    image, _, _, labels = phantom_files
    frac = labels.astype(np.float32) + 0.5
    path = write_image(array_to_image(frac, (10.0, 6.0, 6.0), origin=(-189.0, -189.0, -55.0)), tmp_path / "frac.nii.gz")
    with pytest.raises(CTDataError, match="frac.nii.gz: label volume has non-integer values"):
        prepare_volume(image, path)
    neg = labels.astype(np.int16) - 1
    path = write_image(array_to_image(neg, (10.0, 6.0, 6.0), origin=(-189.0, -189.0, -55.0)), tmp_path / "neg.nii.gz")
    with pytest.raises(CTDataError, match="neg.nii.gz: label volume has negative class ids"):
        prepare_volume(image, path)


def test_float_labels_with_integer_values_are_accepted(tmp_path, phantom_files):
    image, _, _, labels = phantom_files
    path = write_image(array_to_image(labels.astype(np.float32), (10.0, 6.0, 6.0), origin=(-189.0, -189.0, -55.0)),
                       tmp_path / "float_lab.nii.gz")
    vol = prepare_volume(image, path, spacing=None)
    assert vol.label.dtype == np.uint8
    np.testing.assert_array_equal(vol.label, labels)


# --------------------------------------------------------------------------- slices
def test_slice_with_neighbors_numpy_and_torch():
    vol = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 3, 4), np.float32)
    np.testing.assert_array_equal(slice_with_neighbors(vol, 2)[:, 0, 0], [2])
    np.testing.assert_array_equal(slice_with_neighbors(vol, 2, 2)[:, 0, 0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(slice_with_neighbors(vol, 0, 2)[:, 0, 0], [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(slice_with_neighbors(vol, 4, 1)[:, 0, 0], [3, 4, 4])
    t = slice_with_neighbors(torch.from_numpy(vol), 4, 2)
    assert isinstance(t, torch.Tensor) and t.shape == (5, 3, 4)
    np.testing.assert_array_equal(t[:, 0, 0].numpy(), [2, 3, 4, 4, 4])


@pytest.mark.parametrize("kwargs, match", [({"index": 5}, "index"), ({"index": -1}, "index"), ({"index": 0, "n_neighbors": -1}, "n_neighbors")])
def test_slice_with_neighbors_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        slice_with_neighbors(np.zeros((5, 2, 2)), **kwargs)


def test_crop_or_pad_centres():
    a = np.arange(5 * 6, dtype=np.float32).reshape(1, 5, 6)
    cropped = crop_or_pad(a, (3, 2))
    np.testing.assert_array_equal(cropped[0], a[0, 1:4, 2:4])
    padded = crop_or_pad(a, (8, 7), pad_value=-1)
    assert padded.shape == (1, 8, 7)
    np.testing.assert_array_equal(padded[0, 1:6, 0:6], a[0])
    assert (padded == -1).sum() == 8 * 7 - 30
    mixed = crop_or_pad(a, (7, 4))
    np.testing.assert_array_equal(mixed[0, 1:6], a[0, :, 1:5])
    assert crop_or_pad(a, None) is a
    with pytest.raises(ValueError, match="size"):
        crop_or_pad(a, (0, 3))
