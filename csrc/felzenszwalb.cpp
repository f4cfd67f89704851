// lrc_fast._C: dispatch and Python bindings of the Felzenszwalb op, and the module (which also
// takes the region index's bindings, csrc/region_index.cpp). Inputs are checked by
// the Python wrapper (lrc_fast/superpixels.py); the checks here only guard the pointers.
#include <torch/extension.h>

#include <string>

#include "cpu/felzenszwalb_cpu.h"
#include "felzenszwalb_common.h"
#include "cpu/felzenszwalb_simt.h"
#include "region_index.h"
#include "simt/simt.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/felzenszwalb_cuda.h"
#endif

namespace lrc {
namespace {

// The launch shape of the CUDA kernel (also on the simulator).
void check_shape(const char* op, int64_t cluster, int64_t threads) {
  TORCH_CHECK(cluster >= 1 && cluster <= 8 && (threads == 256 || threads == 512 || threads == 1024), op,
              ": need 1 <= cluster <= 8 and threads in {256, 512, 1024}, got cluster=", cluster, ", threads=", threads);
}

// The launch shape and cost window of the CUDA kernel (also on the simulator).
void check_launch(const char* op, int64_t cluster, int64_t threads, int64_t window) {
  check_shape(op, cluster, threads);
  check_window(op, window);
}

// felzenszwalb_cuda, and with time_phases also the GPU time of each kernel phase per slice.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> run_cuda(
    const torch::Tensor& image, const torch::Tensor& weights, double k, int64_t min_size, int64_t cluster,
    int64_t threads, int64_t window, bool extend, bool slots, bool time_phases, const char* op) {
#ifdef WITH_CUDA
  TORCH_CHECK(image.is_cuda() && image.dim() == 3 && image.scalar_type() == torch::kFloat64 && image.is_contiguous(),
              op, ": image must be a contiguous (B, H, W) float64 CUDA tensor");
  TORCH_CHECK(weights.device() == image.device() && weights.dim() == 1 && weights.scalar_type() == torch::kFloat64 &&
                  (weights.numel() == 0 || weights.numel() % 2 == 1),
              op, ": weights must be an odd-length float64 tensor on the image's device, or empty");
  check_launch(op, cluster, threads, window);
  // Launch inside a scope and raise after it, with the guard and the tensors released. (This
  // ordering was added for a crash on an H200, most likely the one later traced on an H100 to
  // the module's private static libstdc++, fixed in setup.py; it stays until a GPU run checks
  // the plain form.)
  std::string error;
  {
    const c10::cuda::CUDAGuard guard(image.device());
    const int64_t B = image.size(0), H = image.size(1), W = image.size(2);
    auto labels = torch::empty({B, H, W}, image.options().dtype(torch::kInt64));
    auto counts = torch::empty({B}, image.options().dtype(torch::kInt64));
    auto stats = torch::empty({B, 5}, image.options().dtype(torch::kInt64));
    auto phase_ns = torch::zeros({time_phases ? B : 0, fh_cuda_phase_count()}, image.options().dtype(torch::kInt64));
    if (B == 0) return {labels, counts, stats, phase_ns};
    const auto bytes =
        fh_cuda_workspace_bytes(static_cast<int32_t>(B), static_cast<int32_t>(H), static_cast<int32_t>(W));
    auto workspace = torch::empty({static_cast<int64_t>(bytes)}, image.options().dtype(torch::kUInt8));
    FhCudaArgs a;
    a.image = image.data_ptr<double>();
    a.B = static_cast<int32_t>(B);
    a.H = static_cast<int32_t>(H);
    a.W = static_cast<int32_t>(W);
    a.weights = weights.numel() ? weights.data_ptr<double>() : nullptr;
    a.radius = weights.numel() ? static_cast<int32_t>(weights.numel() / 2) : -1;
    a.k = k;
    a.min_size = fh::clamp_min_size(min_size, H * W);
    a.cluster = static_cast<int32_t>(cluster);
    a.threads = static_cast<int32_t>(threads);
    a.window = static_cast<int32_t>(window);
    a.extend = extend;
    a.slots = slots;
    a.labels = labels.data_ptr<int64_t>();
    a.counts = counts.data_ptr<int64_t>();
    a.stats = stats.data_ptr<int64_t>();
    a.workspace = workspace.data_ptr();
    a.phase_ns = time_phases ? phase_ns.data_ptr<int64_t>() : nullptr;
    const cudaError_t err = fh_cuda(a, c10::cuda::getCurrentCUDAStream());
    if (err == cudaSuccess) return {labels, counts, stats, phase_ns};
    error = std::string(op) + ": kernel launch failed: " + cudaGetErrorString(err) +
            " (cluster=" + std::to_string(cluster) + ", threads=" + std::to_string(threads) + ")";
  }
  TORCH_CHECK(false, error);
#else
  TORCH_CHECK(false, "lrc_fast._C was built without CUDA; rebuild with a CUDA torch and toolkit (or FORCE_CUDA=1)");
#endif
}

}  // namespace

