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
// scan, scatter), and the rounds offer only a prefix of that order: the edges loaded so far
// that are still pending. The next window of whole bins (at least `width` edges, see
// window_end) is loaded when at most refill_below(width) loaded edges are still pending. Every
// edge of a later bin costs strictly more, so the rounds over a prefix make exactly the
// sequential decisions, and a frozen component stays frozen for the edges loaded later (they
// cost more than the one that failed). Without windows the ~20k edges that wait behind a long
// chain of dependent merges were re-offered every round (real abdominal CT: 19.8 offers per
// edge in one window, 1.47 with 2048-edge windows).
//
// Hub extension (main pass): a component that grows by a chain of dependent merges -- on CT
// the air region absorbing the smoothing halo around the body, one pixel per round -- makes
// the rounds a sequence. So after each round's commits one thread continues the largest
// component merged in that round (the hub) sequentially: its loaded pending edges,
// sorted, are decided in (cost, index) order as long as each one is also the minimum pending
// edge of its other endpoint (recorded at that round's reservation), which makes it exactly the
// next sequential decision for both components. An absorbed single pixel adds its own edges;
// anything else stops the extension, and the rounds go on. On real abdominal CT (2048-edge
// windows) the main pass takes 231 rounds instead of 1,127, the extension deciding about 1,160
// edges per slice (see hub_extend).
//
// min_size pass: the same rounds over edges with at least one endpoint below min_size; only
// the small endpoints reserve (a large component merges with whoever picks it, and sizes only
// grow, so an edge between two large components is dead for good). Its windows are wider
// (kSmallPassWindow): it has no long chains, and narrow windows would multiply its rounds
// (real CT: 24 rounds and 2.63 offers per edge in one window, 30 and 0.76 with 65,536-edge
// windows, 121 and 0.46 with 4,096).
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
  int32_t* resv;      // the edge each root reserved in the latest round it had one, (N,)
  uint64_t* hub;      // (size << 32) | root of the largest component merged this round, or 0
};

// The root of x in a union-find forest (int32 pixels, or the slot engine's int16 entries).
template <class T, class Ops>
LRC_HD int32_t find_root(T* parent, int32_t x, Ops& ops) {
  int32_t p = ops.ld(parent + x);
  while (p != x) {
    const int32_t gp = ops.ld(parent + p);
    if (gp != p) ops.st(parent + x, static_cast<T>(gp));  // path halving; only ever points at an ancestor
    x = gp;
    p = ops.ld(parent + x);
  }
  return x;
}

// base[a] and base[b], loaded together (inside an enclosing LRC_INDEPENDENT_LOADS block, with
// the rest of that group).
template <class T, class Ops>
LRC_HD void load_pair(const T* base, int32_t a, int32_t b, T& va, T& vb, Ops& ops) {
  LRC_INDEPENDENT_LOADS;
  va = ops.ld(base + a);
  vb = ops.ld(base + b);
}

// find_root of x and of y side by side, from their parents px and py already loaded: each
// step's loads are issued together.
template <class Ops>
LRC_HD void climb_pair(int32_t* parent, int32_t& x, int32_t px, int32_t& y, int32_t py, Ops& ops) {
  while (px != x || py != y) {
    const bool walk_x = px != x, walk_y = py != y;
    int32_t gx = px, gy = py;
    {
      LRC_INDEPENDENT_LOADS;
      if (walk_x) gx = ops.ld(parent + px);
      if (walk_y) gy = ops.ld(parent + py);
    }
    if (walk_x) {
      if (gx != px) ops.st(parent + x, gx);  // path halving, as find_root
      x = gx;
    }
    if (walk_y) {
      if (gy != py) ops.st(parent + y, gy);
      y = gy;
    }
    {
      LRC_INDEPENDENT_LOADS;
      if (walk_x) px = ops.ld(parent + x);
      if (walk_y) py = ops.ld(parent + y);
    }
  }
}

// The roots of x and y (which become them).
template <class Ops>
LRC_HD void find_root_pair(int32_t* parent, int32_t& x, int32_t& y, Ops& ops) {
  int32_t px, py;
  load_pair<int32_t>(parent, x, y, px, py, ops);
  climb_pair(parent, x, px, y, py, ops);
}

// The endpoints' values (img_u, img_v) and roots (u and v become them) of an edge (u, v).
template <class Ops>
LRC_HD void load_edge(const Slice& s, int32_t& u, int32_t& v, double& img_u, double& img_v, Ops& ops) {
  int32_t pu, pv;
  {
    LRC_INDEPENDENT_LOADS;  // one group for both pairs
    load_pair(s.img, u, v, img_u, img_v, ops);
    load_pair<int32_t>(s.parent, u, v, pu, pv, ops);
  }
  climb_pair(s.parent, u, pu, v, pv, ops);
}

// The root of x without writing anything. For the pass that stores every pixel's root into
// parent[]: there, another thread's path halving could read parent[x] before that store and
// write an older ancestor back after it.
template <class T, class Ops>
LRC_HD int32_t root_of(const T* parent, int32_t x, Ops& ops) {
  int32_t p = ops.ld(parent + x);
  while (p != x) {
    x = p;
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
    find_root_pair(parent, a, b, ops);
    if (a == b) return;
    if (a > b) {
      const int32_t t = a;
      a = b;
      b = t;
    }
    if (ops.cas_i32(parent + b, b, a) == b) return;
  }
}

// The cost of edge e as its ordered bits (the key's first part), from the smoothed image.
template <class Ops>
LRC_HD uint64_t edge_cost_bits(const Slice& s, int32_t e, Ops& ops) {
  int32_t u, v;
  edge_endpoints(s.g, e, u, v);
  double img_u, img_v;
  load_pair(s.img, u, v, img_u, img_v, ops);
  return cost_bits(edge_cost(img_u, img_v));
}

