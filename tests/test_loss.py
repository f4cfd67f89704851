"""Tests of lrc_fast.region_contrast_loss, its Triton kernels and its PyTorch reference.

On CPU the Triton kernels run under the Triton interpreter (conftest sets TRITON_INTERPRET=1), so
the shapes here are small; @pytest.mark.gpu tests compare the kernels on CUDA at realistic sizes.

Tolerances (fp32 unless said otherwise)
* Triton vs reference, float32: rtol 1e-5. Both compute the same float32 quantities from the
  same sample pixels; only the summation order differs (a few ulp, ~1e-7 relative).
* bfloat16/float16 features: the oracle is the reference run on float32 copies of the same
  16-bit values (the reference's own 16-bit autograd rounds every duplicate addition of its
  gather/scatter, which is less accurate than the kernel). Region means and the loss are
  float32 in both, so the loss keeps rtol 1e-5. The kernel converts its float32 gradient to the
  16-bit dtype once (CUDA rounds, the interpreter truncates), so it is less than one unit in
  the last place from the float32 oracle. That unit is at most 2**-7 of the value for bfloat16
  (8 significant bits) and 2**-10 for float16 (11 bits), which is the rtol used.
* On CUDA the logits use tl.dot in tf32x3 (fp32 features) or tf32 (16-bit features), so the
  GPU tests use rtol 1e-4 and 2e-3 on the loss respectively (the reference runs in IEEE fp32).
"""
import math

import pytest
import torch

import lrc_fast.loss as loss_mod
from lrc_fast._ext import triton_interpret
from lrc_fast.kernels import region_infonce as infonce_kernels
from lrc_fast.kernels import region_pool as pool_kernels
from lrc_fast.loss import RegionContrastLoss, region_contrast_loss, region_sample_mean
from lrc_fast.reference import region_loss as ref

BF16_GRAD_RTOL = 2.0 ** -7  # one bf16 ulp at the top of a binade (see module docstring)
FP16_GRAD_RTOL = 2.0 ** -10  # one fp16 ulp at the top of a binade
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: BF16_GRAD_RTOL, torch.float16: FP16_GRAD_RTOL}

# Triton on CPU tensors needs the interpreter; conftest turns it on only where there is no CUDA
interpreter = pytest.mark.skipif(not triton_interpret(), reason="CPU Triton tests need TRITON_INTERPRET=1")
BACKENDS = ["reference", pytest.param("triton", marks=interpreter)]


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def blob_regions(batch, height, width, k, seed, ignore_top_row=True):
    """Voronoi blobs of k random seeds per image (ids 0..k-1, some may be absent); row 0 = -1."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.randint(0, height, (batch, k), generator=g)
    xs = torch.randint(0, width, (batch, k), generator=g)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    dist = ((yy[None, :, :, None] - ys[:, None, None, :]) ** 2
            + (xx[None, :, :, None] - xs[:, None, None, :]) ** 2)  # (B, H, W, k)
    regions = dist.argmin(-1)  # (B, H, W)
    if ignore_top_row:
        regions[:, 0, :] = -1
    return regions


def blocky_regions(batch, height, width, k, seed, block=8):
    """Random ids 0..k-1 on a coarse grid, upsampled to blocks of block x block pixels."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, k, (batch, -(-height // block), -(-width // block)), generator=g)
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :height, :width].contiguous()


def warped(regions, seed):
    """A 'warped view': shifted by one pixel, a few ids dropped to -1 at random."""
    g = torch.Generator().manual_seed(seed)
    out = regions.roll(shifts=(1, -1), dims=(1, 2)).clone()
    out[torch.rand(out.shape, generator=g) < 0.05] = -1
    return out


