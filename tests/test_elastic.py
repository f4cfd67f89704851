"""Tests for elastic positive pairs (lrc_fast.elastic, its reference and its Triton kernels).

On CPU the Triton kernels run under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
on small odd shapes; the @pytest.mark.gpu tests repeat the comparisons on CUDA at 512 x 512.
"""
import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lrc_fast import elastic as elastic_module
from lrc_fast.elastic import (DEFAULT_ALPHA, DEFAULT_SIGMA, elastic_pair, elastic_warp,
                              random_elastic_field)
from lrc_fast.kernels.elastic_warp import (SMOOTH_BLOCK_CHOICES, coarse_rows_triton,
                                           elastic_warp_coarse_triton, field_from_uniform_triton,
                                           field_from_rows_triton, gaussian_band_matrix,
                                           smooth_grid_triton, upsample_field_triton,
                                           upsample_rows_triton, warp_from_rows_triton)
from lrc_fast.reference import elastic as ref

PADDINGS = ref.PADDING_MODES

# Image tolerance of the Triton warp against the reference, per image dtype. Both interpolate in
# float32 with the same expressions; they differ only by fused multiply-adds (a few float32 ulps
# of values in [0, 1)) and by the final rounding to a 16-bit dtype, where the Triton
# interpreter truncates to bfloat16 while CUDA and torch round to nearest: one ulp of the
# output dtype at [0.5, 1).
WARP_ATOL = {torch.float32: 2e-6, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


def _uniform(shape, seed, device="cpu"):
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(shape, generator=gen, device=device)


def _scipy_field(uniform: torch.Tensor, alpha: float, sigma: float) -> np.ndarray:
    """scipy's Simard field on the same noise, computed in float64."""
    noise = (uniform * 2.0 - 1.0).double().cpu().numpy()
    return alpha * ndi.gaussian_filter(noise, sigma, axes=(-2, -1), mode="reflect", truncate=4.0)


def _correlation_length(field: np.ndarray, axis: int) -> float:
    """Lag (pixels, linearly interpolated) where the autocorrelation along ``axis`` falls to 1/e."""
    centred = field - field.mean()
    var = (centred * centred).mean()
    corr = [1.0]
    for lag in range(1, field.shape[axis] // 2):
        a = np.take(centred, np.arange(field.shape[axis] - lag), axis=axis)
        b = np.take(centred, np.arange(lag, field.shape[axis]), axis=axis)
        corr.append(float((a * b).mean() / var))
        if corr[-1] < math.exp(-1.0):
            lo, hi = corr[-2], corr[-1]
            return lag - 1 + (lo - math.exp(-1.0)) / (lo - hi)
    raise AssertionError("autocorrelation never fell to 1/e")


def _warp_inputs(batch, channels, height, width, dtype, region_dtype, scale, seed, device="cpu"):
    gen = torch.Generator(device=device).manual_seed(seed)
    images = torch.rand(batch, channels, height, width, generator=gen, device=device).to(dtype)
    regions = torch.randint(-2, 40, (batch, height, width), generator=gen, device=device)
    displacement = torch.randn(batch, 2, height, width, generator=gen, device=device) * scale
    return images, regions.to(region_dtype), displacement


# ---------------------------------------------------------------------------------------------
# the field
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.3, 1.0, 4.5, 16.0])
def test_gaussian_kernel_is_scipys_impulse_response(sigma):
    radius = ref.gaussian_radius(sigma)
    delta = np.zeros(2 * radius + 11)
    delta[radius + 5] = 1.0
    response = ndi.gaussian_filter1d(delta, sigma, mode="constant", truncate=4.0)
    np.testing.assert_allclose(ref.gaussian_kernel1d(sigma).numpy(),
                               response[5:5 + 2 * radius + 1], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("n,radius", [(5, 2), (4, 9), (1, 3)])
def test_reflect_indices_are_scipys_reflect_mode(n, radius):
    values = np.arange(n, dtype=np.float64) * 10.0
    padded = np.pad(values, radius, mode="symmetric")  # numpy 'symmetric' == scipy 'reflect'
    np.testing.assert_array_equal(values[ref.reflect_indices(n, radius).numpy()], padded)


# sigma 12 on a 37-pixel axis needs a radius of 48: several reflections.
@pytest.mark.parametrize("sigma", [0.0, 0.7, 3.0, 12.0])
@pytest.mark.parametrize("alpha", [1.0, 50.0])
def test_reference_field_equals_scipy_on_same_noise(sigma, alpha):
    uniform = _uniform((2, 2, 37, 91), seed=1)
    ours = ref.field_from_uniform(uniform, alpha, sigma).double().numpy()
    expected = _scipy_field(uniform, alpha, sigma)
    # float32 sums of <= 2r+1 terms bounded by 1, twice: error well below 1e-6 of alpha
    # (measured <= 1.5e-7); a wrong boundary mode or kernel changes values by ~1e-2 of alpha.
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6 * alpha)


@pytest.mark.parametrize("sigma", [2.0, 5.0])
def test_field_statistics_match_scipy(sigma):
    """Mean, std and correlation length of the field equal scipy's on the same noise."""
    alpha = 30.0
    uniform = _uniform((2, 2, 96, 128), seed=2)
    ours = ref.field_from_uniform(uniform, alpha, sigma).double().numpy()
    expected = _scipy_field(uniform, alpha, sigma)
    # The fields agree to ~1e-7 relative (previous test), so their statistics agree to 1e-5
    # relative; the mean, a small number, is compared against the std instead.
    std = expected.std()
    assert abs(ours.mean() - expected.mean()) <= 1e-5 * std
    assert ours.std() == pytest.approx(std, rel=1e-5)
    for axis in (-2, -1):
        assert _correlation_length(ours, axis) == pytest.approx(
            _correlation_length(expected, axis), rel=1e-4)


def test_field_statistics_match_theory():
    """Away from the border the field has the analytic std and correlation exp(-d^2 / 4 sigma^2)."""
    sigma, alpha = 4.0, 100.0
    field = random_elastic_field(8, 160, 160, alpha, sigma,
                                 torch.Generator().manual_seed(3)).double().numpy()
    interior = field[..., 16:-16, 16:-16]  # 4 sigma away from the reflecting border
    # For the variance, 8 images x 2 components x 128^2 px with a squared-correlation area of
    # 2 pi sigma^2 ~ 100 px are ~2600 independent samples: the std is known to ~1.4 % (1 sigma);
    # the mean (correlation area 4 pi sigma^2) to ~0.03 std.
    expected_std = ref.displacement_std(alpha, sigma)
    assert interior.std() == pytest.approx(expected_std, rel=0.08)
    assert abs(interior.mean()) < 0.12 * expected_std
    # correlation exp(-d^2 / (4 sigma^2)) falls to 1/e at d = 2 sigma
    for axis in (-2, -1):
        assert _correlation_length(interior, axis) == pytest.approx(2 * sigma, rel=0.08)


def test_default_strength_is_the_documented_one():
    assert ref.displacement_std(DEFAULT_ALPHA, DEFAULT_SIGMA) == pytest.approx(4.07, abs=0.01)
    assert DEFAULT_ALPHA / (DEFAULT_SIGMA * math.sqrt(12 * math.pi)) == pytest.approx(4.07, abs=0.01)
    field = random_elastic_field(4, 512, 512, DEFAULT_ALPHA, DEFAULT_SIGMA,
                                 torch.Generator().manual_seed(4))
    interior = field[..., 64:-64, 64:-64]
    # ~4 x 2 x 384^2 / (2 pi 16^2) ~ 730 independent samples: std known to ~2.6 % (1 sigma)
    assert float(interior.std()) == pytest.approx(4.07, rel=0.08)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_same_seed_same_field(backend):
    def draw(seed):
        return random_elastic_field(2, 37, 91, 20.0, 3.0, torch.Generator().manual_seed(seed),
                                    backend=backend)

    first, again, other = draw(7), draw(7), draw(8)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    gen = torch.Generator().manual_seed(7)
    a = random_elastic_field(1, 37, 91, 20.0, 3.0, gen, backend=backend)
    b = random_elastic_field(1, 37, 91, 20.0, 3.0, gen, backend=backend)
    assert not torch.allclose(a, b)  # the generator advances