template <class Ops>
LRC_HD void zero_union(const Slice& s, int32_t e, Ops& ops) {
  if (edge_cost_bits(s, e, ops) != cost_bits(0.0)) return;  // edge_cost is never -0.0
  int32_t u, v;
  edge_endpoints(s.g, e, u, v);
  unite(s.parent, u, v, ops);
}

// ---- cost windows ----------------------------------------------------------------------

// Bins of the counting sort: the top 16 bits of a non-negative double (sign, exponent and 4
// mantissa bits) order like the costs. cost_bits gives every NaN one positive key, so the clamp
// only guards the index against a key that is not a cost_bits one.
constexpr int32_t kCostBins = 1 << 15;

LRC_HD int32_t cost_bin(uint64_t bits) {
  const uint64_t b = bits >> 48;
  return b < static_cast<uint64_t>(kCostBins) ? static_cast<int32_t>(b) : kCostBins - 1;
}

// The bin of edge e, or -1 when the zero-cost pre-pass already joined its endpoints.
template <class Ops>
LRC_HD int32_t live_bin(const Slice& s, int32_t e, Ops& ops) {
  int32_t u, v;
  double img_u, img_v;
  edge_endpoints(s.g, e, u, v);
  load_edge(s, u, v, img_u, img_v, ops);
  if (u == v) return -1;
  return cost_bin(cost_bits(edge_cost(img_u, img_v)));
}

// The window width of the min_size pass.
constexpr int32_t kSmallPassWindow = 1 << 16;

// The next window is loaded when at most this many loaded edges are still pending: rounds that
// only drain the tail of a window then also start the next one (real CT, 2048-edge windows with
// the hub extension: 231 rounds instead of 304, for 4% more edge offers).
LRC_HD int32_t refill_below(int32_t width) { return width / 8; }

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

// Cost bits below which an edge lies in sorted[0, end) (end a bin boundary): the start of the
// bin of sorted[end], or kNoCost when end is the end of the list.
template <class Ops>
LRC_HD uint64_t window_bound(const Slice& s, const int32_t* sorted, int32_t end, int32_t live, Ops& ops) {
  if (end >= live) return kNoCost;
  return static_cast<uint64_t>(cost_bin(edge_cost_bits(s, ops.ld(sorted + end), ops))) << 48;
}

// ---- main pass -------------------------------------------------------------------------

// Offers cost c to root a (when to_a) and to root b (when to_b). Only an offer below the minimum
// seen takes an atomic: most offers lose, and a load is much cheaper than an atomic. (The
// callers load the roots' sizes first; loading the minimums with them would not save a wait:
// the compiler moves these loads below the callers' early returns.)
template <class Ops>
LRC_HD void offer_cost(const Slice& s, int32_t a, bool to_a, int32_t b, bool to_b, uint64_t c, Ops& ops) {
  uint64_t min_a, min_b;
  load_pair<uint64_t>(s.mincost, a, b, min_a, min_b, ops);
  if (to_a && c < min_a) ops.red_min_u64(s.mincost + a, c);
  if (to_b && c < min_b) ops.red_min_u64(s.mincost + b, c);
}

// Phase A: drop the edge (return false) or offer its cost to both roots.
template <class Ops>
LRC_HD bool main_offer(const Slice& s, int32_t e, uint32_t& ra, uint32_t& rb, Ops& ops) {
  int32_t a, b;
  double img_u, img_v;
  edge_endpoints(s.g, e, a, b);
  load_edge(s, a, b, img_u, img_v, ops);
  if (a == b) return false;
  int32_t size_a, size_b;
  load_pair<int32_t>(s.csize, a, b, size_a, size_b, ops);
  if (size_a < 0 || size_b < 0) return false;  // frozen
  offer_cost(s, a, true, b, true, cost_bits(edge_cost(img_u, img_v)), ops);
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
  const int32_t a = static_cast<int32_t>(ra_tagged & ~kSmallBit);
  const int32_t b = static_cast<int32_t>(rb_tagged & ~kSmallBit);
  double img_u, img_v;
  uint64_t min_a, min_b;
  int32_t idx_a, idx_b;
  {
    LRC_INDEPENDENT_LOADS;  // one group for the three pairs
    load_pair(s.img, u, v, img_u, img_v, ops);
    load_pair<uint64_t>(s.mincost, a, b, min_a, min_b, ops);
    load_pair<int32_t>(s.minidx, a, b, idx_a, idx_b, ops);
  }
  const uint64_t c = cost_bits(edge_cost(img_u, img_v));
  if ((!small_only || (ra_tagged & kSmallBit)) && min_a == c && e < idx_a) ops.red_min_i32(s.minidx + a, e);
  if ((!small_only || (rb_tagged & kSmallBit)) && min_b == c && e < idx_b) ops.red_min_i32(s.minidx + b, e);
}

// After a root's reserved edge e was decided: remember it in resv, reset the minimum.
template <class Ops>
LRC_HD void release(const Slice& s, int32_t r, int32_t e, Ops& ops) {
  ops.st(s.resv + r, e);
  ops.st(s.mincost + r, kNoCost);
  ops.st(s.minidx + r, kNoEdge);
}

