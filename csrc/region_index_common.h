// The arguments of the CUDA region index (csrc/cuda/region_index_cuda.cu), shared by its CUDA
// launcher and its SIMT-simulator twin (csrc/cpu/region_index_simt.cpp): no CUDA headers.
#pragma once

#include <cstdint>

namespace lrc {

// The tile sort of the region index, the same outputs as the Triton `_tile_sort_kernel`: for map
// v of V (1 or 2), image b and tile t of `1 << log_tile` pixels,
// - pixels[v, b, t * tile + i] = the tile's i-th pixel in (key, raster) order, where a pixel's key
//   is its id when 0 <= id < K, else K (ignored); written where t * tile + i < H * W;
// - hist[v, b, t, k] = the tile's pixel count of id k, and local[v, b, t, k] = where that run
//   starts in the sorted tile; hist is written in full (zeros for the ids absent), local only for
//   the ids present.
struct RegionIndexArgs {
  const void* maps[2];        // (B, H, W) int32 or int64 ids, any strides; maps[1] may equal maps[0]
  int64_t stride_b[2], stride_h[2], stride_w[2];  // in elements
  bool int64_ids;             // the maps' dtype: int64 (true) or int32
  int32_t V, B, W, HW;        // HW = H * W < 2**31
  int32_t K;                  // ids 0..K-1 are regions; 0 <= K <= 2**31 - 3
  int32_t log_tile;           // 4 <= log_tile <= 12 (tiles of 16 to 4,096 pixels)
  int32_t n_tiles;            // ceil(HW / tile)
  int32_t* pixels;            // out (V, B, HW)
  int32_t* hist;              // out (V, B, n_tiles, K)
  int32_t* local;             // out (V, B, n_tiles, K)
};

}  // namespace lrc