def features(shape, dtype=torch.float32, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(shape, generator=g).to(dtype)
    if channels_last:
        feat = feat.to(memory_format=torch.channels_last)
    return feat.requires_grad_(True)


def loss_and_grads(feat_q, feat_p, *args, **kwargs):
    loss = region_contrast_loss(feat_q, feat_p, *args, **kwargs)
    grads = torch.autograd.grad(loss.sum(), [feat_q, feat_p])
    return loss.detach(), grads


def assert_close(actual, expected, rtol, atol_scale=1e-6):
    """allclose with atol relative to the largest expected magnitude (gradients are sparse)."""
    actual, expected = actual.detach(), expected.detach()
    atol = atol_scale * max(float(expected.abs().max()), 1e-30) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def float32_copy(feat):
    """The oracle's input for 16-bit features: the same values in float32, a new leaf."""
    return feat.detach().float().requires_grad_(True)


def direct_loss(vec_q, vec_p, ids, temperature, normalize, include_self):
    """The paper's formula for one image, in float64 with Python loops (test-only oracle)."""
    q = {k: vec_q[k].double() for k in ids}
    p = {k: vec_p[k].double() for k in ids}
    if normalize:
        q = {k: v / v.norm() for k, v in q.items()}
        p = {k: v / v.norm() for k, v in p.items()}
    total = 0.0
    for k in ids:
        den = 0.0
        for j in ids:
            den += math.exp(float(q[k] @ p[j]) / temperature)
            if j != k or include_self:
                den += math.exp(float(q[k] @ q[j]) / temperature)
        total -= math.log(math.exp(float(q[k] @ p[k]) / temperature) / den)
    return total


# ----------------------------------------------------------------------------------------------
# region index: the Triton tile index locates every pixel the stable torch.sort groups
# ----------------------------------------------------------------------------------------------

def grouped_pixels(index, view=0):
    """Every region's pixels in raster order, read through the Triton index as its docstring says.

    Returns ``(B, H*W)`` int32 laid out like the reference's ``pixels`` for the ids ``< K`` of map
    ``view`` (the ignore bucket at the end is left -1).
    """
    counts_v, cum_v, local_v, pixels_v = (t[view] for t in (index.counts, index.cum, index.local,
                                                            index.pixels))
    batch, num_regions = counts_v.shape
    out = torch.full(pixels_v.shape, -1, dtype=torch.int32, device=pixels_v.device)
    for b in range(batch):
        counts = counts_v[b].long()  # (K,)
        ids = torch.repeat_interleave(torch.arange(num_regions, device=counts.device), counts)
        rank = torch.arange(ids.numel(), device=counts.device) - (counts.cumsum(0) - counts)[ids]
        cum = cum_v[b].long()[:, ids].t()  # (n, T): the prefix of each sample's region
        tile = (cum <= rank[:, None]).sum(1)  # tiles wholly before pixel number `rank`
        before = torch.where(tile > 0, cum.gather(1, (tile - 1).clamp_min(0)[:, None])[:, 0], 0)
        start = local_v[b].long()[tile, ids]
        out[b, :ids.numel()] = pixels_v[b].long()[tile * index.tile + start + rank - before].int()
    return out


@interpreter
@pytest.mark.parametrize("tile", [16, 64, None])
@pytest.mark.parametrize("dtype, strided", [(torch.int64, False), (torch.int32, True)])
@pytest.mark.parametrize("method", ["network", "sort", "simt"])  # the interpreter's sort, tl.sort,
def test_region_index_matches_reference(tile, dtype, strided, method, request):  # the CUDA kernel
    if method == "simt":  # on the SIMT simulator
        request.getfixturevalue("simt_ext")  # skips where it does not run
    g = torch.Generator().manual_seed(1)
    regions = torch.randint(-2, 11, (2, 13, 29), generator=g).to(dtype)  # ids 9, 10 are >= K
    if strided:  # not (h * W + w)-addressable: exercises the non-flat path
        regions = regions.transpose(1, 2).contiguous().transpose(1, 2)
    regions_p = torch.randint(-1, 9, (2, 13, 29), generator=g).to(dtype)  # contiguous
    num_regions = 9
    for maps in [(regions,), (regions, regions_p)]:
        index = pool_kernels.region_index(maps[0], num_regions, tile=tile,
                                          regions_p=maps[1] if len(maps) == 2 else None,
                                          method=method)
        assert index.tile == (tile or 512)
        assert index.cum.shape == (len(maps), 2, -(-13 * 29 // index.tile), num_regions)
        for view, map_v in enumerate(maps):
            ref_pixels, ref_offsets, ref_counts = ref.region_index(map_v, num_regions)
            assert torch.equal(index.counts[view], ref_counts)
            grouped = grouped_pixels(index, view)
            for b in range(2):
                kept = int(ref_counts[b].sum())
                assert torch.equal(grouped[b, :kept], ref_pixels[b, :kept])
                # the sorted tiles hold every pixel of the image once: nothing lost, nothing twice
                assert torch.equal(index.pixels[view, b].sort().values,
                                   torch.arange(13 * 29, dtype=torch.int32))
    # the reference itself: every pixel once, grouped by id, raster order inside a group
    ref_pixels, ref_offsets, ref_counts = ref.region_index(regions, num_regions)
    flat = regions.reshape(2, -1).long()
    for b in range(2):
        assert torch.equal(ref_pixels[b].sort().values, torch.arange(flat.shape[1], dtype=torch.int32))
        k = 4
        group = ref_pixels[b, ref_offsets[b, k]: ref_offsets[b, k] + ref_counts[b, k]].long()
        assert torch.equal(group, (flat[b] == k).nonzero().flatten())


@interpreter
@pytest.mark.parametrize("n_tiles,num_regions", [(1, 1), (63, 37), (64, 64), (65, 65), (130, 200)])
def test_tile_prefix_is_the_cumsum_over_tiles(n_tiles, num_regions):
    """The index's prefix kernel, in place, equals torch's cumsum over the tiles: blocks of 64
    tiles and 64 ids with partial edges, the carry across blocks."""
    gen = torch.Generator().manual_seed(70)
    hist = torch.randint(0, 1025, (2, 3, n_tiles, num_regions), generator=gen, dtype=torch.int32)
    hist[:, 1, n_tiles // 2:] = 0  # runs of empty tiles
    expected = hist.cumsum(2, dtype=torch.int32)
    assert pool_kernels._tile_prefix(hist) is hist and torch.equal(hist, expected)


@interpreter
def test_region_index_of_empty_images():
    for shape in [(0, 5, 7), (2, 0, 7)]:
        index = pool_kernels.region_index(torch.zeros(shape, dtype=torch.int64), 3)
        assert index.counts.shape == (1, shape[0], 3) and int(index.counts.abs().sum()) == 0


@interpreter
def test_kernel_wrappers_reject_bad_arguments():
    regions = torch.zeros(1, 4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="tile must be a power of two"):
        pool_kernels.region_index(regions, 3, tile=48)
    with pytest.raises(ValueError, match="num_regions=.* too large"):
        pool_kernels.region_index(regions, 2 ** 30, tile=16)
    means = torch.zeros(2, 1, 2, 3)  # (2, B, M, D)
    valid = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"means must have shape \(2, B, M, D\), got \(1, 2, 3\)"):
        infonce_kernels.region_infonce(means[0], valid, 0.1)
    with pytest.raises(ValueError, match="precision must be one of"):
        infonce_kernels.region_infonce(means, valid, 0.1, precision="fp8")
    with pytest.raises(TypeError, match="blocks must be a tuple of 4 ints"):
        infonce_kernels.region_infonce(means, valid, 0.1, blocks=(16, 4, 2))  # the old 3-tuple
    with pytest.raises(ValueError, match=r"blocks: rows and columns must be powers of two >= 16.*\(24, 16, 4, 2\)"):
        infonce_kernels.region_infonce(means, valid, 0.1, blocks=(24, 16, 4, 2))
    with pytest.raises(ValueError, match=r"blocks: rows and columns.*\(16, 8, 4, 2\)"):
        infonce_kernels.region_infonce(means, valid, 0.1, blocks=(16, 8, 4, 2))
    with pytest.raises(ValueError, match=r"blocks: rows and columns.*\(16, 48, 4, 2\)"):
        infonce_kernels.region_infonce(means, valid, 0.1, blocks=(16, 48, 4, 2))
    with pytest.raises(ValueError, match="blocks: rows and columns"):
        infonce_kernels.region_infonce(means, valid, 0.1, blocks=(16, 16, 3, 2))
    with pytest.raises(ValueError, match="blocks: rows and columns"):
        infonce_kernels.region_infonce(means, valid, 0.1, blocks=(16, 16, 4, 0))


# ----------------------------------------------------------------------------------------------
# kernels against the reference given the same sample pixels
# ----------------------------------------------------------------------------------------------

@interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pool_kernel_matches_reference(dtype, channels_last):
    batch, channels, height, width, k, n = 2, 12, 37, 91, 13, 50
    regions = blob_regions(batch, height, width, k, seed=2)
    feat = features((batch, channels, height, width), dtype, channels_last, seed=3)
    pixels, offsets, counts = ref.region_index(regions, k)
    valid = counts > 0
    valid[0, 5] = False  # a present region left out must get no samples and no gradient
    uniforms = torch.rand((batch, k, n), generator=torch.Generator().manual_seed(4))
    idx = ref.sample_pixels(pixels, offsets, counts, valid, uniforms)
    feat32 = float32_copy(feat)
    means_ref = ref.region_pool(feat32, idx, valid)
    assert torch.equal(ref.region_pool(feat, idx, valid), means_ref)  # 16-bit reference: same means
    index = pool_kernels.region_index(regions, k, tile=64)  # several tiles per image
    means, idx_triton = pool_kernels.region_pool((feat,), index, valid, uniforms[None])
    means, idx_triton = means[0], idx_triton[0]  # (B, M, D), (B, M, N) of the one view
    assert torch.equal(idx_triton, idx)
    assert_close(means, means_ref, rtol=1e-5)
    upstream = torch.randn(means.shape, generator=torch.Generator().manual_seed(5))
    (grad_ref,) = torch.autograd.grad(means_ref, feat32, upstream)
    (grad,) = torch.autograd.grad(means, feat, upstream)
    assert grad.dtype == dtype
    assert grad.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert_close(grad.float(), grad_ref.float(), rtol=GRAD_RTOL[dtype])
    assert float(grad.float().abs().sum()) > 0
    # gradient lives exactly on drawn pixels (of valid regions)
    drawn = torch.zeros(batch, height * width, dtype=torch.bool)
    drawn.scatter_(1, idx.clamp_min(0).reshape(batch, -1).long(), (idx >= 0).reshape(batch, -1))
    nonzero = grad.float().abs().sum(1).reshape(batch, -1) > 0
    assert torch.equal(nonzero, drawn)


@interpreter
@pytest.mark.parametrize("tile", [16, 4096])
def test_pool_search_widths_find_the_reference_samples(tile):
    """Every width of the pooling's search for a sample's tile draws the reference's pixels: 211
    tiles of 16 pixels (8 binary levels, 3 of 8 probes, 2 of 16), and one tile (no search). The
    regions are scattered blobs, so a region's running count stays flat over many tiles."""
    batch, channels, height, width, k, n = 2, 5, 37, 91, 11, 50
    regions = blob_regions(batch, height, width, k, seed=61)
    regions[:, 10:14] = -1  # rows that no region reaches: flat counts for every region
    feat = features((batch, channels, height, width), channels_last=True, seed=62)
    pixels, offsets, counts = ref.region_index(regions, k)
    valid = counts > 0
    uniforms = torch.rand((1, batch, k, n), generator=torch.Generator().manual_seed(63))
    uniforms[0, :, :, 0] = 0.0  # the first and the last pixel of every region
    uniforms[0, :, :, 1] = 1.0 - 2.0 ** -24
    idx_ref = ref.sample_pixels(pixels, offsets, counts, valid, uniforms[0])
    index = pool_kernels.region_index(regions, k, tile=tile)
    assert index.cum.shape[2] == (211 if tile == 16 else 1)
    results = [pool_kernels._pool_forward(feat, None, index.pixels, index.cum, index.local, None, valid,
                                          uniforms, False, index.tile, bits)
               for bits in pool_kernels.SEARCH_BITS_CHOICES]
    for means, idx, _ in results:
        assert torch.equal(idx[0], idx_ref)
        assert torch.equal(means, results[0][0])


@interpreter
@pytest.mark.parametrize("two_maps", [False, True])
@pytest.mark.parametrize("needs_grad", [(True, True), (False, True), (True, False)])
def test_pool_two_views_in_one_launch(two_maps, needs_grad):
    # both views in the same launches: different layouts (contiguous and channels_last), an own
    # region map per view (a strided one) or one shared map, and gradients for either view alone
    batch, channels, height, width, k, n = 2, 12, 37, 91, 11, 40
    regions_q = blob_regions(batch, height, width, k, seed=31)
    regions_p = warped(regions_q, seed=32).transpose(1, 2).contiguous().transpose(1, 2) if two_maps else None
    feat_q = features((batch, channels, height, width), torch.float32, False, seed=33)
    feat_p = features((batch, channels, height, width), torch.float32, True, seed=34)
    feat_q.requires_grad_(needs_grad[0])
    feat_p.requires_grad_(needs_grad[1])
    maps = (regions_q, regions_q if regions_p is None else regions_p)
    refs = [ref.region_index(m, k) for m in maps]  # (pixels, offsets, counts) per view
    valid = (refs[0][2] > 0) & (refs[1][2] > 0)
    uniforms = torch.rand((2, batch, k, n), generator=torch.Generator().manual_seed(35))
    index = pool_kernels.region_index(regions_q, k, tile=128, regions_p=regions_p)
    means, idx = pool_kernels.region_pool((feat_q, feat_p), index, valid, uniforms)
    upstream = torch.randn(means.shape, generator=torch.Generator().manual_seed(36))
    leaves = [f for f, needs in zip((feat_q, feat_p), needs_grad) if needs]
    grads = dict(zip([v for v in range(2) if needs_grad[v]], torch.autograd.grad(means, leaves, upstream)))
    for view, feat in enumerate((feat_q, feat_p)):
        idx_ref = ref.sample_pixels(*refs[view], valid, uniforms[view])
        assert torch.equal(idx[view], idx_ref)
        feat32 = float32_copy(feat)
        means_ref = ref.region_pool(feat32, idx_ref, valid)
        assert_close(means[view], means_ref, rtol=1e-5)
        if view in grads:
            (grad_ref,) = torch.autograd.grad(means_ref, feat32, upstream[view])
            assert grads[view].is_contiguous(memory_format=torch.channels_last) == (view == 1)
            assert_close(grads[view], grad_ref, rtol=1e-5)
            assert float(grads[view].abs().sum()) > 0


@interpreter
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("two_maps, max_regions, needs_grad", [
    (True, None, (True, True)), (False, 5, (True, True)), (True, 5, (False, True)),
    (False, None, (True, False))])
def test_one_autograd_node_equals_the_chained_functions(reduction, two_maps, max_regions, needs_grad):
    """The loss's single autograd Function gives the values and gradients of region_pool, then
    region_infonce, then reduce_rows under autograd, bit for bit (kept subsets, one shared map,
    either view's gradient alone, every reduction)."""
    from lrc_fast.kernels.region_contrast import region_contrast_triton

    batch, channels, height, width, k, n = 2, 12, 37, 91, 11, 20
    regions_q = blob_regions(batch, height, width, k, seed=51)
    regions_p = warped(regions_q, seed=52) if two_maps else None
    feat_q = features((batch, channels, height, width), torch.float32, False, seed=53)
    feat_p = features((batch, channels, height, width), torch.float32, True, seed=54)
    feat_q.requires_grad_(needs_grad[0])
    feat_p.requires_grad_(needs_grad[1])
    index = pool_kernels.region_index(regions_q, k, regions_p=regions_p)
    sel, valid, slot_of = ref.select_regions(index.counts[0], index.counts[-1], max_regions, "largest", None)
    uniforms = torch.rand((2, batch, valid.shape[1], n), generator=torch.Generator().manual_seed(55))
    leaves = [f for f, needs in zip((feat_q, feat_p), needs_grad) if needs]
    upstream = torch.rand(() if reduction != "none" else (batch,), generator=torch.Generator().manual_seed(56))

    means, _ = pool_kernels.region_pool((feat_q, feat_p), index, valid, uniforms, sel, slot_of)
    rows = infonce_kernels.region_infonce(means, valid, 0.2, True, False, "ieee")
    chained = ref.reduce_rows(rows, valid, reduction)
    fused = region_contrast_triton(feat_q, feat_p, index, valid, uniforms, sel, slot_of, 0.2, True, False,
                                   "ieee", reduction)
    assert torch.equal(fused, chained)
    for got, expected in zip(torch.autograd.grad(fused, leaves, upstream),
                             torch.autograd.grad(chained, leaves, upstream)):
        assert torch.equal(got, expected) and float(got.abs().sum()) > 0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reduce_rows_backward_is_autograds(reduction):
    g = torch.Generator().manual_seed(57)
    rows = torch.randn(3, 7, generator=g, requires_grad=True)
    valid = torch.rand(3, 7, generator=g) > 0.4
    out = ref.reduce_rows(rows, valid, reduction)
    grad = torch.randn(out.shape, generator=g)
    (expected,) = torch.autograd.grad(out, rows, grad)
    got = ref.reduce_rows_backward(grad, valid, reduction)
    assert got.shape == rows.shape and torch.equal(got, expected)


@interpreter
@pytest.mark.parametrize("setting, dtype, expected", [
    ("highest", torch.float32, "tf32x3"), ("high", torch.float32, "tf32"),
    ("medium", torch.float32, "tf32"), ("highest", torch.bfloat16, "tf32")])
def test_logit_precision_follows_torch_float32_matmul_setting(monkeypatch, setting, dtype, expected):
    from lrc_fast.kernels import region_contrast

    chosen = []
    original = region_contrast.region_contrast_triton

    def spy(*args):
        chosen.append(args[10])
        return original(*args)

    monkeypatch.setattr(region_contrast, "region_contrast_triton", spy)
    regions = blob_regions(1, 16, 20, 4, seed=71)
    feat = features((1, 8, 16, 20), dtype, seed=72)
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(setting)
    try:
        region_contrast_loss(feat, feat.detach().flip(-1), regions, num_regions=4, generator=0,
                             backend="triton")
    finally:
        torch.set_float32_matmul_precision(saved)
    assert chosen == [expected]


def test_wide_offsets_only_where_an_image_reaches_2_31():
    def meta(shape, strides):
        return torch.empty_strided(shape, strides, device="meta")

    assert not pool_kernels._wide_offsets(meta((16, 64, 512, 512), (64 * 512 * 512, 512 * 512, 512, 1)))
    # 64 x 8192 x 4096 elements per image: offsets up to 2**31 - 1, still int32
    assert not pool_kernels._wide_offsets(meta((2, 64, 8192, 4096), (2**31, 8192 * 4096, 4096, 1)))
    # one more row, in channels_last: the last elements of an image lie beyond 2**31
    wide = meta((2, 64, 8193, 4096), (8193 * 4096 * 64, 1, 4096 * 64, 64))
    assert pool_kernels._wide_offsets(meta((1, 1, 1, 1), (1, 1, 1, 1)), wide)


@interpreter
@pytest.mark.parametrize("channels_last", [False, True])
def test_pool_forward_int64_gather_reads_the_same_values(monkeypatch, channels_last):
    """Features whose offsets within an image reach 2**31 are gathered with int64 offsets (the
    others with int32, half the registers); forced here on small features, same means."""
    batch, channels, height, width, k = 2, 12, 37, 91, 9
    regions = blob_regions(batch, height, width, k, seed=61)
    feat = features((batch, channels, height, width), torch.float32, channels_last, seed=62).detach()
    index = pool_kernels.region_index(regions, k)
    valid = index.counts[0] > 0
    uniforms = torch.rand((1, batch, k, 30), generator=torch.Generator().manual_seed(63))
    narrow, idx = pool_kernels.region_pool((feat,), index, valid, uniforms)
    monkeypatch.setattr(pool_kernels, "_wide_offsets", lambda *feats: True)
    wide, idx_wide = pool_kernels.region_pool((feat,), index, valid, uniforms)
    assert torch.equal(idx_wide, idx) and torch.equal(wide, narrow)
    assert_close(narrow[0], ref.region_pool(feat, idx[0], valid), rtol=1e-5)


@interpreter
def test_maps_of_two_dtypes_and_mismatched_views():
    # an int64 query map and an int32 warped map: the kernels see one pointer type (the second
    # map is converted), the loss equals the reference's
    batch, channels, height, width, k = 2, 8, 37, 91, 9
    regions_q = blob_regions(batch, height, width, k, seed=41)
    regions_p = warped(regions_q, seed=42).to(torch.int32)
    feat_q = features((batch, channels, height, width), seed=43)
    feat_p = features((batch, channels, height, width), seed=44)
    kwargs = dict(num_regions=k, generator=5)
    loss, grads = loss_and_grads(feat_q, feat_p, regions_q, regions_p, backend="triton", **kwargs)
    loss_ref, grads_ref = loss_and_grads(feat_q, feat_p, regions_q, regions_p, backend="reference", **kwargs)
    assert_close(loss, loss_ref, rtol=1e-5)
    for grad, grad_ref in zip(grads, grads_ref):
        assert_close(grad, grad_ref, rtol=1e-5)
    index = pool_kernels.region_index(regions_q, k, regions_p=regions_p)
    valid = index.counts[0] > 0
    uniforms = torch.rand((2, batch, k, 4))
    with pytest.raises(ValueError, match="one shape and dtype.*bfloat16"):
        pool_kernels.region_pool((feat_q, feat_p.detach().bfloat16()), index, valid, uniforms)


@interpreter
@pytest.mark.parametrize("blocks", sorted(set(pool_kernels.GRAD_BLOCK_CHOICES + pool_kernels.GRAD_BLOCK_CHOICES_CL)))
@pytest.mark.parametrize("channels_last", [False, True])
def test_pool_backward_tiles_agree(blocks, channels_last):
    # every tile the benchmark sweeps (for either layout) writes the same gradient, bit for bit; 20
    # channels are not a multiple of any channel step (masked last step), 37 x 91 pixels not of
    # any pixel block
    batch, channels, height, width, k, n = 2, 20, 37, 91, 9, 30
    regions = blob_regions(batch, height, width, k, seed=21)
    feat = features((batch, channels, height, width), torch.bfloat16, channels_last, seed=22).detach()
    index = pool_kernels.region_index(regions, k)
    valid = index.counts[0] > 0
    uniforms = torch.rand((1, batch, k, n), generator=torch.Generator().manual_seed(23))
    means, _, hits = pool_kernels._pool_forward(feat, None, index.pixels, index.cum, index.local, None,
                                                valid, uniforms, True, index.tile)
    grad_means = torch.randn(means.shape, generator=torch.Generator().manual_seed(24))
    args = (grad_means, hits, regions, None, None, list(feat.shape), feat.dtype, [channels_last], n, [0])
    (expected,) = pool_kernels._pool_backward(*args)
    assert float(expected.float().abs().sum()) > 0
    assert torch.equal(pool_kernels._pool_backward(*args, blocks=blocks)[0], expected)


SCATTER_CASES = [  # (dtype, channels_last, channels, samples, samples per step, views)
    (torch.bfloat16, True, 20, 30, None, [0, 1]),  # bf16, 20 channels: one masked channel step
    (torch.float32, False, 80, 150, None, [0, 1]),  # NCHW, D > 64 and N > 64: several steps each
    (torch.float16, True, 12, 40, 16, [1]),  # the second view alone; 16 samples a step
    (torch.float32, True, 12, 1, None, [0]),  # one sample a region
]


def assert_scatter_backward_equals_dense(dtype, channels_last, channels, n, block_n, views,
                                         size=(2, 37, 91), k=40, device="cpu"):
    """The scatter backward (zero fill, then each row's drawn pixels) writes the dense pass's
    gradient bit for bit: small regions drawn N times (so pixels repeat in a row), a region left
    out and two maps (one strided)."""
    batch, height, width = size
    regions = blob_regions(batch, height, width, k, seed=61).to(device)
    regions_p = warped(regions.cpu(), seed=62).to(device).transpose(1, 2).contiguous().transpose(1, 2)
    feats = [features((batch, channels, height, width), dtype, channels_last, seed=s).detach().to(device)
             for s in (63, 64)]
    index = pool_kernels.region_index(regions, k, regions_p=regions_p)
    valid = (index.counts[0] > 0) & (index.counts[1] > 0)
    valid[1, 3] = False
    uniforms = torch.rand((2, batch, k, n), generator=torch.Generator().manual_seed(65)).to(device)
    means, idx, hits = pool_kernels._pool_forward(*feats, index.pixels, index.cum, index.local, None,
                                                  valid, uniforms, True, index.tile)
    assert (hits > 1).any() or n == 1  # some pixel drawn twice in its region
    grad_means = torch.randn(means.shape, generator=torch.Generator().manual_seed(66)).to(device)
    shape, layouts = list(feats[0].shape), [channels_last, channels_last]
    dense = pool_kernels._pool_backward(grad_means, hits, regions, regions_p, None, shape, dtype, layouts, n, views)
    scatter = pool_kernels._pool_scatter_backward(grad_means, idx, shape, dtype, layouts, n, views, block_n)
    for got, expected in zip(scatter, dense, strict=True):
        assert got.stride() == expected.stride()
        assert torch.equal(got, expected) and float(expected.float().abs().sum()) > 0


@interpreter
@pytest.mark.parametrize("dtype, channels_last, channels, n, block_n, views", SCATTER_CASES)
def test_scatter_backward_equals_dense(dtype, channels_last, channels, n, block_n, views):
    assert_scatter_backward_equals_dense(dtype, channels_last, channels, n, block_n, views)  # 37 x 91 pixels


@interpreter
@pytest.mark.parametrize("layouts, views, samples, method", [
    ([True, True], [0, 1], 50, "scatter"), ([True, False], [0, 1], 50, "dense"),
    ([True, False], [0], 50, "scatter"), ([False], [0], 50, "dense"), ([True], [], 50, "dense"),
    ([True, True], [0, 1], 256, "scatter"), ([True, True], [0, 1], 257, "dense")])
def test_backward_method_follows_the_gradients_layout(layouts, views, samples, method):
    assert pool_kernels._backward_method(layouts, views, samples) == method


@interpreter
@pytest.mark.parametrize("channels_last", [False, True])
def test_returned_indices_are_the_callers_to_edit(channels_last):
    """Editing the indices region_sample_mean returns neither breaks nor changes the backward."""
    regions = blob_regions(2, 12, 20, 6, seed=70)
    feat = features((2, 8, 12, 20), channels_last=channels_last, seed=71)
    (expected,) = torch.autograd.grad(region_sample_mean(feat, regions, 5, num_regions=6, generator=2,
                                                         backend="triton")[0].sum(), feat)
    means, _, idx = region_sample_mean(feat, regions, 5, num_regions=6, generator=2, return_indices=True,
                                       backend="triton")
    idx.zero_()
    (grad,) = torch.autograd.grad(means.sum(), feat)
    assert torch.equal(grad, expected) and float(grad.abs().sum()) > 0


@interpreter
@pytest.mark.parametrize("channels_last, used", [(True, "_pool_scatter_backward"), (False, "_pool_backward")])
def test_loss_takes_the_layouts_backward(monkeypatch, channels_last, used):
    """The loss's backward runs the method its layout picks, and the forward counts hits only for
    the dense one."""
    calls = []
    for name in ("_pool_backward", "_pool_scatter_backward", "_pool_forward"):
        original = getattr(pool_kernels, name)
        monkeypatch.setattr(pool_kernels, name,
                            lambda *a, _f=original, _n=name, **kw: calls.append((_n, a)) or _f(*a, **kw))
    regions = blob_regions(2, 12, 20, 6, seed=67)
    feat_q, feat_p = (features((2, 8, 12, 20), channels_last=channels_last, seed=s) for s in (68, 69))
    loss_and_grads(feat_q, feat_p, regions, num_regions=6, backend="triton")
    assert [name for name, _ in calls] == ["_pool_forward", used]
    assert calls[0][1][8] is (not channels_last)  # count_hits


@pytest.mark.parametrize("size, dtype, channels_last", [
    ((2, 3, 5, 7), torch.bfloat16, True), ((2, 3, 5, 7), torch.float16, False),
    ((1, 1, 1, 3), torch.bfloat16, False),  # an odd number of 16-bit elements: no 32-bit view
    ((2, 3, 5, 7), torch.float32, True), ((0, 3, 5, 7), torch.bfloat16, True)])
def test_zero_gradient_clears_the_whole_buffer(monkeypatch, size, dtype, channels_last):
    """The scatter's zero fill (16-bit buffers as 32-bit words) clears every element of a buffer
    that held anything, in the features' layout."""
    made = pool_kernels._gradient_buffer

    def dirty(*args):
        return made(*args).fill_(math.nan)
    monkeypatch.setattr(pool_kernels, "_gradient_buffer", dirty)
    grad = pool_kernels._zero_gradient(size, dtype, channels_last, "cpu")
    assert grad.dtype == dtype and grad.shape == size
    assert grad.stride() == made(size, dtype, channels_last, "cpu").stride()
    assert torch.equal(grad, torch.zeros(size, dtype=dtype))


@interpreter
def test_scatter_backward_of_empty_inputs():
    idx = torch.full((1, 2, 0, 5), -1, dtype=torch.int32)  # no region kept
    (grad,) = pool_kernels._pool_scatter_backward(torch.zeros(1, 2, 0, 3), idx, [2, 3, 4, 5],
                                                  torch.bfloat16, [True], 5, [0])
    assert grad.shape == (2, 3, 4, 5) and grad.is_contiguous(memory_format=torch.channels_last)
    assert not grad.any()
    no_rows = torch.full((1, 2, 4, 5), -1, dtype=torch.int32)  # every region invalid
    (grad,) = pool_kernels._pool_scatter_backward(torch.randn(1, 2, 4, 3), no_rows, [2, 3, 4, 5],
                                                  torch.float32, [True], 5, [0])
    assert not grad.any()


@interpreter
@pytest.mark.parametrize("normalize, include_self, blocks",
                         [(True, False, None), (True, True, None), (False, False, None)]
                         + [(True, False, shape) for shape in infonce_kernels.BLOCK_CHOICES]
                         + [(True, True, (16, 64, 2, 2))])  # columns wider than rows
def test_infonce_kernel_matches_reference(normalize, include_self, blocks):
    g = torch.Generator().manual_seed(6)
    # two row blocks of 64 (five of 16 by default), column blocks ending part-way; D padded to 32
    batch, regions, channels = 2, 70, 24
    # unnormalised means are scaled so that the logits stay O(1/tau), as after normalisation
    scale = 1.0 if normalize else 0.2
    means_q = (scale * torch.randn(batch, regions, channels, generator=g)).requires_grad_(True)
    means_p = (means_q.detach() + 0.5 * scale * torch.randn(batch, regions, channels, generator=g))
    means_p.requires_grad_(True)
    valid = torch.rand(batch, regions, generator=g) > 0.2
    rows_ref = ref.region_infonce(means_q, means_p, valid, 0.1, normalize, include_self)
    rows = infonce_kernels.region_infonce(torch.stack([means_q, means_p]), valid, 0.1, normalize,
                                          include_self, blocks=blocks)
    # a row is lse - positive, two numbers of size ~1/tau = 10: its error is absolute, a few ulp of 10
    torch.testing.assert_close(rows, rows_ref.detach(), rtol=1e-5, atol=1e-5)
    assert torch.all(rows[~valid] == 0)
    upstream = torch.rand(batch, regions, generator=g)
    grads_ref = torch.autograd.grad(rows_ref, [means_q, means_p], upstream)
    grads = torch.autograd.grad(rows, [means_q, means_p], upstream)
    for grad, grad_ref in zip(grads, grads_ref):
        # each element sums ~2M terms of either sign: atol at 1e-5 of the largest gradient
        assert_close(grad, grad_ref, rtol=1e-5, atol_scale=1e-5)
        assert torch.all(grad[~valid] == 0)


@interpreter
@pytest.mark.parametrize("regions, blocks, normalize", [(5, (16, 64, 2, 2), True), (5, (64, 16, 4, 3), False),
                                                       (1, None, True), (33, (16, 32, 2, 2), False)])
def test_infonce_kernel_with_fewer_regions_than_a_block(regions, blocks, normalize):
    """Fewer regions than a row or a column block (every block partial), with include_self."""
    g = torch.Generator().manual_seed(9)
    scale = 1.0 if normalize else 0.2
    means = (scale * torch.randn(2, 2, regions, 3, generator=g)).requires_grad_(True)  # (2, B, M, D)
    valid = torch.rand(2, regions, generator=g) > 0.2
    valid[0, 0] = True
    rows_ref = ref.region_infonce(means[0], means[1], valid, 0.1, normalize, True)
    rows = infonce_kernels.region_infonce(means, valid, 0.1, normalize, True, blocks=blocks)
    torch.testing.assert_close(rows, rows_ref.detach(), rtol=1e-5, atol=1e-5)
    upstream = torch.rand(2, regions, generator=g)
    (grad_ref,) = torch.autograd.grad(rows_ref, means, upstream)
    (grad,) = torch.autograd.grad(rows, means, upstream)
    assert_close(grad, grad_ref, rtol=1e-5, atol_scale=1e-5)


# ----------------------------------------------------------------------------------------------
# the whole loss: Triton path == reference
# ----------------------------------------------------------------------------------------------

@interpreter
@pytest.mark.parametrize("dtype, channels_last, separate_maps, options", [
    (torch.float32, False, True, {}),
    (torch.float32, True, False, {"include_self": True}),
    (torch.float32, False, True, {"max_regions": 6}),
    (torch.float32, False, True, {"max_regions": 6, "subset": "random", "reduction": "none"}),
    (torch.float32, False, False, {"normalize": False, "reduction": "sum", "temperature": 0.5}),
    (torch.bfloat16, True, True, {}),
    (torch.float16, False, True, {"num_samples": 7}),
])
def test_loss_triton_matches_reference(dtype, channels_last, separate_maps, options):
    batch, channels, height, width, k = 2, 16, 37, 91, 13
    regions_q = blob_regions(batch, height, width, k, seed=7)
    regions_p = warped(regions_q, seed=8) if separate_maps else None
    if dtype == torch.bfloat16:  # int32 maps too
        regions_q, regions_p = regions_q.int(), regions_p.int()
    feat_q = features((batch, channels, height, width), dtype, channels_last, seed=9)
    feat_p = features((batch, channels, height, width), dtype, channels_last, seed=10)
    kwargs = dict(num_regions=k, generator=11, **options)
    loss_ref, grads_ref = loss_and_grads(float32_copy(feat_q), float32_copy(feat_p), regions_q, regions_p,
                                         backend="reference", **kwargs)
    loss, grads = loss_and_grads(feat_q, feat_p, regions_q, regions_p, backend="triton", **kwargs)
    if dtype != torch.float32:  # the 16-bit reference: same float32 means, so the same loss
        loss_ref16 = region_contrast_loss(feat_q, feat_p, regions_q, regions_p, backend="reference", **kwargs)
        assert torch.equal(loss_ref16.detach(), loss_ref)
    assert loss.dtype == torch.float32 and loss.shape == loss_ref.shape
    assert_close(loss, loss_ref, rtol=1e-5)
    for grad, grad_ref, feat in zip(grads, grads_ref, (feat_q, feat_p)):
        assert grad.dtype == dtype and grad.stride() == feat.stride()
        assert_close(grad.float(), grad_ref.float(), rtol=GRAD_RTOL[dtype])
        assert float(grad.float().abs().sum()) > 0


def _cropped_features(seed, device="cpu"):
    """Two (2, 12, 37, 91) crops of wider maps: pixels not (h * W + w) * s_w apart."""
    g = torch.Generator().manual_seed(seed)
    wide = [torch.randn(2, 12, 37, 94, generator=g).to(device) for _ in range(2)]
    return wide[0][..., 1:-2].requires_grad_(True), wide[1][..., 2:-1].requires_grad_(True)


@interpreter
def test_features_of_any_strides():
    """Cropped features take the kernels' non-flat addressing; their gradients come back dense."""
    regions = blob_regions(2, 37, 91, 9, seed=40)
    feat_q, feat_p = _cropped_features(41)
    kwargs = dict(num_regions=9, generator=3)
    loss_ref, grads_ref = loss_and_grads(feat_q, feat_p, regions, backend="reference", **kwargs)
    loss, grads = loss_and_grads(feat_q, feat_p, regions, backend="triton", **kwargs)
    assert_close(loss, loss_ref, rtol=1e-5)
    for grad, grad_ref in zip(grads, grads_ref):
        assert grad.is_contiguous()
        assert_close(grad, grad_ref, rtol=1e-5)
        assert float(grad.abs().sum()) > 0


@interpreter
def test_default_backend_and_module():
    regions = blob_regions(2, 12, 20, 6, seed=12)
    feat_q = features((2, 8, 12, 20), seed=13)
    feat_p = features((2, 8, 12, 20), seed=14)
    expected = region_contrast_loss(feat_q, feat_p, regions, num_regions=6, generator=3, backend="triton")
    default = region_contrast_loss(feat_q, feat_p, regions, num_regions=6, generator=3)  # interpreter
    module = RegionContrastLoss(num_regions=6, backend="reference")
    assert torch.equal(default, expected)
    assert_close(module(feat_q, feat_p, regions, generator=3), expected, rtol=1e-5)
    assert "num_samples=50" in repr(module) and "temperature=0.1" in repr(module)


@interpreter
def test_triton_path_is_deterministic_and_seeded():
    regions = blob_regions(2, 12, 20, 6, seed=15)
    feat_q = features((2, 8, 12, 20), seed=16)
    feat_p = features((2, 8, 12, 20), seed=17)
    first = loss_and_grads(feat_q, feat_p, regions, num_regions=6, generator=5, backend="triton")
    again = loss_and_grads(feat_q, feat_p, regions, num_regions=6,
                           generator=torch.Generator().manual_seed(5), backend="triton")
    other = loss_and_grads(feat_q, feat_p, regions, num_regions=6, generator=6, backend="triton")
    assert torch.equal(first[0], again[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], again[1]))
    assert not torch.equal(first[0], other[0])


@interpreter
def test_triton_path_does_not_keep_features_alive():
    import weakref
    leaf = features((2, 8, 12, 20), seed=18)
    regions = blob_regions(2, 12, 20, 6, seed=19)
    feat_q, feat_p = leaf * 2.0, leaf * 3.0  # non-leaf, like a decoder output
    loss = region_contrast_loss(feat_q, feat_p, regions, num_regions=6, generator=1, backend="triton")
    alive = weakref.ref(feat_q)
    del feat_q, feat_p
    assert alive() is None  # the backward needs only the hit counts and the region map
    loss.backward()
    assert leaf.grad is not None and float(leaf.grad.abs().sum()) > 0


# ----------------------------------------------------------------------------------------------
# checks independent of the sampling
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize, include_self, reduction", [
    (True, False, "mean"), (True, True, "sum"), (False, False, "none")])