// Phase C: decide the edges that both endpoint roots reserved; freeze roots whose own
// minimum edge fails their own threshold. Each root is reserved by exactly one edge, so the
// writes below never conflict. Everything is loaded in one group before the edge knows whether
// it owns a root (a root it does not own may be written meanwhile; those values go unused).
template <class Ops>
LRC_HD void main_commit(const Slice& s, int32_t e, uint32_t ra, uint32_t rb, Ops& ops) {
  const int32_t a = static_cast<int32_t>(ra), b = static_cast<int32_t>(rb);
  int32_t u, v;
  edge_endpoints(s.g, e, u, v);
  int32_t idx_a, idx_b, size_a, size_b;
  double img_u, img_v, cint_a, cint_b;
  {
    LRC_INDEPENDENT_LOADS;  // one group for the four pairs
    load_pair<int32_t>(s.minidx, a, b, idx_a, idx_b, ops);
    load_pair(s.img, u, v, img_u, img_v, ops);
    load_pair<int32_t>(s.csize, a, b, size_a, size_b, ops);
    load_pair<double>(s.cint, a, b, cint_a, cint_b, ops);
  }
  const bool own_a = idx_a == e, own_b = idx_b == e;
  if (!own_a && !own_b) return;
  const double c = edge_cost(img_u, img_v);
  const float ta = own_a ? threshold(cint_a, size_a, s.k) : 0.0f;
  const float tb = own_b ? threshold(cint_b, size_b, s.k) : 0.0f;
  if (own_a && own_b && c < static_cast<double>(ta < tb ? ta : tb)) {
    const int32_t lo = a < b ? a : b, hi = a < b ? b : a;
    const int32_t size = size_a + size_b;
    ops.st(s.parent + hi, lo);
    ops.st(s.csize + lo, size);
    ops.st(s.cint + lo, c);
    const uint64_t hub = (static_cast<uint64_t>(size) << 32) | static_cast<uint32_t>(lo);
    if (hub > ops.ld(s.hub)) ops.red_max_u64(s.hub, hub);
  } else {
    if (own_a && !(c < static_cast<double>(ta))) ops.st(s.csize + a, -size_a);
    if (own_b && !(c < static_cast<double>(tb))) ops.st(s.csize + b, -size_b);
  }
  if (own_a) release(s, a, e, ops);
  if (own_b) release(s, b, e, ops);
}

// ---- hub extension ---------------------------------------------------------------------

constexpr int32_t kFrontierCap = 2048;  // hub edges sorted per round (see frontier_cut)
constexpr int32_t kHeapCap = 256;       // edges of absorbed pixels waiting in the extension
constexpr int32_t kAbsorbedLog = 10;    // slots of the set of pixels absorbed by one extension
constexpr int32_t kAbsorbedCap = 1 << kAbsorbedLog;

// A frontier of more than kFrontierCap edges (wide cost windows) is cut: hist[i] counts its
// edges in cost bin min_bin + i (the last entry also those above), and only the edges of the
// bins below min_bin + frontier_cut(hist) -- at most kFrontierCap -- are sorted; the extension
// then stops at the first cost of the cut bin, as it stops where the loaded window ends (any
// stop is exact). hist has kAbsorbedCap entries (the kernel counts in the absorbed set's
// storage before clearing it). The kernel and the emulation cut alike.
LRC_HD int32_t frontier_cut(const int32_t* hist) {
  int32_t below = 0, i = 0;
  while (i < kAbsorbedCap - 1 && below + hist[i] <= kFrontierCap) below += hist[i++];
  return i;
}

LRC_HD bool key_less(uint64_t cost_a, int32_t edge_a, uint64_t cost_b, int32_t edge_b) {
  return cost_a < cost_b || (cost_a == cost_b && edge_a < edge_b);
}

// Hub edges in three caller-provided arrays: the key (cost bits, edge) and the edge's endpoint
// outside the hub. The frontier (sorted) and the heap of the hub extension both hold them.
struct HubEdges {
  uint64_t* cost;
  int32_t* edge;
  int32_t* outside;

  LRC_HD bool less(int32_t i, int32_t j) const { return less_than(i, *this, j); }
  LRC_HD bool less_than(int32_t i, const HubEdges& other, int32_t j) const {
    return key_less(cost[i], edge[i], other.cost[j], other.edge[j]);
  }
  LRC_HD void set(int32_t i, uint64_t c, int32_t e, int32_t o) const {
    cost[i] = c;
    edge[i] = e;
    outside[i] = o;
  }
  LRC_HD void copy(int32_t to, int32_t from) const { set(to, cost[from], edge[from], outside[from]); }
  LRC_HD void swap(int32_t i, int32_t j) const {
    const uint64_t c = cost[i];
    const int32_t e = edge[i], o = outside[i];
    copy(i, j);
    set(j, c, e, o);
  }
};

// A binary min-heap of hub edges by key, on kHeapCap entries.
struct EdgeHeap {
  HubEdges at;
  int32_t size;

  LRC_HD void push(uint64_t c, int32_t e, int32_t o) {
    int32_t i = size++;
    while (i > 0) {
      const int32_t up = (i - 1) / 2;
      if (!key_less(c, e, at.cost[up], at.edge[up])) break;
      at.copy(i, up);
      i = up;
    }
    at.set(i, c, e, o);
  }

  LRC_HD void pop() {
    const int32_t last = --size;
    const uint64_t c = at.cost[last];
    const int32_t e = at.edge[last], o = at.outside[last];
    int32_t i = 0;
    while (true) {
      int32_t child = 2 * i + 1;
      if (child >= size) break;
      if (child + 1 < size && at.less(child + 1, child)) ++child;
      if (!key_less(at.cost[child], at.edge[child], c, e)) break;
      at.copy(i, child);
      i = child;
    }
    at.set(i, c, e, o);
  }
};

// Home slot of pixel p in an open-addressing table of 2^log slots (Fibonacci hashing).
LRC_HD int32_t hash_slot(int32_t p, int log) {
  return static_cast<int32_t>((static_cast<uint32_t>(p) * 2654435761u) >> (32 - log));
}

// Pixels absorbed by one hub extension: open addressing with linear probing on caller-provided
// slots, all -1 on entry. Inserts stop at half load; a pixel left out is found by its root.
struct PixelSet {
  int32_t* slot;
  int32_t size;