@pytest.mark.parametrize("batch,height,width,sigma,truncate", [
    (2, 37, 91, 0.0, 4.0), (2, 37, 91, 1.5, 4.0), (1, 37, 91, 5.0, 4.0),
    (2, 37, 91, 30.0, 4.0),  # radius 120 > both sides: folded reflections
    (1, 130, 70, 16.0, 4.0),  # several tiles along H, two along W
    # radius 33 with heavy tails: the band of the first tile ends exactly on a chunk start
    # (63 + 33 = 3 * 32) and that of the second starts one before one (64 - 33 = 31)
    (1, 130, 130, 33.0, 1.0),
    (1, 1, 17, 2.0, 4.0), (1, 17, 1, 2.0, 4.0),
])
def test_triton_field_matches_reference(batch, height, width, sigma, truncate):
    alpha = 3.0
    uniform = _uniform((batch, 2, height, width), seed=5)
    expected = ref.field_from_uniform(uniform, alpha, sigma, truncate)
    got = field_from_uniform_triton(uniform, alpha, sigma, truncate, precision="tf32")
    # The interpreter ignores the tl.dot precision: its tl.dot is a float32 matmul that sums the
    # same products in another order than the convolution: ~1 float32 ulp per term (measured
    # <= 1.6e-7 * alpha).
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 * alpha)


@pytest.mark.parametrize("setting,precision", [("highest", "tf32x3"), ("high", "tf32"), ("medium", "tf32")])
def test_triton_field_precision_follows_torch_matmul_precision(monkeypatch, setting, precision):
    seen = []
    monkeypatch.setattr("lrc_fast.kernels.elastic_warp.field_from_uniform_triton",
                        lambda *args, precision: seen.append(precision) or torch.zeros(1, 2, 8, 9))
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(setting)
    try:
        random_elastic_field(1, 8, 9, 1.0, 2.0, backend="triton")
        random_elastic_field(1, 8, 9, 1.0, 2.0, backend="reference")  # float32 convolutions
    finally:
        torch.set_float32_matmul_precision(saved)
    assert seen == [precision]


@pytest.mark.parametrize("blocks", SMOOTH_BLOCK_CHOICES[1:])
def test_triton_field_block_choices(blocks):
    """Every tile shape the benchmark sweeps gives the reference field (odd sizes, a band that
    folds at both borders, several tiles per axis for the small blocks)."""
    alpha = 3.0
    uniform = _uniform((1, 2, 150, 37), seed=8)
    expected = ref.field_from_uniform(uniform, alpha, 9.0)
    got = field_from_uniform_triton(uniform, alpha, 9.0, blocks=blocks)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 * alpha)  # as above


@pytest.mark.parametrize("blocks,error,match", [
    ((64, 64, 32), TypeError, "tuple of 4 ints"), ([64, 64, 32, 4], TypeError, "tuple of 4 ints"),
    ((64, 48, 32, 4), ValueError, "powers of two >= 16"), ((8, 64, 32, 4), ValueError, "powers of two"),
    ((64, 64, 32, 3), ValueError, "num_warps must be"),
])
def test_triton_field_bad_blocks(blocks, error, match):
    with pytest.raises(error, match=match):
        field_from_uniform_triton(_uniform((1, 2, 8, 8), seed=1), 1.0, 2.0, blocks=blocks)


def test_band_matrix_applies_the_reference_smoothing():
    x = _uniform((1, 23, 23), seed=6).double()
    band = gaussian_band_matrix(23, 9.0, 4.0, torch.device("cpu")).double()  # radius 36 > 23
    expected = ref.gaussian_smooth(x, 9.0)
    torch.testing.assert_close(band @ x[0] @ band.T, expected[0], rtol=0, atol=1e-7)


def test_dense_field_holds_one_band_matrix_per_axis():
    # docs/elastic.md counts two cache entries per dense field: a captured CUDA graph keeps
    # reading them, so a third (K_W built only to be transposed) would be evicted sooner
    gaussian_band_matrix.cache_clear()
    random_elastic_field(1, 9, 14, 5.0, 2.0, backend="triton")  # not square: K_H and K_W^T
    assert gaussian_band_matrix.cache_info().currsize == 2
    kwt = gaussian_band_matrix(14, 2.0, 4.0, torch.device("cpu"), True)
    assert torch.equal(kwt, gaussian_band_matrix(14, 2.0, 4.0, torch.device("cpu")).t())


def test_empty_batch_field():
    for backend in ("reference", "triton"):
        field = random_elastic_field(0, 8, 9, 5.0, 2.0, backend=backend)
        assert field.shape == (0, 2, 8, 9)