def test_constant_regions_match_direct_formula(backend, normalize, include_self, reduction):
    batch, channels, height, width, k, tau = 2, 5, 14, 22, 7, 0.2
    regions_q = blob_regions(batch, height, width, k, seed=18)
    regions_p = warped(regions_q, seed=19)
    regions_p[1][regions_p[1] == 2] = -1  # region 2 missing from view p of image 1
    g = torch.Generator().manual_seed(20)
    vec_q = torch.randn(batch, k, channels, generator=g)
    vec_p = vec_q + 0.3 * torch.randn(batch, k, channels, generator=g)

    def paint(vectors, regions):
        # constant vector per region; ignored pixels get huge values that must never be sampled
        feat = torch.full((batch, height, width, channels), 1e3)
        inside = regions >= 0
        feat[inside] = vectors[torch.arange(batch)[:, None, None].expand_as(regions)[inside], regions[inside]]
        return feat.permute(0, 3, 1, 2).contiguous()

    feat_q, feat_p = paint(vec_q, regions_q), paint(vec_p, regions_p)
    loss = region_contrast_loss(feat_q, feat_p, regions_q, regions_p, num_regions=k, temperature=tau,
                                normalize=normalize, include_self=include_self, reduction=reduction,
                                generator=21, backend=backend)
    per_image, n_valid = [], 0
    for b in range(batch):
        ids = [j for j in range(k) if (regions_q[b] == j).any() and (regions_p[b] == j).any()]
        n_valid += len(ids)
        per_image.append(direct_loss(vec_q[b], vec_p[b], ids, tau, normalize, include_self))
    assert 2 in [j for j in range(k) if (regions_q[1] == j).any()]  # the missing one was present in q
    expected = {"none": torch.tensor(per_image), "sum": torch.tensor(sum(per_image)),
                "mean": torch.tensor(sum(per_image) / n_valid)}[reduction]
    assert_close(loss.double(), expected.double(), rtol=1e-5)