  LRC_HD static int32_t home(int32_t p) { return hash_slot(p, kAbsorbedLog); }
  LRC_HD bool contains(int32_t p) const {
    for (int32_t i = home(p);; i = (i + 1) & (kAbsorbedCap - 1)) {
      if (slot[i] == p) return true;
      if (slot[i] < 0) return false;
    }
  }
  // Whether p was recorded.
  LRC_HD bool insert(int32_t p) {
    if (2 * size >= kAbsorbedCap) return false;
    int32_t i = home(p);
    while (slot[i] >= 0) i = (i + 1) & (kAbsorbedCap - 1);
    slot[i] = p;
    ++size;
    return true;
  }
};

// For the pixels outside the hub at the far end of frontier edges: the directions (bits 0..7,
// pixel_edge's numbering) of those edges, looked up from the pixel. An absorbed pixel's edges into
// the hub are frontier edges, which the extension would only load values for to find them in
// the frontier and skip; with this table it skips them without a load. Open addressing on
// caller-provided slots (kNearHubCap, all -1 on entry), each (pixel << 8) | directions, for
// pixels below 2^23; a pixel that finds no slot within kNearHubProbes (or a larger one) is not
// recorded, and its edges are loaded as before.
constexpr int32_t kNearHubLog = 10;
constexpr int32_t kNearHubCap = 1 << kNearHubLog;
constexpr int32_t kNearHubProbes = 8;

struct NearHub {
  int32_t* slot;

  LRC_HD static int32_t home(int32_t p) { return hash_slot(p, kNearHubLog); }
  // The recorded directions of p (0 when p is not recorded).
  LRC_HD unsigned directions(int32_t p) const {
    for (int32_t n = 0, i = home(p); n < kNearHubProbes; ++n, i = (i + 1) & (kNearHubCap - 1)) {
      const int32_t v = slot[i];
      if (v < 0) return 0;
      if ((v >> 8) == p) return static_cast<unsigned>(v) & 0xffu;
    }
    return 0;
  }
  // Records direction d of p; lock-free: every access while threads record is atomic (a
  // compare-and-swap claims an empty slot or reports its owner), so that the table has no
  // data race for compute-sanitizer's racecheck to find.
  template <class Ops>
  LRC_HD void add(int32_t p, int d, Ops& ops) const {
    if (p >= (1 << 23)) return;
    const int32_t bit = 1 << d;
    for (int32_t n = 0, i = home(p); n < kNearHubProbes; ++n, i = (i + 1) & (kNearHubCap - 1)) {
      const int32_t v = ops.cas_i32(slot + i, -1, (p << 8) | bit);
      if (v < 0) return;  // claimed
      if ((v >> 8) == p) {
        ops.red_or_i32(slot + i, bit);
        return;
      }
    }
  }
};

// The direction d (pixel_edge's numbering) of the edge from pixel y to its neighbour h.
LRC_HD int direction_to(const Geometry& g, int32_t y, int32_t h) {
  const Pixel from = pixel_at(g, y), to = pixel_at(g, h);
  const int32_t dy = to.i - from.i, dx = to.j - from.j;
  if (dy == 0) return dx > 0 ? 0 : 1;
  if (dx == 0) return dy > 0 ? 2 : 3;
  if (dy == dx) return dy > 0 ? 4 : 5;
  return dy > 0 ? 6 : 7;
}

// Records the frontier edge e, whose endpoint outside the hub is y, in `near`.
template <class Ops>
LRC_HD void near_hub_add(const Slice& s, const NearHub& near, int32_t e, int32_t y, Ops& ops) {
  int32_t u, v;
  edge_endpoints(s.g, e, u, v);
  near.add(y, direction_to(s.g, y, u == y ? v : u), ops);
}

// Whether the key (c, e) is among sorted[0, n) (binary search).
LRC_HD bool sorted_contains(const HubEdges& sorted, int32_t n, uint64_t c, int32_t e) {
  int32_t lo = 0, hi = n;
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo) / 2;
    if (key_less(sorted.cost[mid], sorted.edge[mid], c, e))
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < n && sorted.cost[lo] == c && sorted.edge[lo] == e;
}

// Whether a loaded pending edge belongs to the hub's frontier (exactly one endpoint in the hub,
// roots as after the round's commits): its endpoint outside the hub, or -1.
template <class Ops>
LRC_HD int32_t hub_frontier_outside(const Slice& s, int32_t hub, int32_t e, Ops& ops) {
  int32_t u, v;
  edge_endpoints(s.g, e, u, v);
  int32_t root_u = u, root_v = v;
  find_root_pair(s.parent, root_u, root_v, ops);
  const bool in_u = root_u == hub, in_v = root_v == hub;
  if (in_u == in_v) return -1;
  return in_u ? v : u;
}

// What the hub extension needs of the root y of an edge's outside endpoint w.
struct OutsideRoot {
  int32_t root, size, resv;
  double cint;
};

// The loads of one step are issued together (LRC_INDEPENDENT_LOADS) on the guess that w is its
// own root, as the unmerged pixels that make up most decisions are; a wrong guess costs a root
// walk and a second group of loads.
template <class Ops>
LRC_HD OutsideRoot load_outside_root(const Slice& s, int32_t w, Ops& ops) {
  OutsideRoot y;
  int32_t p;
  {
    LRC_INDEPENDENT_LOADS;
    p = ops.ld(s.parent + w);
    y.size = ops.ld(s.csize + w);
    y.resv = ops.ld(s.resv + w);
    y.cint = ops.ld(s.cint + w);
  }
  y.root = w;
  if (p == w) return y;
  y.root = find_root(s.parent, p, ops);
  {
    LRC_INDEPENDENT_LOADS;
    y.size = ops.ld(s.csize + y.root);
    y.resv = ops.ld(s.resv + y.root);
    y.cint = ops.ld(s.cint + y.root);
  }
  return y;
}

