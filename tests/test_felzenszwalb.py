"""lrc_fast.felzenszwalb against scikit-image, and the GPU schedule's emulation against both."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.segmentation import felzenszwalb as sk_felzenszwalb
from skimage.util import img_as_float64

import lrc_fast
from lrc_fast.data import phantom_slice, window_hu
from lrc_fast.superpixels import _WINDOW, _segment, _torch_as_float64, gaussian_taps

from fh_helpers import assert_valid_segmentation, edge_costs, has_ties, jitter_until_tie_free, tie_free

pytestmark = pytest.mark.skipif(not lrc_fast.backends()["cpu_extension"], reason="lrc_fast._C not built")


def sk(image, scale=1.0, sigma=0.8, min_size=20):
    return sk_felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size, channel_axis=None)


def ours(image, backend, scale=1.0, sigma=0.8, min_size=20):
    return lrc_fast.felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size, backend=backend)


@pytest.mark.parametrize("shape", [(1, 1), (1, 57), (57, 1), (2, 2), (37, 91), (256, 256), (512, 512)])
@pytest.mark.parametrize("sigma", [0.8, 0.0])
def test_equals_skimage_on_tie_free_images(shape, sigma):
    rng = np.random.default_rng(hash((shape, sigma)) % 2**32)
    image = tie_free(shape, rng, sigma)
    expected = sk(image, sigma=sigma)
    got = ours(image, "cpu", sigma=sigma)
    np.testing.assert_array_equal(got, expected)
    if image.size <= 256 * 256:  # the emulation is sequential: keep CI fast
        np.testing.assert_array_equal(ours(image, "emulate", sigma=sigma), expected)
    assert_valid_segmentation(got, 20)


@pytest.mark.parametrize("scale,sigma,min_size", [(0.0, 0.8, 20), (1000.0, 0.8, 20), (1.0, 3.0, 5),
                                                 (1.0, 0.8, 0), (1.0, 0.8, 1), (300.0, 0.5, 100),
                                                 (1.0, 0.8, 10**9)])
def test_parameters_match_skimage(scale, sigma, min_size):
    image = tie_free((61, 73), np.random.default_rng(7), sigma)
    expected = sk(image, scale, sigma, min_size)
    for backend in ("cpu", "emulate"):
        np.testing.assert_array_equal(ours(image, backend, scale, sigma, min_size), expected)


def test_ct_like_phantom_slices():
    for seed in range(3):
        image = jitter_until_tie_free(np.clip((phantom_slice(256, 256, seed=seed) + 175) / 425, 0, 1), 0.8, seed)
        expected = sk(image)
        np.testing.assert_array_equal(ours(image, "cpu"), expected)
        np.testing.assert_array_equal(ours(image, "emulate"), expected)


def _ct_small_hu():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_pydicom_ct_small():
    windowed = np.clip((_ct_small_hu() + 175) / 425, 0, 1)
    image = jitter_until_tie_free(windowed, 0.8, seed=0, amplitude=1e-9)
    for scale in (1.0, 100.0):
        expected = sk(image, scale=scale)
        np.testing.assert_array_equal(ours(image, "cpu", scale=scale), expected)
        np.testing.assert_array_equal(ours(image, "emulate", scale=scale), expected)
    # Unjittered: plateaus and tied costs. The contract is then agreement between backends.
    np.testing.assert_array_equal(ours(windowed, "emulate"), ours(windowed, "cpu"))


@pytest.mark.parametrize("sigma", [0.0, 0.8])
def test_ties_backends_agree(sigma):
    """Heavy ties (integer HU, uint8): the stable order is the contract; all backends agree."""
    rng = np.random.default_rng(3)
    hu = np.round(rng.normal(40, 30, (90, 70)))
    hu[:, :20] = -1000  # an air plateau: zero-cost edges
    image = np.clip((hu + 175) / 425, 0, 1)
    assert has_ties(image, sigma)
    cpu = ours(image, "cpu", sigma=sigma)
    np.testing.assert_array_equal(ours(image, "emulate", sigma=sigma), cpu)
    assert_valid_segmentation(cpu, 20)
    u8 = (image * 255).astype(np.uint8)
    np.testing.assert_array_equal(ours(u8, "emulate", sigma=sigma), ours(u8, "cpu", sigma=sigma))


def test_batch_equals_per_slice_and_counts():
    rng = np.random.default_rng(11)
    batch = np.stack([tie_free((40, 50), rng, 0.8) for _ in range(5)])
    labels, counts = lrc_fast.felzenszwalb(batch, return_counts=True)
    assert labels.shape == batch.shape and counts.shape == (5,) and counts.dtype == np.int64
    for b in range(5):
        np.testing.assert_array_equal(labels[b], sk(batch[b]))
        assert counts[b] == labels[b].max() + 1
    single, k = lrc_fast.felzenszwalb(batch[2], return_counts=True)
    np.testing.assert_array_equal(single, labels[2])
    assert k.shape == () and k == counts[2]


def test_torch_in_torch_out():
    image = tie_free((33, 47), np.random.default_rng(5), 0.8)
    t = torch.from_numpy(image).to(torch.float32)
    out = lrc_fast.felzenszwalb(t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64 and out.shape == t.shape
    np.testing.assert_array_equal(out.numpy(), lrc_fast.felzenszwalb(t.numpy()))
    out_b, counts = lrc_fast.felzenszwalb(t[None].repeat(3, 1, 1), return_counts=True)
    assert isinstance(counts, torch.Tensor) and torch.equal(out_b[1], out)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float16, np.float32, np.bool_])
def test_input_conversion_matches_img_as_float64(dtype):
    rng = np.random.default_rng(2)
    if dtype == np.bool_:
        x = rng.random((20, 30)) > 0.5
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, (20, 30), endpoint=True).astype(dtype)
    else:
        x = rng.random((20, 30)).astype(dtype)
    np.testing.assert_array_equal(_torch_as_float64(torch.from_numpy(x)).numpy(), img_as_float64(x))
    np.testing.assert_array_equal(lrc_fast.felzenszwalb(torch.from_numpy(x)).numpy(), lrc_fast.felzenszwalb(x))


def test_foreign_byte_order_read_only_and_huge_min_size():
    rng = np.random.default_rng(3)
    x = rng.random((9, 11))
    expected = lrc_fast.felzenszwalb(x, min_size=5)
    np.testing.assert_array_equal(lrc_fast.felzenszwalb(x.astype(">f8"), min_size=5), expected)
    frozen = x.copy()
    frozen.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.from_numpy warns on read-only arrays
        np.testing.assert_array_equal(lrc_fast.felzenszwalb(frozen, min_size=5), expected)
    # any min_size over the pixel count gives one region, also beyond int64
    for min_size in (2**62, 2**63, 10**30):
        assert not lrc_fast.felzenszwalb(x, min_size=min_size).any()


def test_uint8_equals_skimage_when_tie_free():
    rng = np.random.default_rng(8)
    for _ in range(50):
        x = rng.integers(0, 256, (24, 24)).astype(np.uint8)
        if not has_ties(img_as_float64(x), 0.8):
            break
    else:
        pytest.fail("no tie-free uint8 image drawn")
    np.testing.assert_array_equal(ours(x, "cpu"), sk(x))


def test_gaussian_taps_equal_scipy():
    from scipy.ndimage import _filters

    for sigma in (0.3, 0.8, 1.5, 3.0, 7.2):
        radius = int(4.0 * sigma + 0.5)
        np.testing.assert_array_equal(gaussian_taps(sigma), _filters._gaussian_kernel1d(sigma, 0, radius)[::-1])
    assert gaussian_taps(0.0) is None and gaussian_taps(1e-16) is None


def test_min_size_larger_than_image_gives_one_region():
    image = tie_free((10, 12), np.random.default_rng(1), 0.8)
    assert lrc_fast.felzenszwalb(image, min_size=1000).max() == 0


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), scale=st.floats(0, 500), sigma=st.floats(0, 3),
       min_size=st.integers(0, 60), seed=st.integers(0, 2**31))
def test_property_backends_agree_and_match_skimage(h, w, scale, sigma, min_size, seed):
    rng = np.random.default_rng(seed)
    image = rng.random((h, w))
    cpu = ours(image, "cpu", scale, sigma, min_size)
    np.testing.assert_array_equal(ours(image, "emulate", scale, sigma, min_size), cpu)
    x = _torch_as_float64(torch.from_numpy(image))[None]
    np.testing.assert_array_equal(_segment(x, scale, sigma, min_size, "emulate", slots=True)[0][0].numpy(), cpu)
    assert_valid_segmentation(cpu, min_size)
    if not has_ties(image, sigma):
        np.testing.assert_array_equal(cpu, sk(image, scale, sigma, min_size))


@pytest.mark.parametrize("window", [1, 3, 64, 2**31 - 1])
@pytest.mark.parametrize("extend", [True, False])
def test_emulation_any_cost_window_is_exact(window, extend):
    """Cost windows and the hub extension only change when an edge is decided, never how."""
    rng = np.random.default_rng(window % 1000)
    windowed = window_hu(phantom_slice(96, 128, seed=3))  # plateaus and ties
    for image, min_size in [(windowed, 20), (rng.random((37, 91)), 5), (rng.random((1, 1)), 20)]:
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))[None]
        emu, _, stats = _segment(x, 1.0, 0.8, min_size, "emulate", window=window, extend=extend)
        np.testing.assert_array_equal(emu[0].numpy(), ours(image, "cpu", min_size=min_size))
        rounds, offers, hub_steps = stats[0, :2], stats[0, 2:4], stats[0, 4]
        assert (offers >= rounds).all() and (rounds >= 0).all()
        if not extend:
            assert hub_steps == 0
        elif image is windowed:  # the air region's chain: the extension decides edges at every window
            assert hub_steps > 0


def test_emulation_cost_windows_take_effect():
    """One bin per window takes more rounds, and offers fewer edges, than one window."""
    x = torch.from_numpy(np.random.default_rng(5).random((1, 64, 64)))
    _, _, narrow = _segment(x, 1.0, 0.8, 20, "emulate", window=1)
    _, _, wide = _segment(x, 1.0, 0.8, 20, "emulate", window=2**31 - 1)
    assert narrow[0, 0] > 2 * wide[0, 0] > 0
    assert 0 < narrow[0, 2] < wide[0, 2]


def test_emulation_hub_extension_takes_effect():
    """On windowed CT the hub extension decides the air region's chain of merges in few rounds."""
    windowed = window_hu(phantom_slice(96, 128, seed=3))
    x = torch.from_numpy(np.ascontiguousarray(windowed, dtype=np.float64))[None]
    plain_labels, _, plain = _segment(x, 1.0, 0.8, 20, "emulate", extend=False)
    hub_labels, _, hub = _segment(x, 1.0, 0.8, 20, "emulate", extend=True)
    assert torch.equal(plain_labels, hub_labels)
    assert plain[0, 4] == 0 and hub[0, 4] > 50
    assert 2 * hub[0, 0] < plain[0, 0]


