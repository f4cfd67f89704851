// The tile sort of the loss's region index (lrc_fast/kernels/region_pool.py), the same bits as
// the Triton `_tile_sort_kernel`, without tl.sort. One CTA of 256 threads sorts one tile: a
// stable LSD radix sort of the tile's (key, position) pairs by key, at most 9 bits a pass (one
// pass while K < 512, two while K < 262,144), each pass ranked by warps with __match_any_sync and
// per-warp digit counters in shared memory. tl.sort runs a bitonic network (55 compare-exchange
// stages for 1,024 keys, most across threads through shared memory); on an H200 it took 0.26 ms
// per loss step (B=16, two 512x512 maps), a quarter of the step.
#include "region_index_cuda.h"

namespace lrc {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxDigitBits = 9;
constexpr int kBuckets = 1 << kMaxDigitBits;
static_assert(kBuckets == 2 * kThreads, "the scan gives thread i the counters of digits 2i and 2i + 1");
constexpr unsigned kFullMask = 0xffffffffu;

// A CTA holds kCap positions (kCap >= tile): warp w owns positions [w * kCap / 8, (w + 1) *
// kCap / 8) as kCap / 256 rows of 32, lane = position within the row. A warp ranks its rows in
// order and the warps' counters are scanned in warp order, so each pass is stable.
// Up to 1,024 positions, eight CTAs per SM (32 registers; ptxas sm_90 spills 16 bytes at 1,024
// positions, where it chose 48 registers and five CTAs, 8 at 256 and none at 512): the kernel
// waits on its loads and barriers, so more CTAs in flight hide more of that. 2,048 and 4,096
// positions: four and two CTAs (64 and 123 registers, no spills).
template <class Id, int kCap>
__global__ void __launch_bounds__(kThreads, kCap <= 1024 ? 8 : 8192 / kCap) region_index_kernel(RegionIndexArgs a) {
  constexpr int kChunks = kCap / kThreads;  // rows of 32 positions per thread
  constexpr int kPerWarp = kCap / kWarps;
  static_assert(kCap <= 0xffff, "counts and offsets within a tile fit 16 bits");
  __shared__ unsigned long long sorted[kCap];    // (key << 32) | position, after each pass
  __shared__ uint16_t counts[kWarps][kBuckets];  // per warp and digit: the count, then the offset
  __shared__ int32_t warp_sums[kWarps];

  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32;
  const unsigned lower_lanes = (1u << lane) - 1u;
  const int tile = 1 << a.log_tile;
  const int t = static_cast<int>(blockIdx.x) % a.n_tiles;
  const int image = static_cast<int>(blockIdx.x) / a.n_tiles;  // v * B + b
  const int v = image / a.B, b = image % a.B;
  // selected, not indexed by v: a dynamic index would copy the arguments to local memory
  const Id* map = static_cast<const Id*>(v == 0 ? a.maps[0] : a.maps[1]) + b * (v == 0 ? a.stride_b[0] : a.stride_b[1]);
  const int64_t s_h = v == 0 ? a.stride_h[0] : a.stride_h[1];
  const int64_t s_w = v == 0 ? a.stride_w[0] : a.stride_w[1];
  const bool flat = s_h == a.W * s_w;  // pixel h * W + w at (h * W + w) * s_w: no division
  // Ignored ids and the padding past the tile or the image share the last key, K: the padding
  // positions are the tile's last ones, so the stable sort keeps them after its ignored pixels,
  // and neither is ever stored. So K < 512 takes one 9-bit pass, K = 512 two.
  const uint32_t ignored = static_cast<uint32_t>(a.K);
  int key_bits = 1;
  while ((ignored >> key_bits) != 0u) ++key_bits;
  const int passes = (key_bits + kMaxDigitBits - 1) / kMaxDigitBits;
  const int digit_bits = (key_bits + passes - 1) / passes;  // <= 9, and as even as the passes allow
  const int buckets = 1 << digit_bits;
  // int64 offsets: (V * B * n_tiles) * K may pass 2**31
  const int64_t row = (static_cast<int64_t>(image) * a.n_tiles + t) * a.K;
  // this tile's row of counts, zeroed here (no memset launch); the barriers of the sort order
  // these stores before the counts stored at the end
  // int64 k: K may be within kThreads of 2**31
  for (int64_t k = tid; k < a.K; k += kThreads) a.hist[row + k] = 0;

  unsigned long long item[kChunks];
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const int p = warp * kPerWarp + c * 32 + lane;
    uint32_t key = ignored;
    if (p < tile && t * tile + p < a.HW) {  // p < tile first: t * tile + p < HW + tile < 2**31
      const int pix = t * tile + p;
      const int64_t id = __ldg(map + (flat ? pix * s_w : (pix / a.W) * s_h + (pix % a.W) * s_w));
      if (id >= 0 && id < a.K) key = static_cast<uint32_t>(id);
    }
    item[c] = (static_cast<unsigned long long>(key) << 32) | static_cast<uint32_t>(p);
  }