// load_outside_root of the first frontier entries, loaded by the whole team before the hub
// extension (in parallel, while the thread that extends would otherwise wait for each in turn):
// the extension takes entry i < n from here. Its own writes are the only ones during the
// extension, and they can make an entry stale in two ways only: the root was a single pixel it
// absorbed (then the entry's own pixel is that root, found in `absorbed`), or it froze the root
// (then hub_extend stops taking prefetched entries, as it does when `absorbed` is full).
constexpr int32_t kPrefetchCap = 128;  // frontier entries loaded ahead: on real CT ~16 are taken per round
struct OutsideRoots {
  int32_t* root;
  int32_t* size;
  int32_t* resv;
  double* cint;
  int32_t n;

  LRC_HD OutsideRoot at(int32_t i) const { return {root[i], size[i], resv[i], cint[i]}; }
  LRC_HD void set(int32_t i, const OutsideRoot& y) const {
    root[i] = y.root;
    size[i] = y.size;
    resv[i] = y.resv;
    cint[i] = y.cint;
  }
};

// The hub extension, run by one thread after the round's commits. frontier[0, n_frontier): the
// hub's loaded pending edges (with their endpoints outside the hub) sorted by key; end_bound: the cost bits where the edges not loaded yet begin (kNoCost once all are
// loaded); heap: empty, kHeapCap entries; absorbed: empty; near: the frontier edges'
// directions at their outside pixels (near_hub_add); pre: load_outside_root of the first pre.n
// frontier entries, loaded before (OutsideRoots; n = 0 loads every one here). Each edge taken, smallest key
// first, from the frontier and the heap is (hub, y) with y the root of its outside endpoint:
// - both ends already in the hub: internal now, skipped; y frozen: the edge is dead, skipped;
// - y reserved another edge this round (resv): y has a smaller pending edge, which the
//   sequential visit decides first -- stop;
// - otherwise it is the minimum pending edge of both: decide it as main_commit does. A merged
//   single pixel adds its other edges to the heap; a merged larger component stops the
//   extension (its own pending edges are not in the frontier); a hub frozen by its threshold
//   stops it; a full heap stops it.
// Every pending edge of the hub below end_bound is in the frontier or the heap, edges from
// end_bound on are never taken, and y's minimum pending edge
// cannot change before the hub reaches it (its edges only die or turn into hub edges), so each
// decision is the sequential one. Returns the number of edges decided.
//
// Latency: the thread works alone while the team waits, so each global load it waits for
// counts. The hub's own size and internal difference live in registers (no one else writes
// them meanwhile); only the outside endpoint's root is looked up (the other endpoint is in the
// hub), its state loaded in one group (load_outside_root). Most edges taken turn out internal
// (real CT: 4 of 5), and those are recognised without a global load: an edge whose outside
// endpoint this extension absorbed (`absorbed`). An absorbed pixel's edges into the hub are its
// frontier edges, recorded by direction in `near` while the frontier was loaded, and skipped
// without a load; the values at the far ends of its other edges load with its own, four at a
// time (on real CT usually one group), through Ops::ld_img, which may serve them from the SM's
// L1: the pixels absorbed one after another share neighbours.
template <class Ops>
LRC_HD int32_t hub_extend(const Slice& s, int32_t hub, const HubEdges& frontier, int32_t n_frontier,
                          uint64_t end_bound, EdgeHeap heap, PixelSet absorbed, NearHub near, OutsideRoots pre,
                          Ops& ops) {
  int32_t m = hub, steps = 0, next = 0;
  int32_t m_size = ops.ld(s.csize + m);
  double m_cint = ops.ld(s.cint + m);
  while (true) {
    uint64_t c;
    int32_t e, w, entry = -1;  // entry: the frontier index, when the edge comes from the frontier
    const bool from_heap = heap.size > 0 && (next == n_frontier || heap.at.less_than(0, frontier, next));
    if (from_heap) {
      c = heap.at.cost[0];
      e = heap.at.edge[0];
      w = heap.at.outside[0];
      heap.pop();
    } else if (next < n_frontier) {
      c = frontier.cost[next];
      e = frontier.edge[next];
      w = frontier.outside[next];
      entry = next++;
    } else {
      break;
    }
    if (c >= end_bound) break;
    if (absorbed.contains(w)) continue;  // both ends in the hub now
    const OutsideRoot y = entry >= 0 && entry < pre.n ? pre.at(entry) : load_outside_root(s, w, ops);
    if (y.root == m || y.size < 0) continue;  // internal now, or dead (y frozen)
    if (y.resv != e) break;
    ++steps;
    const double cost = bits_cost(c);
    const float tm = threshold(m_cint, m_size, s.k);
    const float ty = threshold(y.cint, y.size, s.k);
    if (cost < static_cast<double>(tm < ty ? tm : ty)) {
      const int32_t lo = m < y.root ? m : y.root, hi = m < y.root ? y.root : m;
      m_size += y.size;
      m_cint = cost;
      ops.st(s.parent + hi, lo);
      ops.st(s.csize + lo, m_size);
      ops.st(s.cint + lo, m_cint);
      m = lo;
      if (y.size != 1) break;
      // y is a single pixel: its other edges join the heap, except the edge just taken, those
      // whose far end it absorbed, and its frontier edges (into the hub; `near`). The values at
      // the far ends are loaded four at a time, together, the first four with y's own (an
      // unrolled loop keeps them in registers; eight at once would spill at 1024 threads).
      if (!absorbed.insert(y.root)) pre.n = 0;  // not recorded: its prefetched entries would be stale
      const unsigned into_hub = near.directions(y.root);
      const Pixel y_px = pixel_at(s.g, y.root);  // one division by W for all its edges
      unsigned todo = 0;  // bit d: edge d of y goes on
      LRC_UNROLL
      for (int d = 0; d < 8; ++d) {
        int32_t edge, other;
        if (!(into_hub >> d & 1u) && pixel_edge(s.g, y_px, d, edge, other) && edge != e &&
            !absorbed.contains(other))
          todo |= 1u << d;
      }
      double img_y = 0.0;
      for (bool first = true; first || todo != 0; first = false) {
        int dir[4];
        double img_other[4];
        int n = 0;
        {
          LRC_INDEPENDENT_LOADS;
          if (first) img_y = ops.ld_img(s.img + y.root);
          LRC_UNROLL
          for (int slot = 0; slot < 4; ++slot) {
            if (todo == 0) break;
            int32_t edge, other;
            dir[slot] = lowest_set_bit(todo);
            todo &= todo - 1;
            pixel_edge(s.g, y_px, dir[slot], edge, other);
            img_other[slot] = ops.ld_img(s.img + other);
            n = slot + 1;
          }
        }
        LRC_UNROLL
        for (int slot = 0; slot < 4; ++slot) {
          if (slot >= n) break;
          int32_t edge, other;
          pixel_edge(s.g, y_px, dir[slot], edge, other);
          // edge_endpoints orders the ends by pixel index
          const uint64_t ct =
              cost_bits(other > y.root ? edge_cost(img_y, img_other[slot]) : edge_cost(img_other[slot], img_y));
          if (ct >= end_bound || sorted_contains(frontier, n_frontier, ct, edge)) continue;
          if (heap.size == kHeapCap) return steps;
          heap.push(ct, edge, other);
        }
      }
    } else {
      if (!(cost < static_cast<double>(ty))) {
        ops.st(s.csize + y.root, -y.size);
        pre.n = 0;  // prefetched entries of y would still say it is not frozen: load the rest
      }
      if (!(cost < static_cast<double>(tm))) {
        ops.st(s.csize + m, -m_size);
        break;
      }
    }
  }
  return steps;
}

