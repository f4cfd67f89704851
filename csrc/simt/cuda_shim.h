// The CUDA names a kernel source uses, mapped onto the SIMT simulator (simt.h), so that a .cu
// file compiles as host C++ and runs on the CPU. Include it first and define LRC_SIMT, which
// makes the project's CUDA sources skip <cuda_runtime.h> and <cooperative_groups.h>.
//
// Covered: what csrc/cuda/*.cu uses -- 1-D launches through cudaLaunchKernelEx (with the
// cluster attribute), __shared__ variables (one copy per CTA), __syncthreads, __syncwarp, cluster
// sync, full-mask warp collectives, __ldg/__ldcg/__ldca/__stcg, 32- and 64-bit atomics, __ffs, __popc.
// Memory operations are relaxed atomics on the host (the CTAs of a cluster run on different
// OS threads); barriers order them, as on the GPU.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "simt.h"

#ifndef LRC_SIMT
#error "define LRC_SIMT before including cuda_shim.h"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
// The simulator has thread-block clusters: take the sm_90 paths.
#define __CUDA_ARCH__ 900
// Cost-model annotations (simt::Profile); felzenszwalb_common.h defines them as nothing elsewhere.
#define LRC_SIMT_PHASE(phase) ::simt::set_phase(phase)
#define LRC_INDEPENDENT_LOADS const ::simt::IndependentLoads lrc_simt_independent_loads
#define LRC_UNUSED_RESULTS const ::simt::UnusedResults lrc_simt_unused_results

// threadIdx.x and friends: objects whose x, y, z read the current fiber's value.
namespace simt {
template <Dim3 (*kGet)(), unsigned Dim3::*kField>
struct IndexComponent {
  operator unsigned() const { return kGet().*kField; }
};
template <Dim3 (*kGet)()>
struct IndexVector {
  IndexComponent<kGet, &Dim3::x> x;
  IndexComponent<kGet, &Dim3::y> y;
  IndexComponent<kGet, &Dim3::z> z;
};
}  // namespace simt
constexpr simt::IndexVector<&simt::thread_idx> threadIdx{};
constexpr simt::IndexVector<&simt::block_idx> blockIdx{};
constexpr simt::IndexVector<&simt::block_dim> blockDim{};
constexpr simt::IndexVector<&simt::grid_dim> gridDim{};

using std::max;
using std::min;

// ---- memory ------------------------------------------------------------------------------------
template <class T>
inline T __ldg(const T* p) {
  ::simt::memory_op();
  T v;
  __atomic_load(p, &v, __ATOMIC_RELAXED);
  return v;
}
template <class T>
inline T __ldcg(const T* p) {
  return __ldg(p);
}
template <class T>
inline T __ldca(const T* p) {
  return __ldg(p);
}
template <class T>
inline void __stcg(T* p, T v) {
  ::simt::memory_op(false);
  __atomic_store(p, &v, __ATOMIC_RELAXED);
}

namespace simt {
// The kernel's dynamic shared memory (`extern __shared__` on a GPU): one buffer per CTA, that is
// per OS thread, uninitialised as on a GPU (whatever the last CTA left).
inline std::vector<char>& dynamic_shared_buffer() {
  static thread_local std::vector<char> buffer;
  return buffer;
}
inline char* dynamic_shared(size_t bytes) {
  std::vector<char>& buffer = dynamic_shared_buffer();
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
}
// An atomic's operation for the profile: a global one, or one on the dynamic shared memory
// (not counted, as the kernel's plain shared-memory accesses are not).
inline void atomic_op(const void* p) {
  const std::vector<char>& buffer = dynamic_shared_buffer();
  const char* c = static_cast<const char*>(p);
  if (!buffer.empty() && c >= buffer.data() && c < buffer.data() + buffer.size())
    shared_op();
  else
    memory_op(true, true);
}
}  // namespace simt