def test_emulation_wide_windows_cut_the_frontier():
    """Windows of 8,192 edges give the air region's hub frontiers of more than kFrontierCap (2,048)
    edges: cut to their lowest cost bins, the extension still runs, and the rounds fall with the
    window (they rose from 204 to 358 here when such a frontier skipped the extension)."""
    windowed = window_hu(phantom_slice(512, 512, seed=5))
    x = torch.from_numpy(np.ascontiguousarray(windowed, dtype=np.float64))[None]
    expected = ours(windowed, "cpu")
    rounds = {}
    for window in (2048, 8192):
        labels, _, stats = _segment(x, 1.0, 0.8, 20, "emulate", window=window)
        np.testing.assert_array_equal(labels[0].numpy(), expected)
        rounds[window] = int(stats[0, 0])
    assert rounds[8192] < 0.75 * rounds[2048]


def _ramp(h: int, w: int) -> np.ndarray:
    """A plane: every edge of one direction costs (almost) the same, so one cost sub-bin of the
    slot engine holds thousands of edges."""
    i, j = np.mgrid[0:h, 0:w]
    return (i + 2.0 * j) / (h + 2.0 * w)


def _sub_bin_sizes(image: np.ndarray, sigma: float = 0.8) -> np.ndarray:
    """Edges per (cost bin, sub-bin), the slot engine's 28-bit key, over the nonzero costs."""
    costs = edge_costs(np.asarray(image, dtype=np.float64), sigma)
    keys = costs[costs > 0].view(np.uint64) >> np.uint64(36)
    return np.unique(keys, return_counts=True)[1]


