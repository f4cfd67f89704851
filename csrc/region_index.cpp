// lrc_fast._C: dispatch and bindings of the loss's region index (tile sort). Inputs are checked by
// the Python wrapper (lrc_fast/kernels/region_pool.py); the checks here only guard the pointers.
#include "region_index.h"

#include <limits>
#include <optional>
#include <string>
#include <tuple>

#include "cpu/region_index_simt.h"
#include "region_index_common.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/region_index_cuda.h"
#endif

namespace lrc {
namespace {

using Outputs = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor>;

// The outputs (pixels (V, B, HW), hist (V, B, T, K), local (V, B, T, K)) and the kernel's
// arguments for one or two (B, H, W) maps.
std::tuple<Outputs, RegionIndexArgs> prepare(const char* op, const torch::Tensor& regions,
                                              const std::optional<torch::Tensor>& regions_p, int64_t num_regions,
                                              int64_t tile) {
  const auto dtype = regions.scalar_type();
  TORCH_CHECK(regions.dim() == 3 && (dtype == torch::kInt32 || dtype == torch::kInt64), op,
              ": regions must be a (B, H, W) int32 or int64 tensor");
  const torch::Tensor& other = regions_p.has_value() ? *regions_p : regions;
  TORCH_CHECK(other.sizes() == regions.sizes() && other.scalar_type() == dtype && other.device() == regions.device(),
              op, ": regions_p must match regions in shape, dtype and device");
  TORCH_CHECK(tile >= 16 && tile <= 4096 && (tile & (tile - 1)) == 0, op,
              ": tile must be a power of two from 16 to 4096, got ", tile);
  const int64_t B = regions.size(0), H = regions.size(1), W = regions.size(2), HW = H * W;
  TORCH_CHECK(HW + tile < (int64_t{1} << 31) && num_regions >= 0 && num_regions < (int64_t{1} << 31) - 2, op,
              ": need H * W + tile < 2**31 and 0 <= num_regions < 2**31 - 2");
  const int64_t V = regions_p.has_value() ? 2 : 1, T = (HW + tile - 1) / tile;
  const auto options = regions.options().dtype(torch::kInt32);
  auto pixels = torch::empty({V, B, HW}, options);
  auto hist = torch::empty({V, B, T, num_regions}, options);  // written in full by the kernel
  auto local = torch::empty({V, B, T, num_regions}, options);
  RegionIndexArgs a{};
  const torch::Tensor* maps[2] = {&regions, &other};
  for (int v = 0; v < 2; ++v) {
    a.maps[v] = maps[v]->data_ptr();
    a.stride_b[v] = maps[v]->stride(0);
    a.stride_h[v] = maps[v]->stride(1);
    a.stride_w[v] = maps[v]->stride(2);
  }
  a.int64_ids = dtype == torch::kInt64;
  a.V = static_cast<int32_t>(V);
  a.B = static_cast<int32_t>(B);
  a.W = static_cast<int32_t>(std::max<int64_t>(W, 1));
  a.HW = static_cast<int32_t>(HW);
  a.K = static_cast<int32_t>(num_regions);
  a.log_tile = 0;
  while ((int64_t{1} << a.log_tile) < tile) ++a.log_tile;
  a.n_tiles = static_cast<int32_t>(T);
  a.pixels = pixels.data_ptr<int32_t>();
  a.hist = hist.data_ptr<int32_t>();
  a.local = local.data_ptr<int32_t>();
  return {Outputs{pixels, hist, local}, a};
}

// The tile sort on CUDA: (pixels, hist, local), int32, as the Triton tile sort writes them (hist
// before the prefix over the tiles; local only where hist > 0).
Outputs region_index_cuda_op(const torch::Tensor& regions, const std::optional<torch::Tensor>& regions_p,
                             int64_t num_regions, int64_t tile) {
#ifdef WITH_CUDA
  TORCH_CHECK(regions.is_cuda(), "region_index_cuda: regions must be a CUDA tensor");
  std::string error;
  {
    const c10::cuda::CUDAGuard guard(regions.device());
    auto [outputs, args] = prepare("region_index_cuda", regions, regions_p, num_regions, tile);
    const cudaError_t err = lrc::region_index_cuda(args, c10::cuda::getCurrentCUDAStream());
    if (err == cudaSuccess) return outputs;
    error = std::string("region_index_cuda: kernel launch failed: ") + cudaGetErrorString(err);
  }
  TORCH_CHECK(false, error);
#else
  TORCH_CHECK(false, "lrc_fast._C was built without CUDA; rebuild with a CUDA torch and toolkit (or FORCE_CUDA=1)");
#endif
}

// The same CUDA kernel run by the SIMT simulator on CPU tensors; seed as felzenszwalb_simt's. The
// outputs start as INT32_MIN, so an element the kernel should write and does not shows.
Outputs region_index_simt_op(const torch::Tensor& regions, const std::optional<torch::Tensor>& regions_p,
                             int64_t num_regions, int64_t tile, int64_t seed) {
  TORCH_CHECK(regions.device().is_cpu(), "region_index_simt: regions must be a CPU tensor");
  auto [outputs, args] = prepare("region_index_simt", regions, regions_p, num_regions, tile);
  // a value the kernel never writes, so that the tests see any element it fails to write
  for (auto* out : {&std::get<0>(outputs), &std::get<1>(outputs), &std::get<2>(outputs)})
    out->fill_(std::numeric_limits<int32_t>::min());
  const std::string error = region_index_simt(args, static_cast<uint64_t>(seed));
  TORCH_CHECK(error.empty(), "region_index_simt: ", error);
  return outputs;
}

}  // namespace

void bind_region_index(pybind11::module_& m) {
  m.def("region_index_cuda", &region_index_cuda_op,
        "The loss's region index tile sort on CUDA: (pixels, hist, local)", pybind11::arg("regions"),
        pybind11::arg("regions_p"), pybind11::arg("num_regions"), pybind11::arg("tile"));
  m.def("region_index_simt", &region_index_simt_op,
        "The CUDA region index kernel run by the CPU SIMT simulator: (pixels, hist, local)",
        pybind11::arg("regions"), pybind11::arg("regions_p"), pybind11::arg("num_regions"), pybind11::arg("tile"),
        pybind11::arg("seed"));
}

}  // namespace lrc
