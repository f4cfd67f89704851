// CUDA region index of lrc_fast.region_contrast_loss (lrc_fast/kernels/region_pool.py): plain
// CUDA C++ on raw device pointers (no torch headers), so that nvcc can compile-check it anywhere
// and the SIMT simulator can run it (csrc/cpu/region_index_simt.cpp).
#pragma once

#ifndef LRC_SIMT  // the SIMT simulator's cuda_shim.h supplies the runtime API
#include <cuda_runtime.h>
#endif

#include "../region_index_common.h"

namespace lrc {

// Launches the tile sort on `stream`: one CTA of 256 threads per (v, b, t). Returns the launch
// error, or cudaErrorInvalidValue for arguments outside the ranges of RegionIndexArgs
// (region_index_common.h). Asynchronous: kernel faults surface at the next sync.
cudaError_t region_index_cuda(const RegionIndexArgs& args, cudaStream_t stream);

}  // namespace lrc