// ---- slot engine (main pass) -------------------------------------------------------------
// The rounds above keep every root's state in global memory, so each phase of a round waits on
// chains of dependent global loads and atomics (about 18 us a round on an H200), and the hub
// extension exists to cut the number of rounds. The slot engine runs the main pass on one CTA
// with the state of the current window's roots in shared memory instead:
// - a window is a run of whole cost bins of at most kSlotEdges live edges; a bin larger than
//   that is split by the next 12 bits of the cost (sub-bins, sub_bin) into sub-windows, and
//   a sub-bin that is still too large hands the rest of the pass, from the start of its bin, to
//   the global rounds (any prefix of the order may precede them: every edge decided here joined
//   its endpoints or froze one of them, so they drop it);
// - each window's roots are looked up once (global union-find) and entered in a hash table of
//   kSlots entries (the slot of a root is its entry) by the thread that claims the entry, with
//   their size and internal difference;
// - the window is then drained by rounds of deterministic reservations on the slots (offer,
//   reserve, commit, as main_offer / reserve / main_commit, but with a local union-find over
//   slots, and every edge of the window decided before the next window is loaded);
// - the slots' outcome goes back to global memory (a merged root points at the root of the
//   slot it merged into; sizes, internal differences, frozen marks), and the table is cleared.
// Real abdominal CT (512^2, 1536-edge windows, CPU model): about 270 windows and 1,500-1,700
// rounds per slice, every window within the table, no sub-bin over the cap. The state of one
// window fits the shared memory of one CTA (kSlotBytes).
constexpr int32_t kSlotLog = 12;
constexpr int32_t kSlots = 1 << kSlotLog;       // table entries; a window has <= 2 * kSlotEdges roots
constexpr int32_t kSlotEdges = 1536;            // edges per window
constexpr int32_t kSubBinShift = 36;            // sub-bin: cost bits 36..47, below the bin's 16
constexpr int32_t kSubBins = 1 << 12;
constexpr int16_t kDeadEdge = -1;               // a window edge whose endpoints were already joined
static_assert(2 * kSlotEdges < kSlots, "the table always has a free entry");

// The slot engine's arrays, carved from one block of kSlotBytes (shared memory on the GPU).
struct SlotTable {
  int32_t* root;      // (kSlots,) the global root of the entry, -1 when empty
  int16_t* up;        // (kSlots,) local union-find over entries
  int32_t* size;      // (kSlots,) component size at local roots; negative = frozen
  double* cint;       // (kSlots,)
  uint64_t* mincost;  // (kSlots,) minimum offered cost bits, kNoCost when none
  int32_t* minidx;    // (kSlots,) minimum edge at that cost, kNoEdge when none
  int32_t* edge;      // (kSlotEdges,) the window's edges
  uint64_t* cost;     // (kSlotEdges,) their cost bits
  int16_t* end_a;     // (kSlotEdges,) the entries of their endpoints' roots, or kDeadEdge
  int16_t* end_b;
  int16_t* list[2];   // (kSlotEdges,) window edges pending, by round parity
  int16_t* ra;        // (kSlotEdges,) the local roots of list[...] entries, as phase A found them
  int16_t* rb;
  int32_t* sub_end;   // (kSubBins,) sub-bins of a large bin: counts, then ends
  int32_t* ctrl;      // (3,) the rounds' append counters, by round % 3
};

constexpr size_t kSlotBytes = kSlots * (4 + 2 + 4 + 8 + 8 + 4) + kSlotEdges * (4 + 8 + 2 + 2 + 2 + 2 + 2 + 2) +
                              kSubBins * 4 + 3 * 4;

