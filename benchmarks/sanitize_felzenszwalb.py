"""A small CUDA Felzenszwalb run for compute-sanitizer: every launch shape, small and default cost
windows, the hub extension on and off, the slot engine (its table in dynamic shared memory), and
the kernel with its phase clock; labels against the CPU backend and the schedule's stats against
its CPU emulation.

    compute-sanitizer --tool memcheck python benchmarks/sanitize_felzenszwalb.py
    compute-sanitizer --tool racecheck python benchmarks/sanitize_felzenszwalb.py --quick

--quick: one launch shape, (2, 512) (a cluster, and shared memory shared by 16 warps), with a
small cost window and the hub extension on, which is where the kernel's shared-memory sort
runs, and the slot engine; racecheck takes about 12 s per run of the full list on an H100.
"""
import sys

import numpy as np
import torch

import lrc_fast
from lrc_fast.data import phantom_slice, window_hu
from lrc_fast.superpixels import _WINDOW, _segment


def main(quick: bool) -> int:
    rng = np.random.default_rng(0)
    plateau = rng.random((2, 45, 61))
    plateau[:, :, :10] = 0.0  # a plateau: the zero-cost pre-pass
    phantom = window_hu(phantom_slice(64, 80, seed=1)).astype(np.float64)[None]  # a hub chain
    ok = True
    for name, host in [("random + plateau", plateau), ("windowed phantom", phantom)]:
        x = torch.from_numpy(host)
        expected = lrc_fast.felzenszwalb(host)
        for launch in [(2, 512)] if quick else [(1, 256), (2, 512), (8, 1024)]:
            runs = [(64, True, False)] if quick else [(_WINDOW, True, False), (64, True, False), (64, False, False)]
            for window, extend, slots in runs + [(_WINDOW, True, True)]:
                labels, _, stats = _segment(x.cuda(), 1.0, 0.8, 20, "cuda", launch, window, extend, slots=slots)
                torch.cuda.synchronize()
                _, _, emulated = _segment(x, 1.0, 0.8, 20, "emulate", window=window, extend=extend, slots=slots)
                same = np.array_equal(labels.cpu().numpy(), expected) and torch.equal(stats.cpu(), emulated)
                ok &= same
                engine = "slot engine" if slots else f"window={window}, hub={'on' if extend else 'off'}"
                print(f"{name}, launch={launch}, {engine}: "
                      f"{'equal' if same else 'DIFFERENT'} (hub steps {stats[:, 4].tolist()})")
        # the phase clock's path too (bench_felzenszwalb.py --phases)
        ext = lrc_fast._ext.require_extension()
        xc = x.cuda()
        labels = ext.felzenszwalb_cuda_timed(xc, lrc_fast.superpixels._taps_on(0.8, xc.device), 1 / 255, 20, 2, 512,
                                             _WINDOW, True)[0]
        torch.cuda.synchronize()
        same = np.array_equal(labels.cpu().numpy(), expected)
        ok &= same
        print(f"{name}, timed kernel: {'equal' if same else 'DIFFERENT'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main("--quick" in sys.argv[1:]))