# ---------------------------------------------------------------------------------------------
# the warp
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("region_dtype", [torch.int64, torch.int32])
def test_alpha_zero_returns_input_exactly(backend, dtype, padding, region_dtype):
    images, regions, _ = _warp_inputs(2, 1, 37, 91, dtype, region_dtype, 0.0, seed=10)
    x_p, r_p = elastic_pair(images, regions, alpha=0.0, sigma=4.0, padding=padding,
                            generator=torch.Generator().manual_seed(0), backend=backend)
    assert torch.equal(x_p, images) and x_p.dtype == dtype
    assert torch.equal(r_p, regions) and r_p.dtype == region_dtype
    x3, r3 = elastic_pair(images[:, 0], regions, alpha=0.0, backend=backend)  # (B, H, W) images
    assert torch.equal(x3, images[:, 0]) and torch.equal(r3, regions)
    # elastic_pair returns copies at alpha 0 before any warp: the warp of this padding and backend
    # with a zero displacement must give the input too (bilinear weights 1 and 0, exact)
    zero = torch.zeros(images.shape[0], 2, *images.shape[-2:])
    x_w, r_w = elastic_warp(images, regions, zero, padding=padding, backend=backend)
    assert torch.equal(x_w, images) and x_w.dtype == dtype
    assert torch.equal(r_w, regions) and r_w.dtype == region_dtype


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_alpha_zero_keeps_non_finite_pixels_and_draws_the_noise(backend):
    # a bilinear warp would spread 0 * inf = NaN to the neighbours of inf and NaN pixels
    images = torch.tensor([[[[1.0, math.inf, 2.0], [3.0, math.nan, -math.inf]]]])
    regions = torch.tensor([[[0, 1, 2], [3, -1, 5]]])
    gen, twin = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x_p, r_p = elastic_pair(images, regions, alpha=0.0, sigma=1.0, generator=gen, backend=backend)
    torch.testing.assert_close(x_p, images, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(r_p, regions)
    x_p[0, 0, 0, 0] = 7.0
    assert images[0, 0, 0, 0] == 1.0  # a copy, not the input itself
    random_elastic_field(1, 2, 3, 0.0, 1.0, generator=twin)
    assert torch.equal(gen.get_state(), twin.get_state())  # the generator advanced as for a field


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_region_ids_come_from_the_image_sampling_coordinates(backend):
    """Each warped id is the source id at the nearest pixel of the coordinates the image used."""
    batch, height, width = 2, 37, 91
    rows = torch.arange(height, dtype=torch.float32).view(1, height, 1).expand(batch, height, width)
    cols = torch.arange(width, dtype=torch.float32).view(1, 1, width).expand(batch, height, width)
    images = torch.stack([rows, cols], 1).contiguous()  # (B, 2, H, W): the image *is* its coordinate
    regions = (torch.arange(height * width).view(1, height, width) * 3 + 7).repeat(batch, 1, 1)
    gen = torch.Generator().manual_seed(11)
    displacement = torch.randn(batch, 2, height, width, generator=gen) * 6.0
    displacement[:, :, :4] = torch.rand(batch, 2, 4, width, generator=gen).round() * 0.5  # ties
    warped, ids = elastic_warp(images, regions, displacement, backend=backend)

    # 1) against an independent numpy computation of the nearest source pixel
    d = displacement.numpy()
    y = np.arange(height, dtype=np.float32)[None, :, None] + d[:, 0]  # float32 addition
    x = np.arange(width, dtype=np.float32)[None, None, :] + d[:, 1]
    yn, xn = np.floor(y + np.float32(0.5)), np.floor(x + np.float32(0.5))
    inside = (yn >= 0) & (yn <= height - 1) & (xn >= 0) & (xn <= width - 1)
    source = (np.clip(yn, 0, height - 1).astype(np.int64) * width
              + np.clip(xn, 0, width - 1).astype(np.int64))
    expected = np.where(inside, source * 3 + 7, -1)
    np.testing.assert_array_equal(ids.numpy(), expected)
    assert 0.05 < (~inside).mean() < 0.5  # the test covers both cases

    # 2) against the coordinates the bilinear image warp used (border padding: clamped y, x)
    id_row = (ids - 7) // 3 // width
    id_col = (ids - 7) // 3 % width
    keep = ids >= 0
    assert torch.all((warped[:, 0] - id_row)[keep].abs() <= 0.5 + 1e-4)
    assert torch.all((warped[:, 1] - id_col)[keep].abs() <= 0.5 + 1e-4)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_negative_ids_stay_negative(backend):
    images, regions, displacement = _warp_inputs(2, 1, 37, 91, torch.float32, torch.int64, 3.0, 12)
    regions = torch.where(regions % 3 == 0, torch.full_like(regions, -5), regions)
    _, ids = elastic_warp(images, regions, displacement, ignore_index=-9, backend=backend)
    expected = ref.warp_regions(regions, *ref.sampling_coordinates(displacement), ignore_index=-9)
    assert torch.equal(ids, expected)
    assert (ids == -5).any() and (ids == -9).any()
    assert set(ids.unique().tolist()) <= set(regions.unique().tolist()) | {-9}


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("channels", [1, 3])
def test_reference_warp_is_grid_sample(padding, channels):
    images, regions, displacement = _warp_inputs(2, channels, 37, 91, torch.float32, torch.int64,
                                                 8.0, seed=13)
    warped, ids = ref.elastic_warp(images, regions, displacement, padding)
    y, x = ref.sampling_coordinates(displacement)
    grid = torch.stack([2 * x / (91 - 1) - 1, 2 * y / (37 - 1) - 1], dim=-1)  # (B, H, W, 2)
    expected = F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=True)
    # grid_sample re-derives pixel coordinates from normalised ones: ~size * 2^-24 px of error
    torch.testing.assert_close(warped, expected, rtol=0, atol=2e-5)
    nearest = F.grid_sample(regions.unsqueeze(1).double(), grid.double(), mode="nearest",
                            padding_mode="zeros", align_corners=True).squeeze(1).long()
    # grid_sample rounds half to even and pads with 0; compare away from ties and the outside
    fy, fx = (y - y.floor() - 0.5).abs(), (x - x.floor() - 0.5).abs()
    clear = (fy > 1e-3) & (fx > 1e-3) & (ids != -1)
    assert clear.float().mean() > 0.5
    assert torch.equal(ids[clear], nearest[clear])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("region_dtype", [torch.int64, torch.int32])
def test_triton_warp_matches_reference(dtype, padding, region_dtype):
    images, regions, displacement = _warp_inputs(2, 2, 37, 91, dtype, region_dtype, 10.0, seed=14)
    expected = elastic_warp(images, regions, displacement, padding=padding, backend="reference")
    got = elastic_warp(images, regions, displacement, padding=padding, backend="triton")
    assert got[0].dtype == dtype and got[1].dtype == region_dtype
    torch.testing.assert_close(got[0].float(), expected[0].float(), rtol=0, atol=WARP_ATOL[dtype])
    assert torch.equal(got[1], expected[1])


def test_triton_warp_handles_layouts_and_wild_displacements():
    gen = torch.Generator().manual_seed(15)
    images = torch.rand(2, 91, 37, generator=gen).transpose(1, 2)  # (B, H, W), not contiguous
    regions = torch.randint(0, 9, (2, 91, 37), generator=gen).transpose(1, 2)
    displacement = torch.randn(2, 2, 37, 91, generator=gen) * 1e4  # mostly far outside
    displacement[0, :, 5] = 0.5  # exact ties
    for padding in PADDINGS:
        expected = elastic_warp(images, regions, displacement, padding=padding, backend="reference")
        got = elastic_warp(images, regions, displacement, padding=padding, backend="triton")
        assert got[0].shape == images.shape
        # reflection folds |c| ~ 1e4 back into range; its float32 remainder is exact only to
        # ~1e4 * 2^-24, the same in both, but FMA may move it by an ulp of 1e4
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-3)
        assert torch.equal(got[1], expected[1])


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_warp_takes_a_displacement_of_any_strides(backend):
    # a field made as (B, 2, W, H) and transposed: the reference once failed in a .view
    gen = torch.Generator().manual_seed(16)
    images = torch.rand(2, 13, 17, generator=gen)
    regions = torch.randint(-1, 6, (2, 13, 17), generator=gen)
    displacement = (torch.randn(2, 2, 17, 13, generator=gen) * 3).transpose(-1, -2)
    expected = elastic_warp(images, regions, displacement.contiguous(), backend=backend)
    got = elastic_warp(images, regions, displacement, backend=backend)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 1, 1, 19), (2, 3, 19, 1), (0, 1, 5, 6)])
@pytest.mark.parametrize("padding", PADDINGS)
def test_degenerate_shapes(shape, padding):
    batch, channels, height, width = shape
    images, regions, displacement = _warp_inputs(batch, channels, height, width, torch.float32,
                                                 torch.int64, 2.0, seed=16)
    expected = elastic_warp(images, regions, displacement, padding=padding, backend="reference")
    got = elastic_warp(images, regions, displacement, padding=padding, backend="triton")
    assert got[0].shape == shape and got[1].shape == (batch, height, width)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=2e-6)
    assert torch.equal(got[1], expected[1])


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 2), channels=st.integers(1, 3), height=st.integers(1, 40),
       width=st.integers(1, 40), scale=st.sampled_from([0.3, 2.0, 15.0]),
       padding=st.sampled_from(PADDINGS), seed=st.integers(0, 2 ** 16))
def test_triton_warp_matches_reference_on_random_shapes(batch, channels, height, width, scale,
                                                        padding, seed):
    images, regions, displacement = _warp_inputs(batch, channels, height, width, torch.float32,
                                                 torch.int64, scale, seed)
    expected = elastic_warp(images, regions, displacement, padding=padding, backend="reference")
    got = elastic_warp(images, regions, displacement, padding=padding, backend="triton")
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=WARP_ATOL[torch.float32])
    assert torch.equal(got[1], expected[1])


# Gradient tolerance: both sum the same float32 products (atomics vs scatter_add order differ):
# a few ulps of gradients of size ~10; a bfloat16 image gradient is the float32 sum rounded to
# bfloat16, so the order can move it by one bf16 ulp (at most 2**-7 of its value; the atol only
# covers sums that cancel to nearly zero).
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float32, 0.0, 1e-5), (torch.bfloat16, 2.0 ** -7, 1e-6)])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("wrt", ["images", "displacement", "both"])
def test_triton_warp_gradients_match_reference(dtype, rtol, atol, padding, wrt):
    images, regions, displacement = _warp_inputs(2, 2, 37, 91, dtype, torch.int64, 6.0, seed=17)
    grad_out = _uniform((2, 2, 37, 91), seed=18) - 0.5
    grads = []
    for backend in ("triton", "reference"):
        img = images.clone().requires_grad_(wrt in ("images", "both"))
        disp = displacement.clone().requires_grad_(wrt in ("displacement", "both"))
        warped, _ = elastic_warp(img, regions, disp, padding=padding, backend=backend)
        (warped.float() * grad_out).sum().backward()
        grads.append((img.grad, disp.grad))
    (gi, gd), (ei, ed) = grads
    if wrt in ("images", "both"):
        assert gi.dtype == dtype
        torch.testing.assert_close(gi.float(), ei.float(), rtol=rtol, atol=atol)
    else:
        assert gi is None and ei is None
    if wrt in ("displacement", "both"):
        assert ed.abs().max() > 0.1
        # d/d(displacement) multiplies pixel differences: bf16 inputs stay exact in float32
        torch.testing.assert_close(gd, ed, rtol=0, atol=1e-5)
    else:
        assert gd is None and ed is None


