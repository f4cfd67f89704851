// The CUDA Felzenszwalb kernel (csrc/cuda/felzenszwalb_cuda.cu) run on the CPU by the SIMT
// simulator (csrc/simt): the kernel's own code, thread by thread, on host memory. For tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace lrc {

// Same arguments and outputs as fh_cuda (felzenszwalb_cuda.h), on host pointers; `seed` as
// simt::LaunchConfig::seed. `profile` (B, 5 + 2 P) with P = fh_simt_phases().size(), when not
// null, gets simt::Profile of each slice: critical-path operations, cluster barriers, CTA
// barriers, all operations, the strict critical path, then the critical path split by the
// kernel's P phases, then the strict path split by them. Returns "" or the launch's error (bad
// arguments, a deadlock, ...).
constexpr int kFhSimtProfileColumns = 5;  // before the phases

// Names of the kernel's phases, in the order of their profile columns.
std::vector<std::string> fh_simt_phases();

std::string fh_simt(const double* image, int32_t B, int32_t H, int32_t W, const double* weights, int32_t radius,
                    double k, int32_t min_size, int32_t cluster, int32_t threads, int32_t window, bool extend,
                    bool slots, int64_t* labels, int64_t* counts, int64_t* stats, void* workspace, uint64_t seed,
                    int64_t* profile);

// Scratch bytes fh_simt needs (those of fh_cuda).
size_t fh_simt_workspace_bytes(int32_t B, int32_t H, int32_t W);

bool simt_available();

}  // namespace lrc
