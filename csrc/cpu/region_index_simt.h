// The CUDA region index (csrc/cuda/region_index_cuda.cu) run on the CPU by the SIMT simulator
// (csrc/simt): the kernel's own code, thread by thread, on host memory. For tests.
#pragma once

#include <cstdint>
#include <string>

#include "../region_index_common.h"

namespace lrc {

// Same arguments and outputs as region_index_cuda, on host pointers; `seed` as
// simt::LaunchConfig::seed. Returns "" or what went wrong (bad arguments, a deadlock, ...).
std::string region_index_simt(const RegionIndexArgs& args, uint64_t seed);

}  // namespace lrc