// The arrays in `base` (8-byte aligned, kSlotBytes), widest first so each stays aligned.
LRC_HD SlotTable slot_table(char* base) {
  SlotTable t;
  char* p = base;
  auto take = [&p](size_t bytes) {
    char* q = p;
    p += bytes;
    return q;
  };
  t.cint = reinterpret_cast<double*>(take(8 * kSlots));
  t.mincost = reinterpret_cast<uint64_t*>(take(8 * kSlots));
  t.cost = reinterpret_cast<uint64_t*>(take(8 * kSlotEdges));
  t.root = reinterpret_cast<int32_t*>(take(4 * kSlots));
  t.size = reinterpret_cast<int32_t*>(take(4 * kSlots));
  t.minidx = reinterpret_cast<int32_t*>(take(4 * kSlots));
  t.edge = reinterpret_cast<int32_t*>(take(4 * kSlotEdges));
  t.sub_end = reinterpret_cast<int32_t*>(take(4 * kSubBins));
  t.ctrl = reinterpret_cast<int32_t*>(take(4 * 3));
  t.up = reinterpret_cast<int16_t*>(take(2 * kSlots));
  t.end_a = reinterpret_cast<int16_t*>(take(2 * kSlotEdges));
  t.end_b = reinterpret_cast<int16_t*>(take(2 * kSlotEdges));
  t.list[0] = reinterpret_cast<int16_t*>(take(2 * kSlotEdges));
  t.list[1] = reinterpret_cast<int16_t*>(take(2 * kSlotEdges));
  t.ra = reinterpret_cast<int16_t*>(take(2 * kSlotEdges));
  t.rb = reinterpret_cast<int16_t*>(take(2 * kSlotEdges));
  return t;
}

// The first index of ends[0, n) whose value exceeds x (ends non-decreasing, ends[n - 1] > x).
template <class Ops>
LRC_HD int32_t first_end_after(const int32_t* ends, int32_t n, int32_t x, Ops& ops) {
  int32_t lo = 0, hi = n - 1;
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo) / 2;
    if (ops.ld(ends + mid) > x)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// The end of the next window from `pos` over runs whose ends are ends[0, n_ends) (non-decreasing,
// the last one `total`): `total` when at most kSlotEdges items are left, else the last run end
// at most kSlotEdges after pos, or `pos` itself when the run at pos alone is longer. With the
// cost bins' ends (bin_end, from a bin boundary) it is the next window of whole bins; with a
// large bin's sub-bin ends (relative to the bin), its next sub-window.
template <class Ops>
LRC_HD int32_t slot_window_end(const int32_t* ends, int32_t n_ends, int32_t pos, int32_t total, Ops& ops) {
  if (total - pos <= kSlotEdges) return total;
  const int32_t first = first_end_after(ends, n_ends, pos + kSlotEdges, ops);
  const int32_t end = first > 0 ? ops.ld(ends + first - 1) : 0;
  return end > pos ? end : pos;
}

// The end of the bin that starts at pos (pos < live).
template <class Ops>
LRC_HD int32_t bin_end_after(const int32_t* bin_end, int32_t pos, Ops& ops) {
  return ops.ld(bin_end + first_end_after(bin_end, kCostBins, pos, ops));
}

LRC_HD int32_t sub_bin(uint64_t bits) { return static_cast<int32_t>((bits >> kSubBinShift) & (kSubBins - 1)); }

// The entry of global root r: found, or claimed from an empty one (compare-and-swap; `claimed`).
template <class SOps>
LRC_HD int16_t slot_insert(const SlotTable& t, int32_t r, bool& claimed, SOps& sops) {
  for (int32_t i = hash_slot(r, kSlotLog);; i = (i + 1) & (kSlots - 1)) {
    const int32_t old = sops.cas_i32(t.root + i, -1, r);
    claimed = old == -1;
    if (claimed || old == r) return static_cast<int16_t>(i);
  }
}

// Entry i, just claimed: its root's size and internal difference, no local parent, no offer.
template <class SOps>
LRC_HD void slot_fill(const SlotTable& t, int32_t i, int32_t size, double cint, SOps& sops) {
  sops.st(t.up + i, static_cast<int16_t>(i));
  sops.st(t.size + i, size);
  sops.st(t.cint + i, cint);
  sops.st(t.mincost + i, kNoCost);
  sops.st(t.minidx + i, kNoEdge);
}

// Window edge j is sorted edge e: its cost, and the entries of its endpoints' roots (kDeadEdge
// when the edge is internal already). The thread that claims an entry fills it; the roots' sizes
// and internal differences are loaded together before the claims, whoever will fill them.
template <class Ops, class SOps>
LRC_HD void slot_load_edge(const Slice& s, const SlotTable& t, int32_t j, int32_t e, Ops& ops, SOps& sops) {
  int32_t a, b;
  double img_u, img_v;
  edge_endpoints(s.g, e, a, b);
  load_edge(s, a, b, img_u, img_v, ops);
  sops.st(t.edge + j, e);
  sops.st(t.cost + j, cost_bits(edge_cost(img_u, img_v)));
  if (a == b) {
    sops.st(t.end_a + j, kDeadEdge);
    return;
  }
  int32_t size_a, size_b;
  double cint_a, cint_b;
  {
    LRC_INDEPENDENT_LOADS;  // one group for both pairs
    load_pair<int32_t>(s.csize, a, b, size_a, size_b, ops);
    load_pair<double>(s.cint, a, b, cint_a, cint_b, ops);
  }
  bool new_a, new_b;
  const int16_t ia = slot_insert(t, a, new_a, sops), ib = slot_insert(t, b, new_b, sops);
  if (new_a) slot_fill(t, ia, size_a, cint_a, sops);
  if (new_b) slot_fill(t, ib, size_b, cint_b, sops);
  sops.st(t.end_a + j, ia);
  sops.st(t.end_b + j, ib);
}

// Phase A on window edge j: drop it (false) or offer its cost to both local roots (ra, rb).
template <class SOps>
LRC_HD bool slot_offer(const SlotTable& t, int32_t j, int32_t& ra, int32_t& rb, SOps& sops) {
  const int32_t ea = sops.ld(t.end_a + j);
  if (ea == kDeadEdge) return false;
  const int32_t a = find_root(t.up, ea, sops), b = find_root(t.up, sops.ld(t.end_b + j), sops);
  if (a == b || sops.ld(t.size + a) < 0 || sops.ld(t.size + b) < 0) return false;
  const uint64_t c = sops.ld(t.cost + j);
  if (c < sops.ld(t.mincost + a)) sops.red_min_u64(t.mincost + a, c);
  if (c < sops.ld(t.mincost + b)) sops.red_min_u64(t.mincost + b, c);
  ra = a;
  rb = b;
  return true;
}