@pytest.mark.parametrize("normalize, include_self", [(True, False), (False, True)])
def test_reference_infonce_gradcheck(normalize, include_self):
    g = torch.Generator().manual_seed(22)
    means_q = torch.randn(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    means_p = torch.randn(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([[True, True, False, True, True], [False, True, True, False, False]])
    assert torch.autograd.gradcheck(
        lambda q, p: ref.region_infonce(q, p, valid, 0.3, normalize, include_self), (means_q, means_p))


def test_reference_loss_gradcheck():
    regions_q = blob_regions(2, 6, 7, 4, seed=23)
    regions_p = warped(regions_q, seed=24)
    feat_q = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    feat_p = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, p: region_contrast_loss(q, p, regions_q, regions_p, num_samples=5, temperature=0.3,
                                          num_regions=4, generator=25, backend="reference"),
        (feat_q, feat_p))


# ----------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_samples_stay_in_their_region(backend):
    regions = blob_regions(2, 19, 23, 9, seed=26)
    regions[0, 3:6, 3:9] = -1  # an ignored patch inside the image
    regions[1][regions[1] == 4] = -1  # an empty region
    feat = features((2, 4, 19, 23), seed=27)
    means, valid, idx = region_sample_mean(feat, regions, 30, num_regions=9, generator=28,
                                           return_indices=True, backend=backend)
    assert means.shape == (2, 9, 4) and valid.shape == (2, 9) and idx.shape == (2, 9, 30)
    flat = regions.reshape(2, -1)
    for b in range(2):
        for k in range(9):
            if not valid[b, k]:
                assert torch.all(idx[b, k] == -1) and torch.all(means[b, k] == 0)
                continue
            assert torch.all(flat[b, idx[b, k].long()] == k)  # never outside, never ignored
    assert not valid[1, 4]


@interpreter
def test_sample_indices_are_identical_across_backends():
    regions = blob_regions(2, 37, 91, 21, seed=29)
    feat = features((2, 6, 37, 91), torch.bfloat16, seed=30)
    ref_out = region_sample_mean(feat, regions, 50, num_regions=21, generator=31, return_indices=True,
                                 backend="reference")
    out = region_sample_mean(feat, regions, 50, num_regions=21, generator=31, return_indices=True,
                             backend="triton")
    assert torch.equal(out[2], ref_out[2]) and torch.equal(out[1], ref_out[1])
    assert_close(out[0], ref_out[0], rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_is_uniform_chi_square(backend):
    from scipy.stats import chisquare
    regions = torch.full((1, 6, 10), -1)
    regions[0, 1:5, 2:9] = 0  # 28 pixels
    feat = features((1, 1, 6, 10), seed=32)
    _, _, idx = region_sample_mean(feat, regions, 5600, num_regions=1, generator=33,
                                   return_indices=True, backend=backend)
    pixels = (regions.reshape(-1) == 0).nonzero().flatten()
    hist = torch.bincount(idx.reshape(-1).long(), minlength=60)[pixels]
    assert int(hist.sum()) == 5600
    assert chisquare(hist.numpy()).pvalue > 1e-3  # 200 expected per pixel


def test_sampling_is_with_replacement():
    # 300 regions of 10 pixels, 10 draws each: with replacement the expected number of
    # distinct pixels is 10 * (1 - 0.9**10) = 6.51 (without replacement it would be 10)
    regions = (torch.arange(3000) // 10).reshape(1, 30, 100)
    feat = features((1, 1, 30, 100), seed=34)
    _, _, idx = region_sample_mean(feat, regions, 10, num_regions=300, generator=35,
                                   return_indices=True, backend="reference")
    distinct = torch.tensor([len(set(row.tolist())) for row in idx[0]], dtype=torch.float64)
    assert abs(float(distinct.mean()) - 10 * (1 - 0.9 ** 10)) < 0.2  # std of the mean is ~0.05


# ----------------------------------------------------------------------------------------------
# edge cases
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_single_region(backend):
    regions = torch.zeros(2, 9, 13, dtype=torch.int64)
    regions[:, 0] = -1
    feat_q, feat_p = features((2, 4, 9, 13), seed=36), features((2, 4, 9, 13), seed=37)
    loss, grads = loss_and_grads(feat_q, feat_p, regions, num_regions=1, generator=1, backend=backend)
    assert float(loss) == 0.0  # only the positive in the denominator
    assert all(torch.all(g == 0) for g in grads)
    # the literal formula keeps e^{q.q/tau}: log(1 + e^{(1 - q.p)/tau}) after normalisation
    loss_self = region_contrast_loss(feat_q, feat_p, regions, num_regions=1, include_self=True,
                                     reduction="none", generator=1, backend=backend)
    u = ref.draw_uniforms(2, 2, 1, 50, torch.Generator().manual_seed(1), torch.device("cpu"))
    pixels, offsets, counts = ref.region_index(regions, 1)
    valid = counts > 0
    q = ref.region_pool(feat_q, ref.sample_pixels(pixels, offsets, counts, valid, u[0]), valid)
    p = ref.region_pool(feat_p, ref.sample_pixels(pixels, offsets, counts, valid, u[1]), valid)
    q, p = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(p, dim=-1)
    expected = torch.log1p(torch.exp((1 - (q * p).sum(-1)) / 0.1)).sum(1)
    assert_close(loss_self.detach(), expected.detach(), rtol=1e-5)


@interpreter
@pytest.mark.parametrize("normalize, temperature, scale", [(True, 1e-31, 1.0), (False, 1e-5, 1e13)])
def test_logits_far_below_minus_1e30_match_the_reference(normalize, temperature, scale):
    # Every logit of both rows under -1e30 (a tiny temperature, or large unnormalised features):
    # the kernel's online log-sum-exp once started at -1e30 and lost such rows. Features are
    # constant per region, so the region means are these unit vectors (times scale) exactly.
    q = torch.tensor([[1.0, 0.0], [-0.5, 0.75 ** 0.5]])  # (K, D): q_0 . q_1 = -0.5
    p = torch.tensor([[-0.6, -0.8], [-0.5, -0.75 ** 0.5]])  # every q . p in [-0.6, -0.39]
    negatives_q = (q @ q.T)[~torch.eye(2, dtype=torch.bool)]  # q_k . q_k is left out (include_self=False)
    assert float(torch.cat([(q @ p.T).flatten(), negatives_q]).max()) * scale ** 2 / temperature < -1e30
    regions = torch.zeros(1, 4, 8, dtype=torch.int64)
    regions[:, :, 4:] = 1

    def views():
        return tuple((m[regions[0]].permute(2, 0, 1)[None] * scale).requires_grad_() for m in (q, p))

    results = {}
    for backend in ("reference", "triton"):
        loss, grads = loss_and_grads(*views(), regions, num_regions=2, reduction="none", generator=2,
                                     normalize=normalize, temperature=temperature, backend=backend)
        assert torch.isfinite(loss).all() and all(torch.isfinite(g).all() for g in grads)
        results[backend] = (loss, *grads)
    # the image's loss: row k gives (its largest logit - q_k.p_k) / tau (the log of the rest is lost
    # in float32): (-0.5 + 0.6 + q_1.p_0 + 0.5) / tau = 0.2072 / tau; the -1e30 start gave 9e30
    assert 2.05e30 < float(results["reference"][0]) < 2.09e30
    for got, expected in zip(results["triton"], results["reference"]):
        assert_close(got, expected, rtol=1e-5)
    single = torch.zeros(1, 4, 4, dtype=torch.int64)  # K=1, anti-aligned views: loss 0, gradient 0
    ones = torch.ones(1, 2, 4, 4)
    loss, grads = loss_and_grads(ones.clone().requires_grad_(), (-ones).requires_grad_(), single, num_regions=1,
                                 generator=0, backend="triton", temperature=1e-31)
    assert float(loss) == 0.0 and all(torch.all(g == 0) for g in grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_pixels_ignored(backend, reduction):
    regions = torch.full((2, 7, 11), -1)
    feat_q, feat_p = features((2, 3, 7, 11), seed=38), features((2, 3, 7, 11), seed=39)
    loss, grads = loss_and_grads(feat_q, feat_p, regions, num_regions=5, reduction=reduction,
                                 generator=1, backend=backend)
    assert loss.shape == ((2,) if reduction == "none" else ())
    assert torch.all(loss == 0)
    assert all(torch.all(g == 0) for g in grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_region_missing_from_one_view_is_dropped(backend):
    regions_q = blob_regions(2, 12, 20, 6, seed=40)
    regions_p = warped(regions_q, seed=41)
    regions_p[regions_p == 3] = -1  # region 3 only in view q
    dropped_q = regions_q.clone()
    dropped_q[dropped_q == 3] = -1
    feat_q, feat_p = features((2, 8, 12, 20), seed=42), features((2, 8, 12, 20), seed=43)
    loss = region_contrast_loss(feat_q, feat_p, regions_q, regions_p, num_regions=6, generator=2,
                                backend=backend)
    expected = region_contrast_loss(feat_q, feat_p, dropped_q, regions_p, num_regions=6, generator=2,
                                     backend=backend)
    assert torch.isfinite(loss) and torch.equal(loss, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ids_at_or_above_num_regions_are_ignored(backend):
    regions = blob_regions(2, 12, 20, 8, seed=44)
    capped = regions.clone()
    capped[capped >= 6] = -1
    feat_q, feat_p = features((2, 8, 12, 20), seed=45), features((2, 8, 12, 20), seed=46)
    loss = region_contrast_loss(feat_q, feat_p, regions, num_regions=6, generator=3, backend=backend)
    expected = region_contrast_loss(feat_q, feat_p, capped, num_regions=6, generator=3, backend=backend)
    inferred = region_contrast_loss(feat_q, feat_p, capped, generator=3, backend=backend)  # K = max + 1
    assert torch.equal(loss, expected) and torch.equal(inferred, expected)


def test_select_regions_largest_and_random():
    counts_q = torch.tensor([[5, 0, 9, 9, 1, 7], [3, 3, 3, 3, 0, 0]], dtype=torch.int32)
    counts_p = torch.tensor([[5, 4, 0, 9, 1, 8], [3, 3, 3, 3, 0, 0]], dtype=torch.int32)
    sel, valid, slot_of = ref.select_regions(counts_q, counts_p, 3, "largest", None)
    assert sel[0].tolist() == [3, 5, 0]  # sizes 18, 15, 10; ids 1 and 2 miss a view
    assert sel[1].tolist() == [0, 1, 2]  # ties go to the smaller id
    assert valid.all()
    assert slot_of[0].tolist() == [2, -1, -1, 0, -1, 1]
    full = ref.select_regions(counts_q, counts_p, 6, "largest", None)
    assert full[0] is None and torch.equal(full[1], (counts_q > 0) & (counts_p > 0))
    picks = {tuple(sorted(ref.select_regions(counts_q, counts_p, 2, "random",
                                             torch.Generator().manual_seed(s))[0][1].tolist()))
             for s in range(20)}
    assert len(picks) > 1 and all(set(p) <= {0, 1, 2, 3} for p in picks)
    again = ref.select_regions(counts_q, counts_p, 2, "random", torch.Generator().manual_seed(7))
    once = ref.select_regions(counts_q, counts_p, 2, "random", torch.Generator().manual_seed(7))
    assert torch.equal(again[0], once[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_regions_than_max_regions(backend):
    regions = blob_regions(2, 16, 24, 12, seed=47)
    feat_q, feat_p = features((2, 8, 16, 24), seed=48), features((2, 8, 16, 24), seed=49)
    loss = region_contrast_loss(feat_q, feat_p, regions, num_regions=12, max_regions=4,
                                reduction="sum", generator=4, backend=backend)
    # the same sum from maps that keep only the 4 largest regions per image
    counts = torch.stack([torch.bincount(r[r >= 0], minlength=12) for r in regions])  # (B, K)
    keep = torch.topk(counts * 12 + (11 - torch.arange(12)), 4, dim=1).indices
    kept = regions.clone()
    for b in range(2):
        kept[b][~torch.isin(kept[b], keep[b])] = -1
    means_ok = region_contrast_loss(feat_q, feat_p, kept, num_regions=12, max_regions=4,
                                    reduction="sum", generator=4, backend=backend)
    assert torch.isfinite(loss) and torch.equal(loss, means_ok)
    no_cap = region_contrast_loss(feat_q, feat_p, regions, num_regions=12, max_regions=12,
                                  generator=4, backend=backend)
    assert torch.equal(no_cap, region_contrast_loss(feat_q, feat_p, regions, num_regions=12,
                                                    generator=4, backend=backend))


@pytest.mark.parametrize("shape", [(0, 4, 5, 6), (2, 4, 0, 6)])
def test_empty_inputs(shape):
    feat_q, feat_p = features(shape, seed=50), features(shape, seed=51)
    regions = torch.zeros(shape[0], *shape[2:], dtype=torch.int64)
    loss, grads = loss_and_grads(feat_q, feat_p, regions, num_regions=3)
    assert float(loss) == 0.0 and all(g.shape == shape for g in grads)
    means, valid = region_sample_mean(feat_q, regions, 4, num_regions=3)
    assert means.shape == (shape[0], 3, 4) and not valid.any()


def assert_compiled_equals_eager(step, feat_q, feat_p, regions):
    """``step(q, p, r)`` compiled whole (``fullgraph``; aot_eager keeps eager's random draw) gives
    the eager loss and gradients, bit for bit, from the same global seed."""
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    torch.manual_seed(9)
    loss = compiled(feat_q, feat_p, regions)
    grads = torch.autograd.grad(loss, [feat_q, feat_p])
    torch.manual_seed(9)
    eager = step(feat_q, feat_p, regions)
    eager_grads = torch.autograd.grad(eager, [feat_q, feat_p])
    assert torch.equal(loss, eager)
    assert all(torch.equal(a, b) for a, b in zip(grads, eager_grads))


@interpreter
def test_torch_compile():
    regions = blob_regions(2, 8, 12, 5, seed=52)
    feat_q, feat_p = features((2, 8, 8, 12), seed=53), features((2, 8, 8, 12), seed=54)
    for backend in ("triton", "reference"):
        def step(q, p, r, backend=backend):  # global RNG: dynamo cannot trace torch.Generator
            return region_contrast_loss(q, p, r, num_regions=5, backend=backend)
        assert_compiled_equals_eager(step, feat_q, feat_p, regions)
    # channels_last features: the scatter backward's custom op
    cl_q, cl_p = (features((2, 8, 8, 12), channels_last=True, seed=s) for s in (53, 54))
    assert_compiled_equals_eager(lambda q, p, r: region_contrast_loss(q, p, r, num_regions=5, backend="triton"),
                                 cl_q, cl_p, regions)
    # without normalisation the InfoNCE op hands the backward an empty placeholder, not the means
    assert_compiled_equals_eager(lambda q, p, r: region_contrast_loss(q, p, r, num_regions=5, normalize=False,
                                                                      backend="triton"), feat_q, feat_p, regions)
    # with a generator it still runs compiled, with a graph break around the random draw
    seeded = torch.compile(lambda q, p, r, gen: region_contrast_loss(q, p, r, num_regions=5, generator=gen),
                           backend="aot_eager")
    assert torch.equal(seeded(feat_q, feat_p, regions, torch.Generator().manual_seed(3)),
                       region_contrast_loss(feat_q, feat_p, regions, num_regions=5, generator=3))


@pytest.mark.gpu
def test_gpu_torch_compile_fullgraph():
    # on CUDA the region index's sort is chosen by asking the compiled extension, which dynamo
    # cannot trace: the answer must be a constant to it, or fullgraph fails
    regions = blob_regions(2, 40, 52, 7, seed=55).cuda()
    feat_q, feat_p = (features((2, 8, 40, 52), seed=s).detach().cuda().requires_grad_(True) for s in (56, 57))

    assert_compiled_equals_eager(lambda q, p, r: region_contrast_loss(q, p, r, num_regions=7, backend="triton"),
                                 feat_q, feat_p, regions)


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------

def _inputs():
    feat = torch.randn(2, 4, 6, 7)
    return feat, feat.clone(), torch.zeros(2, 6, 7, dtype=torch.int64)


@pytest.mark.parametrize("change, error, match", [
    (lambda a: a.update(feat_p=torch.randn(2, 4, 6, 8)), ValueError, "feat_p must have the shape"),
    (lambda a: a.update(feat_p=a["feat_p"].double()), ValueError, "feat_p must have the dtype"),
    (lambda a: a.update(feat_q=a["feat_q"][0]), ValueError, r"feat_q must have shape \(B, D, H, W\)"),
    (lambda a: a.update(feat_q=a["feat_q"].int()), ValueError, "feat_q must be float32"),
    (lambda a: a.update(feat_q=a["feat_q"][:, :0], feat_p=a["feat_p"][:, :0]), ValueError, "at least one channel"),
    (lambda a: a.update(feat_q="x"), TypeError, "feat_q must be a torch.Tensor"),
    (lambda a: a.update(regions_q=torch.zeros(2, 6, 6, dtype=torch.int64)), ValueError,
     r"regions_q must have shape \(B, H, W\)"),
    (lambda a: a.update(regions_q=torch.zeros(2, 6, 7)), ValueError, "regions_q must hold int64 or int32"),
    (lambda a: a.update(regions_p=torch.zeros(2, 6, 7, dtype=torch.uint8)), ValueError, "regions_p must hold int64"),
    (lambda a: a.update(regions_p=torch.zeros(1, 6, 7, dtype=torch.int64)), ValueError, "regions_p must have shape"),
    (lambda a: a.update(regions_p=torch.zeros(2, 6, 7, dtype=torch.int64, device="meta")), ValueError,
     "regions_p is on meta"),
    (lambda a: a.update(feat_p=a["feat_p"].to("meta")), ValueError, "feat_p is on meta"),
    (lambda a: a.update(num_samples=0), ValueError, "num_samples must be >= 1"),
    (lambda a: a.update(num_samples=2.5), TypeError, "num_samples must be an int"),
    (lambda a: a.update(temperature=0.0), ValueError, "temperature must be a finite number > 0"),
    (lambda a: a.update(temperature=10 ** 400), ValueError, "temperature must be a finite number > 0, got 1000000000"),  # the value given, not inf
    (lambda a: a.update(temperature="hot"), TypeError, "temperature must be a real number"),
    (lambda a: a.update(temperature=1e-39), ValueError, "temperature must be at least 1 / float32 max"),
    (lambda a: a.update(normalize="False"), TypeError, "normalize must be a bool"),
    (lambda a: a.update(include_self=1), TypeError, "include_self must be a bool"),
    (lambda a: a.update(generator=2 ** 64), ValueError, r"int seed must be in \[-2\*\*63, 2\*\*64\)"),
    (lambda a: a.update(num_regions=0), ValueError, "num_regions must be >= 1"),
    (lambda a: a.update(max_regions=True), TypeError, "max_regions must be an int or None"),
    (lambda a: a.update(subset="smallest"), ValueError, "subset must be 'largest' or 'random'"),
    (lambda a: a.update(reduction="avg"), ValueError, "reduction must be 'mean', 'sum' or 'none'"),
    (lambda a: a.update(backend="cuda"), ValueError, "backend must be None, 'triton' or 'reference'"),
    (lambda a: a.update(generator="seed"), TypeError, "generator must be a torch.Generator"),
    (lambda a: a.update(feat_q=a["feat_q"].to("meta"), feat_p=a["feat_p"].to("meta"),
                        regions_q=a["regions_q"].to("meta"), generator=torch.Generator()),
     ValueError, "generator lives on cpu but the features are on meta"),
    (lambda a: a.update(feat_q=a["feat_q"].double(), feat_p=a["feat_p"].double(), backend="triton"),
     ValueError, "backend='triton' takes float32"),
])
def test_input_checks(change, error, match):
    feat_q, feat_p, regions = _inputs()
    args = dict(feat_q=feat_q, feat_p=feat_p, regions_q=regions)
    change(args)
    with pytest.raises(error, match=match):
        region_contrast_loss(**args)


@pytest.mark.parametrize("option, value", [("normalize", "no"), ("include_self", None)])
def test_input_checks_on_an_empty_batch(option, value):
    # refused as on a full batch, before the early return for inputs without pixels
    feat = torch.randn(0, 4, 6, 7)
    with pytest.raises(TypeError, match=f"{option} must be a bool"):
        region_contrast_loss(feat, feat, torch.zeros(0, 6, 7, dtype=torch.int64), **{option: value})


def test_triton_interpret_set_after_import_takes_the_reference(tmp_path):
    # Triton chooses interpreter or compiler at import: a later TRITON_INTERPRET=1 cannot make the
    # kernels run on CPU tensors, so the default backend stays the reference and 'triton' is refused
    import subprocess
    import sys
    script = tmp_path / "late.py"
    script.write_text(
        "import os\n"
        "import torch\n"
        "import lrc_fast\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "f = torch.randn(1, 4, 6, 6)\n"
        "r = torch.zeros(1, 6, 6, dtype=torch.long)\n"
        "r[:, 3:] = 1\n"
        "expected = lrc_fast.region_contrast_loss(f, f.flip(-1), r, generator=0, backend='reference')\n"
        "assert torch.equal(lrc_fast.region_contrast_loss(f, f.flip(-1), r, generator=0), expected)\n"
        "try:\n"
        "    lrc_fast.region_contrast_loss(f, f, r, backend='triton')\n"
        "except ValueError as exc:\n"
        "    assert 'TRITON_INTERPRET=1 set before import' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('backend=triton ran')\n"
        "print('ok')\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_input_checks_module_and_sample_mean():
    with pytest.raises(ValueError, match="reduction must be"):
        RegionContrastLoss(reduction="max")
    with pytest.raises(ValueError, match="max_regions must be >= 1"):
        RegionContrastLoss(max_regions=0)
    feat, _, regions = _inputs()
    with pytest.raises(ValueError, match="regions must have shape"):
        region_sample_mean(feat, regions[:, :3], 5)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        region_sample_mean(feat, regions, 0)
    with pytest.raises(TypeError, match="return_indices must be a bool"):
        region_sample_mean(feat, regions, 5, return_indices="no")
    with pytest.raises(TypeError, match="normalize must be a bool"):
        RegionContrastLoss(normalize=None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_maps_of_two_dtypes_keep_their_ignored_ids(backend):
    # an int64 id that an int32 view would wrap into range (-2**32 -> 0, 2**32 + 1 -> 1) stays
    # ignored; both orders of the dtypes
    batch, channels, height, width, k = 2, 4, 8, 10, 4
    regions = (torch.arange(height * width).reshape(1, height, width).expand(batch, -1, -1) // 20).contiguous()
    wide = regions.clone()
    wide[:, :2] = -2 ** 32
    wide[:, 2, :3] = 2 ** 32 + 1
    clean = torch.where((wide >= 0) & (wide < k), wide, -1)  # the same map, ids already in int32 range
    feat_q, feat_p = features((batch, channels, height, width), seed=12), features((batch, channels, height, width), seed=13)
    for regions_q, regions_p in ((regions.int(), wide), (wide, regions.int())):
        expected_p = clean if regions_p is wide else regions_p
        expected_q = clean if regions_q is wide else regions_q
        kwargs = dict(num_regions=k, generator=14, reduction="none", backend=backend)
        got = region_contrast_loss(feat_q, feat_p, regions_q, regions_p, **kwargs)
        expected = region_contrast_loss(feat_q, feat_p, expected_q.long(), expected_p.long(), **kwargs)
        assert torch.equal(got, expected)


@interpreter
def test_second_order_gradients_need_the_reference():
    # as documented: the Triton backward is first order, its gradient carries no graph
    feat_q = features((1, 4, 8, 10), seed=15).requires_grad_()
    feat_p = features((1, 4, 8, 10), seed=16).requires_grad_()
    regions = (torch.arange(80).reshape(1, 8, 10) // 20).contiguous()
    grads = {}
    for backend in ("reference", "triton"):
        loss = region_contrast_loss(feat_q, feat_p, regions, num_regions=4, generator=17, backend=backend)
        grads[backend], = torch.autograd.grad(loss, feat_q, create_graph=True)
    second, = torch.autograd.grad(grads["reference"].square().sum(), feat_p)
    assert float(second.abs().sum()) > 0
    assert not grads["triton"].requires_grad
    assert_close(grads["triton"], grads["reference"].detach(), rtol=1e-5)


def test_triton_backend_needs_interpreter_or_cuda(monkeypatch):
    feat, _, regions = _inputs()
    monkeypatch.setattr(loss_mod, "triton_usable", lambda tensor: False)
    with pytest.raises(ValueError, match="backend='triton' needs triton and a CUDA tensor"):
        region_contrast_loss(feat, feat, regions, backend="triton")
    assert loss_mod._resolve_backend(None, feat) == "reference"


# ----------------------------------------------------------------------------------------------
# GPU: the fused path on CUDA against the reference at realistic sizes
# ----------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype, loss_rtol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-3)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("num_regions", [64, 1024])
def test_gpu_matches_reference(dtype, loss_rtol, channels_last, num_regions):
    batch, channels, size = 4, 64, 256
    side = int(round(num_regions ** 0.5))
    grid = (torch.arange(size) * side // size)
    regions_q = (grid[:, None] * side + grid[None, :]).expand(batch, -1, -1).cuda()
    regions_q = regions_q.clone()
    regions_q[:, :3] = -1
    regions_p = regions_q.roll(shifts=(2, -3), dims=(1, 2))
    feat_q = features((batch, channels, size, size), dtype, channels_last, seed=60)
    feat_p = features((batch, channels, size, size), dtype, channels_last, seed=61)
    feat_q = feat_q.detach().cuda().requires_grad_(True)
    feat_p = feat_p.detach().cuda().requires_grad_(True)
    kwargs = dict(num_regions=num_regions, generator=7)
    loss_ref, grads_ref = loss_and_grads(feat_q, feat_p, regions_q, regions_p, backend="reference", **kwargs)
    loss, grads = loss_and_grads(feat_q, feat_p, regions_q, regions_p, backend="triton", **kwargs)
    assert_close(loss, loss_ref, rtol=loss_rtol)
    # gradient: a mean-gradient error of ~loss_rtol relative, plus the dtype's rounding
    for grad, grad_ref in zip(grads, grads_ref):
        assert_close(grad.float(), grad_ref.float(), rtol=loss_rtol * 10 + GRAD_RTOL[dtype], atol_scale=1e-3)


def assert_gpu_fused_matches_reference(feat_q, feat_p, regions, num_regions, generator):
    """float32 loss and gradients of the fused path against the reference, on CUDA (tf32x3 logits)."""
    kwargs = dict(num_regions=num_regions, generator=generator)
    loss_ref, grads_ref = loss_and_grads(feat_q, feat_p, regions, backend="reference", **kwargs)
    loss, grads = loss_and_grads(feat_q, feat_p, regions, backend="triton", **kwargs)
    assert_close(loss, loss_ref, rtol=1e-4)
    for grad, grad_ref in zip(grads, grads_ref):
        assert_close(grad, grad_ref, rtol=1e-3 + GRAD_RTOL[torch.float32], atol_scale=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("height, width", [(20, 30), (32, 32), (1, 1)])
def test_gpu_image_in_one_index_tile(height, width):
    """Images of up to 1,024 pixels fit one tile of the region index. On a GPU Triton turns an
    integer argument of 1 (the number of tiles) into a compile-time constant, which the pooling
    kernel failed to compile with until the tiles' count was cast with tl.cast."""
    regions = blob_regions(2, height, width, 5, seed=64, ignore_top_row=height > 1).cuda()
    feat_q, feat_p = (features((2, 8, height, width), seed=s).detach().cuda().requires_grad_(True)
                      for s in (65, 66))
    if height * width > 1:
        assert_gpu_fused_matches_reference(feat_q, feat_p, regions, 5, 7)
        return
    # One pixel: one region an image and no negative, so the loss and its gradient are 0 in
    # theory, and the reference's gradient is exactly 0. tf32x3 logits drop the low x low
    # product (2**-22 of a term), so the fused gradient is that rounding: |g| |p| 2**-22 / tau
    # / |m| < 1e-6 here (the H200 printed values up to 2.2e-7). With include_self=True, one
    # negative, the reference's gradient reaches 1.3 on these inputs.
    loss, grads = loss_and_grads(feat_q, feat_p, regions, num_regions=5, generator=7, backend="triton")
    assert abs(float(loss)) < 1e-5
    assert max(float(g.abs().max()) for g in grads) < 1e-5


@pytest.mark.gpu
def test_gpu_features_of_any_strides():
    regions = blob_regions(2, 37, 91, 9, seed=40).cuda()
    assert_gpu_fused_matches_reference(*_cropped_features(41, "cuda"), regions, 9, 3)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])  # dense, scatter backward
def test_gpu_fused_step_captures_in_a_cuda_graph(capture_cuda_graph, layout):
    """No host sync in a fused forward + backward step: it captures in a CUDA graph (a sync during
    capture raises). With features constant in each region the sampled means are the region
    means whatever the samples, so a replay (new draws from the default generator) gives the
    eager step's loss and, summed over each region's pixels, its gradients, while the gradient
    pixels differ from replay to replay."""
    batch, channels, size, k = 2, 16, 64, 16
    regions = blocky_regions(batch, size, size, k, seed=66).cuda()  # (B, H, W)
    regions_p = warped(regions, seed=67).cuda()
    values = torch.randn(2, batch, k, channels, generator=torch.Generator().manual_seed(68)).cuda()

    def constant_per_region(table, ids):  # (B, K, D), (B, H, W) -> (B, D, H, W)
        flat = torch.gather(table, 1, ids.clamp(min=0).flatten(1)[..., None].expand(-1, -1, channels))
        feat = flat.transpose(1, 2).reshape(batch, channels, size, size)
        return feat.contiguous(memory_format=layout).requires_grad_(True)

    feat_q, feat_p = constant_per_region(values[0], regions), constant_per_region(values[1], regions_p)

    def step():
        loss = region_contrast_loss(feat_q, feat_p, regions, regions_p, num_regions=k, backend="triton")
        return (loss, *torch.autograd.grad(loss, [feat_q, feat_p]))

    def region_sums(grad, ids):  # (B, D, H, W) -> (B, K, D), ignored pixels left out
        onehot = torch.nn.functional.one_hot(ids.clamp(min=0), k).double() * (ids >= 0)[..., None]
        return torch.einsum("bdhw,bhwk->bkd", grad.double(), onehot)

    # detached: an autograd graph kept alive from the default stream keeps the leaves'
    # AccumulateGrad nodes there, and the captured backward would then wait on the default stream
    # (an error during capture; seen on an H200)
    eager = [out.detach() for out in step()]
    graph, captured = capture_cuda_graph(step)
    replays = []
    for _ in range(2):
        for out in captured:  # whatever the replay does not write stays NaN
            out.fill_(math.nan)
        graph.replay()
        replays.append([out.clone() for out in captured])
    for loss, *grads in replays:
        assert_close(loss, eager[0], rtol=1e-5)
        for grad, grad_eager, ids in zip(grads, eager[1:], (regions, regions_p)):
            sums, sums_eager = region_sums(grad, ids), region_sums(grad_eager, ids)
            assert_close(sums, sums_eager, rtol=1e-5, atol_scale=1e-6)
            assert sums_eager.abs().max() > 0
    assert not torch.equal(replays[0][1], replays[1][1])  # each replay draws new sample pixels


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, channels_last, channels, n, block_n, views", SCATTER_CASES + [
    (torch.bfloat16, True, 64, 50, None, [0, 1]), (torch.float32, True, 64, 50, None, [0, 1])])
def test_gpu_scatter_backward_equals_dense(dtype, channels_last, channels, n, block_n, views):
    # the benchmark's D and N, with regions of about 100 pixels (so many pixels repeat in a row)
    assert_scatter_backward_equals_dense(dtype, channels_last, channels, n, block_n, views,
                                         size=(2, 100, 164), k=160, device="cuda")


@pytest.mark.gpu
def test_gpu_region_index_and_samples_match_reference():
    regions = blocky_regions(3, 300, 333, 700, seed=62, block=5).cuda()
    index = pool_kernels.region_index(regions, 700)  # the default on CUDA
    network = pool_kernels.region_index(regions, 700, method="network")  # the interpreter's sort
    for name in ("pixels", "cum", "counts"):
        assert torch.equal(getattr(index, name), getattr(network, name)), name
    # local[v, b, t, k] is defined only where tile t holds id k (the rest is never written)
    held = torch.diff(index.cum, dim=2, prepend=torch.zeros_like(index.cum[:, :, :1])) > 0
    assert held.any() and torch.equal(index.local[held], network.local[held])
    ref_pixels, _, ref_counts = ref.region_index(regions, 700)
    assert torch.equal(index.counts[0], ref_counts)
    grouped = grouped_pixels(index)
    for b in range(3):
        kept = int(ref_counts[b].sum())
        assert torch.equal(grouped[b, :kept], ref_pixels[b, :kept])
    feat = features((3, 32, 300, 333), torch.bfloat16, True, seed=63).detach().cuda()
    out = region_sample_mean(feat, regions, 50, num_regions=700, generator=1, return_indices=True,
                             backend="triton")
    ref_out = region_sample_mean(feat, regions, 50, num_regions=700, generator=1, return_indices=True,
                                 backend="reference")
    assert torch.equal(out[2], ref_out[2])
    assert_close(out[0], ref_out[0], rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("bits", pool_kernels.SEARCH_BITS_CHOICES)
def test_gpu_search_widths_find_the_reference_samples(bits):
    """Each width of the sampler's tile search on CUDA, at 391 tiles of 256 pixels (9 levels by
    halves, 3 of 8 or 16 probes), draws the reference's pixels; the means are the default's."""
    regions = blocky_regions(2, 300, 333, 500, seed=64, block=5).cuda()
    pixels, offsets, counts = ref.region_index(regions, 500)
    valid = counts > 0
    uniforms = torch.rand((1, 2, 500, 50), generator=torch.Generator().manual_seed(65)).cuda()
    idx_ref = ref.sample_pixels(pixels, offsets, counts, valid, uniforms[0])
    index = pool_kernels.region_index(regions, 500, tile=256)
    feat = features((2, 64, 300, 333), torch.float32, True, seed=66).detach().cuda()
    args = (feat, None, index.pixels, index.cum, index.local, None, valid, uniforms, False, index.tile)
    means, idx, _ = pool_kernels._pool_forward(*args, bits)
    assert torch.equal(idx[0], idx_ref)
    assert torch.equal(means, pool_kernels._pool_forward(*args)[0])


@interpreter
def test_infonce_unit_rows_match_f_normalize():
    """The one normalising launch before the InfoNCE kernels, against F.normalize: odd D, a zero
    row (stays 0) and more rows than one program's block."""
    means = torch.randn(2, 3, 90, 37, generator=torch.Generator().manual_seed(8))  # (2, B, M, D)
    means[1, 2, 5] = 0.0
    unit = infonce_kernels._unit_rows(means)
    torch.testing.assert_close(unit, torch.nn.functional.normalize(means, dim=-1), rtol=1e-6, atol=1e-7)
    assert torch.all(unit[1, 2, 5] == 0)
    assert infonce_kernels._unit_rows(means[:, :, :0]).shape == (2, 3, 0, 37)


def test_infonce_default_launch_rule():
    """Rows per program halve from 64 until the grid has 128 programs (B * ceil(M / rows)), as
    timed on an H200 at B=16, D=64: 16 rows at K=64, 32 at K=256, 64 at K=1024; 32 columns
    beside 64 rows, else 16 (the widest tiles whose backward spilled at most 32 bytes on sm_90)."""
    launch = infonce_kernels._launch
    assert launch(16, 64, 64, None) == (16, 16, 64, 2, 2)
    assert launch(16, 256, 64, None) == (32, 16, 64, 4, 3)
    assert launch(16, 1024, 64, None) == (64, 32, 64, 4, 3)
    assert launch(2, 70, 24, None) == (16, 16, 32, 2, 2)  # never below 16 rows
    assert launch(256, 40, 64, None) == (64, 32, 64, 4, 3)  # rows a power of two >= M, capped at 64
    assert launch(16, 1024, 128, None) == (32, 16, 128, 8, 3)  # wider rows: capped at 32, the earlier rule
    assert launch(16, 1024, 64, (16, 64, 4, 2)) == (16, 64, 64, 4, 2)
    assert infonce_kernels.BLOCK_CHOICES[:3] == tuple(launch(16, k, 64, None)[:2] + launch(16, k, 64, None)[3:]
                                                      for k in (1024, 256, 64))


# tf32x3 keeps ~22 bits per product: rows (~10) to ~1e-5, gradients (sums of 2M terms) to ~1e-4
# of the largest. tf32 rounds each operand to 10 bits: on an H200 every launch shape's rows were
# 4e-4 to 3.8e-3 from float64 and its gradients 3e-3 to 1.8e-2 of the largest (K=64 to 1024,
# benchmarks/RESULTS.md), so 1e-2 and 2.5e-2; a missing or doubled term is off by far more.
@pytest.mark.gpu
@pytest.mark.parametrize("precision, rows_atol, grad_atol", [("tf32x3", 2e-5, 1e-4), ("tf32", 1e-2, 2.5e-2)])
@pytest.mark.parametrize("blocks", infonce_kernels.BLOCK_CHOICES)
def test_gpu_infonce_launch_shapes_match_reference(blocks, precision, rows_atol, grad_atol):
    """Every launch shape the sweep may pick, in both logit precisions, against float64 on CUDA."""
    g = torch.Generator(device="cuda").manual_seed(64)
    means = torch.randn(2, 4, 300, 64, generator=g, device="cuda").requires_grad_(True)  # (2, B, M, D)
    valid = torch.rand(4, 300, generator=g, device="cuda") > 0.1
    upstream = torch.rand(4, 300, generator=g, device="cuda")
    rows = infonce_kernels.region_infonce(means, valid, 0.1, precision=precision, blocks=blocks)
    exact = means.detach().double().requires_grad_(True)
    rows_ref = ref.region_infonce(exact[0], exact[1], valid, 0.1, True, False)
    torch.testing.assert_close(rows, rows_ref.float().detach(), rtol=1e-5, atol=rows_atol)
    (grad,) = torch.autograd.grad(rows, means, upstream)
    (grad_ref,) = torch.autograd.grad(rows_ref, exact, upstream.double())
    assert_close(grad, grad_ref.float(), rtol=1e-4, atol_scale=grad_atol)