@pytest.mark.parametrize("extend", [True, False])
def test_slot_engine_emulation_is_exact(extend):
    """The slot engine (each window's roots in a table, drained before the next) makes the
    sequential decisions: CT-like plateaus and ties, random, degenerate and parameter corners."""
    rng = np.random.default_rng(11)
    hu = np.round(rng.normal(40, 30, (60, 80)))
    hu[:, :20] = -1000
    cases = [(window_hu(phantom_slice(96, 128, seed=3)), 1.0, 20), (window_hu(hu), 1.0, 20),
             (rng.random((37, 91)), 1.0, 5), (rng.random((1, 1)), 1.0, 20), (rng.random((1, 57)), 1.0, 0),
             (rng.random((57, 1)), 1000.0, 20), (rng.random((30, 30)), 0.0, 20)]
    for image, scale, min_size in cases:
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))[None]
        labels, counts, stats = _segment(x, scale, 0.8, min_size, "emulate", extend=extend, slots=True)
        np.testing.assert_array_equal(labels[0].numpy(), ours(image, "cpu", scale=scale, min_size=min_size))
        assert counts[0] == labels.max() + 1
        assert stats[0, 4] == 0  # no hub extension: every window fit the table


def test_slot_engine_splits_large_bins():
    """A 512x512 slice has cost bins of more than kSlotEdges (1,536) edges: they are split by
    sub-bin, every sub-bin fits, and the global rounds never run (their window has no effect)."""
    windowed = window_hu(phantom_slice(512, 512, seed=5))
    x = torch.from_numpy(np.ascontiguousarray(windowed, dtype=np.float64))[None]
    costs = edge_costs(windowed.astype(np.float64), 0.8)
    assert np.unique(costs[costs > 0].view(np.uint64) >> np.uint64(48), return_counts=True)[1].max() > 1536
    assert _sub_bin_sizes(windowed).max() <= 1536
    expected = ours(windowed, "cpu")
    stats = {}
    for window in (1, _WINDOW):
        labels, _, stats[window] = _segment(x, 1.0, 0.8, 20, "emulate", window=window, slots=True)
        np.testing.assert_array_equal(labels[0].numpy(), expected)
    assert torch.equal(stats[1], stats[_WINDOW])
    _, _, plain = _segment(x, 1.0, 0.8, 20, "emulate")
    assert stats[1][0, 0] > 2 * plain[0, 0]  # more rounds than the global ones (each far cheaper)


