"""The loss's region index sorted by the CUDA kernel (``csrc/cuda/region_index_cuda.cu``).

Without a GPU the kernel runs on the SIMT simulator (``method='simt'``): its own warp collectives,
shared-memory counters and barriers execute, thread by thread, in thread order (seed 0) and in
random interleavings (other seeds). Its tables must equal the Triton tile sort's and the
reference's (:func:`lrc_fast.reference.region_loss.tile_index`), bit for bit, at every kernel
size (one to sixteen rows of 32 positions per thread), with one, two and three radix passes
(K below 512, below 262,144, above), int32 and int64 maps, any strides, one or two maps, ignored
ids and partial last tiles. On a GPU the compiled kernel must equal the reference and both Triton
sorts.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import lrc_fast
from lrc_fast._ext import triton_interpret
from lrc_fast.kernels import region_pool as pk
from lrc_fast.reference import region_loss as ref

# the simulator's tables are compared with the Triton sort's run on CPU tensors
interpreter = pytest.mark.skipif(not triton_interpret(), reason="CPU Triton tests need TRITON_INTERPRET=1")

def triton_tables(regions, regions_p, num_regions, tile):
    """(pixels, hist, local) of the Triton tile sort (the gather network on CPU tensors)."""
    method = "network" if not regions.is_cuda else "sort"
    return pk._tile_sort(regions, regions_p, num_regions, tile, method)


def assert_same_tables(got, expected):
    pixels, hist, local = got
    pixels_e, hist_e, local_e = expected
    assert torch.equal(pixels, pixels_e), "pixels"
    assert torch.equal(hist, hist_e), "hist"
    held = hist_e > 0  # local is written only where the tile holds the id
    assert torch.equal(local[held], local_e[held]), "local"


def random_maps(shape, num_regions, dtype, seed, blocks=False):
    """Ids in [-2, K + 2] (some ignored): uniform noise, or blocks of 7 x 5 pixels (long runs)."""
    g = torch.Generator().manual_seed(seed)
    if not blocks:
        return torch.randint(-2, num_regions + 3, shape, generator=g).to(dtype)
    batch, height, width = shape
    coarse = torch.randint(-2, num_regions + 3, (batch, -(-height // 7), -(-width // 5)), generator=g)
    return coarse.repeat_interleave(7, 1).repeat_interleave(5, 2)[:, :height, :width].contiguous().to(dtype)


@interpreter
@pytest.mark.parametrize("shape, num_regions, tile", [
    ((2, 9, 13), 9, 16),       # the 256-position kernel holds 16 pixels of a tile; a partial tile
    ((2, 37, 91), 300, 256),   # one 9-bit pass, one row per thread
    ((2, 37, 91), 512, 256),   # two passes of 5 bits: the ignore key 512 takes 10
    ((1, 37, 91), 70000, 1024),  # two passes of 9 bits; the tile sits in a 1,024-position kernel
    ((1, 37, 91), 300000, 1024),  # three passes of 7 bits
    ((2, 50, 100), 511, 4096),  # one pass at its limit (the ignore key 511); sixteen rows per thread
    ((3, 1, 1), 1, 16),        # a one-pixel image
    ((2, 3, 5), 0, 16),        # no region ids: every pixel ignored
    ((1, 64, 64), 64, 1024),   # whole tiles
    ((2, 30, 40), 100, 512),   # two rows per thread
    ((1, 50, 90), 1000, 2048),  # eight rows per thread, two passes
])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("blocks", [False, True])
def test_simt_matches_triton(simt_ext, shape, num_regions, tile, dtype, blocks):
    regions = random_maps(shape, num_regions, dtype, seed=num_regions + tile, blocks=blocks)
    got = pk._tile_sort(regions, None, num_regions, tile, "simt")
    assert_same_tables(got, triton_tables(regions, None, num_regions, tile))
    assert_same_tables(got, ref.tile_index(regions, num_regions, tile))


@interpreter
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_simt_two_strided_maps_random_interleavings(simt_ext, seed):
    """Two maps, the first transposed in memory (not h * W + w addressable), under interleavings
    that a missing barrier would let change the result."""
    regions = random_maps((2, 91, 37), 700, torch.int32, seed=seed, blocks=True).transpose(1, 2)
    regions_p = random_maps((2, 37, 91), 700, torch.int32, seed=seed + 10)
    expected = triton_tables(regions, regions_p, 700, 256)
    got = simt_ext.region_index_simt(regions, regions_p, 700, 256, seed)  # two passes
    assert_same_tables(got, expected)
    assert_same_tables(got, ref.tile_index(regions, 700, 256, regions_p))


@interpreter
def test_simt_index_feeds_the_pooling_like_the_triton_index(simt_ext):
    """The whole index (sort, then the prefix over the tiles) through region_index."""
    regions = random_maps((2, 37, 91), 40, torch.int64, seed=5, blocks=True)
    regions_p = random_maps((2, 37, 91), 40, torch.int64, seed=6, blocks=True)
    simt = pk.region_index(regions, 40, 256, regions_p=regions_p, method="simt")
    network = pk.region_index(regions, 40, 256, regions_p=regions_p, method="network")
    for name in ("pixels", "cum", "counts"):
        assert torch.equal(getattr(simt, name), getattr(network, name)), name


def test_region_index_rejects_bad_methods():
    regions = torch.zeros(1, 4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"method must be one of \('cuda', 'simt', 'sort', 'network'\), got 'radix'"):
        pk.region_index(regions, 3, method="radix")
    with pytest.raises(ValueError, match="method='cuda' needs CUDA region maps .* got maps on cpu"):
        pk.region_index(regions, 3, method="cuda")
    with pytest.raises(ValueError, match="method='simt' takes tiles of at most 4096 pixels, got 8192"):
        pk.region_index(regions, 3, tile=8192, method="simt")
    with pytest.raises(ValueError, match="method='cuda' sorts int32 or int64 region maps, got torch.int16"):
        pk.region_index(regions.short(), 3, method="cuda")


def test_default_method_and_compile():
    """The CUDA kernel is the default only where it applies; the query behind the choice is a
    constant to torch.compile (it cannot trace into the compiled extension)."""
    cuda = lrc_fast.backends()["cuda_extension"]
    regions = torch.zeros(1, 4, 4, dtype=torch.int64)
    assert pk._index_method(regions, 1024) == "network"  # CPU maps: the interpreter's sort
    for dtype, tile, expected in [(torch.int64, 1024, "cuda"), (torch.int32, 4096, "cuda"),
                                  (torch.int16, 1024, "sort"), (torch.int64, 8192, "sort")]:
        maps = SimpleNamespace(is_cuda=True, device=torch.device("cuda"), dtype=dtype)  # a CUDA map's
        assert pk._index_method(maps, tile) == (expected if cuda else "sort")
    compiled = torch.compile(lambda x: x + int(lrc_fast._ext.has_cuda_extension()), fullgraph=True,
                             backend="eager")
    assert int(compiled(torch.zeros(1))) == int(cuda)


@pytest.mark.gpu
def test_gpu_simt_method_needs_cpu_maps():
    with pytest.raises(ValueError, match="method='simt' .* needs CPU region maps, got maps on cuda"):
        pk.region_index(torch.zeros(1, 4, 4, dtype=torch.int64, device="cuda"), 3, method="simt")


@pytest.mark.gpu
@pytest.mark.parametrize("shape, num_regions, tile", [
    ((16, 512, 512), 64, 1024), ((16, 512, 512), 1024, 1024), ((3, 37, 91), 300000, 256),
    ((2, 300, 333), 700, 4096), ((4, 1, 1), 1, 16), ((2, 8, 8), 5, 16)])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_gpu_cuda_matches_both_triton_sorts(shape, num_regions, tile, dtype):
    if not lrc_fast.backends()["cuda_extension"]:
        pytest.skip("lrc_fast._C was built without CUDA")
    regions = random_maps(shape, num_regions, dtype, seed=7, blocks=True).cuda()
    regions_p = random_maps(shape, num_regions, dtype, seed=8).cuda()
    got = pk._tile_sort(regions, regions_p, num_regions, tile, "cuda")
    assert_same_tables(got, ref.tile_index(regions, num_regions, tile, regions_p))
    assert_same_tables(got, pk._tile_sort(regions, regions_p, num_regions, tile, "sort"))
    assert_same_tables(got, pk._tile_sort(regions, regions_p, num_regions, tile, "network"))
    assert pk._index_method(regions, tile) == "cuda"  # the default on CUDA with this extension
