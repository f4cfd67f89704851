// csrc/cuda/felzenszwalb_cuda.cu compiled as host C++ against the SIMT simulator's CUDA shim.
// Its public names are renamed so that a CUDA build can link both.
#define LRC_SIMT 1
#include "../simt/cuda_shim.h"

#define fh_cuda fh_cuda_on_simt
#define fh_cuda_workspace_bytes fh_cuda_workspace_bytes_on_simt
#define fh_cuda_phase_count fh_cuda_phase_count_on_simt
#include "../cuda/felzenszwalb_cuda.cu"
#undef fh_cuda
#undef fh_cuda_workspace_bytes
#undef fh_cuda_phase_count

#include "felzenszwalb_simt.h"

#include <iterator>
#include <vector>

namespace lrc {

namespace {
const char* const kPhaseNames[] = {"pixels",      "sort",          "main offer",   "main reserve", "main commit",
                                   "hub gather",  "hub sort",      "hub extend",   "slot window",  "slot sort",
                                   "slot load",   "slot rounds",   "slot store",   "small offer",  "small reserve",
                                   "small commit", "labels"};
static_assert(sizeof(kPhaseNames) / sizeof(kPhaseNames[0]) == kPhases, "one name per phase");
static_assert(kPhases <= simt::kMaxPhases, "the simulator profiles at most kMaxPhases phases");
}  // namespace

std::vector<std::string> fh_simt_phases() { return {std::begin(kPhaseNames), std::end(kPhaseNames)}; }

std::string fh_simt(const double* image, int32_t B, int32_t H, int32_t W, const double* weights, int32_t radius,
                    double k, int32_t min_size, int32_t cluster, int32_t threads, int32_t window, bool extend,
                    bool slots, int64_t* labels, int64_t* counts, int64_t* stats, void* workspace, uint64_t seed,
                    int64_t* profile) {
  if (!simt::available()) return "the SIMT simulator runs on x86-64 Linux only";
  FhCudaArgs a;
  a.image = image;
  a.B = B;
  a.H = H;
  a.W = W;
  a.weights = weights;
  a.radius = radius;
  a.k = k;
  a.min_size = min_size;
  a.cluster = cluster;
  a.threads = threads;
  a.window = window;
  a.extend = extend;
  a.slots = slots;
  a.labels = labels;
  a.counts = counts;
  a.stats = stats;
  a.workspace = workspace;
  std::vector<simt::Profile> slices;
  simt::set_default_seed(seed);
  simt::set_profile_sink(&slices);
  simt::last_launch_error().clear();
  const cudaError_t err = fh_cuda_on_simt(a, nullptr);
  simt::set_default_seed(0);
  simt::set_profile_sink(nullptr);
  if (err == cudaSuccess) {
    for (size_t b = 0; profile != nullptr && b < slices.size(); ++b) {
      int64_t* row = profile + (kFhSimtProfileColumns + 2 * kPhases) * b;
      row[0] = static_cast<int64_t>(slices[b].critical_ops);
      row[1] = static_cast<int64_t>(slices[b].cluster_barriers);
      row[2] = static_cast<int64_t>(slices[b].block_barriers);
      row[3] = static_cast<int64_t>(slices[b].total_ops);
      row[4] = static_cast<int64_t>(slices[b].strict_ops);
      for (int i = 0; i < kPhases; ++i) {
        row[kFhSimtProfileColumns + i] = static_cast<int64_t>(slices[b].phase_ops[i]);
        row[kFhSimtProfileColumns + kPhases + i] = static_cast<int64_t>(slices[b].phase_strict[i]);
      }
    }
    return "";
  }
  if (err == cudaErrorInvalidValue) return "invalid launch arguments";
  return simt::last_launch_error();
}

size_t fh_simt_workspace_bytes(int32_t B, int32_t H, int32_t W) { return fh_cuda_workspace_bytes_on_simt(B, H, W); }

bool simt_available() { return simt::available(); }

}  // namespace lrc
