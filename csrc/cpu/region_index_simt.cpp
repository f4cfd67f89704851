// csrc/cuda/region_index_cuda.cu compiled as host C++ against the SIMT simulator's CUDA shim.
// Its public name is renamed so that a CUDA build can link both.
#define LRC_SIMT 1
#include "../simt/cuda_shim.h"

#define region_index_cuda region_index_cuda_on_simt
#include "../cuda/region_index_cuda.cu"
#undef region_index_cuda

#include "region_index_simt.h"

namespace lrc {

std::string region_index_simt(const RegionIndexArgs& args, uint64_t seed) {
  if (!simt::available()) return "the SIMT simulator runs on x86-64 Linux only";
  simt::set_default_seed(seed);
  simt::last_launch_error().clear();
  const cudaError_t err = region_index_cuda_on_simt(args, nullptr);
  simt::set_default_seed(0);
  if (err == cudaSuccess) return "";
  if (err == cudaErrorInvalidValue) return "invalid arguments";
  return simt::last_launch_error();
}

}  // namespace lrc