// Same contract as felzenszwalb_cpu, on CUDA tensors: image (B, H, W) float64 and weights on
// the image's device. cluster: CTAs per slice (thread-block cluster on sm_90); threads: per CTA;
// window: minimum edges per cost window of the schedule; extend: run the hub extension; slots:
// run the main pass on the slot engine.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> felzenszwalb_cuda(
    const torch::Tensor& image, const torch::Tensor& weights, double k, int64_t min_size, int64_t cluster,
    int64_t threads, int64_t window, bool extend, bool slots) {
  auto out =
      run_cuda(image, weights, k, min_size, cluster, threads, window, extend, slots, false, "felzenszwalb_cuda");
  return {std::get<0>(out), std::get<1>(out), std::get<2>(out)};
}

// felzenszwalb_cuda plus phase_ns (B, P) int64: the GPU nanoseconds each slice spent in each of
// the kernel's phases (those of felzenszwalb_simt_phases(), barrier waits included), measured
// by the team's first thread with the global timer. For benchmarks.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> felzenszwalb_cuda_timed(
    const torch::Tensor& image, const torch::Tensor& weights, double k, int64_t min_size, int64_t cluster,
    int64_t threads, int64_t window, bool extend, bool slots) {
  return run_cuda(image, weights, k, min_size, cluster, threads, window, extend, slots, true,
                  "felzenszwalb_cuda_timed");
}

// The most slices (teams of `cluster` CTAs of `threads` threads) the current CUDA device runs at
// once: a larger batch runs in more than one wave. For the benchmarks' choice of launch.
int64_t felzenszwalb_cuda_max_active_teams(int64_t cluster, int64_t threads) {
  check_shape("felzenszwalb_cuda_max_active_teams", cluster, threads);
#ifdef WITH_CUDA
  int32_t count = 0;
  const cudaError_t err =
      fh_cuda_max_active_teams(static_cast<int32_t>(cluster), static_cast<int32_t>(threads), &count);
  TORCH_CHECK(err == cudaSuccess, "felzenszwalb_cuda_max_active_teams: ", cudaGetErrorString(err),
              " (cluster=", cluster, ", threads=", threads, ")");
  return count;
#else
  TORCH_CHECK(false, "lrc_fast._C was built without CUDA; rebuild with a CUDA torch and toolkit (or FORCE_CUDA=1)");
#endif
}

