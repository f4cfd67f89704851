"""A small run of the CUDA region index kernel for compute-sanitizer: every kernel size (tiles of
16 to 4,096 pixels), one to three radix passes, int32 and int64 maps, one and two maps, a
transposed map; its tables against the reference's (``lrc_fast.reference.region_loss.tile_index``).

    compute-sanitizer --tool memcheck python benchmarks/sanitize_region_index.py
    compute-sanitizer --tool racecheck python benchmarks/sanitize_region_index.py --quick

--quick: one map per kernel size (racecheck is slow). Exits 1 when a table differs.
"""
import sys

import torch

from lrc_fast.kernels import region_pool as pk
from lrc_fast.reference import region_loss as ref


def blocks(shape, num_regions, dtype, seed):
    """Ids in [-2, K + 2] (some ignored) in blocks of 7 x 5 pixels."""
    g = torch.Generator().manual_seed(seed)
    batch, height, width = shape
    coarse = torch.randint(-2, num_regions + 3, (batch, -(-height // 7), -(-width // 5)), generator=g)
    return coarse.repeat_interleave(7, 1).repeat_interleave(5, 2)[:, :height, :width].contiguous().to(dtype)


def main(quick: bool) -> int:
    ok = True
    cases = [((2, 9, 13), 9, 16), ((2, 37, 91), 300, 256), ((2, 30, 40), 100, 512), ((1, 64, 64), 300000, 1024),
             ((1, 50, 90), 1000, 2048), ((2, 50, 100), 511, 4096)]
    for shape, num_regions, tile in cases:
        for dtype in (torch.int32,) if quick else (torch.int32, torch.int64):
            regions = blocks(shape, num_regions, dtype, seed=tile).cuda()
            regions_p = None if quick else blocks(shape[:1] + shape[:0:-1], num_regions, dtype, seed=1).cuda().transpose(1, 2)
            got = pk._tile_sort(regions, regions_p, num_regions, tile, "cuda")
            torch.cuda.synchronize()
            expected = ref.tile_index(regions, num_regions, tile, regions_p)
            held = expected[1] > 0
            same = (torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
                    and torch.equal(got[2][held], expected[2][held]))
            ok &= same
            print(f"{shape} K={num_regions} tile={tile} {dtype} maps={got[0].shape[0]}: "
                  f"{'equal' if same else 'DIFFERENT'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main("--quick" in sys.argv[1:]))