@pytest.mark.parametrize("extend", [True, False])
def test_slot_engine_hands_a_tied_bin_to_the_global_rounds(extend):
    """A sub-bin of more than 1,536 edges (a plane's tied costs) hands the rest of the pass, from
    the start of its cost bin, to the global rounds: exact, and now their window matters."""
    image = _ramp(64, 96)
    assert _sub_bin_sizes(image).max() > 1536
    x = torch.from_numpy(image)[None]
    expected = ours(image, "cpu", min_size=5)
    stats = {}
    for window in (1, _WINDOW):
        labels, _, stats[window] = _segment(x, 1.0, 0.8, 5, "emulate", window=window, extend=extend, slots=True)
        np.testing.assert_array_equal(labels[0].numpy(), expected)
    assert not torch.equal(stats[1], stats[_WINDOW])


def test_non_finite_input_without_check_backends_agree():
    """check_finite=False: NaN/Inf never merge in the main pass; every backend stays in bounds and
    agrees (the cost bins clamp a NaN whose sign bit is set)."""
    image = np.random.default_rng(0).random((40, 50))
    image[5:9, 5:9] = np.nan
    image[20, 20], image[30, 30] = np.inf, -np.inf
    image[12, 3] = -np.nan
    cpu = lrc_fast.felzenszwalb(image, check_finite=False, backend="cpu")
    assert cpu.min() == 0 and cpu.max() < image.size
    x = torch.from_numpy(image)[None]
    for window, extend in [(_WINDOW, True), (1, True), (_WINDOW, False)]:
        emu = _segment(x, 1.0, 0.8, 20, "emulate", window=window, extend=extend)[0][0].numpy()
        np.testing.assert_array_equal(emu, cpu)


def test_compiled_op_rejects_bad_window():
    x = torch.rand(1, 8, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="window must be in"):
        _segment(x, 1.0, 0.8, 20, "emulate", window=0)


# ---- bad input -------------------------------------------------------------------------

@pytest.mark.parametrize("bad,match", [
    (np.zeros(5), r"one slice \(H, W\) or a batch"),
    (np.zeros((2, 3, 4, 5)), r"shape \(2, 3, 4, 5\)"),
    (np.zeros((0, 5)), "empty"),
    (np.zeros((3, 0, 5)), "empty"),
    (np.zeros((64, 64, 3)), "colour image"),
    (np.full((4, 4), np.nan), "NaN or Inf"),
    (np.array([[0.0, np.inf], [0.0, 1.0]]), "NaN or Inf"),
])
def test_bad_images_raise_valueerror(bad, match):
    with pytest.raises(ValueError, match=match):
        lrc_fast.felzenszwalb(bad)


