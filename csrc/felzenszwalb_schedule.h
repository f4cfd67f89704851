// The parallel schedule of the GPU Felzenszwalb backend, one work item at a time.
//
// The same functions run inside the CUDA kernel (many threads, atomics, a barrier between
// phases) and inside the CPU emulation (one thread, plain loads and stores, the phases run
// one after another). `Ops` supplies the memory operations for each.
//
// Main pass, deterministic reservations (Blelloch et al., PPoPP'12): in each round every
// pending edge (endpoints in different, unfrozen components) offers its key (cost, edge
// index) to both endpoint components (phase A: minimum cost, phase B: minimum index among
// edges at that cost). An edge that is the minimum of both components is exactly the edge
// sequential Kruskal would visit next for both, so it is decided now (phase C): merge when
// cost < min(thr_a, thr_b). A component whose own minimum edge fails its own threshold can
// never merge again (all its later edges cost at least as much and its threshold only
// changes by merging), so it is frozen and its edges are dropped. The result equals the
// sequential visit in (cost, index) order, bit for bit.
//
// Cost windows: a round does not offer every pending edge of the slice. After the zero-cost
// pre-pass the live edges are counting-sorted by the top 16 bits of their cost (histogram,
// scan, scatter), and the rounds run over one window of whole bins at a time (at least
// `width` edges, see window_end) until none of its edges is pending. Every edge of a later
// bin costs strictly more, so a window decided to the end is exactly the next stretch of the
// sequential visit, and a frozen component stays frozen for the later windows (their edges
// cost more than the one that failed). Without windows the ~20k edges that wait behind a long
// chain of dependent merges were re-offered every round (real abdominal CT: 19.8 offers per
// edge in one window, 1.26 with 2048-edge windows, for 25% more rounds).
//
// min_size pass: the same rounds over edges with at least one endpoint below min_size; only
// the small endpoints reserve (a large component merges with whoever picks it, and sizes only
// grow, so an edge between two large components is dead for good). It runs as one window
// (kOneWindow): it offers few edges per round anyway, and windows would multiply its rounds
// (real CT: 24 rounds in one window, 286 with 2048-edge windows).
#pragma once

#include "felzenszwalb_common.h"

