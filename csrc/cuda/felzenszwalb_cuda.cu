// One persistent "team" per slice -- a CTA, or a thread-block cluster on sm_90 -- runs the
// whole segmentation: Gaussian smoothing, the zero-cost pre-pass, the counting sort of the
// live edges into cost bins, the main pass and the min_size pass as rounds of the schedule in
// felzenszwalb_schedule.h (loading cost windows of the sorted edges as they go, each main-pass
// round followed by the hub extension on one thread) separated by team barriers, then canonical
// labelling. No host round trip per round. Scratch: about 34 MB per 512x512 slice.
//
// Memory: every value written inside the kernel is read back with ld.global.cg (L2), never
// through the non-coherent L1, because another SM of the cluster may have written it.
// Compile with -fmad=false: the smoothing must round like scipy's.
#include "felzenszwalb_cuda.h"

#ifndef LRC_SIMT  // csrc/cpu/felzenszwalb_simt.cpp runs this file on the SIMT simulator
#include <cooperative_groups.h>
#endif

#include "../felzenszwalb_common.h"
#include "../felzenszwalb_schedule.h"

namespace lrc {
namespace {

namespace cg = cooperative_groups;
using fh::Geometry;

struct DeviceOps {
  __device__ int32_t ld(const int32_t* p) const { return __ldcg(p); }
  __device__ uint64_t ld(const uint64_t* p) const {
    return __ldcg(reinterpret_cast<const unsigned long long*>(p));
  }
  __device__ double ld(const double* p) const { return __ldcg(p); }
  // The smoothed image in the hub extension (fh::hub_extend): cached in L1 too, where the
  // pixels it absorbs one after another share their neighbours, and where hub_extend_cta
  // prefetches the neighbourhoods of the first frontier entries. The image is written only by
  // the pixel phase, before the first such load, so L1 never holds a stale line of it. The
  // other phases load it past L1 (ld): their accesses are scattered, and in the 1024-thread
  // kernel L1 also holds the spilled registers.
  __device__ double ld_img(const double* p) const { return __ldca(p); }
  __device__ void st(int32_t* p, int32_t v) const { __stcg(p, v); }
  __device__ void st(uint64_t* p, uint64_t v) const {
    __stcg(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
  }
  __device__ void st(double* p, double v) const { __stcg(p, v); }
  // Atomics whose result is not used: the GPU issues them as reductions and does not wait.
  __device__ void red_min_u64(uint64_t* p, uint64_t v) const {
    LRC_UNUSED_RESULTS;
    atomicMin(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
  }
  __device__ void red_max_u64(uint64_t* p, uint64_t v) const {
    LRC_UNUSED_RESULTS;
    atomicMax(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
  }
  __device__ void red_min_i32(int32_t* p, int32_t v) const {
    LRC_UNUSED_RESULTS;
    atomicMin(p, v);
  }
  __device__ void red_add_i32(int32_t* p, int32_t v) const {
    LRC_UNUSED_RESULTS;
    atomicAdd(p, v);
  }
  __device__ void red_or_i32(int32_t* p, int32_t v) const {
    LRC_UNUSED_RESULTS;
    atomicOr(p, v);
  }
  __device__ int32_t cas_i32(int32_t* p, int32_t expected, int32_t v) const { return atomicCAS(p, expected, v); }
};

// Per-slice scratch layout; every array starts on a 256-byte boundary.
struct Layout {
  size_t tmp, smooth, cint, mincost, parent, csize, minidx, resv, list0, list1, ra, rb, sorted, bins, ctrl, total;
};

__host__ __device__ inline size_t align256(size_t x) { return (x + 255) & ~size_t(255); }

__host__ __device__ inline Layout make_layout(int32_t H, int32_t W) {
  const Geometry g = fh::make_geometry(H, W);
  const size_t n = static_cast<size_t>(g.num_pixels()), e = static_cast<size_t>(g.num_edges());
  Layout l;
  size_t o = 0;
  l.tmp = o;     o = align256(o + 8 * n);
  l.smooth = o;  o = align256(o + 8 * n);
  l.cint = o;    o = align256(o + 8 * n);
  l.mincost = o; o = align256(o + 8 * n);
  l.parent = o;  o = align256(o + 4 * n);
  l.csize = o;   o = align256(o + 4 * n);
  l.minidx = o;  o = align256(o + 4 * n);
  l.resv = o;    o = align256(o + 4 * n);
  l.list0 = o;   o = align256(o + 4 * e);
  l.list1 = o;   o = align256(o + 4 * e);
  l.ra = o;      o = align256(o + 4 * e);
  l.rb = o;      o = align256(o + 4 * e);
  l.sorted = o;  o = align256(o + 4 * e);
  l.bins = o;    o = align256(o + 4 * static_cast<size_t>(fh::kCostBins));
  l.ctrl = o;    o = align256(o + 4 * 32);  // see kCtaTotals and friends
  l.total = o;
  return l;
}

struct Params {
  const double* image;
  const double* w_centre;
  int32_t radius;
  Geometry g;
  double k;
  int32_t min_size;
  bool zero_merge;
  int32_t cluster;
  int32_t window;
  bool extend;
  bool slots;
  int64_t* labels;
  int64_t* counts;
  int64_t* stats;
  int64_t* phase_ns;  // (B, kPhases) or null
  char* workspace;
  Layout layout;
};

// The threads that work on one slice.
struct Team {
  int32_t rank;     // 0 .. size-1 over the CTAs of the cluster
  int32_t size;
  int32_t cta;      // CTA rank inside the cluster
  bool clustered;
  __device__ void sync() const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (clustered) {
      cg::this_cluster().sync();  // arrive.release / wait.acquire at cluster scope
      return;
    }
#endif
    __syncthreads();
  }
};

struct Work {
  int32_t* list[2];
  uint32_t* ra;
  uint32_t* rb;
  int32_t* sorted;   // live edges in cost-bin order
  int32_t* bin_end;  // end of each bin in `sorted`
  int32_t* ctrl;
};

// The kernel's phases: the simulator's cost profile and the GPU's phase clock split by them.
// The main and min_size passes have the same three parts: offer, reserve, commit.
enum Phase : int {
  kPhasePixels,  // per-pixel passes: smoothing, state, zero-cost pre-pass, unfreezing
  kPhaseSort,   // counting sort of the live edges into cost bins
  kPhaseMainOffer,
  kPhaseMainReserve,
  kPhaseMainCommit,
  kPhaseHubGather,
  kPhaseHubSort,
  kPhaseHubExtend,
  kPhaseSlotWindow,  // slot engine: the next window's end (in the bin ends, or a large bin's sub-bins)
  kPhaseSlotSort,    // slot engine: a large bin's counting sort by sub-bin
  kPhaseSlotLoad,    // slot engine: the window's edges and roots into the table
  kPhaseSlotRounds,  // slot engine: offer, reserve, commit on the table
  kPhaseSlotStore,   // slot engine: the table back to global memory
  kPhaseSmallOffer,
  kPhaseSmallReserve,
  kPhaseSmallCommit,
  kPhaseLabels,
  kPhases
};

// GPU time per phase (FhCudaArgs::phase_ns): the team's first thread reads the global timer at
// every phase change and adds the time since the last one to the phase it leaves, so the
// phases of a slice add up to its whole run, barrier waits included. Off on every other thread
// and when not asked for; under the simulator enter_phase only labels the phases.
__device__ inline uint64_t global_ns() {
#ifdef LRC_SIMT
  return 0;
#else
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
#endif
}

// The clock's state lives in shared memory (no registers held through the kernel); only the
// team's first thread (thread 0 of CTA 0) turns it on.
struct PhaseClock {
  uint64_t spent[kPhases];
  uint64_t since;
  int phase;
  bool on;
};

__device__ inline PhaseClock& phase_clock() {
  __shared__ PhaseClock clock;
  return clock;
}

__device__ inline void start_clock(bool on) {
  LRC_SIMT_PHASE(kPhasePixels);
  if (threadIdx.x != 0) return;
  PhaseClock& c = phase_clock();
  c.on = on;
  if (!on) return;
  for (int p = 0; p < kPhases; ++p) c.spent[p] = 0;
  c.phase = kPhasePixels;
  c.since = global_ns();
}

__device__ inline void enter_phase(int next) {
  LRC_SIMT_PHASE(next);
  if (threadIdx.x != 0) return;
  PhaseClock& c = phase_clock();
  if (!c.on) return;
  const uint64_t now = global_ns();
  c.spent[c.phase] += now - c.since;
  c.since = now;
  c.phase = next;
}

__device__ inline void finish_clock(int64_t* out) {
  if (threadIdx.x != 0) return;
  PhaseClock& c = phase_clock();
  if (!c.on) return;
  enter_phase(c.phase);
  for (int p = 0; p < kPhases; ++p) out[p] = static_cast<int64_t>(c.spent[p]);
}

// ctrl (32 int32 per slice): [0..2] append counters of the rounds, [3] hub frontier count,
// [4..11] per-CTA totals of a team-wide scan, [12..13] the hub key (uint64), [14..15] the end
// of the next cost window and [16..19] its bound (uint64), each in two slots by step parity,
// [20] where the slot engine handed the main pass to the global rounds.
constexpr int kFrontierCount = 3;
constexpr int kCtaTotals = 4;
constexpr int kHubKey = 12;
constexpr int kNextEnd = 14;
constexpr int kNextBound = 16;
constexpr int kHandover = 20;

// Adds one to table[key] for every lane with key >= 0, one atomic per distinct key in the
// warp, and returns each lane's old value plus its rank among the lanes with the same key.
// Every lane of the warp must call it.
__device__ inline int32_t warp_increment(int32_t key, int32_t* table) {
  const unsigned peers = __match_any_sync(0xffffffffu, key);
  const int lane = threadIdx.x & 31;
  const int leader = __ffs(peers) - 1;
  int32_t base = 0;
  if (key >= 0 && lane == leader) base = atomicAdd(table + key, __popc(peers));
  base = __shfl_sync(0xffffffffu, base, leader);
  return base + __popc(peers & ((1u << lane) - 1u));
}

// Adds one to table[key] for every lane with key >= 0, one reduction per distinct key in the
// warp (warp_increment without the old values). Every lane of the warp must call it.
__device__ inline void warp_count(int32_t key, int32_t* table) {
  const unsigned peers = __match_any_sync(0xffffffffu, key);
  if (key < 0 || static_cast<int>(threadIdx.x & 31) != __ffs(peers) - 1) return;
  LRC_UNUSED_RESULTS;
  atomicAdd(table + key, __popc(peers));
}

// Appends the kept items (e, a, b) of a warp to out, ra and rb with one atomic on the counter
// (global memory for the global rounds, shared memory for the slot engine); every lane of the
// warp must call it.
template <class E, class R>
__device__ inline void warp_append(bool keep, E e, R a, R b, int32_t* counter, E* out, R* ra, R* rb) {
  const unsigned mask = __ballot_sync(0xffffffffu, keep);
  if (mask == 0) return;
  const int lane = threadIdx.x & 31;
  const int leader = __ffs(mask) - 1;
  int32_t base = 0;
  if (lane == leader) base = atomicAdd(counter, __popc(mask));
  base = __shfl_sync(0xffffffffu, base, leader);
  if (keep) {
    const int32_t pos = base + __popc(mask & ((1u << lane) - 1u));
    out[pos] = e;
    ra[pos] = a;
    rb[pos] = b;
  }
}

// fh::window_end for a whole warp (every lane must call it, with the same arguments): the bin
// search takes three 32-way steps instead of 15 binary ones. In each step every lane loads the
// last bin_end of one of 32 spans and a ballot picks the first span that reaches the target.
static_assert(fh::kCostBins == 32 * 32 * 32, "three 32-way steps cover the cost bins");
__device__ int32_t warp_window_end(const int32_t* bin_end, int32_t start, int32_t width, int32_t live) {
  if (live - start <= width) return live;
  const int32_t target = start + width, lane = threadIdx.x & 31;
  int32_t base = 0, end = 0;  // the answer lies in bins [base, base + 32 * stride)
  for (int32_t stride = fh::kCostBins / 32; stride >= 1; stride /= 32) {
    const int32_t probe = __ldcg(bin_end + base + (lane + 1) * stride - 1);
    // the last span's probe is the end of the whole range, which reaches the target
    const int first = __ffs(__ballot_sync(0xffffffffu, probe >= target)) - 1;
    base += first * stride;
    end = __shfl_sync(0xffffffffu, probe, first);
  }
  return end;  // bin_end of the first bin that reaches the target
}

// An edge phase A kept: its id and its endpoints' roots (tagged in the min_size pass).
struct DecidedEdge {
  int32_t e;
  uint32_t a, b;
};

__device__ inline DecidedEdge load_decided(const int32_t* out, const Work& w, int32_t i) {
  LRC_INDEPENDENT_LOADS;
  return {__ldcg(out + i), __ldcg(w.ra + i), __ldcg(w.rb + i)};
}

// A hint to bring the line of p into this SM's L1 (nothing under the simulator).
__device__ inline void prefetch_l1(const void* p) {
#ifdef LRC_SIMT
  (void)p;
#else
  asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
#endif
}

// The smoothed values of y and its 8 neighbours (three rows of up to three pixels) into L1:
// what the hub extension loads (DeviceOps::ld_img) when it absorbs the single pixel y.
__device__ void prefetch_neighbourhood(const fh::Slice& s, int32_t y) {
  const fh::Pixel px = fh::pixel_at(s.g, y);
  const int32_t j0 = max(px.j - 1, 0), j1 = min(px.j + 1, s.g.W - 1);
  for (int32_t i = max(px.i - 1, 0); i <= min(px.i + 1, s.g.H - 1); ++i) {
    prefetch_l1(s.img + i * s.g.W + j0);
    prefetch_l1(s.img + i * s.g.W + j1);  // the row's other line, when it spans two
  }
}

// A frontier over kFrontierCap edges (fbuf, nf of them) is cut (fh::frontier_cut): the first cost
// that is not sorted, counted in `hist` (kAbsorbedCap entries of shared memory the caller clears
// afterwards). Contains CTA barriers: every thread of the CTA calls it.
__device__ uint64_t frontier_cut_cost(const fh::Slice& s, const int32_t* fbuf, int32_t nf, int32_t* hist) {
  __shared__ int32_t min_bin, cut_bin;
  DeviceOps ops;
  if (threadIdx.x == 0) min_bin = fh::kCostBins;
  for (int32_t i = threadIdx.x; i < fh::kAbsorbedCap; i += blockDim.x) hist[i] = 0;
  __syncthreads();
  for (int32_t i = threadIdx.x; i < nf; i += blockDim.x)
    atomicMin(&min_bin, fh::cost_bin(fh::edge_cost_bits(s, __ldcg(fbuf + i), ops)));
  __syncthreads();
  for (int32_t i = threadIdx.x; i < nf; i += blockDim.x)
    atomicAdd(hist + min(fh::cost_bin(fh::edge_cost_bits(s, __ldcg(fbuf + i), ops)) - min_bin, fh::kAbsorbedCap - 1), 1);
  __syncthreads();
  if (threadIdx.x == 0) cut_bin = min_bin + fh::frontier_cut(hist);
  __syncthreads();
  return static_cast<uint64_t>(cut_bin) << 48;
}

// Phase D's sort and sequential part, on the first CTA of the team: the hub's frontier (edge ids
// in fbuf, their outside endpoints in obuf; nf of them) sorted by key in shared memory (bitonic
// sort), then fh::hub_extend on thread 0, which gets the number of edges it decided (0 elsewhere).
// A frontier over kFrontierCap edges keeps the edges below its cut (frontier_cut_cost), which
// also bounds the extension.
__device__ int32_t hub_extend_cta(const fh::Slice& s, int32_t hub, const int32_t* fbuf, const uint32_t* obuf,
                                  int32_t nf, uint64_t end_bound) {
  __shared__ uint64_t f_cost[fh::kFrontierCap];
  __shared__ int32_t f_edge[fh::kFrontierCap];
  __shared__ int32_t f_outside[fh::kFrontierCap];
  __shared__ uint64_t heap_cost[fh::kHeapCap];
  __shared__ int32_t heap_edge[fh::kHeapCap];
  __shared__ int32_t heap_outside[fh::kHeapCap];
  __shared__ int32_t absorbed[fh::kAbsorbedCap];
  __shared__ int32_t near_slots[fh::kNearHubCap];
  const fh::HubEdges frontier{f_cost, f_edge, f_outside};
  const fh::NearHub near{near_slots};
  DeviceOps ops;
  enter_phase(kPhaseHubSort);
  const bool cut = nf > fh::kFrontierCap;
  const uint64_t cut_cost = cut ? frontier_cut_cost(s, fbuf, nf, absorbed) : fh::kNoCost;
  if (cut && cut_cost < end_bound) end_bound = cut_cost;
  __shared__ int32_t n_kept;
  if (threadIdx.x == 0) n_kept = 0;
  for (int32_t i = threadIdx.x; i < fh::kAbsorbedCap; i += blockDim.x) absorbed[i] = -1;
  for (int32_t i = threadIdx.x; i < fh::kNearHubCap; i += blockDim.x) near_slots[i] = -1;
  __syncthreads();  // the table is empty before anyone records in it
  // The frontier into shared memory: entry i into slot i, or, when cut, the entries below the cut
  // into the next free slots (in any order: the sort orders them). Then the padding.
  for (int32_t i = threadIdx.x; i < nf; i += blockDim.x) {
    int32_t e, outside;
    {
      LRC_INDEPENDENT_LOADS;
      e = __ldcg(fbuf + i);
      outside = static_cast<int32_t>(__ldcg(obuf + i));
    }
    const uint64_t c = fh::edge_cost_bits(s, e, ops);
    if (cut && c >= cut_cost) continue;
    frontier.set(cut ? atomicAdd(&n_kept, 1) : i, c, e, outside);
    fh::near_hub_add(s, near, e, outside, ops);
  }
  if (cut) {
    __syncthreads();
    nf = n_kept;
  }
  int32_t n = 1;
  while (n < nf) n <<= 1;
  for (int32_t i = nf + threadIdx.x; i < n; i += blockDim.x) frontier.set(i, fh::kNoCost, fh::kNoEdge, 0);
  __syncthreads();
  // Bitonic stages. Element i is always handled by thread i % blockDim.x, so a stage whose
  // distance j is below 32 pairs elements of one warp only: between two such stages a warp
  // barrier is enough, and a CTA barrier is needed only around the stages with j >= 32 (for
  // 2,048 edges after 27 of the 66 stages; the phase clock measured the hub sort, set-up
  // included, at 1.9-2.6 ms of a 512x512 slice on an H100).
  for (int32_t k = 2; k <= n; k <<= 1) {
    for (int32_t j = k >> 1; j > 0; j >>= 1) {
      for (int32_t i = threadIdx.x; i < n; i += blockDim.x) {
        const int32_t partner = i ^ j;
        if (partner <= i) continue;
        const bool ascending = (i & k) == 0;
        if (frontier.less(partner, i) == ascending) frontier.swap(i, partner);
      }
      // The next stage is (k, j / 2), or (2k, k) after j == 1 (none once 2k > n).
      const bool next_crosses_warps = j > 1 ? (j >> 1) >= 32 : k >= 32 && (k << 1) <= n;
      if (j >= 32 || next_crosses_warps) {
        __syncthreads();
      } else {
        __syncwarp();
      }
    }
  }
  __syncthreads();  // the frontier is sorted
  // The outside-root state of the first entries, loaded by the CTA at once, so that thread 0
  // does not wait for those loads one decision at a time.
  __shared__ int32_t pre_root[fh::kPrefetchCap], pre_size[fh::kPrefetchCap], pre_resv[fh::kPrefetchCap];
  __shared__ double pre_cint[fh::kPrefetchCap];
  const fh::OutsideRoots pre{pre_root, pre_size, pre_resv, pre_cint, nf < fh::kPrefetchCap ? nf : fh::kPrefetchCap};
  for (int32_t i = threadIdx.x; i < pre.n; i += blockDim.x) {
    prefetch_neighbourhood(s, f_outside[i]);
    pre.set(i, fh::load_outside_root(s, f_outside[i], ops));
  }
  __syncthreads();  // thread 0 reads the whole frontier and the prefetched entries
  if (threadIdx.x != 0) return 0;
  enter_phase(kPhaseHubExtend);
  return fh::hub_extend(s, hub, frontier, nf, end_bound, fh::EdgeHeap{{heap_cost, heap_edge, heap_outside}, 0},
                        fh::PixelSet{absorbed, 0}, near, pre, ops);
}

// One pass of rounds (main when kMain, else min_size): each offers the edges the previous one
// kept, plus the next cost window when few are left (fh::refill_below), from `start` (a bin boundary
// with every edge before it decided). Returns the number of
// rounds, adds the edges offered in phase A to `offers` and those decided by the hub extension to
// `hub_steps` (on rank 0). `step` counts every phase A of the kernel (also those that find nothing
// pending) and picks its append counter, ctrl[step % 3]: the counter of the next step is zeroed
// during this step's phase A, when nobody reads it any more, so that a step can follow one whose
// phase A found nothing without another barrier.
template <bool kMain>
__device__ int32_t run_rounds(const fh::Slice& s, const Work& w, const Team& team, int32_t start, int32_t width,
                              bool extend, int32_t& step, int64_t& offers, int64_t& hub_steps) {
  DeviceOps ops;
  const int32_t offer = kMain ? kPhaseMainOffer : kPhaseSmallOffer;  // then reserve, commit
  const int32_t lane = threadIdx.x & 31;
  enter_phase(offer);
  const int32_t live = __ldcg(w.bin_end + fh::kCostBins - 1);
  const int32_t refill = fh::refill_below(width);
  int32_t rounds = 0, loaded = start, n_active = 0;  // sorted[0, loaded) was offered; n_active still pending
  uint64_t end_bound = fh::kNoCost;  // where the edges not loaded yet begin
  // The window after `loaded` and its bound: computed here by every warp for the first refill;
  // for each later one by the team's last warp (the scout) during the phase A after the refill
  // before it, where it usually has no offers to make, and read back with the append counter.
  // Two slots by step parity: a step without commits has only one barrier, so the scout may
  // already write the next step's window while others still read this step's.
  int32_t next_end = warp_window_end(w.bin_end, start, width, live);
  uint64_t next_bound = fh::window_bound(s, w.sorted, next_end, live, ops);
  const bool scout = team.rank >= team.size - 32;
  for (;; ++step) {
    int32_t* ctrl_end = w.ctrl + kNextEnd + (step & 1);
    uint64_t* ctrl_bound = reinterpret_cast<uint64_t*>(w.ctrl + kNextBound) + (step & 1);
    enter_phase(offer);
    const int32_t chunk = loaded;
    const bool refilled = n_active <= refill && loaded < live;
    if (refilled) {
      loaded = next_end;
      end_bound = next_bound;
    }
    const bool look_ahead = refilled && loaded < live;  // the next window is needed later
    const int32_t n_in = n_active + (loaded - chunk);
    if (n_in == 0) break;
    int32_t* active = w.list[(step + 1) & 1];  // the previous step's output; phase D's buffer
    int32_t* out = w.list[step & 1];
    int32_t* counter = w.ctrl + step % 3;
    if (team.rank == 0) __stcg(w.ctrl + (step + 1) % 3, 0);
    offers += n_in;
    // Phase A: a warp-uniform loop, so that warp_append sees the whole warp.
    for (int32_t base = team.rank - lane; base < n_in; base += team.size) {
      const int32_t i = base + lane;
      int32_t e = 0;
      uint32_t a = 0, b = 0;
      bool keep = false;
      if (i < n_in) {
        e = i < n_active ? __ldcg(active + i) : __ldcg(w.sorted + chunk + (i - n_active));
        keep = kMain ? fh::main_offer(s, e, a, b, ops) : fh::small_offer(s, e, a, b, ops);
      }
      warp_append(keep, e, a, b, counter, out, w.ra, w.rb);
    }
    if (look_ahead && scout) {
      const int32_t end = warp_window_end(w.bin_end, loaded, width, live);
      const uint64_t bound = fh::window_bound(s, w.sorted, end, live, ops);
      if (lane == 0) {
        __stcg(ctrl_end, end);
        ops.st(ctrl_bound, bound);
      }
    }
    team.sync();
    int32_t n_out;
    {
      LRC_INDEPENDENT_LOADS;
      n_out = __ldcg(counter);
      if (look_ahead) {
        next_end = __ldcg(ctrl_end);
        next_bound = ops.ld(ctrl_bound);
      }
    }
    n_active = n_out;
    if (n_out == 0) continue;
    ++rounds;
    enter_phase(offer + 1);
    if (team.rank == 0) {  // nobody reads these between the last round's phase D and phase D
      ops.st(s.hub, uint64_t{0});
      __stcg(w.ctrl + kFrontierCount, 0);
    }
    for (int32_t i = team.rank; i < n_out; i += team.size) {  // phase B
      const DecidedEdge d = load_decided(out, w, i);
      fh::reserve(s, d.e, d.a, d.b, !kMain, ops);
    }
    team.sync();
    enter_phase(offer + 2);
    for (int32_t i = team.rank; i < n_out; i += team.size) {  // phase C
      const DecidedEdge d = load_decided(out, w, i);
      if (kMain)
        fh::main_commit(s, d.e, d.a, d.b, ops);
      else
        fh::small_commit(s, d.e, d.a, d.b, ops);
    }
    team.sync();
    enter_phase(kPhaseHubGather);
    uint64_t hub_key = 0;
    int32_t first = 0;  // this thread's first edge of the gather, loaded with the hub key
    if (kMain && extend) {
      LRC_INDEPENDENT_LOADS;
      hub_key = ops.ld(s.hub);
      if (team.rank < n_out) first = __ldcg(out + team.rank);
    }
    if (hub_key != 0) {  // phase D: gather the hub's frontier, then sort and extend on one CTA
      const int32_t hub = static_cast<int32_t>(hub_key & 0xffffffffu);
      // The frontier goes to `active` (no longer read) and the outside endpoints to w.ra (the
      // roots of this round's edges, which phases B and C have used; the next phase A rewrites it).
      for (int32_t i = team.rank; i < n_out; i += team.size) {
        const int32_t e = i == team.rank ? first : __ldcg(out + i);
        const int32_t outside = fh::hub_frontier_outside(s, hub, e, ops);
        if (outside < 0) continue;
        const int32_t pos = atomicAdd(w.ctrl + kFrontierCount, 1);  // < n_out: both lists hold it
        __stcg(active + pos, e);
        __stcg(w.ra + pos, static_cast<uint32_t>(outside));
      }
      team.sync();
      const int32_t nf = __ldcg(w.ctrl + kFrontierCount);
      // An empty frontier leaves nothing to extend: then nobody writes, and the next round needs
      // no barrier first.
      if (nf > 0) {
        if (team.cta == 0) hub_steps += hub_extend_cta(s, hub, active, w.ra, nf, end_bound);
        team.sync();
      }
    }
  }
  return rounds;
}

// Exclusive scan of one value per thread over the CTA; `total` gets the CTA's sum.
__device__ inline int32_t cta_exclusive_scan(int32_t x, int32_t& total) {
  __shared__ int32_t warp_sums[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  int32_t v = x;
  for (int o = 1; o < 32; o <<= 1) {
    const int32_t y = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += y;
  }
  if (lane == 31) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int32_t t = lane < n_warps ? warp_sums[lane] : 0;
    for (int o = 1; o < 32; o <<= 1) {
      const int32_t y = __shfl_up_sync(0xffffffffu, t, o);
      if (lane >= o) t += y;
    }
    warp_sums[lane] = t;
  }
  __syncthreads();
  const int32_t before = warp == 0 ? 0 : warp_sums[warp - 1];
  total = warp_sums[n_warps - 1];
  __syncthreads();
  return before + v - x;
}

// ---- slot engine (felzenszwalb_schedule.h): the main pass on one CTA, state in shared memory

// The slot engine's memory operations on its table: shared memory, written by other threads
// between barriers (volatile), and shared atomics.
struct SharedOps {
  template <class T>
  __device__ T ld(const T* p) const {
    return *const_cast<const volatile T*>(p);
  }
  template <class T>
  __device__ void st(T* p, T v) const {
    *const_cast<volatile T*>(p) = v;
  }
  __device__ void red_min_u64(uint64_t* p, uint64_t v) const {
    LRC_UNUSED_RESULTS;
    atomicMin(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
  }
  __device__ void red_min_i32(int32_t* p, int32_t v) const {
    LRC_UNUSED_RESULTS;
    atomicMin(p, v);
  }
  __device__ int32_t cas_i32(int32_t* p, int32_t expected, int32_t v) const { return atomicCAS(p, expected, v); }
};

// The next window from pos (a bin boundary below live; bins before `from` end at or before pos),
// for a whole warp (every lane calls it): the first bin ending after pos + kSlotEdges, found 32
// bins at a time from `from` (a window spans few bins: usually one load), gives the window's end,
// the end of the bin before it. Returns that end, or pos when the bin at pos alone is larger (then
// `first` is that bin and `first_end` its end).
__device__ int32_t warp_slot_window(const int32_t* bin_end, int32_t from, int32_t pos, int32_t& first,
                                    int32_t& first_end) {
  const int32_t target = pos + fh::kSlotEdges, lane = threadIdx.x & 31;
  int32_t last = from > 0 ? __ldcg(bin_end + from - 1) : 0;  // bin_end[b0 - 1]
  for (int32_t b0 = from;; b0 += 32) {
    const int32_t b = b0 + lane;
    // the last bin ends at live > target, so some lane finds it
    const int32_t v = b < fh::kCostBins ? __ldcg(bin_end + b) : fh::kNoEdge;
    const unsigned hit = __ballot_sync(0xffffffffu, v > target);
    int32_t left = __shfl_up_sync(0xffffffffu, v, 1);
    if (lane == 0) left = last;
    if (hit != 0) {
      const int f = __ffs(static_cast<int>(hit)) - 1;
      first = b0 + f;
      first_end = __shfl_sync(0xffffffffu, v, f);
      const int32_t end = __shfl_sync(0xffffffffu, left, f);
      return end > pos ? end : pos;
    }
    last = __shfl_sync(0xffffffffu, v, 31);
  }
}

// Loads the window src[0, n) into the table, drains it by rounds and stores it back (every
// thread of the CTA calls it). `step` counts rounds over the pass: the append counter of a round
// is t.ctrl[step % 3], zeroed during the previous round's phase A, and the pending lists
// alternate by step parity. Adds its rounds and phase A offers.
__device__ void slot_drain(const fh::Slice& s, const fh::SlotTable& t, const int32_t* src, int32_t n,
                           int32_t& step, int32_t& rounds, int64_t& offers) {
  DeviceOps ops;
  SharedOps sops;
  const int32_t tid = threadIdx.x, nt = blockDim.x, lane = tid & 31;
  enter_phase(kPhaseSlotLoad);
  for (int32_t j = tid; j < n; j += nt) fh::slot_load_edge(s, t, j, __ldcg(src + j), ops, sops);
  __syncthreads();
  enter_phase(kPhaseSlotRounds);
  for (int32_t n_in = n, first = 1;; ++step, first = 0) {
    const int16_t* in = t.list[(step + 1) & 1];
    int16_t* out = t.list[step & 1];
    int32_t* counter = t.ctrl + step % 3;
    if (tid == 0) sops.st(t.ctrl + (step + 1) % 3, 0);
    offers += n_in;
    for (int32_t base = tid - lane; base < n_in; base += nt) {  // phase A, warp-uniform
      const int32_t i = base + lane;
      int32_t j = 0, a = 0, b = 0;
      bool keep = false;
      if (i < n_in) {
        j = first ? i : sops.ld(in + i);
        keep = fh::slot_offer(t, j, a, b, sops);
      }
      warp_append(keep, static_cast<int16_t>(j), static_cast<int16_t>(a), static_cast<int16_t>(b), counter, out,
                  t.ra, t.rb);
    }
    __syncthreads();
    const int32_t n_out = sops.ld(counter);
    if (n_out == 0) {
      ++step;
      break;
    }
    ++rounds;
    for (int32_t i = tid; i < n_out; i += nt) fh::slot_reserve(t, sops.ld(out + i), sops.ld(t.ra + i), sops.ld(t.rb + i), sops);
    __syncthreads();
    for (int32_t i = tid; i < n_out; i += nt)
      fh::slot_commit(s, t, sops.ld(out + i), sops.ld(t.ra + i), sops.ld(t.rb + i), sops);
    __syncthreads();
    n_in = n_out;
  }
  enter_phase(kPhaseSlotStore);
  for (int32_t i = tid; i < fh::kSlots; i += nt) fh::slot_store(s, t, i, ops, sops);
  __syncthreads();
  for (int32_t i = tid; i < fh::kSlots; i += nt) sops.st(t.root + i, -1);
  __syncthreads();
}

// The main pass on the slot engine, by every thread of the team's first CTA, with the table in
// `smem` (fh::kSlotBytes of dynamic shared memory). Returns the position in w.sorted from which
// the global rounds take over (the number of live edges when none is left); adds its rounds and
// phase A offers. A bin of more than kSlotEdges edges is counting-sorted by sub-bin into
// w.list[0] (its sub-bins counted in shared memory, each edge's sub-bin kept in w.ra in between).
__device__ int32_t slot_pass(const fh::Slice& s, const Work& w, char* smem, int32_t& rounds, int64_t& offers) {
  DeviceOps ops;
  SharedOps sops;
  const fh::SlotTable t = fh::slot_table(smem);
  const int32_t tid = threadIdx.x, nt = blockDim.x;
  enter_phase(kPhaseSlotLoad);
  for (int32_t i = tid; i < fh::kSlots; i += nt) sops.st(t.root + i, -1);
  if (tid < 3) sops.st(t.ctrl + tid, 0);
  __syncthreads();
  const int32_t live = __ldcg(w.bin_end + fh::kCostBins - 1);
  int32_t* order = w.list[0];
  uint32_t* sub_of = w.ra;
  int32_t pos = 0, bin = 0, step = 0;  // bins before `bin` end at or before pos
  while (pos < live) {
    int32_t first = 0, first_end = live;
    enter_phase(kPhaseSlotWindow);
    const int32_t end = live - pos <= fh::kSlotEdges ? live : warp_slot_window(w.bin_end, bin, pos, first, first_end);
    if (end > pos) {
      slot_drain(s, t, w.sorted + pos, end - pos, step, rounds, offers);
      pos = end;
      bin = first;
      continue;
    }
    // The bin at pos has more than kSlotEdges edges: counting sort by sub-bin into order[pos, bend).
    enter_phase(kPhaseSlotSort);
    const int32_t bend = first_end, n = bend - pos;
    for (int32_t b = tid; b < fh::kSubBins; b += nt) sops.st(t.sub_end + b, 0);
    __syncthreads();
    for (int32_t i = pos + tid; i < bend; i += nt) {
      const int32_t sub = fh::sub_bin(fh::edge_cost_bits(s, __ldcg(w.sorted + i), ops));
      __stcg(sub_of + i, static_cast<uint32_t>(sub));
      LRC_UNUSED_RESULTS;
      atomicAdd(t.sub_end + sub, 1);
    }
    __syncthreads();
    const int32_t per = fh::kSubBins / nt, b0 = tid * per;  // nt divides kSubBins
    int32_t mine = 0, total = 0;
    for (int32_t b = b0; b < b0 + per; ++b) mine += sops.ld(t.sub_end + b);
    int32_t before = cta_exclusive_scan(mine, total);
    for (int32_t b = b0; b < b0 + per; ++b) {
      const int32_t c = sops.ld(t.sub_end + b);
      sops.st(t.sub_end + b, before);
      before += c;
    }
    __syncthreads();
    for (int32_t i = pos + tid; i < bend; i += nt) {
      int32_t e, sub;
      {
        LRC_INDEPENDENT_LOADS;
        e = __ldcg(w.sorted + i);
        sub = static_cast<int32_t>(__ldcg(sub_of + i));
      }
      __stcg(order + pos + atomicAdd(t.sub_end + sub, 1), e);
    }
    __syncthreads();  // sub_end: the end of every sub-bin
    for (int32_t r0 = 0; r0 < n;) {
      enter_phase(kPhaseSlotWindow);
      const int32_t r1 = fh::slot_window_end(t.sub_end, fh::kSubBins, r0, n, sops);
      if (r1 == r0) return pos;  // a sub-bin over the cap: the global rounds take this bin on
      slot_drain(s, t, order + pos + r0, r1 - r0, step, rounds, offers);
      r0 = r1;
    }
    pos = bend;
    bin = first + 1;
  }
  return live;
}


// The contiguous part [lo, hi) of 0..n-1 that this thread scans in a team-wide scan.
__device__ inline void team_chunk(int32_t n, const Team& team, int32_t& lo, int32_t& hi) {
  const int32_t chunk = (n + team.size - 1) / team.size;
  lo = min(n, team.rank * chunk);
  hi = min(n, lo + chunk);
}

// Exclusive scan of one value per thread over the team in rank order: the CTA scans, then each
// CTA adds the totals of the CTAs before it (exchanged through ctrl[kCtaTotals..]). `total` gets
// the team's sum. Contains a team barrier: every thread of the team must call it.
__device__ int32_t team_exclusive_scan(int32_t x, const Work& w, const Team& team, int32_t& total) {
  int32_t cta_total = 0;
  int32_t before = cta_exclusive_scan(x, cta_total);
  if (threadIdx.x == 0) __stcg(w.ctrl + kCtaTotals + team.cta, cta_total);
  team.sync();
  total = 0;
  for (int32_t c = 0; c < team.size / static_cast<int32_t>(blockDim.x); ++c) {
    const int32_t t = __ldcg(w.ctrl + kCtaTotals + c);
    if (c < team.cta) before += t;
    total += t;
  }
  return before;
}

// Counting sort of the live edges by cost bin (felzenszwalb_schedule.h, cost windows):
// histogram, exclusive scan over the bins, scatter. Afterwards w.bin_end[b] is the end of bin b.
// Expects the zero-cost pre-pass (if any) done and the bins zeroed; ends with a barrier. The
// bin of each edge waits in w.ra between the histogram and the scatter.
__device__ void sort_live_edges(const fh::Slice& s, const Work& w, const Team& team) {
  DeviceOps ops;
  const int32_t lane = threadIdx.x & 31, E = s.g.num_edges();
  int32_t* bin_of = reinterpret_cast<int32_t*>(w.ra);  // (E,) scratch until the first round
  for (int32_t base = team.rank - lane; base < E; base += team.size) {  // warp-uniform loop
    const int32_t e = base + lane;
    const int32_t bin = e < E ? fh::live_bin(s, e, ops) : -1;
    if (e < E) __stcg(bin_of + e, bin);
    warp_count(bin, w.bin_end);
  }
  team.sync();
  // Exclusive scan over the bins: each thread sums a contiguous chunk, the team scans the sums.
  int32_t b0, b1, live;
  team_chunk(fh::kCostBins, team, b0, b1);
  int32_t mine = 0;
  for (int32_t b = b0; b < b1; ++b) mine += __ldcg(w.bin_end + b);
  int32_t before = team_exclusive_scan(mine, w, team, live);
  for (int32_t b = b0; b < b1; ++b) {
    const int32_t t = __ldcg(w.bin_end + b);
    __stcg(w.bin_end + b, before);
    before += t;
  }
  team.sync();
  for (int32_t base = team.rank - lane; base < E; base += team.size) {
    const int32_t e = base + lane;
    const int32_t bin = e < E ? __ldcg(bin_of + e) : -1;
    const int32_t pos = warp_increment(bin, w.bin_end);
    if (bin >= 0) __stcg(w.sorted + pos, e);
  }
  team.sync();
}

// One pass of the Gaussian smoothing over the slice (axis 0 or 1), as fh::gauss_axis computes
// it, with `radius` (up to kGroupedRadius) known at compile time: the 2 * R + 1 inputs of one
// output are loaded together and the taps sit in registers. Larger radii take the generic
// loop; radius -1 (no smoothing) copies. `emit(p, value)` stores output p.
constexpr int kGroupedRadius = 4;  // sigma below 1.125 (scipy's radius: int(4 * sigma + 0.5))

template <int R, int kAxis, class Load, class Emit>
__device__ void gauss_pass_fixed(Load load, Emit emit, const Geometry& g, const double* w_centre, const Team& team) {
  double w[R + 1];  // w[R + k]: tap k, k = -R .. 0
  LRC_UNROLL
  for (int k = 0; k <= R; ++k) w[k] = __ldg(w_centre + k - R);
  for (int32_t p = team.rank; p < g.num_pixels(); p += team.size) {
    const int32_t i = p / g.W, j = p - i * g.W;
    double v[2 * R + 1];  // v[R + k]: the input at offset k
    {
      LRC_INDEPENDENT_LOADS;
      LRC_UNROLL
      for (int k = -R; k <= R; ++k)
        v[R + k] = load(fh::tap_index<kAxis>(g, i, j, k));
    }
    double acc = v[R] * w[R];  // fh::symmetric_tap_sum's order of operations
    LRC_UNROLL
    for (int k = -R; k < 0; ++k) acc += (v[R + k] + v[R - k]) * w[R + k];
    emit(p, acc);
  }
}

template <int kAxis, class Load, class Emit>
__device__ void gauss_pass(Load load, Emit emit, const Geometry& g, const double* w_centre, int32_t radius,
                           const Team& team) {
  static_assert(kGroupedRadius == 4, "one case per grouped radius");
  switch (radius) {
    case 0: return gauss_pass_fixed<0, kAxis>(load, emit, g, w_centre, team);
    case 1: return gauss_pass_fixed<1, kAxis>(load, emit, g, w_centre, team);
    case 2: return gauss_pass_fixed<2, kAxis>(load, emit, g, w_centre, team);
    case 3: return gauss_pass_fixed<3, kAxis>(load, emit, g, w_centre, team);
    case 4: return gauss_pass_fixed<4, kAxis>(load, emit, g, w_centre, team);
    default: break;
  }
  for (int32_t p = team.rank; p < g.num_pixels(); p += team.size) {
    const int32_t i = p / g.W, j = p - i * g.W;
    if (radius < 0)
      emit(p, load(p));
    else
      emit(p, fh::gauss_axis<kAxis>(load, g, w_centre, radius, i, j));
  }
}

template <int kThreads>
__global__ void __launch_bounds__(kThreads) fh_kernel(Params P) {
  const int32_t slice = blockIdx.x / P.cluster;
  Team team;
  team.cta = blockIdx.x % P.cluster;
  team.rank = team.cta * blockDim.x + threadIdx.x;
  team.size = P.cluster * blockDim.x;
  team.clustered = P.cluster > 1;
  start_clock(team.rank == 0 && P.phase_ns != nullptr);

  const Geometry g = P.g;
  const int32_t n = g.num_pixels();
  char* ws = P.workspace + static_cast<size_t>(slice) * P.layout.total;
  double* tmp = reinterpret_cast<double*>(ws + P.layout.tmp);
  double* smooth = reinterpret_cast<double*>(ws + P.layout.smooth);
  fh::Slice s{g,
              P.k,
              P.min_size,
              smooth,
              reinterpret_cast<int32_t*>(ws + P.layout.parent),
              reinterpret_cast<int32_t*>(ws + P.layout.csize),
              reinterpret_cast<double*>(ws + P.layout.cint),
              reinterpret_cast<uint64_t*>(ws + P.layout.mincost),
              reinterpret_cast<int32_t*>(ws + P.layout.minidx),
              reinterpret_cast<int32_t*>(ws + P.layout.resv),
              reinterpret_cast<uint64_t*>(ws + P.layout.ctrl + 4 * kHubKey)};
  Work w{{reinterpret_cast<int32_t*>(ws + P.layout.list0), reinterpret_cast<int32_t*>(ws + P.layout.list1)},
         reinterpret_cast<uint32_t*>(ws + P.layout.ra),
         reinterpret_cast<uint32_t*>(ws + P.layout.rb),
         reinterpret_cast<int32_t*>(ws + P.layout.sorted),
         reinterpret_cast<int32_t*>(ws + P.layout.bins),
         reinterpret_cast<int32_t*>(ws + P.layout.ctrl)};
  DeviceOps ops;
  const double* image = P.image + static_cast<size_t>(slice) * n;

  // Smoothing, axis 0 then axis 1, and state initialisation.
  auto from_image = [image](int32_t p) { return __ldg(image + p); };
  auto from_tmp = [tmp](int32_t p) { return __ldcg(tmp + p); };
  gauss_pass<0>(from_image, [tmp](int32_t p, double v) { __stcg(tmp + p, v); }, g, P.w_centre, P.radius, team);
  if (team.rank == 0) __stcg(w.ctrl + 0, 0);
  for (int32_t b = team.rank; b < fh::kCostBins; b += team.size) __stcg(w.bin_end + b, 0);
  team.sync();
  gauss_pass<1>(from_tmp, [smooth](int32_t p, double v) { __stcg(smooth + p, v); }, g, P.w_centre, P.radius, team);
  for (int32_t p = team.rank; p < n; p += team.size) {
    ops.st(s.parent + p, p);
    ops.st(s.csize + p, P.zero_merge ? 0 : 1);
    ops.st(s.cint + p, 0.0);
    ops.st(s.mincost + p, fh::kNoCost);
    ops.st(s.minidx + p, fh::kNoEdge);
    ops.st(s.resv + p, fh::kNoEdge);
  }
  team.sync();
  if (P.zero_merge) {  // zero-cost edges: unite in any order, then count sizes at the roots
    for (int32_t e = team.rank; e < g.num_edges(); e += team.size) fh::zero_union(s, e, ops);
    team.sync();
    for (int32_t p = team.rank; p < n; p += team.size) ops.red_add_i32(s.csize + fh::find_root(s.parent, p, ops), 1);
  }
  enter_phase(kPhaseSort);
  sort_live_edges(s, w, team);

  int32_t step = 0, start = 0, rounds_main = 0;
  int64_t offers_main = 0, offers_small = 0, hub_steps = 0;
  if (P.slots) {  // the slot engine on the first CTA; the others wait at the barrier
    if (team.cta == 0) {
#ifdef LRC_SIMT
      char* smem = simt::dynamic_shared(fh::kSlotBytes);
#else
      extern __shared__ __align__(16) char dynamic_smem[];
      char* smem = dynamic_smem;
#endif
      start = slot_pass(s, w, smem, rounds_main, offers_main);
      if (threadIdx.x == 0) __stcg(w.ctrl + kHandover, start);
    }
    enter_phase(kPhaseMainOffer);  // the hand-over to the global rounds, not the slot engine's store
    team.sync();
    start = __ldcg(w.ctrl + kHandover);
  }
  rounds_main += run_rounds<true>(s, w, team, start, P.window, P.extend, step, offers_main, hub_steps);
  enter_phase(kPhasePixels);
  for (int32_t p = team.rank; p < n; p += team.size) {  // unfreeze
    const int32_t c = ops.ld(s.csize + p);
    if (c < 0) ops.st(s.csize + p, -c);
  }
  team.sync();
  const int32_t rounds_small =
      P.min_size > 1 ? run_rounds<false>(s, w, team, 0, fh::kSmallPassWindow, false, step, offers_small, hub_steps)
                     : 0;

  enter_phase(kPhaseLabels);
  // Labelling: full roots; the smallest pixel of each component; a scan of "first pixel of
  // its component" flags in raster order gives the label ids (stored at the first pixel,
  // reusing csize); every pixel then gathers its component's id.
  for (int32_t p = team.rank; p < n; p += team.size) ops.st(s.parent + p, fh::root_of(s.parent, p, ops));
  team.sync();
  for (int32_t p = team.rank; p < n; p += team.size) ops.red_min_i32(s.minidx + ops.ld(s.parent + p), p);
  team.sync();
  int32_t p0, p1, num_labels;
  team_chunk(n, team, p0, p1);
  int32_t mine = 0;
  for (int32_t p = p0; p < p1; ++p) mine += ops.ld(s.minidx + ops.ld(s.parent + p)) == p;
  int32_t next = team_exclusive_scan(mine, w, team, num_labels);
  for (int32_t p = p0; p < p1; ++p)
    if (ops.ld(s.minidx + ops.ld(s.parent + p)) == p) ops.st(s.csize + p, next++);
  team.sync();
  int64_t* labels = P.labels + static_cast<size_t>(slice) * n;
  for (int32_t p = team.rank; p < n; p += team.size)
    labels[p] = ops.ld(s.csize + ops.ld(s.minidx + ops.ld(s.parent + p)));
  if (team.rank == 0 && P.phase_ns != nullptr) finish_clock(P.phase_ns + static_cast<size_t>(slice) * kPhases);
  if (team.rank == 0) {
    P.counts[slice] = num_labels;
    int64_t* stats = P.stats + 5 * static_cast<size_t>(slice);
    stats[0] = rounds_main;
    stats[1] = rounds_small;
    stats[2] = offers_main;
    stats[3] = offers_small;
    stats[4] = hub_steps;
  }
}

// The launch of `teams` teams of `cluster` CTAs of `threads` threads; `attr` holds its cluster
// attribute (used when cluster > 1).
cudaLaunchConfig_t team_config(int32_t teams, int32_t cluster, int threads, cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(teams) * static_cast<unsigned>(cluster));
  cfg.blockDim = dim3(static_cast<unsigned>(threads));
  cfg.dynamicSmemBytes = 0;
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = static_cast<unsigned>(cluster);
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = cluster > 1 ? 1 : 0;
  return cfg;
}

template <int kThreads>
cudaError_t launch(const Params& p, int32_t B, cudaStream_t stream) {
  cudaLaunchAttribute attr;
  cudaLaunchConfig_t cfg = team_config(B, p.cluster, kThreads, &attr);
  cfg.stream = stream;
  if (p.slots) {  // the slot engine's table; beyond 48 KB it must be asked for
    cfg.dynamicSmemBytes = fh::kSlotBytes;
    const cudaError_t err = cudaFuncSetAttribute(fh_kernel<kThreads>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(fh::kSlotBytes));
    if (err != cudaSuccess) return err;
  }
  cudaError_t err = cudaLaunchKernelEx(&cfg, fh_kernel<kThreads>, p);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

// cudaErrorInvalidValue for a launch shape the kernel does not take: a cluster outside 1..8,
// threads other than 256, 512 or 1024, or a cluster of more than one CTA before sm_90.
cudaError_t check_shape(int32_t cluster, int32_t threads) {
  if (cluster < 1 || cluster > 8) return cudaErrorInvalidValue;
  if (threads != 256 && threads != 512 && threads != 1024) return cudaErrorInvalidValue;
  if (cluster == 1) return cudaSuccess;
  int device = 0, major = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err != cudaSuccess) return err;
  return major < 9 ? cudaErrorInvalidValue : cudaSuccess;
}

#ifndef LRC_SIMT  // the simulator has no occupancy to ask for
template <int kThreads>
cudaError_t max_active_teams(int32_t cluster, int32_t* count) {
  int device = 0, n = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (cluster == 1) {
    int sms = 0;
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, fh_kernel<kThreads>, kThreads, 0);
    *count = n * sms;
    return err;
  }
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = team_config(1, cluster, kThreads, &attr);
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveClusters(&n, fh_kernel<kThreads>, &cfg);
  *count = n;
  return err;
}
#endif

}  // namespace

int fh_cuda_phase_count() { return kPhases; }

#ifndef LRC_SIMT
cudaError_t fh_cuda_max_active_teams(int32_t cluster, int32_t threads, int32_t* count) {
  *count = 0;
  const cudaError_t err = check_shape(cluster, threads);
  if (err != cudaSuccess) return err;
  switch (threads) {
    case 256: return max_active_teams<256>(cluster, count);
    case 512: return max_active_teams<512>(cluster, count);
    default: return max_active_teams<1024>(cluster, count);
  }
}
#endif

size_t fh_cuda_workspace_bytes(int32_t B, int32_t H, int32_t W) {
  return static_cast<size_t>(B) * make_layout(H, W).total;
}

cudaError_t fh_cuda(const FhCudaArgs& a, cudaStream_t stream) {
  if (a.B <= 0 || a.H <= 0 || a.W <= 0) return cudaSuccess;
  if (a.window < 1) return cudaErrorInvalidValue;
  const cudaError_t err = check_shape(a.cluster, a.threads);
  if (err != cudaSuccess) return err;
  Params p;
  p.image = a.image;
  p.radius = a.radius;
  p.w_centre = a.radius >= 0 ? a.weights + a.radius : nullptr;
  p.g = fh::make_geometry(a.H, a.W);
  p.k = a.k;
  p.min_size = a.min_size;
  p.zero_merge = fh::zero_cost_edges_merge(a.k, a.H * a.W);
  p.cluster = a.cluster;
  p.window = a.window;
  p.extend = a.extend;
  p.slots = a.slots;
  p.labels = a.labels;
  p.counts = a.counts;
  p.stats = a.stats;
  p.phase_ns = a.phase_ns;
  p.workspace = static_cast<char*>(a.workspace);
  p.layout = make_layout(a.H, a.W);
  switch (a.threads) {
    case 256: return launch<256>(p, a.B, stream);
    case 512: return launch<512>(p, a.B, stream);
    default: return launch<1024>(p, a.B, stream);
  }
}

}  // namespace lrc