// Phase B: among the window edges at a local root's minimum cost, the smallest edge wins.
template <class SOps>
LRC_HD void slot_reserve(const SlotTable& t, int32_t j, int32_t a, int32_t b, SOps& sops) {
  const uint64_t c = sops.ld(t.cost + j);
  const int32_t e = sops.ld(t.edge + j);
  if (sops.ld(t.mincost + a) == c && e < sops.ld(t.minidx + a)) sops.red_min_i32(t.minidx + a, e);
  if (sops.ld(t.mincost + b) == c && e < sops.ld(t.minidx + b)) sops.red_min_i32(t.minidx + b, e);
}

// Phase C, as main_commit on entries: a merge links the entry of the larger global root under
// the other's (as the global rounds link roots).
template <class SOps>
LRC_HD void slot_commit(const Slice& s, const SlotTable& t, int32_t j, int32_t a, int32_t b, SOps& sops) {
  const int32_t e = sops.ld(t.edge + j);
  const bool own_a = sops.ld(t.minidx + a) == e, own_b = sops.ld(t.minidx + b) == e;
  if (!own_a && !own_b) return;
  const double c = bits_cost(sops.ld(t.cost + j));
  const int32_t size_a = sops.ld(t.size + a), size_b = sops.ld(t.size + b);
  const float ta = own_a ? threshold(sops.ld(t.cint + a), size_a, s.k) : 0.0f;
  const float tb = own_b ? threshold(sops.ld(t.cint + b), size_b, s.k) : 0.0f;
  if (own_a && own_b && c < static_cast<double>(ta < tb ? ta : tb)) {
    const bool a_low = sops.ld(t.root + a) < sops.ld(t.root + b);
    const int32_t lo = a_low ? a : b, hi = a_low ? b : a;
    sops.st(t.up + hi, static_cast<int16_t>(lo));
    sops.st(t.size + lo, size_a + size_b);
    sops.st(t.cint + lo, c);
  } else {
    if (own_a && !(c < static_cast<double>(ta))) sops.st(t.size + a, -size_a);
    if (own_b && !(c < static_cast<double>(tb))) sops.st(t.size + b, -size_b);
  }
  if (own_a) {
    sops.st(t.mincost + a, kNoCost);
    sops.st(t.minidx + a, kNoEdge);
  }
  if (own_b) {
    sops.st(t.mincost + b, kNoCost);
    sops.st(t.minidx + b, kNoEdge);
  }
}

// After the window: entry i's outcome into global memory. A merged entry's root points at the
// global root of its local root; a local root stores its size (negative when frozen) and
// internal difference. Reads other entries' roots, so the table is cleared after a barrier.
template <class Ops, class SOps>
LRC_HD void slot_store(const Slice& s, const SlotTable& t, int32_t i, Ops& ops, SOps& sops) {
  const int32_t r = sops.ld(t.root + i);
  if (r < 0) return;
  const int32_t x = root_of(t.up, i, sops);  // no one writes `up` now
  if (x != i) {
    ops.st(s.parent + r, sops.ld(t.root + x));
    return;
  }
  ops.st(s.csize + r, sops.ld(t.size + i));
  ops.st(s.cint + r, sops.ld(t.cint + i));
}

// ---- min_size pass ---------------------------------------------------------------------

template <class Ops>
LRC_HD bool small_offer(const Slice& s, int32_t e, uint32_t& ra, uint32_t& rb, Ops& ops) {
  int32_t a, b;
  double img_u, img_v;
  edge_endpoints(s.g, e, a, b);
  load_edge(s, a, b, img_u, img_v, ops);
  if (a == b) return false;
  int32_t size_a, size_b;
  load_pair<int32_t>(s.csize, a, b, size_a, size_b, ops);
  const bool sa = size_a < s.min_size, sb = size_b < s.min_size;
  if (!sa && !sb) return false;  // two large components never merge again
  offer_cost(s, a, sa, b, sb, cost_bits(edge_cost(img_u, img_v)), ops);
  ra = static_cast<uint32_t>(a) | (sa ? kSmallBit : 0u);
  rb = static_cast<uint32_t>(b) | (sb ? kSmallBit : 0u);
  return true;
}

template <class Ops>
LRC_HD void small_commit(const Slice& s, int32_t e, uint32_t ra, uint32_t rb, Ops& ops) {
  const bool sa = ra & kSmallBit, sb = rb & kSmallBit;
  const int32_t a = static_cast<int32_t>(ra & ~kSmallBit), b = static_cast<int32_t>(rb & ~kSmallBit);
  int32_t idx_a, idx_b, size_a, size_b;
  {
    LRC_INDEPENDENT_LOADS;  // one group for both pairs
    load_pair<int32_t>(s.minidx, a, b, idx_a, idx_b, ops);
    load_pair<int32_t>(s.csize, a, b, size_a, size_b, ops);
  }
  const bool own_a = sa && idx_a == e;
  const bool own_b = sb && idx_b == e;
  if ((!sa || own_a) && (!sb || own_b)) {
    if (sa && sb) {
      const int32_t lo = a < b ? a : b, hi = a < b ? b : a;
      ops.st(s.parent + hi, lo);
      ops.st(s.csize + lo, size_a + size_b);
    } else if (sa) {  // several small roots may join one large root in the same round
      ops.st(s.parent + a, b);
      ops.red_add_i32(s.csize + b, size_a);
    } else {
      ops.st(s.parent + b, a);
      ops.red_add_i32(s.csize + a, size_b);
    }
  }
  if (own_a) release(s, a, e, ops);
  if (own_b) release(s, b, e, ops);
}

}  // namespace fh
}  // namespace lrc