namespace lrc {
namespace fh {

// Device-resident state of one slice.
struct Slice {
  Geometry g;
  double k;          // scale / 255, as skimage
  int32_t min_size;
  const double* img;  // smoothed image, (N,)
  int32_t* parent;    // union-find forest, (N,)
  int32_t* csize;     // component size at roots; negative = frozen (main pass only), (N,)
  double* cint;       // largest merged edge cost ("internal difference") at roots, (N,)
  uint64_t* mincost;  // per-root minimum pending cost (bits), kNoCost when none, (N,)
  int32_t* minidx;    // per-root minimum pending edge at that cost, kNoEdge when none, (N,)
};

template <class Ops>
LRC_HD int32_t find_root(int32_t* parent, int32_t x, Ops& ops) {
  int32_t p = ops.ld(parent + x);
  while (p != x) {
    const int32_t gp = ops.ld(parent + p);
    if (gp != p) ops.st(parent + x, gp);  // path halving; only ever points at an ancestor
    x = gp;
    p = ops.ld(parent + x);
  }
  return x;
}

// ---- zero-cost pre-pass ----------------------------------------------------------------
// When zero_cost_edges_merge(k, N) every threshold is positive, so the
// sequential visit merges every zero-cost edge, and zero is the smallest cost: those edges come
// first and their outcome does not depend on their order. They are united here in any order
// (lock-free: link the larger root under the smaller with a compare-and-swap); cint stays 0
// and sizes are counted afterwards. Without this, plateaus (CT windowed to [0, 1] clips air and
// bone to constants) turn into chains of tied edges that take one round per pixel.
template <class Ops>
LRC_HD void unite(int32_t* parent, int32_t a, int32_t b, Ops& ops) {
  while (true) {
    a = find_root(parent, a, ops);
    b = find_root(parent, b, ops);
    if (a == b) return;
    if (a > b) {
      const int32_t t = a;
      a = b;
      b = t;
    }
    if (ops.cas_i32(parent + b, b, a) == b) return;
  }
}

template <class Ops>
LRC_HD void zero_union(const Slice& s, int32_t e, Ops& ops) {
  int32_t u, v;
  edge_endpoints(s.g, e, u, v);
  if (edge_cost(ops.ld(s.img + u), ops.ld(s.img + v)) == 0.0) unite(s.parent, u, v, ops);
}

// ---- cost windows ----------------------------------------------------------------------

// Bins of the counting sort: the top 16 bits of a non-negative double (sign, exponent and 4
// mantissa bits) order like the costs. The clamp only matters for a NaN with its sign bit
// set (check_finite=False); it keeps the index in range.
constexpr int32_t kCostBins = 1 << 15;

LRC_HD int32_t cost_bin(uint64_t bits) {
  const uint64_t b = bits >> 48;
  return b < static_cast<uint64_t>(kCostBins) ? static_cast<int32_t>(b) : kCostBins - 1;
}

// The bin of edge e, or -1 when the zero-cost pre-pass already joined its endpoints.
template <class Ops>
LRC_HD int32_t live_bin(const Slice& s, int32_t e, Ops& ops) {
  int32_t u, v;
  edge_endpoints(s.g, e, u, v);
  if (find_root(s.parent, u, ops) == find_root(s.parent, v, ops)) return -1;
  return cost_bin(cost_bits(edge_cost(ops.ld(s.img + u), ops.ld(s.img + v))));
}

// A window width that makes the whole sorted list one window.
constexpr int32_t kOneWindow = 0x7fffffff;

// bin_end[b]: one past the last sorted edge of bins 0..b (non-decreasing; the last entry is
// the number of live edges). The window starting at `start` (a bin boundary) ends at the first
// bin boundary at least `width` edges later, or at the end of the list.
template <class Ops>
LRC_HD int32_t window_end(const int32_t* bin_end, int32_t start, int32_t width, Ops& ops) {
  const int32_t live = ops.ld(bin_end + kCostBins - 1);
  if (live - start <= width) return live;
  const int32_t target = start + width;
  int32_t lo = 0, hi = kCostBins - 1;
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo) / 2;
    if (ops.ld(bin_end + mid) >= target)
      hi = mid;
    else
      lo = mid + 1;
  }
  return ops.ld(bin_end + lo);
}

// ---- main pass -------------------------------------------------------------------------

// Phase A: drop the edge (return false) or offer its cost to both roots.
template <class Ops>
LRC_HD bool main_offer(const Slice& s, int32_t e, uint32_t& ra, uint32_t& rb, Ops& ops) {
  int32_t u, v;
  edge_endpoints(s.g, e, u, v);
  const int32_t a = find_root(s.parent, u, ops), b = find_root(s.parent, v, ops);
  if (a == b) return false;
  if (ops.ld(s.csize + a) < 0 || ops.ld(s.csize + b) < 0) return false;  // frozen
  const uint64_t c = cost_bits(edge_cost(ops.ld(s.img + u), ops.ld(s.img + v)));
  ops.min_u64(s.mincost + a, c);
  ops.min_u64(s.mincost + b, c);
  ra = static_cast<uint32_t>(a);
  rb = static_cast<uint32_t>(b);
  return true;
}

// Phase B: among edges at a root's minimum cost, the smallest index wins.
template <class Ops>
LRC_HD void reserve(const Slice& s, int32_t e, uint32_t ra_tagged, uint32_t rb_tagged, bool small_only,
                    Ops& ops) {
  int32_t u, v;
  edge_endpoints(s.g, e, u, v);
  const uint64_t c = cost_bits(edge_cost(ops.ld(s.img + u), ops.ld(s.img + v)));
  const int32_t a = static_cast<int32_t>(ra_tagged & ~kSmallBit);
  const int32_t b = static_cast<int32_t>(rb_tagged & ~kSmallBit);
  if ((!small_only || (ra_tagged & kSmallBit)) && ops.ld(s.mincost + a) == c) ops.min_i32(s.minidx + a, e);
  if ((!small_only || (rb_tagged & kSmallBit)) && ops.ld(s.mincost + b) == c) ops.min_i32(s.minidx + b, e);
}

template <class Ops>
LRC_HD void release(const Slice& s, int32_t r, Ops& ops) {
  ops.st(s.mincost + r, kNoCost);
  ops.st(s.minidx + r, kNoEdge);
}

