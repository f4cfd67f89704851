// CUDA backend of lrc_fast.felzenszwalb: plain CUDA C++ on raw device pointers (no torch
// headers), so that nvcc can compile-check it anywhere.
#pragma once

#ifndef LRC_SIMT  // the SIMT simulator's cuda_shim.h supplies the runtime API
#include <cuda_runtime.h>
#endif

#include <cstddef>
#include <cstdint>

namespace lrc {

struct FhCudaArgs {
  const double* image;    // (B, H, W) float64, already converted like img_as_float64
  int32_t B, H, W;
  const double* weights;  // (2 * radius + 1,) Gaussian taps on the device; unused when radius < 0
  int32_t radius;         // -1: no smoothing (sigma ~ 0)
  double k;               // scale / 255
  int32_t min_size;
  int32_t cluster;        // CTAs per slice: 1, or 2..8 as a thread-block cluster (sm_90+)
  int32_t threads;        // threads per CTA: 256, 512 or 1024
  int32_t window;         // minimum edges per cost window of the schedule (>= 1)
  bool extend;            // run the hub extension after each main-pass round
  bool slots = false;     // run the main pass on the slot engine (one CTA, shared memory)
  int64_t* labels;        // out (B, H, W)
  int64_t* counts;        // out (B,)
  int64_t* stats;         // out (B, 5): rounds and edge offers of the main and min_size passes,
                          // edges decided by the hub extension
  void* workspace;        // fh_cuda_workspace_bytes(B, H, W) bytes, 256-byte aligned
  int64_t* phase_ns = nullptr;  // out (B, fh_cuda_phase_count()) or null: GPU nanoseconds spent
                                // in each phase of the kernel (the SIMT profile's phases)
};

// The number of phases phase_ns splits a slice's run into.
int fh_cuda_phase_count();

// Bytes of scratch memory fh_cuda needs (no zeroing required).
size_t fh_cuda_workspace_bytes(int32_t B, int32_t H, int32_t W);

// The most teams of `cluster` CTAs of `threads` threads (cluster and threads as in FhCudaArgs)
// that the current device runs at once, in *count: a batch of more slices than this runs in
// more than one wave. A cluster must fit inside one GPC, so on sm_90 this can be less than the
// SM count / cluster. cudaErrorInvalidValue for bad arguments, as fh_cuda.
cudaError_t fh_cuda_max_active_teams(int32_t cluster, int32_t threads, int32_t* count);

// Launches the whole segmentation (smoothing, both passes, labelling) as one kernel on
// `stream`. Returns the launch error, cudaErrorInvalidValue for bad arguments (for example
// cluster > 1 on a GPU older than sm_90). Asynchronous: kernel faults surface at the next sync.
cudaError_t fh_cuda(const FhCudaArgs& args, cudaStream_t stream);

}  // namespace lrc