@pytest.mark.parametrize("padding", PADDINGS)
def test_reference_gradcheck_float64(padding):
    gen = torch.Generator().manual_seed(19)
    images = torch.rand(1, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    displacement = (torch.rand(1, 2, 5, 6, generator=gen, dtype=torch.float64) - 0.5) * 5.0
    displacement.requires_grad_(True)
    regions = torch.randint(0, 4, (1, 5, 6), generator=gen)

    def warped(img, disp):
        return ref.elastic_warp(img, regions, disp, padding)[0]

    assert torch.autograd.gradcheck(warped, (images, displacement), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_elastic_pair_is_field_then_warp(backend):
    images, regions, _ = _warp_inputs(2, 1, 37, 91, torch.float32, torch.int64, 0.0, seed=20)
    x_p, r_p = elastic_pair(images, regions, 60.0, 4.0, torch.Generator().manual_seed(21),
                            backend=backend)
    field = random_elastic_field(2, 37, 91, 60.0, 4.0, torch.Generator().manual_seed(21),
                                 backend=backend)
    x_e, r_e = elastic_warp(images, regions, field, backend=backend)
    assert torch.equal(x_p, x_e) and torch.equal(r_p, r_e)
    assert (r_p != regions).float().mean() > 0.1  # it did move things


@pytest.mark.parametrize("spacing", [None, 5])  # the coarse pair then upsamples: the backward needs the field
def test_elastic_pair_with_gradients_is_field_then_warp(spacing):
    """elastic_pair is differentiable in the images: values and gradients equal elastic_warp's
    with the same field."""
    images, regions, _ = _warp_inputs(2, 1, 37, 91, torch.float32, torch.int64, 0.0, seed=27)
    grad_out = _uniform((2, 1, 37, 91), seed=28) - 0.5
    results = []
    for pair in (True, False):
        img = images.clone().requires_grad_()
        if pair:
            warped, ids = elastic_pair(img, regions, 60.0, 4.0, torch.Generator().manual_seed(29),
                                       backend="triton", spacing=spacing)
        else:
            field = random_elastic_field(2, 37, 91, 60.0, 4.0, torch.Generator().manual_seed(29),
                                         backend="triton", spacing=spacing)
            warped, ids = elastic_warp(img, regions, field, backend="triton")
        (warped * grad_out).sum().backward()
        results.append((warped.detach(), ids, img.grad))
    for got, expected in zip(*results):
        assert torch.equal(got, expected)
    assert results[0][2].abs().sum() > 0


def test_default_backend_on_cpu_is_the_reference():
    images, regions, displacement = _warp_inputs(1, 1, 37, 91, torch.float32, torch.int64, 4.0, 22)
    got = elastic_warp(images, regions, displacement)
    expected = ref.elastic_warp(images, regions, displacement)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


# ---------------------------------------------------------------------------------------------
# the coarse mode: control points every `spacing` pixels, Catmull-Rom in between
# ---------------------------------------------------------------------------------------------

def _interpolation_matrix(n: int, spacing: int) -> torch.Tensor:
    """(n, nodes) float64 Catmull-Rom matrix built from Keys' kernel, independently of the
    package: u(x) = 1.5|x|^3 - 2.5|x|^2 + 1 (|x| <= 1), -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2 (1..2)."""
    def keys(x):
        x = abs(x)
        if x <= 1:
            return 1.5 * x**3 - 2.5 * x**2 + 1
        return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2 if x < 2 else 0.0

    nodes = ref.coarse_shape(n, 1, spacing)[0]
    matrix = torch.zeros(n, nodes, dtype=torch.float64)
    for i in range(n):
        k = i // spacing
        for node in range(k - 1, k + 3):  # the four nodes around the pixel, clamped at the ends
            matrix[i, min(max(node, 0), nodes - 1)] += keys(i / spacing - node)
    return matrix


@pytest.mark.parametrize("height,width,spacing", [(37, 91, 3), (37, 91, 8), (1, 19, 2), (19, 1, 5),
                                                  (1, 1, 4), (6, 7, 16)])
def test_upsample_is_catmull_rom_with_clamped_nodes(height, width, spacing):
    coarse = torch.randn(2, 2, *ref.coarse_shape(height, width, spacing),
                         generator=torch.Generator().manual_seed(40))  # (B, 2, Hc, Wc)
    got = ref.upsample_field(coarse, spacing, height, width)
    rows, cols = _interpolation_matrix(height, spacing), _interpolation_matrix(width, spacing)
    expected = rows @ coarse.double() @ cols.T  # (B, 2, H, W)
    # float32 sums of four products, twice: a few roundings of values of size ~max|coarse|
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-6 * float(coarse.abs().max()))
    nodes = got[..., ::spacing, ::spacing]  # pixels on a node take its value exactly
    assert torch.equal(nodes, coarse[..., :nodes.shape[2], :nodes.shape[3]])


def test_upsample_reproduces_quadratics():
    spacing, n = 8, 97
    k = torch.arange(ref.coarse_shape(n, n, spacing)[0], dtype=torch.float64)
    quadratic = lambda x: 3.0 - 2.0 * x + 0.25 * x * x  # noqa: E731
    coarse = (quadratic(k)[:, None] + quadratic(k)[None, :]).expand(1, 2, -1, -1).float()
    got = ref.upsample_field(coarse, spacing, n, n)[0, 0]  # (n, n)
    x = torch.arange(n, dtype=torch.float64) / spacing
    expected = quadratic(x)[:, None] + quadratic(x)[None, :]
    inner = slice(spacing, n - 2 * spacing)  # cells with all four nodes inside the grid
    torch.testing.assert_close(got[inner, inner].double(), expected[inner, inner], rtol=1e-6, atol=0)


@pytest.mark.parametrize("height,width,spacing", [(37, 91, 3), (37, 91, 8), (1, 19, 2), (19, 1, 5),
                                                  (1, 1, 4), (64, 64, 8)])
def test_triton_upsample_matches_reference(height, width, spacing):
    coarse = torch.randn(2, 2, *ref.coarse_shape(height, width, spacing),
                         generator=torch.Generator().manual_seed(41)) * 50
    got = upsample_field_triton(coarse, spacing, height, width)
    expected = ref.upsample_field(coarse, spacing, height, width)
    # the kernel fuses each multiply-add (fma, one rounding): 1e-7 of the largest node measured
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 * float(coarse.abs().max()))
    assert upsample_field_triton(coarse[:0], spacing, height, width).shape == (0, 2, height, width)


def test_triton_upsample_rejects_a_grid_of_another_shape():
    """The kernels index the grid by the shape the field's size and spacing give: any other
    would be read out of bounds, so it is refused."""
    images, regions = torch.rand(2, 1, 37, 91), torch.zeros(2, 37, 91, dtype=torch.int64)
    grid = torch.zeros(2, 2, *ref.coarse_shape(37, 91, 8))  # (2, 2, 6, 13)
    for bad in (grid[:, :, :-1], grid[:, :1], grid[0]):
        with pytest.raises(ValueError, match="coarse must be \\(B, 2, Hc, Wc\\) = \\(B, 2, 6, 13\\)"):
            upsample_field_triton(bad, 8, 37, 91)
    with pytest.raises(ValueError, match="= \\(2, 2, 6, 13\\) for a 37 x 91 field at spacing 8, got \\(1, 2"):
        elastic_warp_coarse_triton(images, regions, grid[:1], 8)
    with pytest.raises(ValueError, match="got \\(2, 2, 6, 13\\)"):
        elastic_warp_coarse_triton(images, regions, grid, 4)  # the grid of another spacing


