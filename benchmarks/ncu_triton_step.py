"""One fused loss step and one elastic pair at the benchmark shapes, for Nsight Compute.

The benchmarks time these kernels; this script only launches each once so that a profiler can say
where their time goes (gpu_check runs it under ``ncu``, filtered to the Triton kernels):

* ``region_contrast_loss`` forward + backward, B=16, D=64, 512², K=1024, N=50, float32 (the
  setting where the InfoNCE and the sampled gather cost the most), then at K=64 in bfloat16 on
  channels_last features (the setting nearest the 1.5x floor goal: its backward is the zero fill
  and the scatter);
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
    for k, dtype, layout in ((1024, torch.float32, torch.contiguous_format),
                             (64, torch.bfloat16, torch.channels_last)):
        feat_q, feat_p, regions_q, regions_p = make_inputs(FULL["batch"], FULL["channels"], FULL["size"], k,
                                                           dtype, "cuda")
        feat_q, feat_p = (f.to(memory_format=layout).requires_grad_(True) for f in (feat_q, feat_p))
        loss = lrc_fast.region_contrast_loss(feat_q, feat_p, regions_q, regions_p, num_regions=k,
                                             num_samples=FULL["num_samples"], generator=0, backend="triton")
        loss.backward()
    images = torch.rand(16, 1, FULL["size"], FULL["size"], device="cuda")
    regions = regions_q.new_zeros(16, FULL["size"], FULL["size"])
    for spacing in (None, 8):
        lrc_fast.elastic_pair(images, regions, generator=torch.Generator(device="cuda").manual_seed(0),
                              backend="triton", spacing=spacing)
    torch.cuda.synchronize()
    print("two loss steps (fp32 K=1024 NCHW, bf16 K=64 channels_last) and one elastic pair (B=16), "
          f"dense and coarse, {torch.cuda.get_device_name()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
