// Felzenszwalb-Huttenlocher segmentation: pieces shared by the CPU exact backend, the CPU
// emulation of the GPU schedule and the CUDA kernel. No torch headers: nvcc compiles this
// inside csrc/cuda/felzenszwalb_cuda.cu on machines without a GPU.
//
// Semantics follow skimage.segmentation.felzenszwalb on one channel (see
// skimage/segmentation/_felzenszwalb_cy.pyx):
// - Gaussian smoothing in float64 exactly as scipy.ndimage.gaussian_filter (axis 0 then
//   axis 1, mode 'reflect', symmetric taps: centre first, then pairs from the outermost in);
// - 8-connected edges, ordered right, down, down-right, up-right, each block in C order;
// - cost = sqrt(d * d) in float64;
// - threshold = (float)(cint + k / size), merge iff cost < min(thr_a, thr_b) (strict);
// - edges are visited in the total order (cost, edge index).
// Build with FMA contraction off (-ffp-contract=off, nvcc -fmad=false) so every rounding
// step matches numpy/scipy bit for bit.
#pragma once

#include <cstdint>
#include <cmath>
#include <cstring>

#if defined(__CUDACC__)
#define LRC_HD __host__ __device__ __forceinline__
#else
#define LRC_HD inline
#endif

#if defined(__CUDACC__)
#define LRC_UNROLL _Pragma("unroll")
#else
#define LRC_UNROLL
#endif

// Annotations for the SIMT simulator's cost model (csrc/simt/cuda_shim.h defines them; simt.h,
// Profile): a phase label, a block of loads a thread issues together before using any, a block
// of atomics whose result it never uses. Nothing anywhere else.
#ifndef LRC_SIMT
#define LRC_SIMT_PHASE(phase) ((void)(phase))
#define LRC_INDEPENDENT_LOADS ((void)0)
#define LRC_UNUSED_RESULTS ((void)0)
#endif

