// CPU backends of lrc_fast.felzenszwalb: the exact sequential algorithm (skimage's, with a
// stable tie order) and a sequential emulation of the GPU round schedule.
#include "felzenszwalb_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <memory>
#include <tuple>
#include <utility>
#include <vector>

#include "../felzenszwalb_common.h"
#include "../felzenszwalb_schedule.h"

namespace lrc {
namespace {

using fh::Geometry;

// scipy.ndimage.gaussian_filter(img, sigma, mode='reflect') on one slice: axis 0 into tmp,
// then axis 1 into out. radius < 0 means sigma ~ 0: scipy skips both axes.
void smooth_slice(const double* img, double* tmp, double* out, const Geometry& g, const double* w_centre,
                  int32_t radius) {
  const int64_t n = g.num_pixels();
  if (radius < 0) {
    std::copy(img, img + n, out);
    return;
  }
  auto from_img = [img](int32_t p) { return img[p]; };
  auto from_tmp = [tmp](int32_t p) { return tmp[p]; };
  for (int32_t i = 0; i < g.H; ++i)
    for (int32_t j = 0; j < g.W; ++j) tmp[i * g.W + j] = fh::gauss_axis<0>(from_img, g, w_centre, radius, i, j);
  for (int32_t i = 0; i < g.H; ++i)
    for (int32_t j = 0; j < g.W; ++j) out[i * g.W + j] = fh::gauss_axis<1>(from_tmp, g, w_centre, radius, i, j);
}

// Sequential union-find with path halving; the root is the smaller pixel index, as skimage.
inline int32_t find(int32_t* parent, int32_t x) {
  while (parent[x] != x) {
    parent[x] = parent[parent[x]];
    x = parent[x];
  }
  return x;
}

// Labels 0..K-1 in order of first appearance in raster order; returns K. label: (n,) scratch.
int64_t canonical_labels(int32_t* parent, int32_t n, int32_t* label, int64_t* out) {
  std::fill(label, label + n, -1);
  int32_t next = 0;
  for (int32_t p = 0; p < n; ++p) {
    const int32_t r = find(parent, p);
    if (label[r] < 0) label[r] = next++;
    out[p] = label[r];
  }
  return next;
}

// Stable LSD radix sort of (key, payload) by key, 8-bit digits; digits that are equal for
// every key are skipped. Stability keeps equal costs in edge-index order. k2, v2: scratch of
// the same sizes.
void radix_sort(std::vector<uint64_t>& keys, std::vector<uint32_t>& vals, std::vector<uint64_t>& k2,
                std::vector<uint32_t>& v2) {
  const size_t n = keys.size();
  std::array<std::array<uint32_t, 256>, 8> hist;
  for (auto& h : hist) h.fill(0);
  for (size_t i = 0; i < n; ++i)
    for (int d = 0; d < 8; ++d) ++hist[d][(keys[i] >> (8 * d)) & 0xff];
  for (int d = 0; d < 8; ++d) {
    auto& h = hist[d];
    if (n == 0 || h[(keys[0] >> (8 * d)) & 0xff] == n) continue;  // constant digit
    uint32_t sum = 0;
    for (auto& c : h) {
      const uint32_t t = c;
      c = sum;
      sum += t;
    }
    for (size_t i = 0; i < n; ++i) {
      const uint32_t dst = h[(keys[i] >> (8 * d)) & 0xff]++;
      k2[dst] = keys[i];
      v2[dst] = vals[i];
    }
    keys.swap(k2);
    vals.swap(v2);
  }
}

// Buffers of the exact backend, allocated once per worker thread and reused for each of its
// slices (fresh ~30 MB per 512x512 slice made the threads page-fault in each other's way).
struct ExactScratch {
  std::vector<uint64_t> keys, keys2;
  std::vector<uint32_t> vals, vals2;
  std::vector<int32_t> parent, size, label;
  std::vector<double> cint;
  explicit ExactScratch(const Geometry& g)
      : keys(g.num_edges()), keys2(g.num_edges()), vals(g.num_edges()), vals2(g.num_edges()),
        parent(g.num_pixels()), size(g.num_pixels()), label(g.num_pixels()), cint(g.num_pixels()) {}
};

// Exact backend on one slice. Sort payload: u * 4 + kind, where v = u + offset[kind].
int64_t segment_exact(const double* img, const Geometry& g, double k, int32_t min_size, ExactScratch& ws,
                      int64_t* out) {
  const int32_t n = g.num_pixels(), W = g.W;
  const int32_t E = g.num_edges();
  auto& keys = ws.keys;
  auto& vals = ws.vals;
  const int32_t offset[4] = {1, W, W + 1, W - 1};
  for (int32_t e = 0; e < E; ++e) {
    int32_t u, v;
    fh::edge_endpoints(g, e, u, v);
    const int kind = e < g.n_right ? 0 : e < g.n_right + g.n_down ? 1 : e < g.n_right + g.n_down + g.n_diag ? 2 : 3;
    keys[e] = fh::cost_bits(fh::edge_cost(img[u], img[v]));
    vals[e] = static_cast<uint32_t>(u) * 4u + static_cast<uint32_t>(kind);
  }
  radix_sort(keys, vals, ws.keys2, ws.vals2);

  auto& parent = ws.parent;
  auto& size = ws.size;
  auto& cint = ws.cint;
  std::fill(size.begin(), size.end(), 1);
  std::fill(cint.begin(), cint.end(), 0.0);
  for (int32_t p = 0; p < n; ++p) parent[p] = p;
  for (int32_t i = 0; i < E; ++i) {
    const int32_t u = static_cast<int32_t>(vals[i] >> 2), v = u + offset[vals[i] & 3];
    const int32_t a = find(parent.data(), u), b = find(parent.data(), v);
    if (a == b) continue;
    const double c = fh::bits_cost(keys[i]);
    const float ta = fh::threshold(cint[a], size[a], k), tb = fh::threshold(cint[b], size[b], k);
    if (c < static_cast<double>(std::min(ta, tb))) {
      const int32_t lo = std::min(a, b), hi = std::max(a, b);
      parent[hi] = lo;
      size[lo] = size[a] + size[b];
      cint[lo] = c;
    }
  }
  for (int32_t i = 0; i < E; ++i) {
    const int32_t u = static_cast<int32_t>(vals[i] >> 2), v = u + offset[vals[i] & 3];
    const int32_t a = find(parent.data(), u), b = find(parent.data(), v);
    if (a == b || (size[a] >= min_size && size[b] >= min_size)) continue;
    const int32_t lo = std::min(a, b), hi = std::max(a, b);
    parent[hi] = lo;
    size[lo] = size[a] + size[b];
  }
  return canonical_labels(parent.data(), n, ws.label.data(), out);
}

// Memory operations of the emulation: one thread, so plain loads, stores and read-modify-writes.
struct SerialOps {
  template <class T>
  T ld(const T* p) const { return *p; }
  double ld_img(const double* p) const { return *p; }
  template <class T>
  void st(T* p, T v) const { *p = v; }
  void red_min_u64(uint64_t* p, uint64_t v) const { *p = std::min(*p, v); }
  void red_max_u64(uint64_t* p, uint64_t v) const { *p = std::max(*p, v); }
  void red_min_i32(int32_t* p, int32_t v) const { *p = std::min(*p, v); }
  void red_add_i32(int32_t* p, int32_t v) const { *p += v; }
  void red_or_i32(int32_t* p, int32_t v) const { *p |= v; }
  int32_t cas_i32(int32_t* p, int32_t expected, int32_t v) const {
    const int32_t old = *p;
    if (old == expected) *p = v;
    return old;
  }
};

// One pass (main or min_size) of the round schedule, executed phase by phase like the CUDA
// kernel does between barriers: each round offers the edges the previous one kept, plus the
// next cost window of the sorted live edges when few are left (fh::refill_below); in the main
// pass with `extend`, each round ends with the hub extension. The first window starts at `start`
// (a bin boundary; every edge before it decided). Returns the number of rounds and adds the
// edges offered in phase A to stats[0] and the edges the hub extension decided to stats[1].
template <bool kMain>
int32_t run_rounds(const fh::Slice& s, const std::vector<int32_t>& sorted, const std::vector<int32_t>& bin_end,
                   int32_t start, int32_t width, bool extend, std::vector<int32_t>& list_in,
                   std::vector<int32_t>& list_out, std::vector<uint32_t>& ra, std::vector<uint32_t>& rb,
                   int64_t* stats) {
  SerialOps ops;
  const int32_t live = bin_end[fh::kCostBins - 1];
  std::vector<std::tuple<uint64_t, int32_t, int32_t>> frontier;  // (cost bits, edge, outside endpoint)
  std::vector<uint64_t> f_cost, heap_cost(fh::kHeapCap);
  std::vector<int32_t> f_edge, f_outside, heap_edge(fh::kHeapCap), heap_outside(fh::kHeapCap);
  std::vector<int32_t> absorbed(fh::kAbsorbedCap), near_slots(fh::kNearHubCap), hist(fh::kAbsorbedCap);
  const int32_t refill = fh::refill_below(width);
  int32_t rounds = 0, loaded = start, n_active = 0;  // sorted[0, loaded) was offered; n_active still pending
  while (true) {
    const int32_t chunk = loaded;
    if (n_active <= refill && loaded < live) loaded = fh::window_end(bin_end.data(), loaded, width, ops);
    const int32_t n_in = n_active + (loaded - chunk);
    if (n_in == 0) break;
    const uint64_t end_bound = fh::window_bound(s, sorted.data(), loaded, live, ops);
    int32_t n_out = 0;
    stats[0] += n_in;
    for (int32_t i = 0; i < n_in; ++i) {  // phase A
      const int32_t e = i < n_active ? list_in[i] : sorted[chunk + i - n_active];
      uint32_t a, b;
      const bool keep = kMain ? fh::main_offer(s, e, a, b, ops) : fh::small_offer(s, e, a, b, ops);
      if (keep) {
        list_out[n_out] = e;
        ra[n_out] = a;
        rb[n_out] = b;
        ++n_out;
      }
    }
    n_active = n_out;
    if (n_out == 0) continue;
    ++rounds;
    *s.hub = 0;
    for (int32_t i = 0; i < n_out; ++i) fh::reserve(s, list_out[i], ra[i], rb[i], !kMain, ops);  // phase B
    for (int32_t i = 0; i < n_out; ++i) {  // phase C
      if (kMain)
        fh::main_commit(s, list_out[i], ra[i], rb[i], ops);
      else
        fh::small_commit(s, list_out[i], ra[i], rb[i], ops);
    }
    if (kMain && extend && *s.hub != 0) {  // phase D: gather, sort, extend
      const int32_t hub = static_cast<int32_t>(*s.hub & 0xffffffffu);
      frontier.clear();
      for (int32_t i = 0; i < n_out; ++i) {
        const int32_t e = list_out[i];
        const int32_t w = fh::hub_frontier_outside(s, hub, e, ops);
        if (w >= 0) frontier.emplace_back(fh::edge_cost_bits(s, e, ops), e, w);
      }
      uint64_t bound = end_bound;
      if (frontier.size() > static_cast<size_t>(fh::kFrontierCap)) {  // cut, as the kernel does
        int32_t min_bin = fh::kCostBins;
        for (const auto& f : frontier) min_bin = std::min(min_bin, fh::cost_bin(std::get<0>(f)));
        std::fill(hist.begin(), hist.end(), 0);
        for (const auto& f : frontier) ++hist[std::min(fh::cost_bin(std::get<0>(f)) - min_bin, fh::kAbsorbedCap - 1)];
        const uint64_t cut = static_cast<uint64_t>(min_bin + fh::frontier_cut(hist.data())) << 48;
        bound = std::min(bound, cut);
        frontier.erase(std::remove_if(frontier.begin(), frontier.end(),
                                      [cut](const auto& f) { return std::get<0>(f) >= cut; }),
                       frontier.end());
      }
      if (!frontier.empty()) {
        std::sort(frontier.begin(), frontier.end());  // by (cost, edge): edges are unique
        f_cost.resize(frontier.size());
        f_edge.resize(frontier.size());
        f_outside.resize(frontier.size());
        for (size_t i = 0; i < frontier.size(); ++i) std::tie(f_cost[i], f_edge[i], f_outside[i]) = frontier[i];
        const fh::EdgeHeap heap{{heap_cost.data(), heap_edge.data(), heap_outside.data()}, 0};
        std::fill(absorbed.begin(), absorbed.end(), -1);
        std::fill(near_slots.begin(), near_slots.end(), -1);
        const fh::NearHub near{near_slots.data()};
        for (size_t i = 0; i < frontier.size(); ++i) fh::near_hub_add(s, near, f_edge[i], f_outside[i], ops);
        // No prefetched entries: every decision loads what it reads, so the emulation is the
        // reference the kernel's prefetching extension must agree with (tests/test_simt.py
        // compares their statistics, hub steps included).
        const fh::OutsideRoots none{nullptr, nullptr, nullptr, nullptr, 0};
        stats[1] += fh::hub_extend(s, hub, fh::HubEdges{f_cost.data(), f_edge.data(), f_outside.data()},
                                   static_cast<int32_t>(frontier.size()), bound, heap,
                                   fh::PixelSet{absorbed.data(), 0}, near, none, ops);
      }
    }
    list_in.swap(list_out);
  }
  return rounds;
}

// The slot engine (fh::SlotTable), phase by phase as the kernel's CTA runs it: windows of whole
// bins, a large bin split into sub-windows by sub-bin, each window loaded, drained by rounds on
// the table, and stored back. Returns the position in `sorted` from which the global rounds take
// over (the number of live edges when the slot engine decided every edge); adds its rounds to
// work[0] and its phase A offers to work[1]. `order` (E,) holds a large bin's edges by sub-bin.
int32_t run_slots(const fh::Slice& s, const std::vector<int32_t>& sorted, const std::vector<int32_t>& bin_end,
                  std::vector<int32_t>& order, int64_t* work) {
  SerialOps ops;
  std::vector<uint64_t> block((fh::kSlotBytes + 7) / 8);
  const fh::SlotTable t = fh::slot_table(reinterpret_cast<char*>(block.data()));
  std::fill(t.root, t.root + fh::kSlots, -1);
  // Loads, drains and stores the window src[0, n). Checks what makes the windows exact: each
  // costs strictly more than the one before (a cost never straddles two windows), and each round
  // decides an edge (the smallest pending edge is its roots' minimum), so a window drains in at
  // most n rounds.
  uint64_t last_max = 0;
  bool first_window = true;
  auto drain = [&](const int32_t* src, int32_t n) {
    for (int32_t j = 0; j < n; ++j) fh::slot_load_edge(s, t, j, src[j], ops, ops);
    const uint64_t lo = *std::min_element(t.cost, t.cost + n), hi = *std::max_element(t.cost, t.cost + n);
    TORCH_CHECK(first_window || lo > last_max, "slot engine: a window's costs do not follow the last window's");
    first_window = false;
    last_max = hi;
    int32_t n_in = n;
    for (int32_t round = 0;; ++round) {
      TORCH_CHECK(round <= n, "slot engine: a window of ", n, " edges did not drain in ", n, " rounds");
      const int16_t* in = t.list[(round + 1) & 1];
      int16_t* out = t.list[round & 1];
      int32_t n_out = 0;
      work[1] += n_in;
      for (int32_t i = 0; i < n_in; ++i) {  // phase A
        const int32_t j = round == 0 ? i : in[i];
        int32_t a, b;
        if (!fh::slot_offer(t, j, a, b, ops)) continue;
        out[n_out] = static_cast<int16_t>(j);
        t.ra[n_out] = static_cast<int16_t>(a);
        t.rb[n_out] = static_cast<int16_t>(b);
        ++n_out;
      }
      if (n_out == 0) break;
      ++work[0];
      for (int32_t i = 0; i < n_out; ++i) fh::slot_reserve(t, out[i], t.ra[i], t.rb[i], ops);  // phase B
      for (int32_t i = 0; i < n_out; ++i) fh::slot_commit(s, t, out[i], t.ra[i], t.rb[i], ops);  // phase C
      n_in = n_out;
    }
    for (int32_t i = 0; i < fh::kSlots; ++i) fh::slot_store(s, t, i, ops, ops);
    std::fill(t.root, t.root + fh::kSlots, -1);
  };
  const int32_t live = bin_end[fh::kCostBins - 1];
  int32_t pos = 0;
  while (pos < live) {
    const int32_t end = fh::slot_window_end(bin_end.data(), fh::kCostBins, pos, live, ops);
    if (end > pos) {
      drain(sorted.data() + pos, end - pos);
      pos = end;
      continue;
    }
    // A bin of more than kSlotEdges edges: counting sort by sub-bin into order[pos, bin end).
    const int32_t bend = fh::bin_end_after(bin_end.data(), pos, ops), n = bend - pos;
    std::fill(t.sub_end, t.sub_end + fh::kSubBins, 0);
    for (int32_t i = pos; i < bend; ++i) ++t.sub_end[fh::sub_bin(fh::edge_cost_bits(s, sorted[i], ops))];
    int32_t sum = 0;
    for (int32_t b = 0; b < fh::kSubBins; ++b) {
      const int32_t c = t.sub_end[b];
      t.sub_end[b] = sum;
      sum += c;
    }
    for (int32_t i = pos; i < bend; ++i)
      order[pos + t.sub_end[fh::sub_bin(fh::edge_cost_bits(s, sorted[i], ops))]++] = sorted[i];
    for (int32_t r0 = 0; r0 < n;) {
      const int32_t r1 = fh::slot_window_end(t.sub_end, fh::kSubBins, r0, n, ops);
      if (r1 == r0) return pos;  // a sub-bin over the cap: the global rounds take this bin on
      drain(order.data() + pos + r0, r1 - r0);
      r0 = r1;
    }
    pos = bend;
  }
  return live;
}

// Emulation of the GPU backend on one slice, including its labelling phases. stats: (5,) as
// felzenszwalb_cpu returns them.
int64_t segment_schedule(const double* img, const Geometry& g, double k, bool zero_merge, int32_t min_size,
                         int32_t width, bool extend, bool slots, int64_t* out, int64_t* stats) {
  const int32_t n = g.num_pixels(), E = g.num_edges();
  std::vector<int32_t> parent(n), csize(n, 1), minidx(n, fh::kNoEdge), resv(n, fh::kNoEdge);
  std::vector<double> cint(n, 0.0);
  std::vector<uint64_t> mincost(n, fh::kNoCost);
  uint64_t hub = 0;
  for (int32_t p = 0; p < n; ++p) parent[p] = p;
  fh::Slice s{g, k, min_size, img, parent.data(), csize.data(), cint.data(), mincost.data(), minidx.data(),
              resv.data(), &hub};
  SerialOps ops;
  if (zero_merge) {  // as the kernel: unite, then count sizes at the roots
    std::fill(csize.begin(), csize.end(), 0);
    for (int32_t e = 0; e < E; ++e) fh::zero_union(s, e, ops);
    for (int32_t p = 0; p < n; ++p) ++csize[fh::find_root(s.parent, p, ops)];
  }
  // Counting sort of the live edges by cost bin (the kernel's order inside a bin differs;
  // no decision depends on it). bin_end ends up holding the end of every bin.
  std::vector<int32_t> bin(E), bin_end(fh::kCostBins, 0), sorted(E);
  for (int32_t e = 0; e < E; ++e) {
    bin[e] = fh::live_bin(s, e, ops);
    if (bin[e] >= 0) ++bin_end[bin[e]];
  }
  int32_t sum = 0;
  for (auto& c : bin_end) {
    const int32_t t = c;
    c = sum;
    sum += t;
  }
  for (int32_t e = 0; e < E; ++e)
    if (bin[e] >= 0) sorted[bin_end[bin[e]]++] = e;

  std::vector<int32_t> list_in(E), list_out(E);
  std::vector<uint32_t> ra(E), rb(E);
  int64_t main_work[2] = {0, 0}, small_work[2] = {0, 0};
  int32_t start = 0;
  int64_t slot_work[2] = {0, 0};
  if (slots) start = run_slots(s, sorted, bin_end, list_in, slot_work);
  stats[0] = slot_work[0] + run_rounds<true>(s, sorted, bin_end, start, width, extend, list_in, list_out, ra, rb,
                                             main_work);
  main_work[0] += slot_work[1];
  for (int32_t p = 0; p < n; ++p) csize[p] = std::abs(csize[p]);  // unfreeze
  if (min_size > 1)
    stats[1] = run_rounds<false>(s, sorted, bin_end, 0, fh::kSmallPassWindow, false, list_in, list_out, ra, rb,
                                 small_work);
  stats[2] = main_work[0];
  stats[3] = small_work[0];
  stats[4] = main_work[1];

  // Labelling as the kernel does it: full roots, smallest pixel per root, a scan over
  // "first pixel of its component" flags in raster order, then a gather.
  for (int32_t p = 0; p < n; ++p) parent[p] = fh::find_root(s.parent, p, ops);
  for (int32_t p = 0; p < n; ++p) minidx[parent[p]] = std::min(minidx[parent[p]], p);
  int32_t next = 0;
  for (int32_t p = 0; p < n; ++p)
    if (minidx[parent[p]] == p) csize[p] = next++;
  for (int32_t p = 0; p < n; ++p) out[p] = csize[minidx[parent[p]]];
  return next;
}

}  // namespace

void check_window(const char* op, int64_t window) {
  TORCH_CHECK(window >= 1 && window < (int64_t{1} << 31), op, ": window must be in [1, 2^31), got ", window);
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> felzenszwalb_cpu(
    const torch::Tensor& image, const torch::Tensor& weights, double k, int64_t min_size, bool schedule,
    int64_t window, bool extend, bool slots) {
  TORCH_CHECK(image.device().is_cpu() && image.dim() == 3 && image.scalar_type() == torch::kFloat64 &&
                  image.is_contiguous(),
              "felzenszwalb_cpu: image must be a contiguous (B, H, W) float64 CPU tensor");
  TORCH_CHECK(weights.device().is_cpu() && weights.dim() == 1 && weights.scalar_type() == torch::kFloat64 &&
                  (weights.numel() == 0 || weights.numel() % 2 == 1),
              "felzenszwalb_cpu: weights must be an odd-length float64 CPU tensor or empty");
  check_window("felzenszwalb_cpu", window);
  const int64_t B = image.size(0);
  const int32_t H = static_cast<int32_t>(image.size(1)), W = static_cast<int32_t>(image.size(2));
  auto labels = torch::empty({B, H, W}, image.options().dtype(torch::kInt64));
  auto counts = torch::empty({B}, image.options().dtype(torch::kInt64));
  auto stats = torch::zeros({B, 5}, image.options().dtype(torch::kInt64));
  const Geometry g = fh::make_geometry(H, W);
  const int32_t radius = weights.numel() == 0 ? -1 : static_cast<int32_t>(weights.numel() / 2);
  const double* w_centre = weights.numel() == 0 ? nullptr : weights.data_ptr<double>() + radius;
  const double* img = image.data_ptr<double>();
  int64_t* lab = labels.data_ptr<int64_t>();
  int64_t* cnt = counts.data_ptr<int64_t>();
  int64_t* st = stats.data_ptr<int64_t>();
  const int64_t n = static_cast<int64_t>(H) * W;
  const bool zero_merge = fh::zero_cost_edges_merge(k, static_cast<int32_t>(n));
  const int32_t ms = fh::clamp_min_size(min_size, n);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> tmp(n), smooth(n);
    std::unique_ptr<ExactScratch> scratch;
    if (!schedule) scratch = std::make_unique<ExactScratch>(g);
    for (int64_t b = b0; b < b1; ++b) {
      smooth_slice(img + b * n, tmp.data(), smooth.data(), g, w_centre, radius);
      cnt[b] = schedule ? segment_schedule(smooth.data(), g, k, zero_merge, ms, static_cast<int32_t>(window), extend,
                                           slots, lab + b * n, st + 5 * b)
                        : segment_exact(smooth.data(), g, k, ms, *scratch, lab + b * n);
    }
  });
  return {labels, counts, stats};
}

}  // namespace lrc
