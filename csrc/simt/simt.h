// A small SIMT simulator: runs CUDA kernel source on the CPU so that a kernel's own code (its
// scans, warp collectives, barriers and counters, not only the algorithm it implements) can
// be tested on machines without a GPU.
//
// Model:
// - every CUDA thread is a fiber with its own stack; the fibers of a CTA share one OS thread
//   and switch only at barriers, warp collectives and, when a seed is given, at random
//   "preemption points" (every global load, store and atomic of the shim in cuda_shim.h);
// - the CTAs of a thread-block cluster run on OS threads of their own, concurrently, and meet
//   at cluster barriers; clusters run one after another;
// - warp collectives (ballot, match_any, shfl, shfl_up) and warp barriers (sync_warp) wait for
//   all 32 lanes of the warp and check that every lane called the same one with a full mask;
// - a barrier that can never complete (threads of one CTA waiting at different barriers, a
//   warp collective that not all lanes reach, a thread that exited while others wait, a CTA
//   that left the cluster while its peers wait) stops the launch with an error message
//   instead of hanging.
// With seed 0 the fibers of a CTA run in thread order; any other seed shuffles the order in
// which waiting threads resume and preempts threads at random memory operations, so that a
// kernel whose result depends on an unsynchronised interleaving gives different results
// under different seeds.
//
// Available on x86-64 Linux (the context switch is a few lines of assembly); elsewhere
// available() is false and launch() returns an error.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace simt {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// What one cluster (or lone CTA) did, in units that do not depend on a GPU. Between two
// barriers a CTA is as slow as its busiest thread, and a cluster as its slowest CTA, so
// `critical_ops` sums, over the intervals between barriers, the largest number of operations
// any one thread had to wait for in it (global loads, atomics, warp collectives; not stores):
// a latency-bound cost. What the GPU overlaps within one thread the kernel says with two
// scopes (cuda_shim.h): loads it issues together before using any of them
// (LRC_INDEPENDENT_LOADS) count as one wait, and atomics whose result it never uses
// (LRC_UNUSED_RESULTS; the GPU issues them as reductions) as none. `strict_ops` ignores both
// scopes: every load and atomic one full latency.
constexpr int kMaxPhases = 32;

struct Profile {
  uint64_t critical_ops = 0;
  // critical_ops split by the phase (set_phase) the waiting thread was in at each operation
  uint64_t phase_ops[kMaxPhases] = {};
  uint64_t cluster_barriers = 0;
  uint64_t block_barriers = 0;  // __syncthreads, most of any CTA of the cluster
  uint64_t total_ops = 0;       // global memory operations of all threads, stores included
  uint64_t strict_ops = 0;      // critical_ops without the scopes
  uint64_t phase_strict[kMaxPhases] = {};  // strict_ops split by phase
};

struct LaunchConfig {
  Dim3 grid, block;    // only x is used: 1-D grids and CTAs
  unsigned cluster = 1;  // CTAs per cluster; divides grid.x
  uint64_t seed = 0;   // 0: in-order, switch only at collectives; else randomised (see above)
  std::vector<Profile>* profile = nullptr;  // when set: resized to one entry per cluster
};

bool available();

// Runs `body` once on every thread of the grid. Returns "" or what went wrong.
std::string launch(const LaunchConfig& config, const std::function<void()>& body);

// The seed and the profile sink of the launches made by this OS thread through
// cudaLaunchKernelEx (cuda_shim.h).
void set_default_seed(uint64_t seed);
uint64_t default_seed();
void set_profile_sink(std::vector<Profile>* sink);
std::vector<Profile>* profile_sink();

// Inside a kernel.
Dim3 thread_idx();
Dim3 block_idx();
Dim3 block_dim();
Dim3 grid_dim();
void sync_block();    // __syncthreads
void sync_cluster();  // cooperative_groups::this_cluster().sync()
uint32_t ballot(uint32_t mask, bool predicate);
void sync_warp(uint32_t mask);  // __syncwarp: a warp barrier, not counted in Profile
uint32_t match_any(uint32_t mask, uint64_t value);
uint64_t shfl(uint32_t mask, uint64_t value, int src_lane);
uint64_t shfl_up(uint32_t mask, uint64_t value, unsigned delta);
// Counts one global memory operation: a load (waits), a store (does not wait) or an atomic
// (`atomic`; waits). With a seed, may switch threads.
void memory_op(bool waits = true, bool atomic = false);
// An atomic on shared memory: not counted in Profile (shared memory is not what it models, and
// its plain loads and stores are not counted either). With a seed, may switch threads.
void shared_op();
// The scopes of Profile: between begin and end, a thread's loads count as one wait
// (independent loads) or its atomics as none (unused results). They nest.
void begin_independent_loads();
void end_independent_loads();
void begin_unused_results();
void end_unused_results();
template <void (*kBegin)(), void (*kEnd)()>
struct Scope {
  Scope() { kBegin(); }
  ~Scope() { kEnd(); }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;
};
using IndependentLoads = Scope<begin_independent_loads, end_independent_loads>;
using UnusedResults = Scope<begin_unused_results, end_unused_results>;
// Labels this thread's next operations with a phase 0..kMaxPhases-1 for Profile::phase_ops
// (each thread starts in phase 0).
void set_phase(int phase);

// Runs one of the simulator's self-test kernels (see simt_selftest.cpp); "" when it passed.
std::string selftest(const std::string& name);

}  // namespace simt