@settings(max_examples=25, deadline=None)
@given(height=st.integers(1, 40), width=st.integers(1, 40), spacing=st.integers(1, 45),
       seed=st.integers(0, 2 ** 16))
def test_triton_upsample_matches_reference_on_random_shapes(height, width, spacing, seed):
    coarse = torch.randn(1, 2, *ref.coarse_shape(height, width, spacing),
                         generator=torch.Generator().manual_seed(seed))
    got = upsample_field_triton(coarse, spacing, height, width)
    expected = ref.upsample_field(coarse, spacing, height, width)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 * float(coarse.abs().max()))


def test_reference_upsample_gradcheck_float64():
    coarse = torch.randn(1, 2, *ref.coarse_shape(11, 13, 4), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: ref.upsample_field(c, 4, 11, 13), (coarse,))


def test_spacing_one_is_the_dense_field():
    """At spacing 1 the grid is the pixels and every pixel sits on a node: the coarse field of a
    (B, 2, H, W) draw is the dense one, bit for bit, on both backends."""
    uniform = _uniform((2, 2, 37, 91), seed=42)
    dense = ref.field_from_uniform(uniform, 60.0, 4.0)
    assert torch.equal(ref.coarse_field_from_uniform(uniform, 60.0, 4.0, 1, 37, 91), dense)
    assert torch.equal(upsample_field_triton(dense, 1, 37, 91), dense)


def test_huge_spacing_builds_only_the_weights_it_uses():
    assert ref.catmull_rom_weights(2 ** 30, 9).shape == (9, 4)  # a (2**30, 4) table is 32 GB
    images, regions, _ = _warp_inputs(1, 1, 8, 9, torch.float32, torch.int64, 0.0, seed=55)
    results = [elastic_pair(images, regions, 30.0, 3.0, torch.Generator().manual_seed(56), backend=backend,
                            spacing=2 ** 31 - 1) for backend in ("reference", "triton")]
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=2e-6)
    assert torch.equal(results[1][1], results[0][1])


@pytest.mark.parametrize("batch,height,width,sigma", [
    (2, 37, 91, 2.0),  # the grid of a 512 px slice at the defaults, spacing 8, is 65 x 65 at sigma 2
    (1, 65, 65, 2.0),
    (1, 5, 7, 3.0),  # radius 12 > the sides: the reflection folds several times
    (1, 1, 19, 1.5), (1, 19, 1, 1.5), (1, 1, 1, 4.0),
    (3, 13, 11, 0.3),  # radius 1
])
def test_triton_grid_smoothing_matches_reference(batch, height, width, sigma):
    """The control grid's direct-tap smoothing is the reference's separable Gaussian (along H, then
    along W, scipy's reflect boundary), also where the taps fold over a short axis."""
    alpha = 3.0
    uniform = _uniform((batch, 2, height, width), seed=57)
    expected = ref.field_from_uniform(uniform, alpha, sigma)
    got = smooth_grid_triton(uniform, alpha, sigma)
    # float32 sums of the same 2 r + 1 products in the same order; a GPU fuses them into fma: a few
    # float32 roundings of sums of size <= 1 (the interpreter, without fma: equal to the reference
    # but for 6.0e-8 * alpha at 1 x 1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 * alpha)


def test_triton_grid_smoothing_degenerate_cases():
    uniform = _uniform((2, 2, 6, 7), seed=58)
    assert torch.equal(smooth_grid_triton(uniform, 3.0, 0.0), (uniform * 2.0 - 1.0) * 3.0)  # as scipy
    assert torch.equal(smooth_grid_triton(uniform, 0.0, 2.0), torch.zeros_like(uniform))
    assert smooth_grid_triton(uniform[:0], 3.0, 2.0).shape == (0, 2, 6, 7)


# (B, H, W, spacing, sigma): bands of 19 node rows (3 bands of a 40-row grid), one band row over
# several 256-node chunks (a 301-node-wide grid), a 1-node grid, no smoothing
COARSE_ROWS_CASES = [(2, 157, 49, 4, 6.0), (1, 5, 601, 2, 3.0), (2, 1, 1, 3, 4.0), (1, 37, 91, 8, 0.0)]


@pytest.mark.parametrize("batch,height,width,spacing,sigma", COARSE_ROWS_CASES)
def test_triton_coarse_rows_are_grid_then_rows(batch, height, width, spacing, sigma):
    """The one-launch noise-to-node-rows kernel gives the node rows of its grid bit for bit: its
    bands, chunks and barriers change nothing; the grid matches the reference."""
    alpha = 5.0
    uniform = _uniform((batch, 2, *ref.coarse_shape(height, width, spacing)), seed=60)
    rows = coarse_rows_triton(uniform, alpha, sigma, 4.0, spacing, height, width)
    grid = smooth_grid_triton(uniform, alpha, sigma)
    assert torch.equal(rows, upsample_rows_triton(grid, spacing, height, width))
    torch.testing.assert_close(grid, ref.field_from_uniform(uniform, alpha, sigma), rtol=0, atol=1e-6 * alpha)
    with pytest.raises(ValueError, match="coarse must be \\(B, 2, Hc, Wc\\)"):
        coarse_rows_triton(uniform[:, :, 1:], alpha, sigma, 4.0, spacing, height, width)


def test_triton_node_rows_shapes_and_strides():
    """Node rows of another shape are refused before any kernel reads them; strided rows give the
    field of their contiguous copy; a draw for zero pixel columns gives empty rows."""
    uniform = _uniform((2, 2, *ref.coarse_shape(37, 91, 8)), seed=62)  # (2, 2, 6, 13)
    rows = coarse_rows_triton(uniform, 5.0, 0.5, 4.0, 8, 37, 91)  # (2, 2, 6, 91)
    strided = rows.transpose(2, 3).contiguous().transpose(2, 3)
    assert torch.equal(field_from_rows_triton(strided, 8, 37, 91), field_from_rows_triton(rows, 8, 37, 91))
    for bad in (rows[:, :, :-1], rows[..., :-1], rows[:, :1]):
        with pytest.raises(ValueError, match="rows must be \\(B, 2, Hc, W\\) = \\(B, 2, 6, 91\\)"):
            field_from_rows_triton(bad, 8, 37, 91)
    images, regions = torch.rand(2, 1, 37, 91), torch.zeros(2, 37, 91, dtype=torch.int64)
    with pytest.raises(ValueError, match="= \\(2, 2, 6, 91\\) for a 37 x 91 field at spacing 8, got \\(1, 2"):
        warp_from_rows_triton(images, regions, rows[:1], 8)
    empty = coarse_rows_triton(_uniform((1, 2, 3, 1), seed=63), 5.0, 0.5, 4.0, 2, 5, 0)
    assert empty.shape == (1, 2, 3, 0)


def test_coarse_grid_has_no_side_limit_on_triton():
    """The dense Triton field refuses sides over 4096 (its banded matrices); a control grid is
    smoothed by taps, so a coarse field whose grid is 4097 nodes wide runs on Triton too."""
    uniform = _uniform((1, 2, *ref.coarse_shape(3, 8193, 2)), seed=59)  # (1, 2, 2, 4097)
    expected = ref.coarse_field_from_uniform(uniform, 4.0, 6.0, 2, 3, 8193)
    got = random_elastic_field(1, 3, 8193, 4.0, 6.0, torch.Generator().manual_seed(59),
                               backend="triton", spacing=2)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6 * 4.0)


def test_coarse_grid_takes_the_backend_of_its_upsampling():
    """On CUDA (backend=None) a coarse field is smoothed and upsampled by one backend: Triton,
    or the reference past the int32 limit H * W < 2**31 of the upsampling (resolved before any
    draw: no CUDA device needed)."""
    cuda = torch.device("cuda")
    assert elastic_module._field_plan(None, cuda, 512, 512, 8) == ((65, 65), "triton")
    grid = ref.coarse_shape(2 ** 16, 2 ** 15, 2)
    assert elastic_module._field_plan(None, cuda, 2 ** 16, 2 ** 15, 2) == (grid, "reference")
    assert elastic_module._field_plan(None, cuda, 512, 512, 1) == ((512, 512), "triton")


