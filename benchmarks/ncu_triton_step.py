"""One fused loss step and one elastic pair at the benchmark shapes, for Nsight Compute.

The benchmarks time these kernels; this script only launches each once so that a profiler can say
where their time goes (gpu_check runs it under ``ncu``, filtered to the Triton kernels):

* ``region_contrast_loss`` forward + backward, B=16, D=64, 512², K=1024, N=50, float32 (the
  setting where the InfoNCE and the sampled gather cost the most);
* ``elastic_pair`` at B=16, 512², the default alpha and sigma: the row pass, the column pass and
  the warp, one launch each; then the coarse pair (spacing 8): the kernel from the noise to the
  node rows (the control grid's smoothing and the rows' interpolation) and the fused coarse warp.

Run: ``python benchmarks/ncu_triton_step.py`` (CUDA only).
"""
from __future__ import annotations

import sys

import torch

import lrc_fast
from bench_loss import FULL, make_inputs


def main() -> int:
    if not torch.cuda.is_available():
        print("ncu_triton_step.py needs a CUDA device")
        return 1
    k = 1024
    feat_q, feat_p, regions_q, regions_p = make_inputs(FULL["batch"], FULL["channels"], FULL["size"], k,
                                                       torch.float32, "cuda")
    feat_q.requires_grad_(True)
    feat_p.requires_grad_(True)
    loss = lrc_fast.region_contrast_loss(feat_q, feat_p, regions_q, regions_p, num_regions=k,
                                         num_samples=FULL["num_samples"], generator=0, backend="triton")
    loss.backward()
    images = torch.rand(16, 1, FULL["size"], FULL["size"], device="cuda")
    regions = regions_q.new_zeros(16, FULL["size"], FULL["size"])
    for spacing in (None, 8):
        lrc_fast.elastic_pair(images, regions, generator=torch.Generator(device="cuda").manual_seed(0),
                              backend="triton", spacing=spacing)
    torch.cuda.synchronize()
    print(f"one loss step (fp32, K={k}) and one elastic pair (B=16), dense and coarse, "
          f"{torch.cuda.get_device_name()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