template <class T>
inline T simt_atomic_add(T* p, T v) {
  ::simt::atomic_op(p);
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
template <class T, class Better>
inline T simt_atomic_update(T* p, T v, Better better) {
  ::simt::atomic_op(p);
  T old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (better(v, old) && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline int atomicAdd(int* p, int v) { return simt_atomic_add(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return simt_atomic_add(p, v); }
inline int atomicMin(int* p, int v) {
  return simt_atomic_update(p, v, [](int a, int b) { return a < b; });
}
inline int atomicMax(int* p, int v) {
  return simt_atomic_update(p, v, [](int a, int b) { return a > b; });
}
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  return simt_atomic_update(p, v, [](unsigned long long a, unsigned long long b) { return a < b; });
}
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
  return simt_atomic_update(p, v, [](unsigned long long a, unsigned long long b) { return a > b; });
}
inline int atomicOr(int* p, int v) {
  ::simt::atomic_op(p);
  return __atomic_fetch_or(p, v, __ATOMIC_RELAXED);
}
inline int atomicCAS(int* p, int expected, int v) {
  ::simt::atomic_op(p);
  __atomic_compare_exchange_n(p, &expected, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return expected;
}

// ---- barriers and warp collectives ---------------------------------------------------------------
inline void __syncthreads() { ::simt::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::simt::sync_warp(mask); }
inline unsigned __ballot_sync(unsigned mask, int predicate) { return ::simt::ballot(mask, predicate != 0); }
inline unsigned __match_any_sync(unsigned mask, int value) {
  return ::simt::match_any(mask, static_cast<uint32_t>(value));
}
inline unsigned __match_any_sync(unsigned mask, unsigned long long value) { return ::simt::match_any(mask, value); }

template <class T>
inline uint64_t simt_bits(T v) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffled values are at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof v);
  return bits;
}
template <class T>
inline T simt_from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane) {
  return simt_from_bits<T>(::simt::shfl(mask, simt_bits(v), src_lane));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta) {
  return simt_from_bits<T>(::simt::shfl_up(mask, simt_bits(v), delta));
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }

namespace cooperative_groups {
struct cluster_group {
  void sync() const { ::simt::sync_cluster(); }
};
inline cluster_group this_cluster() { return {}; }
}  // namespace cooperative_groups

// ---- runtime API -----------------------------------------------------------------------------------
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidValue = 1;
constexpr cudaError_t cudaErrorLaunchFailure = 719;
using cudaStream_t = void*;

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
enum cudaLaunchAttributeID { cudaLaunchAttributeClusterDimension = 4 };
struct cudaLaunchAttributeValue {
  struct {
    unsigned x, y, z;
  } clusterDim;
};
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  cudaLaunchAttributeValue val;
};
struct cudaLaunchConfig_t {
  dim3 gridDim, blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  cudaLaunchAttribute* attrs;
  unsigned numAttrs;
};
enum cudaDeviceAttr { cudaDevAttrComputeCapabilityMajor = 75 };

inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrComputeCapabilityMajor ? 9 : 0;
  return cudaSuccess;
}

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
template <class Kernel>
inline cudaError_t cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int) {
  return cudaSuccess;
}

namespace simt {
// The message of the last failed launch on this OS thread ("" after a good one).
inline std::string& last_launch_error() {
  static thread_local std::string message;
  return message;
}
}  // namespace simt

inline cudaError_t cudaGetLastError() {
  return ::simt::last_launch_error().empty() ? cudaSuccess : cudaErrorLaunchFailure;
}

// Runs the kernel to completion on the simulator (synchronously), with the seed set by
// simt::set_default_seed on this OS thread.
template <class... KernelArgs, class... Args>
inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* cfg, void (*kernel)(KernelArgs...), Args... args) {
  ::simt::LaunchConfig config;
  config.grid.x = cfg->gridDim.x;
  config.block.x = cfg->blockDim.x;
  for (unsigned i = 0; i < cfg->numAttrs; ++i)
    if (cfg->attrs[i].id == cudaLaunchAttributeClusterDimension) config.cluster = cfg->attrs[i].val.clusterDim.x;
  config.seed = ::simt::default_seed();
  config.profile = ::simt::profile_sink();
  const std::function<void()> body = [=] { kernel(args...); };
  ::simt::last_launch_error() = ::simt::launch(config, body);
  return cudaGetLastError();
}