// The CUDA kernel's own code run on the CPU by the SIMT simulator (csrc/simt): same contract
// as felzenszwalb_cuda on CPU tensors, plus the simulator's seed (0: threads in order). Also
// returns profile (B, 5 + 2 P) int64: the kernel's critical-path operations, cluster barriers, CTA
// barriers, all operations and the strict critical path on each slice (simt::Profile), then the
// critical path and then the strict path split by the kernel's P phases (named by
// felzenszwalb_simt_phases()).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> felzenszwalb_simt(
    const torch::Tensor& image, const torch::Tensor& weights, double k, int64_t min_size, int64_t cluster,
    int64_t threads, int64_t window, bool extend, int64_t seed, bool slots) {
  TORCH_CHECK(image.device().is_cpu() && image.dim() == 3 && image.scalar_type() == torch::kFloat64 &&
                  image.is_contiguous(),
              "felzenszwalb_simt: image must be a contiguous (B, H, W) float64 CPU tensor");
  TORCH_CHECK(weights.device().is_cpu() && weights.dim() == 1 && weights.scalar_type() == torch::kFloat64 &&
                  weights.is_contiguous() && (weights.numel() == 0 || weights.numel() % 2 == 1),
              "felzenszwalb_simt: weights must be an odd-length contiguous float64 CPU tensor, or empty");
  check_launch("felzenszwalb_simt", cluster, threads, window);
  const int64_t B = image.size(0), H = image.size(1), W = image.size(2);
  auto labels = torch::empty({B, H, W}, image.options().dtype(torch::kInt64));
  auto counts = torch::empty({B}, image.options().dtype(torch::kInt64));
  auto stats = torch::empty({B, 5}, image.options().dtype(torch::kInt64));
  const int64_t columns = kFhSimtProfileColumns + 2 * static_cast<int64_t>(fh_simt_phases().size());
  auto profile = torch::zeros({B, columns}, image.options().dtype(torch::kInt64));
  if (B == 0 || H * W == 0) return {labels, counts, stats, profile};
  const auto bytes = fh_simt_workspace_bytes(static_cast<int32_t>(B), static_cast<int32_t>(H), static_cast<int32_t>(W));
  auto workspace = torch::empty({static_cast<int64_t>(bytes)}, image.options().dtype(torch::kUInt8));
  const std::string error = fh_simt(
      image.data_ptr<double>(), static_cast<int32_t>(B), static_cast<int32_t>(H), static_cast<int32_t>(W),
      weights.numel() ? weights.data_ptr<double>() : nullptr,
      weights.numel() ? static_cast<int32_t>(weights.numel() / 2) : -1, k,
      fh::clamp_min_size(min_size, H * W), static_cast<int32_t>(cluster),
      static_cast<int32_t>(threads), static_cast<int32_t>(window), extend, slots, labels.data_ptr<int64_t>(),
      counts.data_ptr<int64_t>(), stats.data_ptr<int64_t>(), workspace.data_ptr(), static_cast<uint64_t>(seed),
      profile.data_ptr<int64_t>());
  TORCH_CHECK(error.empty(), "felzenszwalb_simt: ", error);
  return {labels, counts, stats, profile};
}

bool with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace lrc

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lrc_fast compiled extension";
  m.def("felzenszwalb_cpu", &lrc::felzenszwalb_cpu, "Felzenszwalb on CPU (exact, or the GPU schedule emulated)",
        py::arg("image"), py::arg("weights"), py::arg("k"), py::arg("min_size"), py::arg("schedule"),
        py::arg("window"), py::arg("extend"), py::arg("slots") = false);
  m.def("felzenszwalb_cuda", &lrc::felzenszwalb_cuda, "Felzenszwalb on CUDA", py::arg("image"), py::arg("weights"),
        py::arg("k"), py::arg("min_size"), py::arg("cluster"), py::arg("threads"), py::arg("window"),
        py::arg("extend"), py::arg("slots") = false);
  m.def("felzenszwalb_cuda_timed", &lrc::felzenszwalb_cuda_timed,
        "felzenszwalb_cuda plus the GPU nanoseconds of each kernel phase per slice", py::arg("image"),
        py::arg("weights"), py::arg("k"), py::arg("min_size"), py::arg("cluster"), py::arg("threads"),
        py::arg("window"), py::arg("extend"), py::arg("slots") = false);
  m.def("felzenszwalb_cuda_max_active_teams", &lrc::felzenszwalb_cuda_max_active_teams,
        "How many slices of this launch shape the current CUDA device runs at once", py::arg("cluster"),
        py::arg("threads"));
  m.def("felzenszwalb_simt", &lrc::felzenszwalb_simt, "The CUDA Felzenszwalb kernel run by the CPU SIMT simulator",
        py::arg("image"), py::arg("weights"), py::arg("k"), py::arg("min_size"), py::arg("cluster"),
        py::arg("threads"), py::arg("window"), py::arg("extend"), py::arg("seed"), py::arg("slots") = false);
  m.def("felzenszwalb_simt_phases", &lrc::fh_simt_phases,
        "Names of the Felzenszwalb kernel's phases, in the order of felzenszwalb_simt's profile columns 5..");
  m.def("simt_available", &lrc::simt_available, "Whether the SIMT simulator runs on this platform");
  m.def("simt_selftest", &simt::selftest, "Run one of the SIMT simulator's self-test kernels; '' when it passed",
        py::arg("name"));
  m.def("with_cuda", &lrc::with_cuda, "Whether the CUDA part was built");
  lrc::bind_region_index(m);
}