@pytest.mark.parametrize("spacing", [2, 7])
def test_coarse_field_is_the_reference_of_the_coarse_draw(spacing):
    """random_elastic_field(spacing=s) is coarse_field_from_uniform of a (B, 2, Hc, Wc) draw: the
    reference bit for bit, the Triton kernels within float32 roundings."""
    alpha, sigma = 30.0, 6.0
    uniform = _uniform((2, 2, *ref.coarse_shape(37, 91, spacing)), seed=54)
    expected = ref.coarse_field_from_uniform(uniform, alpha, sigma, spacing, 37, 91)
    for backend in ("reference", "triton"):
        got = random_elastic_field(2, 37, 91, alpha, sigma, torch.Generator().manual_seed(54),
                                   backend=backend, spacing=spacing)
        if backend == "reference":
            assert torch.equal(got, expected)
        else:  # the grid's taps summed with fma, and the interpolation's fma roundings
            torch.testing.assert_close(got, expected, rtol=0, atol=2e-6 * alpha)


@pytest.mark.parametrize("spacing", [4, 8])
def test_coarse_field_has_the_dense_fields_statistics(spacing):
    """Each axis of the field is a linear map of the noise, F = R u: its columns are the fields of
    unit impulses. Away from the border, the coarse map's variance sum_k R[j, k]**2, correlation at
    lag sigma and derivative variance match the dense map's (measured: 0.01-0.12% and 0.002 at
    spacing 4 and 8, sigma 16)."""
    width, sigma, alpha = 512, DEFAULT_SIGMA, 1.0

    def axis_map(s):  # (width, nodes): one axis's share of the field per unit noise
        nodes = ref.coarse_shape(1, width, s)[1]
        impulses = 0.5 + 0.5 * torch.eye(nodes).view(nodes, 1, 1, nodes).expand(-1, 2, -1, -1)
        one_row = ref.coarse_field_from_uniform(impulses, alpha, sigma, s, 1, width)[:, 0, 0]
        # a 1-row slice smooths nothing along the rows, where the 2-D field's alpha / s also
        # takes its 1 / sqrt(s) per axis: put that back to get one axis's share
        return one_row.double().T * math.sqrt(s)

    inner = slice(width // 4, 3 * width // 4)
    stats = []
    for s in (1, spacing):
        r = axis_map(s)
        variance = (r * r).sum(1)
        lag = int(sigma)
        correlation = (r[inner] * r[lag:][inner]).sum(1) / variance[inner]
        slope = r[1:] - r[:-1]
        slope_ratio = (slope * slope).sum(1)[inner] / variance[inner]
        stats.append((variance[inner].mean(), correlation.mean(), slope_ratio.mean()))
    (var_d, corr_d, slope_d), (var_c, corr_c, slope_c) = stats
    assert abs(var_c / var_d - 1) < 5e-3  # alpha / s rescales the nodes right (a factor s if not)
    assert abs(corr_c - corr_d) < 5e-3
    assert abs(slope_c / slope_d - 1) < 1e-2


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("spacing,padding", [(3, "border"), (8, "zeros"), (5, "reflection")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_coarse_pair_is_field_then_warp(backend, spacing, padding, dtype):
    images, regions, _ = _warp_inputs(2, 2, 37, 91, dtype, torch.int32, 0.0, seed=43)
    if spacing == 3:  # strided inputs: the same values, not contiguous
        images = images.transpose(-1, -2).contiguous().transpose(-1, -2)
        regions = regions.transpose(-1, -2).contiguous().transpose(-1, -2)
    x_p, r_p = elastic_pair(images, regions, 60.0, 6.0, torch.Generator().manual_seed(44),
                            padding=padding, backend=backend, spacing=spacing)
    field = random_elastic_field(2, 37, 91, 60.0, 6.0, torch.Generator().manual_seed(44),
                                 backend=backend, spacing=spacing)
    x_e, r_e = elastic_warp(images, regions, field, padding=padding, backend=backend)
    assert torch.equal(x_p, x_e) and torch.equal(r_p, r_e)
    assert (r_p != regions).float().mean() > 0.1  # it did move things


def test_coarse_triton_pair_never_writes_the_full_field(monkeypatch):
    images, regions, _ = _warp_inputs(2, 1, 37, 91, torch.float32, torch.int64, 0.0, seed=45)
    expected = elastic_pair(images, regions, 60.0, 6.0, torch.Generator().manual_seed(46),
                            backend="triton", spacing=4)

    def refuse(*args):
        raise AssertionError("the full-resolution field was built")

    monkeypatch.setattr("lrc_fast.kernels.elastic_warp.field_from_rows_triton", refuse)
    monkeypatch.setattr("lrc_fast.kernels.elastic_warp.upsample_field_triton", refuse)
    monkeypatch.setattr(ref, "upsample_field", refuse)
    got = elastic_pair(images, regions, 60.0, 6.0, torch.Generator().manual_seed(46),
                       backend="triton", spacing=4)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_coarse_triton_pair_is_two_launches(monkeypatch):
    """After the draw, the coarse pair launches one kernel from the noise to the node rows and the
    fused warp, once each: at B=16 the host's time per launch sets the pair's time."""
    from lrc_fast.kernels import elastic_warp as kernels
    launched = []

    class Counted:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            launched.append(self.name)
            return self.kernel[grid]

    for name in [n for n in dir(kernels) if n.endswith("_kernel")]:
        monkeypatch.setattr(kernels, name, Counted(name, getattr(kernels, name)))
    images, regions, _ = _warp_inputs(2, 1, 37, 91, torch.float32, torch.int64, 0.0, seed=47)
    elastic_pair(images, regions, 60.0, 6.0, torch.Generator().manual_seed(48), backend="triton", spacing=4)
    assert launched == ["_coarse_rows_kernel", "_elastic_warp_coarse_kernel"]
    launched.clear()
    random_elastic_field(2, 37, 91, 60.0, 6.0, backend="triton", spacing=4)
    assert launched == ["_coarse_rows_kernel", "_upsample_field_kernel"]


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_coarse_alpha_zero_returns_copies_and_draws_the_coarse_noise(backend):
    images, regions, _ = _warp_inputs(2, 1, 37, 91, torch.float32, torch.int64, 0.0, seed=50)
    gen, twin = torch.Generator().manual_seed(51), torch.Generator().manual_seed(51)
    x_p, r_p = elastic_pair(images, regions, 0.0, 6.0, gen, backend=backend, spacing=8)
    assert torch.equal(x_p, images) and torch.equal(r_p, regions)
    random_elastic_field(2, 37, 91, 1.0, 6.0, twin, backend=backend, spacing=8)
    assert torch.equal(gen.get_state(), twin.get_state())


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 1, 1, 19), (2, 3, 19, 1), (0, 1, 5, 6)])
def test_coarse_degenerate_shapes(shape):
    batch, channels, height, width = shape
    images, regions, _ = _warp_inputs(batch, channels, height, width, torch.float32, torch.int64,
                                      0.0, seed=52)
    results = [elastic_pair(images, regions, 30.0, 3.0, torch.Generator().manual_seed(53),
                            backend=backend, spacing=7) for backend in ("reference", "triton")]
    for got in results:
        assert got[0].shape == shape and got[1].shape == (batch, height, width)
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=2e-6)
    assert torch.equal(results[1][1], results[0][1])


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------

def _good():
    images, regions, displacement = _warp_inputs(2, 1, 8, 9, torch.float32, torch.int64, 1.0, 23)
    return {"images": images, "regions": regions, "displacement": displacement}


