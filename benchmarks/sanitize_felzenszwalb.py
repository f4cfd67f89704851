"""A small CUDA Felzenszwalb run for compute-sanitizer (memcheck): every launch shape once.

    compute-sanitizer --tool memcheck python benchmarks/sanitize_felzenszwalb.py
"""
import sys

import numpy as np
import torch

import lrc_fast


def main() -> int:
    rng = np.random.default_rng(0)
    host = rng.random((2, 45, 61))
    host[:, :, :10] = 0.0  # a plateau: the zero-cost pre-pass
    expected = lrc_fast.felzenszwalb(host)
    x = torch.from_numpy(host).cuda()
    ok = True
    for launch in [(1, 256), (2, 512), (8, 1024)]:
        got = lrc_fast.felzenszwalb(x, launch=launch).cpu().numpy()
        torch.cuda.synchronize()
        ok &= np.array_equal(got, expected)
        print(f"launch={launch}: {'equal' if np.array_equal(got, expected) else 'DIFFERENT'} to the cpu backend")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
