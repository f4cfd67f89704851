// Self-tests of the SIMT simulator: small kernels, compiled through cuda_shim.h like the real
// ones, whose results (or whose failures) are known. tests/test_simt.py runs each by name.
#define LRC_SIMT 1
#include "cuda_shim.h"

#include <string>
#include <vector>

namespace simt {
namespace {

std::string run(unsigned ctas, unsigned threads, unsigned cluster, uint64_t seed, void (*kernel)(int32_t*),
                int32_t* out) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(ctas);
  cfg.blockDim = dim3(threads);
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cluster;
  cfg.attrs = attr;
  cfg.numAttrs = cluster > 1 ? 1 : 0;
  set_default_seed(seed);
  cudaLaunchKernelEx(&cfg, kernel, out);
  set_default_seed(0);
  return last_launch_error();
}

// Expect a failed launch whose message contains `needle`.
std::string expect_failure(const std::string& error, const std::string& needle) {
  if (error.find(needle) != std::string::npos) return "";
  return "expected an error containing '" + needle + "', got '" + error + "'";
}

// Every warp collective and a block-wide shared-memory sum; out[t] = 0 where thread t saw the
// expected values, else the number of the first failed check.
__global__ void collectives_kernel(int32_t* out) {
  const int t = static_cast<int>(threadIdx.x), lane = t & 31, warp = t >> 5;
  int bad = 0;
  if (__ballot_sync(0xffffffffu, lane % 3 == 0) != 0x49249249u) bad = 1;
  const unsigned peers = __match_any_sync(0xffffffffu, lane / 8);
  if (!bad && peers != (0xffu << (8 * (lane / 8)))) bad = 2;
  if (!bad && __shfl_sync(0xffffffffu, 100 * warp + lane, (lane + 5) & 31) != 100 * warp + ((lane + 5) & 31)) bad = 3;
  const double d = __shfl_sync(0xffffffffu, 0.5 * lane, 31);
  if (!bad && d != 15.5) bad = 4;
  const int up = __shfl_up_sync(0xffffffffu, lane, 3);
  if (!bad && up != (lane >= 3 ? lane - 3 : lane)) bad = 5;
  __shared__ int32_t sum;
  if (t == 0) sum = 0;
  __syncthreads();
  atomicAdd(&sum, t);
  __syncthreads();
  const int n = static_cast<int>(blockDim.x);
  if (!bad && sum != n * (n - 1) / 2) bad = 6;
  out[blockIdx.x * blockDim.x + t] = bad;
}

// Each lane writes its slot of shared memory, the warp meets at __syncwarp, each lane reads its
// neighbour's slot (the simulator runs a lane until it blocks: without the barrier lane 0 would
// read before lane 1 wrote). out[t] = the value read.
__global__ void sync_warp_kernel(int32_t* out) {
  __shared__ int32_t slot[256];
  const int t = static_cast<int>(threadIdx.x), lane = t & 31;
  slot[t] = 1000 + t;
  __syncwarp();
  out[t] = slot[t - lane + ((lane + 1) & 31)];
}

// Half of each warp calls one collective, the other half another.
__global__ void mixed_collectives_kernel(int32_t*) {
  if ((threadIdx.x & 31) < 16)
    __ballot_sync(0xffffffffu, 1);
  else
    __shfl_sync(0xffffffffu, 1, 0);
}

// Lane 0 of warp 1 skips a collective the others wait in.
__global__ void missing_lane_kernel(int32_t*) {
  if (threadIdx.x != 32) __ballot_sync(0xffffffffu, 1);
}

// Thread 5 returns early; the others meet at __syncthreads.
__global__ void early_exit_kernel(int32_t*) {
  if (threadIdx.x == 5) return;
  __syncthreads();
}

// CTA 1 of each cluster never reaches the cluster barrier.
__global__ void cluster_departure_kernel(int32_t*) {
  if (blockIdx.x % 2 == 1) return;
  cooperative_groups::this_cluster().sync();
}

// CTA r writes its rank, the cluster syncs, each reads its neighbour's.
__global__ void cluster_exchange_kernel(int32_t* out) {
  const unsigned r = blockIdx.x, n = gridDim.x;
  if (threadIdx.x == 0) __stcg(out + r, static_cast<int32_t>(r) + 1);
  cooperative_groups::this_cluster().sync();
  if (threadIdx.x == 0) __stcg(out + n + r, __ldcg(out + (r + 1) % n));
}

// Known costs: thread t waits for t % 5 loads, all meet, thread 0 waits for 7 more loads and
// stores 3 values (stores are not waited for); in a cluster, CTA r's thread 0 first waits for
// 3 (r + 1) loads before the cluster barrier.
__global__ void profile_kernel(int32_t* out) {
  const unsigned t = threadIdx.x;
  if (gridDim.x > 1) {
    if (t == 0)
      for (unsigned i = 0; i < 3 * (blockIdx.x + 1); ++i) __ldcg(out + i);
    cooperative_groups::this_cluster().sync();
  }
  for (unsigned i = 0; i < t % 5; ++i) __ldcg(out + i);
  __syncthreads();
  __syncwarp();  // not counted: a warp barrier waits for no memory
  if (t == 0) {
    for (int i = 0; i < 7; ++i) __ldcg(out + i);
    for (int i = 0; i < 3; ++i) __stcg(out + i, 0);
    {
      LRC_INDEPENDENT_LOADS;  // one wait, three in the strict count
      for (int i = 0; i < 3; ++i) __ldcg(out + i);
    }
    {
      LRC_UNUSED_RESULTS;  // no wait, two in the strict count
      atomicAdd(out + 8, 1);
      atomicAdd(out + 9, 1);
    }
  }
}

// A data race: an unsynchronised read-modify-write of one counter by every thread.
__global__ void racy_increment_kernel(int32_t* out) { __stcg(out, __ldcg(out) + 1); }

}  // namespace

