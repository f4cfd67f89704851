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
// schedule == true:  the GPU backend's round schedule executed sequentially (emulation),
//                    with cost windows of at least `window` edges and, with `extend`, the hub
//                    extension (see felzenszwalb_schedule.h).
// Returns labels (B, H, W) int64 numbered by first appearance, counts (B,) int64 and
// stats (B, 5) int64: rounds of the main and min_size passes, the edges offered in phase A of
// each pass, and the edges the hub extension decided (the schedule's work; zeros for the exact
// backend).
// The schedule's minimum window width, as every entry that takes one checks it.
void check_window(const char* op, int64_t window);

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> felzenszwalb_cpu(
    const torch::Tensor& image, const torch::Tensor& weights, double k, int64_t min_size, bool schedule,
    int64_t window, bool extend, bool slots);

}  // namespace lrc
