#pragma once

#include <torch/extension.h>

#include <tuple>

namespace lrc {

// Felzenszwalb on a batch of float64 slices, on the CPU, one slice per task of
// at::parallel_for.
//   image   (B, H, W) float64, contiguous, already converted like skimage's img_as_float64
//   weights (2r+1,)   float64 Gaussian taps (scipy's), or empty for no smoothing
//   k       scale / 255
// schedule == false: sequential Kruskal over edges sorted by (cost, index) -- the exact
//                    reference backend;
// schedule == true:  the GPU backend's round schedule executed sequentially (emulation).
// Returns labels (B, H, W) int64 numbered by first appearance, counts (B,) int64 and
// rounds (B, 2) int32 (main-pass and min_size-pass rounds; zeros for the exact backend).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> felzenszwalb_cpu(
    const torch::Tensor& image, const torch::Tensor& weights, double k, int64_t min_size, bool schedule);

}  // namespace lrc