@pytest.mark.parametrize("change,error,match", [
    (lambda a: a.update(regions=a["regions"][:, :7]), ValueError, "regions must have shape"),
    (lambda a: a.update(regions=a["regions"][:1]), ValueError, "regions must have shape"),
    (lambda a: a.update(regions=a["regions"].float()), ValueError, "integer map"),
    (lambda a: a.update(regions=a["regions"].to(torch.uint8)), ValueError, "integer map"),
    (lambda a: a.update(images=a["images"].long()), ValueError, "images must be floating"),
    (lambda a: a.update(images=a["images"][0, 0]), ValueError, "images must be"),
    (lambda a: a.update(images=a["images"].numpy()), TypeError, "images must be a torch.Tensor"),
    (lambda a: a.update(displacement=a["displacement"][:, :1]), ValueError, "displacement must have"),
    (lambda a: a.update(displacement=a["displacement"][..., :8]), ValueError, "displacement must have"),
    (lambda a: a.update(displacement=a["displacement"].long()), ValueError, "displacement must be fl"),
    (lambda a: a["displacement"].__setitem__((0, 1, 3, 4), math.nan), ValueError, "NaN or infinite"),
    (lambda a: a["displacement"].__setitem__((1, 0, 0, 0), -math.inf), ValueError, "NaN or infinite"),
    (lambda a: a.update(check_finite=1), TypeError, "check_finite must be a bool"),
    (lambda a: a.update(padding="mirror"), ValueError, "padding must be one of"),
    (lambda a: a.update(ignore_index=0), ValueError, "ignore_index must be negative"),
    (lambda a: a.update(ignore_index=-1.0), TypeError, "ignore_index must be an int"),
    (lambda a: a.update(backend="cuda"), ValueError, "backend must be"),
])
def test_elastic_warp_rejects_bad_input(change, error, match):
    args = {**_good(), "padding": "border", "ignore_index": -1, "backend": None, "check_finite": True}
    change(args)
    with pytest.raises(error, match=match):
        elastic_warp(args.pop("images"), args.pop("regions"), args.pop("displacement"), **args)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"sigma": -1.0}, ValueError, "sigma must be >= 0"),
    ({"alpha": -2.0}, ValueError, "alpha must be >= 0"),
    ({"alpha": float("nan")}, ValueError, "alpha must be finite"),
    ({"alpha": 1e39}, ValueError, "alpha must fit in float32"),
    ({"sigma": 1e20}, ValueError, "kernel radius over 1048576"),
    ({"truncate": 1e300}, ValueError, "kernel radius over 1048576"),
    ({"width": 4097, "backend": "triton"}, ValueError, "sides up to 4096"),
    ({"sigma": "3"}, TypeError, "sigma must be a real number"),
    ({"truncate": 0.0}, ValueError, "truncate must be > 0"),
    ({"height": 0}, ValueError, "height must be >= 1"),
    ({"batch": -1}, ValueError, "batch must be >= 0"),
    ({"width": 4.0}, TypeError, "width must be an int"),
    ({"generator": 3}, TypeError, "generator must be a torch.Generator"),
    ({"device": "meta"}, ValueError, "generator lives on cpu"),
    pytest.param({"device": "cuda", "generator": None}, ValueError, "this torch has no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is there")),
    ({"backend": "fast"}, ValueError, "backend must be"),
    ({"spacing": 0}, ValueError, "spacing must be >= 1"),
    ({"spacing": 2 ** 31}, ValueError, "spacing must be < 2\\*\\*31"),
    ({"spacing": 4.0}, TypeError, "spacing must be an int"),
    ({"spacing": True}, TypeError, "spacing must be an int"),
    ({"spacing": 32, "height": 2 ** 16, "width": 2 ** 15, "backend": "triton"}, ValueError,
     "H \\* W must be < 2\\*\\*31"),
])
def test_random_elastic_field_rejects_bad_input(kwargs, error, match):
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    args = {"batch": 2, "height": 8, "width": 9, "alpha": 1.0, "sigma": 2.0,
            "generator": gen, "device": None, **kwargs}
    with pytest.raises(error, match=match):
        random_elastic_field(**args)
    assert torch.equal(gen.get_state(), state)  # refused before the draw


def test_unchecked_non_finite_displacement_stays_in_bounds():
    images, regions, displacement = _warp_inputs(1, 1, 5, 6, torch.float32, torch.int64, 1.0, 24)
    displacement[0, :, 2, 3] = math.nan
    x_p, r_p = elastic_warp(images, regions, displacement, backend="triton", check_finite=False)
    assert r_p[0, 2, 3] == -1 and torch.isfinite(x_p).all()


def test_long_sides_take_the_reference_field(monkeypatch):
    # as on CUDA, where backend=None resolves to Triton
    monkeypatch.setattr(elastic_module, "_check_backend", lambda backend, device, dtype: "triton")
    cpu = torch.device("cpu")
    assert elastic_module._field_backend(None, cpu, 4096, 4096) == "triton"
    assert elastic_module._field_backend(None, cpu, 1, 4097) == "reference"
    with pytest.raises(ValueError, match="sides up to 4096"):
        elastic_module._field_backend("triton", cpu, 4097, 1)


def test_elastic_pair_rejects_bad_input():
    args = _good()
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        elastic_pair(args["images"], args["regions"], sigma=-0.5)
    with pytest.raises(ValueError, match="integer map"):
        elastic_pair(args["images"], args["regions"].double())
    with pytest.raises(ValueError, match="regions must have shape"):
        elastic_pair(args["images"], args["regions"].transpose(1, 2))
    gen = torch.Generator().manual_seed(8)
    state = gen.get_state()
    with pytest.raises(ValueError, match="spacing must be >= 1"):
        elastic_pair(args["images"], args["regions"], generator=gen, spacing=-4)
    with pytest.raises(TypeError, match="spacing must be an int"):
        elastic_pair(args["images"], args["regions"], generator=gen, spacing="8")
    assert torch.equal(gen.get_state(), state)  # refused before the draw


def test_triton_backend_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    args = _good()
    with pytest.raises(ValueError, match="backend='triton' needs"):
        elastic_warp(args["images"], args["regions"], args["displacement"], backend="triton")
    with pytest.raises(ValueError, match="backend='triton' needs"):
        random_elastic_field(1, 8, 9, 1.0, 2.0, backend="triton")


def test_triton_backend_rejects_float64_images():
    args = _good()
    with pytest.raises(ValueError, match="float32/float16/bfloat16 images"):
        elastic_warp(args["images"].double(), args["regions"], args["displacement"],
                     backend="triton")
    gen = torch.Generator().manual_seed(7)
    state = gen.get_state()
    with pytest.raises(ValueError, match="float32/float16/bfloat16 images"):
        elastic_pair(args["images"].double(), args["regions"], generator=gen, backend="triton")
    assert torch.equal(gen.get_state(), state)  # refused before the draw


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a device): the Triton path at realistic sizes
# ---------------------------------------------------------------------------------------------

# Field tolerance on CUDA, in units of alpha, per tl.dot precision and sigma. tf32x3 keeps ~22
# mantissa bits (errors ~1e-6 of alpha). tf32 rounds both operands to 10 mantissa bits, so each
# pass errs by at most 2**-10 * sum|w * u| <= 2**-10 (|u| <= 1, sum w = 1) and the two passes by at
# most 2 * 2**-10 of alpha; the rounding errors of the taps partly cancel, the more the wider the
# kernel: measured, 5.1e-4 at sigma 3 (H200) and 7.9e-5 at sigma 16 (H100). So tf32 gets the bound at
# sigma 3 and 4x the measured error at sigma 16 (0.13 px at alpha 400), where the whole field's
# spread is ~4 px and a truncate of 3 instead of 4 is off by 0.15 px.
FIELD_ATOL = {("tf32x3", 3.0): 1e-5, ("tf32x3", DEFAULT_SIGMA): 1e-5,
              ("tf32", 3.0): 2 * 2**-10, ("tf32", DEFAULT_SIGMA): 3.2e-4}