def test_bad_types_raise_typeerror():
    with pytest.raises(TypeError, match="numpy array or a torch tensor, got list"):
        lrc_fast.felzenszwalb([[0.0, 1.0]])
    with pytest.raises(TypeError, match="real dtype"):
        lrc_fast.felzenszwalb(np.zeros((3, 3), dtype=np.complex64))
    with pytest.raises(TypeError, match="real dtype"):
        lrc_fast.felzenszwalb(torch.zeros((3, 3), dtype=torch.complex64))
    with pytest.raises(TypeError, match="min_size must be an integer, got 2.5"):
        lrc_fast.felzenszwalb(np.zeros((3, 3)), min_size=2.5)
    with pytest.raises(TypeError, match="scale must be a real number"):
        lrc_fast.felzenszwalb(np.zeros((3, 3)), scale="1")
    for flag in ("return_counts", "check_finite"):  # "False" is a true string
        with pytest.raises(TypeError, match=f"{flag} must be a bool, got 'False'"):
            lrc_fast.felzenszwalb(np.zeros((3, 3)), **{flag: "False"})
    assert lrc_fast.felzenszwalb(np.zeros((3, 3)), return_counts=np.bool_(False)).shape == (3, 3)
    with pytest.raises(TypeError, match="dense tensor with data.*sparse_coo"):
        lrc_fast.felzenszwalb(torch.zeros(3, 3).to_sparse())
    with pytest.raises(TypeError, match="dense tensor with data.*on meta"):
        lrc_fast.felzenszwalb(torch.zeros(3, 3, device="meta"))


@pytest.mark.parametrize("kwargs,match", [
    ({"sigma": -0.1}, "sigma must be finite and >= 0, got -0.1"),
    ({"scale": -1.0}, "scale must be finite and >= 0, got -1.0"),
    ({"scale": float("nan")}, "scale must be finite"),
    ({"min_size": -3}, "min_size must be >= 0, got -3"),
    ({"backend": "gpu"}, "backend must be None or one of"),
    ({"backend": "cuda"}, "backend='cuda' needs a CUDA tensor"),
    ({"launch": (16, 1024)}, r"launch must be .* got \(16, 1024\)"),
    ({"launch": (1, 100)}, "launch must be"),
    ({"launch": (1, 1024), "backend": "cpu"}, "launch applies to the CUDA backend only"),
])
def test_bad_parameters_raise_valueerror(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lrc_fast.felzenszwalb(np.zeros((4, 4)), **kwargs)


def test_strict_comparison_and_float32_thresholds():
    """The merge test is cost < float32(cint + k / size), strictly, as in skimage."""
    k = 1.0 / 255.0
    k32 = float(np.float32(k))
    assert k32 > k  # float32 rounding moves this threshold up
    cases = {
        k32: 2,               # cost == threshold: strict '<' keeps two regions
        (k + k32) / 2: 1,     # between the float64 and float32 thresholds: merges only with float32
        np.nextafter(k32, 1): 2,
    }
    for cost, regions in cases.items():
        image = np.array([[0.0, cost]])
        expected = sk(image, scale=1.0, sigma=0.0, min_size=0)
        assert expected.max() + 1 == regions
        for backend in ("cpu", "emulate"):
            np.testing.assert_array_equal(ours(image, backend, 1.0, 0.0, 0), expected)


# ---- real CT (../shared/data; skipped when absent) ---------------------------------------

def _real_slices():
    """HU-windowed real slices: OpenKBP head & neck (128x128) and the abdominal series (512x512)."""
    import SimpleITK as sitk

    from lrc_fast.data import shared_data_dir

    root = shared_data_dir()
    if root is None:
        pytest.skip("../shared/data is absent")
    slices = []
    for pt in ("pt_1", "pt_2", "pt_3"):
        path = root / "openkbp-train" / f"{pt}_ct.nii.gz"
        if path.exists():
            vol = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)
            slices += [np.clip((vol[z] + 160) / 400, 0, 1) for z in (40, 64, 90)]
    folder = root / "totalseg-abdomen" / "ct_dicom"
    if folder.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        vol = sitk.GetArrayFromImage(reader.Execute()).astype(np.float64)
        slices += [np.clip((vol[z] + 175) / 425, 0, 1) for z in (0, 10)]
    if not slices:
        pytest.skip("no readable CT in ../shared/data")
    return slices