namespace lrc {
namespace fh {

// Per-slice geometry. Pixel and edge indices of one slice fit in int32: the public wrapper
// refuses slices with 4 * H * W >= 2^31 edges.
struct Geometry {
  int32_t H, W;
  int32_t n_right, n_down, n_diag;  // block sizes: H*(W-1), (H-1)*W, (H-1)*(W-1)
  LRC_HD int32_t num_pixels() const { return H * W; }
  LRC_HD int32_t num_edges() const { return n_right + n_down + 2 * n_diag; }
};

LRC_HD Geometry make_geometry(int32_t H, int32_t W) {
  Geometry g;
  g.H = H;
  g.W = W;
  g.n_right = H * (W - 1);
  g.n_down = (H - 1) * W;
  g.n_diag = (H - 1) * (W - 1);
  return g;
}

// Endpoints of edge `e` in skimage's edge order.
LRC_HD void edge_endpoints(const Geometry& g, int32_t e, int32_t& u, int32_t& v) {
  const int32_t W = g.W;
  if (e < g.n_right) {  // (i, j) -- (i, j + 1)
    const int32_t i = e / (W - 1), j = e - i * (W - 1);
    u = i * W + j;
    v = u + 1;
    return;
  }
  e -= g.n_right;
  if (e < g.n_down) {  // (i, j) -- (i + 1, j)
    u = e;
    v = e + W;
    return;
  }
  e -= g.n_down;
  if (e < g.n_diag) {  // (i, j) -- (i + 1, j + 1)
    const int32_t i = e / (W - 1), j = e - i * (W - 1);
    u = i * W + j;
    v = u + W + 1;
    return;
  }
  e -= g.n_diag;  // (i, j + 1) -- (i + 1, j)
  const int32_t i = e / (W - 1), j = e - i * (W - 1);
  u = i * W + j + 1;
  v = (i + 1) * W + j;
}

// Index of the lowest set bit of x (x != 0).
LRC_HD int lowest_set_bit(unsigned x) {
#if defined(__CUDA_ARCH__)
  return __ffs(static_cast<int>(x)) - 1;
#else
  return __builtin_ctz(x);
#endif
}

// A pixel with its row and column, so that code visiting its edges divides by W once.
struct Pixel {
  int32_t p, i, j;
};
LRC_HD Pixel pixel_at(const Geometry& g, int32_t p) {
  const int32_t i = p / g.W;
  return {p, i, p - i * g.W};
}

// Edge d (0..7) of pixel px in skimage's numbering, and the pixel at its other end; false where
// the border leaves it out (a pixel has 2 to 8 edges). With d a constant (an unrolled loop) this
// compiles to a few comparisons.
LRC_HD bool pixel_edge(const Geometry& g, const Pixel& px, int d, int32_t& edge, int32_t& other) {
  const int32_t W = g.W, p = px.p, i = px.i, j = px.j;
  const int32_t down0 = g.n_right, diag0 = g.n_right + g.n_down, anti0 = diag0 + g.n_diag;
  const bool up = i > 0, dn = i < g.H - 1, lf = j > 0, rt = j < W - 1;
  switch (d) {
    case 0: edge = i * (W - 1) + j;             other = p + 1;     return rt;        // (i, j) -- (i, j+1)
    case 1: edge = i * (W - 1) + j - 1;         other = p - 1;     return lf;        // (i, j-1) -- (i, j)
    case 2: edge = down0 + i * W + j;           other = p + W;     return dn;        // (i, j) -- (i+1, j)
    case 3: edge = down0 + (i - 1) * W + j;     other = p - W;     return up;        // (i-1, j) -- (i, j)
    case 4: edge = diag0 + i * (W - 1) + j;     other = p + W + 1; return dn && rt;  // (i, j) -- (i+1, j+1)
    case 5: edge = diag0 + (i - 1) * (W - 1) + j - 1; other = p - W - 1; return up && lf;  // (i-1, j-1) -- (i, j)
    case 6: edge = anti0 + i * (W - 1) + j - 1; other = p + W - 1; return dn && lf;  // (i, j) -- (i+1, j-1)
    default: edge = anti0 + (i - 1) * (W - 1) + j; other = p - W + 1; return up && rt;  // (i-1, j+1) -- (i, j)
  }
}

// min_size as every backend takes it: at least 0, and at most one more than the pixels (beyond
// that nothing changes), so that it fits int32.
inline int32_t clamp_min_size(int64_t min_size, int64_t pixels) {
  return static_cast<int32_t>(min_size < 0 ? 0 : (min_size > pixels + 1 ? pixels + 1 : min_size));
}

// sqrt(d * d) with d = img[v] - img[u], as numpy computes it for one channel (equal to |d|
// except where d * d underflows, which is why it is not written as fabs).
LRC_HD double edge_cost(double img_u, double img_v) {
  const double d = img_v - img_u;
  return sqrt(d * d);
}

// The key of every NaN cost: the positive quiet NaN, after +inf.
constexpr uint64_t kNaNCostBits = 0x7ff8000000000000ull;

// Non-negative doubles order like their bit patterns read as unsigned integers. A NaN cost
// (check_finite=False) becomes kNaNCostBits: which NaN the smoothing makes where NaN and +-inf
// pixels meet depends on the order of its additions (and x86 and CUDA make different ones), and
// its sign and payload bits would order the NaN edges differently in each backend.
LRC_HD uint64_t cost_bits(double c) {
  if (c != c) return kNaNCostBits;
  uint64_t b;
  memcpy(&b, &c, sizeof(b));
  return b;
}

LRC_HD double bits_cost(uint64_t b) {
  double c;
  memcpy(&c, &b, sizeof(c));
  return c;
}

// skimage: inner_cost = cint + scale / size, stored in a float32 variable.
LRC_HD float threshold(double cint, int32_t size, double k) {
  return static_cast<float>(cint + k / static_cast<double>(size));
}

// True when every threshold float32(cint + k / size), size <= n, is positive, so that every
// zero-cost edge merges (see zero_union in felzenszwalb_schedule.h).
LRC_HD bool zero_cost_edges_merge(double k, int32_t n) {
  return static_cast<float>(k / static_cast<double>(n)) > 0.0f;
}

// scipy.ndimage 'reflect' (half-sample symmetric) boundary, valid for any offset.
LRC_HD int32_t reflect_index(int32_t i, int32_t n) {
  if (n == 1) return 0;
  const int32_t period = 2 * n;
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - 1 - i;
}

// One output sample of scipy's symmetric correlate1d: w points at the centre tap,
// `at(k)` returns the input at offset k from the output position.
template <class At>
LRC_HD double symmetric_tap_sum(const double* w, int32_t radius, At at) {
  double acc = at(0) * w[0];
  for (int32_t jj = -radius; jj < 0; ++jj) acc += (at(jj) + at(-jj)) * w[jj];
  return acc;
}

// The input pixel of tap k of the axis-0 (vertical) or axis-1 (horizontal) pass at (i, j),
// reflected at the border.
template <int kAxis>
LRC_HD int32_t tap_index(const Geometry& g, int32_t i, int32_t j, int32_t k) {
  return kAxis == 0 ? reflect_index(i + k, g.H) * g.W + j : i * g.W + reflect_index(j + k, g.W);
}

// One pass (axis 0, then axis 1) of the separable Gaussian at pixel (i, j); load(idx) reads
// the pass's source.
template <int kAxis, class Load>
LRC_HD double gauss_axis(Load load, const Geometry& g, const double* w_centre, int32_t radius, int32_t i,
                         int32_t j) {
  return symmetric_tap_sum(w_centre, radius, [&](int32_t k) { return load(tap_index<kAxis>(g, i, j, k)); });
}

constexpr uint64_t kNoCost = ~0ull;       // "no pending edge" in the per-root minimum cost
constexpr int32_t kNoEdge = 0x7fffffff;   // "no pending edge" in the per-root minimum edge
constexpr uint32_t kSmallBit = 0x80000000u;  // min_size pass: root is below min_size

}  // namespace fh
}  // namespace lrc
