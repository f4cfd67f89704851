"""Checks on the real CT beside the project (../shared/data); skipped when it is absent."""
import numpy as np
import pytest
import SimpleITK as sitk

from lrc_fast.data import (
    CTSliceDataset,
    VolumeCache,
    find_cases,
    prepare_volume,
    read_image,
    shared_data_dir,
    spacing_zyx,
    split_cases,
)

DATA = shared_data_dir()
pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(DATA is None, reason="../shared/data is absent (set LRC_FAST_SHARED_DATA to point at it)"),
]
OPENKBP_ORGANS = {1: "Brainstem", 2: "SpinalCord", 3: "RightParotid", 4: "LeftParotid", 5: "Esophagus", 6: "Larynx", 7: "Mandible"}


@pytest.fixture(scope="module")
def openkbp_cases():
    root = DATA / "openkbp-train"
    if not root.is_dir():
        pytest.skip("openkbp-train is absent")
    return find_cases(root, "pairs", image_pattern="*_ct.nii.gz", label_pattern="*_oars.nii.gz")


def test_openkbp_pairs_and_volume_split(openkbp_cases):
    assert len(openkbp_cases) == 90
    assert all(c.label.name == f"{c.case_id}_oars.nii.gz" for c in openkbp_cases)
    train, test = split_cases(openkbp_cases, n_test=20, seed=0)
    assert {c.case_id for c in train}.isdisjoint({c.case_id for c in test}) and len(train) == 70


def test_openkbp_prepare_keeps_organs(openkbp_cases):
    case = openkbp_cases[0]
    source = read_image(case.image)
    source_labels = sitk.GetArrayFromImage(read_image(case.label))
    vol = prepare_volume(case.image, case.label, spacing=(2.5, 2.0, 2.0), window="head_neck")
    assert vol.source_spacing == pytest.approx(spacing_zyx(source))
    expected_shape = tuple(int(round(n * a / b)) for n, a, b in zip(source_labels.shape, spacing_zyx(source), (2.5, 2.0, 2.0)))
    assert vol.image.shape == vol.label.shape == expected_shape
    assert set(np.unique(vol.label)) == set(np.unique(source_labels))
    # Organ volumes survive nearest-neighbour resampling from ~4-5 mm to 2 mm: thin organs
    # (spinal cord, 2-3 voxels across) change by up to ~15 %, all organs together by < 5 %.
    voxel_before, voxel_after = np.prod(spacing_zyx(source)), np.prod(vol.spacing)
    for k in OPENKBP_ORGANS:
        before = (source_labels == k).sum() * voxel_before
        after = (vol.label == k).sum() * voxel_after
        if before > 5000:  # mm^3
            assert abs(after - before) / before < 0.2, OPENKBP_ORGANS[k]
    total_before = (source_labels > 0).sum() * voxel_before
    assert abs((vol.label > 0).sum() * voxel_after - total_before) / total_before < 0.05
    mandible = vol.image[vol.label == 7]
    assert np.median(mandible) == pytest.approx(1.0)  # bone is above the soft-tissue window


def test_openkbp_slice_dataset(openkbp_cases, tmp_path):
    volumes = VolumeCache(tmp_path, spacing=(2.5, 4.0, 4.0), window="head_neck").prepare_all(openkbp_cases[:2])
    ds = CTSliceDataset(volumes, labelled=True, n_neighbors=1, slice_size=(160, 160), min_foreground=0.05)
    assert 0 < len(ds) <= sum(v.shape[0] for v in volumes)
    item = ds[len(ds) // 2]
    assert item["image"].shape == (3, 160, 160) and item["label"].shape == (160, 160)
    assert float(item["image"].max()) > 0.5


def test_totalseg_dicom_series_with_flipped_labels():
    root = DATA / "totalseg-abdomen"
    if not root.is_dir():
        pytest.skip("totalseg-abdomen is absent")
    image = read_image(root / "ct_dicom")
    assert image.GetSize() == (512, 512, 20)
    assert spacing_zyx(image) == pytest.approx((2.0, 0.9765625, 0.9765625))
    seg = read_image(root / "seg_predicted.nii.gz")
    assert seg.GetDirection()[4] == -1.0  # stored with y reversed: same voxels, other index order
    vol = prepare_volume(root / "ct_dicom", root / "seg_predicted.nii.gz", spacing=None, window=(-1024, 3071))
    np.testing.assert_array_equal(vol.label, sitk.GetArrayFromImage(seg)[:, ::-1, :])
    hu = vol.image * (3071 + 1024) - 1024
    liver, spleen = hu[vol.label == 5], hu[vol.label == 1]  # class_map.txt: 5 liver, 1 spleen
    assert 40 < np.median(liver) < 200 and 40 < np.median(spleen) < 200
    assert np.median(hu[vol.label == 0]) < 0  # background holds air and fat