@pytest.mark.realdata
def test_real_ct_equals_skimage():
    for i, windowed in enumerate(_real_slices()):
        image = jitter_until_tie_free(windowed, 0.8, seed=i)
        np.testing.assert_array_equal(ours(image, "cpu"), sk(image), err_msg=f"slice {i}")


@pytest.mark.realdata
def test_real_ct_emulation_equals_cpu_with_ties():
    slices = _real_slices()
    small = [s for s in slices if s.shape[0] <= 128][:3] + [s for s in slices if s.shape[0] > 128][:1]
    for i, windowed in enumerate(small):
        np.testing.assert_array_equal(ours(windowed, "emulate"), ours(windowed, "cpu"), err_msg=f"slice {i}")


# ---- CUDA backend (pytest -m gpu) ------------------------------------------------------

def _gpu_cases():
    rng = np.random.default_rng(2024)
    cases = []
    for shape in [(1, 1), (1, 57), (57, 1), (37, 91), (256, 256), (512, 512), (1024, 1024)]:
        cases.append((f"random{shape}", rng.random(shape)[None]))
    hu = np.round(rng.normal(40, 30, (3, 200, 300)))
    hu[:, :, :60] = -1000
    cases.append(("integer-hu-ties", window_hu(hu).astype(np.float64)))
    phantoms = np.stack([window_hu(phantom_slice(512, 512, seed=s)) for s in range(4)])
    cases.append(("phantom", phantoms.astype(np.float64)))
    return cases


def _cuda_vs_cpu(batch: np.ndarray, launch=None, sigma=0.8, scale=1.0, min_size=20, rounds=True, window=None,
                 extend=True, slots=False):
    window = _WINDOW if window is None else window
    cpu_lab, cpu_cnt = lrc_fast.felzenszwalb(batch, scale, sigma, min_size, return_counts=True)
    x64 = _torch_as_float64(torch.from_numpy(batch).cuda())
    gpu_lab, gpu_cnt, gpu_stats = _segment(x64, scale, sigma, min_size, "cuda", launch, window, extend, slots=slots)
    np.testing.assert_array_equal(gpu_lab.cpu().numpy(), cpu_lab)
    np.testing.assert_array_equal(gpu_cnt.cpu().numpy(), cpu_cnt)
    if rounds:  # the kernel runs exactly the emulated schedule: same rounds, same edges offered
        _, _, emu_stats = _segment(x64.cpu(), scale, sigma, min_size, "emulate", window=window, extend=extend,
                                   slots=slots)
        np.testing.assert_array_equal(gpu_stats.cpu().numpy(), emu_stats.numpy())


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(9))
def test_cuda_equals_cpu(case):
    name, batch = _gpu_cases()[case]
    _cuda_vs_cpu(batch, rounds=batch.shape[-1] <= 512)


@pytest.mark.gpu
@pytest.mark.parametrize("launch", [(1, 256), (1, 512), (1, 1024), (2, 1024), (4, 512), (8, 1024), (8, 256)])
def test_cuda_launch_configurations_agree(launch):
    batch = np.stack([window_hu(phantom_slice(256, 320, seed=s)) for s in range(3)]).astype(np.float64)
    _cuda_vs_cpu(batch, launch=launch)
    _cuda_vs_cpu(np.random.default_rng(1).random((2, 37, 91)), launch=launch, sigma=0.0, min_size=5)


@pytest.mark.gpu
@pytest.mark.parametrize("window", [1, 37, 100_000])
@pytest.mark.parametrize("extend", [True, False])
def test_cuda_cost_windows_and_hub_extension(window, extend):
    """Tiny windows run thousands of windows back to back (the rotating append counters)."""
    batch = np.stack([window_hu(phantom_slice(128, 160, seed=s)) for s in range(3)]).astype(np.float64)
    for launch in [(1, 256), (2, 1024)]:
        _cuda_vs_cpu(batch, launch=launch, window=window, extend=extend)


@pytest.mark.gpu
@pytest.mark.parametrize("batch_size", [1, 16, 256])
def test_cuda_batches(batch_size):
    base = np.stack([window_hu(phantom_slice(512, 512, seed=s)) for s in range(8)]).astype(np.float64)
    rng = np.random.default_rng(batch_size)
    batch = base[rng.integers(0, 8, batch_size)]
    flips = rng.random(batch_size) < 0.5
    batch[flips] = batch[flips, :, ::-1]  # windowed CT: plateaus and ties, as in training
    _cuda_vs_cpu(np.ascontiguousarray(batch), rounds=False)