  int rank[kChunks];  // within the warp's rows, among the pairs with the same digit
  const int last_shift = 32 + (passes - 1) * digit_bits;
  for (int shift = 32; shift <= last_shift; shift += digit_bits) {
    for (int i = lane; i < buckets; i += 32) counts[warp][i] = 0;
    __syncwarp();
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int digit = static_cast<int>(item[c] >> shift) & (buckets - 1);
      const unsigned peers = __match_any_sync(kFullMask, digit);
      const int before = __popc(peers & lower_lanes);
      const int seen = counts[warp][digit];
      __syncwarp();  // every lane has read the digit's count before its first lane adds the row's
      if (before == 0) counts[warp][digit] = static_cast<uint16_t>(seen + __popc(peers));
      __syncwarp();
      rank[c] = seen + before;
    }
    __syncthreads();
    // thread i: digits 2i and 2i + 1 (those below `buckets`), their offsets in warps 0..7, then
    // the digits' start in the tile
    const int d0 = 2 * tid, d1 = d0 + 1;
    int total0 = 0, total1 = 0;
    if (d0 < buckets) {  // buckets >= 2, so d1 < buckets too
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const int n0 = counts[w][d0], n1 = counts[w][d1];
        counts[w][d0] = static_cast<uint16_t>(total0);
        counts[w][d1] = static_cast<uint16_t>(total1);
        total0 += n0;
        total1 += n1;
      }
    }
    int inclusive = total0 + total1;  // over digits 0..d1: a warp scan, then the warps before
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const int up = __shfl_up_sync(kFullMask, inclusive, d);
      if (lane >= d) inclusive += up;
    }
    if (lane == 31) warp_sums[warp] = inclusive;
    __syncthreads();
    if (d0 < buckets) {
      int start = inclusive - total0 - total1;
      for (int w = 0; w < warp; ++w) start += warp_sums[w];
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        counts[w][d0] = static_cast<uint16_t>(counts[w][d0] + start);
        counts[w][d1] = static_cast<uint16_t>(counts[w][d1] + start + total0);
      }
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int digit = static_cast<int>(item[c] >> shift) & (buckets - 1);
      sorted[counts[warp][digit] + rank[c]] = item[c];
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < kChunks; ++c) item[c] = sorted[warp * kPerWarp + c * 32 + lane];
  }

  int32_t* const out = a.pixels + static_cast<int64_t>(image) * a.HW;
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const int p = warp * kPerWarp + c * 32 + lane;
    // the padding sorts last: position p holds a pixel of the image where t * tile + p < HW
    if (p < tile && t * tile + p < a.HW) out[t * tile + p] = t * tile + static_cast<int32_t>(item[c] & 0xffffffffull);
    const uint32_t key = static_cast<uint32_t>(item[c] >> 32);
    if (key < ignored && (p == kCap - 1 || static_cast<uint32_t>(sorted[p + 1] >> 32) != key)) {
      // The run ends at p; it starts at the first pair with this key. The last pass's offsets
      // say where the pairs of the key's top digit start: the key's own start after one pass
      // (K < 512), else the lower end of a binary search of the sorted tile.
      int lo = counts[0][key >> (last_shift - 32)];
      if (passes > 1) {
        int hi = p;
        while (lo < hi) {
          const int mid = (lo + hi) / 2;
          if (static_cast<uint32_t>(sorted[mid] >> 32) < key) {
            lo = mid + 1;
          } else {
            hi = mid;
          }
        }
      }
      a.hist[row + key] = p + 1 - lo;
      a.local[row + key] = lo;
    }
  }
}

template <class Id, int kCap>
cudaError_t launch(const RegionIndexArgs& a, cudaStream_t stream) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(a.V) * static_cast<unsigned>(a.B) * static_cast<unsigned>(a.n_tiles));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  const cudaError_t err = cudaLaunchKernelEx(&cfg, region_index_kernel<Id, kCap>, a);
  if (err != cudaSuccess) cudaGetLastError();  // clear it: a later launch check must not see it
  return err;
}

// One kernel size per tile from 256 pixels up (the tiles bench_loss.py --sweep times); smaller
// tiles (small images) take the 256-position kernel.
template <class Id>
cudaError_t launch_for_tile(const RegionIndexArgs& a, cudaStream_t stream) {
  switch (a.log_tile) {
    case 9: return launch<Id, 512>(a, stream);
    case 10: return launch<Id, 1024>(a, stream);
    case 11: return launch<Id, 2048>(a, stream);
    case 12: return launch<Id, 4096>(a, stream);
    default: return launch<Id, 256>(a, stream);
  }
}

}  // namespace

cudaError_t region_index_cuda(const RegionIndexArgs& a, cudaStream_t stream) {
  const int64_t tile = int64_t{1} << (a.log_tile & 31);
  // pixel numbers t * tile + p (p < tile) stay below 2**31
  if (a.V < 1 || a.V > 2 || a.B < 0 || a.W < 1 || a.HW < 0 || a.K < 0 || a.K > 0x7ffffffd ||
      a.log_tile < 4 || a.log_tile > 12 || a.HW + tile > 0x7fffffff || a.n_tiles != (a.HW + tile - 1) / tile)
    return cudaErrorInvalidValue;
  const int64_t blocks = static_cast<int64_t>(a.V) * a.B * a.n_tiles;
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  return a.int64_ids ? launch_for_tile<int64_t>(a, stream) : launch_for_tile<int32_t>(a, stream);
}

}  // namespace lrc