@pytest.mark.gpu
@pytest.mark.parametrize("precision, sigma", sorted(FIELD_ATOL))
def test_gpu_field_matches_cpu_reference(sigma, precision):
    uniform = _uniform((4, 2, 512, 512), seed=30, device="cuda")
    got = field_from_uniform_triton(uniform, DEFAULT_ALPHA, sigma, precision=precision)
    expected = ref.field_from_uniform(uniform.cpu(), DEFAULT_ALPHA, sigma)  # fp32-exact oracle
    torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=FIELD_ATOL[precision, sigma] * DEFAULT_ALPHA)


@pytest.mark.gpu
def test_gpu_same_seed_same_field_and_default_backend():
    def draw():
        gen = torch.Generator(device="cuda").manual_seed(31)
        return random_elastic_field(3, 512, 512, DEFAULT_ALPHA, DEFAULT_SIGMA, gen)

    assert torch.equal(draw(), draw())
    gen = torch.Generator(device="cuda").manual_seed(31)
    forced = random_elastic_field(3, 512, 512, DEFAULT_ALPHA, DEFAULT_SIGMA, gen, backend="triton")
    assert torch.equal(draw(), forced)


@pytest.mark.gpu
def test_gpu_pair_of_float64_images_is_field_then_warp():
    # the field from float32 noise takes Triton, the warp of float64 images the reference
    images, regions, _ = _warp_inputs(2, 1, 64, 80, torch.float64, torch.int64, 0.0, 37, "cuda")
    x_p, r_p = elastic_pair(images, regions, generator=torch.Generator(device="cuda").manual_seed(38))
    field = random_elastic_field(2, 64, 80, DEFAULT_ALPHA, DEFAULT_SIGMA,
                                 torch.Generator(device="cuda").manual_seed(38))
    expected = elastic_warp(images, regions, field)
    assert torch.equal(x_p, expected[0]) and torch.equal(r_p, expected[1])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("padding", PADDINGS)
def test_gpu_warp_matches_reference(dtype, padding):
    images, regions, _ = _warp_inputs(8, 1, 512, 512, dtype, torch.int64, 0.0, seed=32, device="cuda")
    field = random_elastic_field(8, 512, 512, DEFAULT_ALPHA, DEFAULT_SIGMA,
                                 torch.Generator(device="cuda").manual_seed(33))
    field[0] *= 20.0  # plenty of sources outside the slice
    got = elastic_warp(images, regions, field, padding=padding)
    expected = elastic_warp(images, regions, field, padding=padding, backend="reference")
    # CUDA rounds to nearest like torch: at most one ulp of the output dtype (fp32: FMA)
    torch.testing.assert_close(got[0].float(), expected[0].float(), rtol=0, atol=WARP_ATOL[dtype])
    assert torch.equal(got[1], expected[1])


@pytest.mark.gpu
def test_gpu_alpha_zero_and_gradients():
    images, regions, _ = _warp_inputs(4, 1, 512, 512, torch.float32, torch.int32, 0.0, 34, "cuda")
    x_p, r_p = elastic_pair(images, regions, alpha=0.0)
    assert torch.equal(x_p, images) and torch.equal(r_p, regions)

    field = random_elastic_field(4, 512, 512, DEFAULT_ALPHA, DEFAULT_SIGMA,
                                 torch.Generator(device="cuda").manual_seed(35))
    grad_out = _uniform((4, 1, 512, 512), seed=36, device="cuda") - 0.5
    grads = []
    for backend in ("triton", "reference"):
        img, disp = images.clone().requires_grad_(), field.clone().requires_grad_()
        warped, _ = elastic_warp(img, regions, disp, backend=backend)
        (warped * grad_out).sum().backward()
        grads.append((img.grad, disp.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("batch,height,width,spacing,sigma",
                         COARSE_ROWS_CASES + [(16, 512, 512, 8, 16.0), (3, 512, 512, 4, 16.0)])
def test_gpu_coarse_rows_are_grid_then_rows(batch, height, width, spacing, sigma):
    """On a GPU the barriers between the steps of the noise-to-node-rows kernel are what keep a
    thread from reading a neighbour's node before it is written: the rows must equal those of
    its grid bit for bit, every time, and the grid the CPU oracle."""
    alpha = DEFAULT_ALPHA / spacing
    uniform = _uniform((batch, 2, *ref.coarse_shape(height, width, spacing)), seed=61, device="cuda")
    grid = smooth_grid_triton(uniform, alpha, sigma / spacing)
    expected = upsample_rows_triton(grid, spacing, height, width)
    for _ in range(3):
        assert torch.equal(coarse_rows_triton(uniform, alpha, sigma / spacing, 4.0, spacing, height, width),
                           expected)
    oracle = ref.field_from_uniform(uniform.cpu(), alpha, sigma / spacing)
    torch.testing.assert_close(grid.cpu(), oracle, rtol=0, atol=1e-6 * alpha)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spacing", [4, 8])
def test_gpu_coarse_pair_is_field_then_warp_and_matches_cpu(dtype, spacing):
    """The fused coarse warp and the upsampling kernel make the same fma roundings, so the pair
    equals field then warp bit for bit on CUDA too; the field matches the CPU oracle."""
    images, regions, _ = _warp_inputs(8, 1, 512, 512, dtype, torch.int64, 0.0, 39, "cuda")
    x_p, r_p = elastic_pair(images, regions, generator=torch.Generator(device="cuda").manual_seed(40),
                            spacing=spacing)
    field = random_elastic_field(8, 512, 512, DEFAULT_ALPHA, DEFAULT_SIGMA,
                                 torch.Generator(device="cuda").manual_seed(40), spacing=spacing)
    expected = elastic_warp(images, regions, field)
    assert torch.equal(x_p, expected[0]) and torch.equal(r_p, expected[1])
    uniform = _uniform((8, 2, *ref.coarse_shape(512, 512, spacing)), seed=40, device="cuda")
    oracle = ref.coarse_field_from_uniform(uniform.cpu(), DEFAULT_ALPHA, DEFAULT_SIGMA, spacing, 512, 512)
    # float32 taps and interpolation, with fma: a few roundings of values up to ~20 px (the
    # benchmark's check measured 3.8e-6 px on an H200; this allows 8e-5 px)
    torch.testing.assert_close(field.cpu(), oracle, rtol=0, atol=2e-7 * DEFAULT_ALPHA)


@pytest.mark.gpu
@pytest.mark.parametrize("spacing", [None, 8])
def test_gpu_pair_captures_in_a_cuda_graph(spacing, capture_cuda_graph):
    """No host sync in the field, the warp (check_finite=False) or the pair: each captures in a
    CUDA graph (a sync during capture raises). Every replay draws a new field and pair, its warp
    is the eager warp of its field, and its pair is a warp of the slice and its map."""
    images, regions, _ = _warp_inputs(4, 1, 256, 256, torch.float32, torch.int64, 0.0, 41, "cuda")

    def step():
        field = random_elastic_field(4, 256, 256, DEFAULT_ALPHA, DEFAULT_SIGMA, device="cuda",
                                     spacing=spacing)
        return (field, *elastic_warp(images, regions, field, check_finite=False),
                *elastic_pair(images, regions, spacing=spacing))

    graph, outputs = capture_cuda_graph(step)
    replays = []
    for _ in range(2):
        for out in outputs:  # whatever the replay does not write keeps the sentinel
            out.fill_(math.nan if out.is_floating_point() else -7)
        graph.replay()
        replays.append([out.clone() for out in outputs])
    for field, warped, ids, x_p, r_p in replays:
        expected = elastic_warp(images, regions, field, check_finite=False)
        assert torch.equal(warped, expected[0]) and torch.equal(ids, expected[1])
        # the pair: a bilinear mix of the slice (border padding; weights summing to 1 within a
        # few float32 roundings), ids of the map or -1
        assert images.min() - 1e-6 <= x_p.min() and x_p.max() <= images.max() + 1e-6
        assert torch.isin(r_p, torch.cat([regions.unique(), torch.tensor([-1], device="cuda")])).all()
    assert not torch.equal(replays[0][0], replays[1][0])  # each replay draws a new field
    assert not torch.equal(replays[0][4], replays[1][4])  # and a new pair