@pytest.mark.gpu
@pytest.mark.realdata
def test_cuda_real_ct():
    for windowed in _real_slices():
        _cuda_vs_cpu(windowed[None])


@pytest.mark.gpu
@pytest.mark.parametrize("extend", [True, False])
def test_cuda_phase_clock(extend):
    _check_phase_clock(extend, slots=False)


def _check_phase_clock(extend, slots):
    """The timed kernel gives the same labels; its phase times are non-negative, the hub phases
    are zero without the hub extension, the slot engine's are zero without it (and the global
    rounds' with it), and the phases cover the run."""
    ext = lrc_fast._ext.require_extension()
    batch = np.stack([window_hu(phantom_slice(128, 160, seed=s)) for s in range(3)]).astype(np.float64)
    x = torch.from_numpy(batch).cuda()
    taps = lrc_fast.superpixels._taps_on(0.8, x.device)
    labels, counts, stats, ns = ext.felzenszwalb_cuda_timed(x, taps, 1 / 255, 20, 2, 256, 2048, extend, slots)
    np.testing.assert_array_equal(labels.cpu().numpy(), lrc_fast.felzenszwalb(batch, backend="cpu"))
    names = ext.felzenszwalb_simt_phases()
    ns = ns.cpu().numpy()
    assert ns.shape == (3, len(names)) and (ns >= 0).all() and (ns.sum(1) > 0).all()
    hub = [names.index(n) for n in ("hub sort", "hub extend")]
    assert (ns[:, hub].sum() > 0) == (extend and not slots)
    slot = [names.index(n) for n in ("slot window", "slot sort", "slot load", "slot rounds", "slot store")]
    rounds = [names.index(n) for n in ("main reserve", "main commit")]
    assert (ns[:, slot].sum() > 0) == slots and (ns[:, rounds].sum() > 0) != slots
    untimed = ext.felzenszwalb_cuda(x, taps, 1 / 255, 20, 2, 256, 2048, extend, slots)
    assert torch.equal(untimed[2], stats) and torch.equal(untimed[1], counts)


@pytest.mark.gpu
def test_cuda_non_finite_input_without_check():
    image = np.random.default_rng(0).random((2, 40, 50))
    image[:, 5:9, 5:9] = np.nan
    image[0, 20, 20], image[1, 30, 30] = np.inf, -np.inf
    expected = lrc_fast.felzenszwalb(image, check_finite=False, backend="cpu")
    got = lrc_fast.felzenszwalb(torch.from_numpy(image).cuda(), check_finite=False)
    np.testing.assert_array_equal(got.cpu().numpy(), expected)


@pytest.mark.gpu
def test_cuda_parameters_and_dtypes():
    rng = np.random.default_rng(9)
    batch = rng.random((2, 64, 80))
    for scale, sigma, min_size in [(0.0, 0.8, 20), (500.0, 1.5, 0), (1.0, 0.0, 1), (1.0, 0.8, 10**6)]:
        _cuda_vs_cpu(batch, sigma=sigma, scale=scale, min_size=min_size)
    u8 = (batch * 255).astype(np.uint8)
    out = lrc_fast.felzenszwalb(torch.from_numpy(u8).cuda())
    np.testing.assert_array_equal(out.cpu().numpy(), lrc_fast.felzenszwalb(u8))


@pytest.mark.gpu
def test_cuda_bad_launch_raises_runtime_error():
    """Errors of the compiled CUDA op reach Python as RuntimeError (not a crash)."""
    ext = lrc_fast._ext.require_extension()
    x = torch.rand(1, 8, 8, dtype=torch.float64, device="cuda")
    taps = torch.empty(0, dtype=torch.float64, device="cuda")
    with pytest.raises(RuntimeError, match="need 1 <= cluster <= 8"):
        ext.felzenszwalb_cuda(x, taps, 1 / 255, 20, 9, 1024, 2048, True)
    with pytest.raises(RuntimeError, match="threads in"):
        ext.felzenszwalb_cuda(x, taps, 1 / 255, 20, 1, 100, 2048, True)
    with pytest.raises(RuntimeError, match="window must be"):
        ext.felzenszwalb_cuda(x, taps, 1 / 255, 20, 1, 1024, 0, True)
    with pytest.raises(RuntimeError, match="float64 CUDA tensor"):
        ext.felzenszwalb_cuda(x.float(), taps, 1 / 255, 20, 1, 1024, 2048, True)
    assert ext.felzenszwalb_cuda(x, taps, 1 / 255, 20, 1, 1024, 2048, True)[1].item() >= 1  # still usable