// Phase C: decide the edges that both endpoint roots reserved; freeze roots whose own
// minimum edge fails their own threshold. Each root is reserved by exactly one edge, so the
// writes below never conflict.
template <class Ops>
LRC_HD void main_commit(const Slice& s, int32_t e, uint32_t ra, uint32_t rb, Ops& ops) {
  const int32_t a = static_cast<int32_t>(ra), b = static_cast<int32_t>(rb);
  const bool own_a = ops.ld(s.minidx + a) == e;
  const bool own_b = ops.ld(s.minidx + b) == e;
  if (!own_a && !own_b) return;
  int32_t u, v;
  edge_endpoints(s.g, e, u, v);
  const double c = edge_cost(ops.ld(s.img + u), ops.ld(s.img + v));
  const float ta = own_a ? threshold(ops.ld(s.cint + a), ops.ld(s.csize + a), s.k) : 0.0f;
  const float tb = own_b ? threshold(ops.ld(s.cint + b), ops.ld(s.csize + b), s.k) : 0.0f;
  if (own_a && own_b && c < static_cast<double>(ta < tb ? ta : tb)) {
    const int32_t lo = a < b ? a : b, hi = a < b ? b : a;
    const int32_t size = ops.ld(s.csize + a) + ops.ld(s.csize + b);
    ops.st(s.parent + hi, lo);
    ops.st(s.csize + lo, size);
    ops.st(s.cint + lo, c);
  } else {
    if (own_a && !(c < static_cast<double>(ta))) ops.st(s.csize + a, -ops.ld(s.csize + a));
    if (own_b && !(c < static_cast<double>(tb))) ops.st(s.csize + b, -ops.ld(s.csize + b));
  }
  if (own_a) release(s, a, ops);
  if (own_b) release(s, b, ops);
}

// ---- min_size pass ---------------------------------------------------------------------

template <class Ops>
LRC_HD bool small_offer(const Slice& s, int32_t e, uint32_t& ra, uint32_t& rb, Ops& ops) {
  int32_t u, v;
  edge_endpoints(s.g, e, u, v);
  const int32_t a = find_root(s.parent, u, ops), b = find_root(s.parent, v, ops);
  if (a == b) return false;
  const bool sa = ops.ld(s.csize + a) < s.min_size, sb = ops.ld(s.csize + b) < s.min_size;
  if (!sa && !sb) return false;  // two large components never merge again
  const uint64_t c = cost_bits(edge_cost(ops.ld(s.img + u), ops.ld(s.img + v)));
  if (sa) ops.min_u64(s.mincost + a, c);
  if (sb) ops.min_u64(s.mincost + b, c);
  ra = static_cast<uint32_t>(a) | (sa ? kSmallBit : 0u);
  rb = static_cast<uint32_t>(b) | (sb ? kSmallBit : 0u);
  return true;
}

template <class Ops>
LRC_HD void small_commit(const Slice& s, int32_t e, uint32_t ra, uint32_t rb, Ops& ops) {
  const bool sa = ra & kSmallBit, sb = rb & kSmallBit;
  const int32_t a = static_cast<int32_t>(ra & ~kSmallBit), b = static_cast<int32_t>(rb & ~kSmallBit);
  const bool own_a = sa && ops.ld(s.minidx + a) == e;
  const bool own_b = sb && ops.ld(s.minidx + b) == e;
  if ((!sa || own_a) && (!sb || own_b)) {
    if (sa && sb) {
      const int32_t lo = a < b ? a : b, hi = a < b ? b : a;
      const int32_t size = ops.ld(s.csize + a) + ops.ld(s.csize + b);
      ops.st(s.parent + hi, lo);
      ops.st(s.csize + lo, size);
    } else if (sa) {  // several small roots may join one large root in the same round
      ops.st(s.parent + a, b);
      ops.add_i32(s.csize + b, ops.ld(s.csize + a));
    } else {
      ops.st(s.parent + b, a);
      ops.add_i32(s.csize + a, ops.ld(s.csize + b));
    }
  }
  if (own_a) release(s, a, ops);
  if (own_b) release(s, b, ops);
}

}  // namespace fh
}  // namespace lrc