std::string selftest(const std::string& name) {
  if (!available()) return "the SIMT simulator runs on x86-64 Linux only";
  if (name == "collectives") {
    for (uint64_t seed : {0, 7}) {
      std::vector<int32_t> out(2 * 256, -1);
      const std::string err = run(2, 256, 1, seed, collectives_kernel, out.data());
      if (!err.empty()) return err;
      for (size_t i = 0; i < out.size(); ++i)
        if (out[i] != 0)
          return "thread " + std::to_string(i) + " failed check " + std::to_string(out[i]) + " (seed " +
                 std::to_string(seed) + ")";
    }
    return "";
  }
  if (name == "cluster_exchange") {
    std::vector<int32_t> out(8, 0);
    const std::string err = run(4, 64, 4, 3, cluster_exchange_kernel, out.data());
    if (!err.empty()) return err;
    for (int r = 0; r < 4; ++r)
      if (out[4 + r] != (r + 1) % 4 + 1) return "CTA " + std::to_string(r) + " read " + std::to_string(out[4 + r]);
    return "";
  }
  if (name == "sync_warp") {
    for (uint64_t seed : {0, 7}) {
      std::vector<int32_t> out(256, -1);
      const std::string err = run(1, 256, 1, seed, sync_warp_kernel, out.data());
      if (!err.empty()) return err;
      for (int t = 0; t < 256; ++t)
        if (out[t] != 1000 + t - (t & 31) + (((t & 31) + 1) & 31))
          return "thread " + std::to_string(t) + " read " + std::to_string(out[t]) + " (seed " + std::to_string(seed) +
                 ")";
    }
    return "";
  }
  if (name == "mixed_collectives")
    return expect_failure(run(1, 64, 1, 0, mixed_collectives_kernel, nullptr), "different collectives");
  if (name == "missing_lane")
    return expect_failure(run(1, 64, 1, 0, missing_lane_kernel, nullptr), "warp 1 has 31 of 32 lanes");
  if (name == "early_exit")
    return expect_failure(run(1, 64, 1, 0, early_exit_kernel, nullptr), "exited");
  if (name == "cluster_departure")
    return expect_failure(run(2, 64, 2, 0, cluster_departure_kernel, nullptr), "cannot complete");
  if (name == "profile") {
    std::vector<int32_t> out(16, 0);
    std::vector<Profile> one, pair;
    set_profile_sink(&one);
    std::string err = run(1, 64, 1, 0, profile_kernel, out.data());
    set_profile_sink(&pair);
    if (err.empty()) err = run(2, 64, 2, 5, profile_kernel, out.data());
    set_profile_sink(nullptr);
    if (!err.empty()) return err;
    uint64_t loads = 0;
    for (int t = 0; t < 64; ++t) loads += t % 5;
    const Profile& a = one.at(0);
    if (one.size() != 1 || a.critical_ops != 4 + 7 + 1 || a.strict_ops != 4 + 7 + 3 + 2 || a.block_barriers != 1 ||
        a.cluster_barriers != 0 || a.total_ops != loads + 15 || a.phase_ops[0] != a.critical_ops ||
        a.phase_strict[0] != a.strict_ops)
      return "one CTA: critical " + std::to_string(a.critical_ops) + ", strict " + std::to_string(a.strict_ops) +
             ", barriers " +
             std::to_string(a.block_barriers) + "/" + std::to_string(a.cluster_barriers) + ", total " +
             std::to_string(a.total_ops);
    const Profile& b = pair.at(0);
    if (pair.size() != 1 || b.critical_ops != 6 + 4 + 7 + 1 || b.strict_ops != 6 + 4 + 7 + 3 + 2 ||
        b.cluster_barriers != 1 || b.block_barriers != 1 || b.total_ops != 3 + 6 + 2 * (loads + 15) ||
        b.phase_ops[0] != b.critical_ops || b.phase_strict[0] != b.strict_ops)
      return "cluster of 2: critical " + std::to_string(b.critical_ops) + ", strict " + std::to_string(b.strict_ops) +
             ", barriers " +
             std::to_string(b.block_barriers) + "/" + std::to_string(b.cluster_barriers) + ", total " +
             std::to_string(b.total_ops);
    return "";
  }
  if (name == "racy_increment") {  // in order: no lost update; seeded: some updates lost
    int32_t in_order = 0, seeded = 0;
    std::string err = run(1, 1024, 1, 0, racy_increment_kernel, &in_order);
    if (err.empty()) err = run(1, 1024, 1, 11, racy_increment_kernel, &seeded);
    if (!err.empty()) return err;
    if (in_order != 1024 || seeded >= 1024)
      return "expected 1024 in order and fewer with a seed, got " + std::to_string(in_order) + " and " +
             std::to_string(seeded);
    return "";
  }
  return "unknown self-test '" + name + "'";
}

}  // namespace simt