def test_max_active_teams_checks_the_launch_shape():
    ext = lrc_fast._ext.require_extension()
    with pytest.raises(RuntimeError, match=r"need 1 <= cluster <= 8 .* got cluster=9"):
        ext.felzenszwalb_cuda_max_active_teams(9, 1024)
    with pytest.raises(RuntimeError, match="threads=100"):
        ext.felzenszwalb_cuda_max_active_teams(1, 100)
    if not ext.with_cuda():
        with pytest.raises(RuntimeError, match="built without CUDA"):
            ext.felzenszwalb_cuda_max_active_teams(4, 1024)


@pytest.mark.gpu
def test_cuda_max_active_teams():
    """Slices of each launch shape the GPU runs at once: at least one, at most what its SMs hold."""
    ext = lrc_fast._ext.require_extension()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for threads in (256, 512, 1024):
        for cluster in range(1, 9):
            teams = ext.felzenszwalb_cuda_max_active_teams(cluster, threads)
            assert 1 <= teams and teams * cluster <= sms * (2048 // threads), (cluster, threads, teams)


def test_default_launch_takes_the_largest_cluster_that_fits_at_once(monkeypatch):
    """The rule alone, with the device's answers stubbed: 17 clusters of 6 and 30 of 4 at once
    (an H200's figures in benchmarks/RESULTS.md)."""
    from types import SimpleNamespace

    from lrc_fast import superpixels

    at_once = {6: 17, 4: 30}
    monkeypatch.setattr(superpixels, "_slices_at_once", lambda index, cluster: at_once[cluster])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(major=9))
    device = torch.device("cuda", 0)
    picked = {batch: superpixels._default_launch(batch, device) for batch in (1, 16, 17, 18, 30, 31, 256)}
    assert picked == {1: (6, 1024), 16: (6, 1024), 17: (6, 1024), 18: (4, 1024), 30: (4, 1024),
                      31: (2, 1024), 256: (2, 1024)}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(major=8))
    assert superpixels._default_launch(16, device) == (1, 1024)  # no thread-block clusters before sm_90


@pytest.mark.gpu
def test_cuda_default_launch_runs_the_batch_at_once():
    from lrc_fast import superpixels

    if torch.cuda.get_device_properties(0).major < 9:
        pytest.skip("thread-block clusters need sm_90")
    ext = lrc_fast._ext.require_extension()
    for batch in (1, 16, 64, 256):
        cluster, threads = superpixels._default_launch(batch, torch.device("cuda"))
        if cluster == 2:
            assert ext.felzenszwalb_cuda_max_active_teams(4, threads) < batch
        else:
            assert ext.felzenszwalb_cuda_max_active_teams(cluster, threads) >= batch, (batch, cluster)


# Last in the file, so that under `pytest -x` (gpu_check) a failure here stops no other test:
# cluster shapes outside the launch test's list, and the slot engine, which the simulator runs
# and no GPU has yet.
@pytest.mark.gpu
@pytest.mark.parametrize("launch", [(3, 512), (6, 1024), (7, 1024)])
def test_cuda_clusters_of_other_sizes_agree(launch):
    test_cuda_launch_configurations_agree(launch)


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(9))
def test_cuda_slot_engine_equals_cpu(case):
    """The slot engine (its table in dynamic shared memory) on every case, with 1 and 6 CTAs."""
    name, batch = _gpu_cases()[case]
    for launch in [(1, 1024), (6, 1024)]:
        _cuda_vs_cpu(batch, launch=launch, rounds=batch.shape[-1] <= 512, slots=True)


@pytest.mark.gpu
@pytest.mark.parametrize("launch", [(1, 256), (2, 512), (4, 1024)])
def test_cuda_slot_engine_hands_over(launch):
    """A plane's tied costs overflow a sub-bin; the team's global rounds take the pass on."""
    i, j = np.mgrid[0:64, 0:96]
    plane = ((i + 2.0 * j) / 256)[None]
    for extend in (True, False):
        _cuda_vs_cpu(plane, launch=launch, min_size=5, extend=extend, slots=True)


@pytest.mark.gpu
def test_cuda_slot_engine_phase_clock():
    _check_phase_clock(True, slots=True)
