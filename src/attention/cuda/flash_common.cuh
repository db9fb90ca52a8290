// Device helpers shared by the CUDA attention kernels: the Ampere-style warp matrix instructions
// (mma.sync m16n8k16, ldmatrix, cp.async) that run on sm_90a, and the 16-bit element types.
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4), which the kernels rely on:
//   A (16x16, row-major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 8+2t..), a3 = (g+8,
//   8+2t..) B (16x8, k x n):      b0 = (k 2t..2t+1, n g), b1 = (k 8+2t.., n g) C (16x8, fp32):
//   c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "flash_params.hpp"

namespace sqa::cuda::detail {

template <typename T>
struct Mma;

template <>
struct Mma<__nv_bfloat16> {
  static constexpr uint32_t kOnes = 0x3F803F80u;  // (1.0, 1.0): B operand that sums rows
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  // Two fp32 values to one register of two 16-bit values, lower column in the low half.
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

template <>
struct Mma<__half> {
  static constexpr uint32_t kOnes = 0x3C003C00u;  // (1.0, 1.0): B operand that sums rows
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// 16-byte global->shared copy; when !valid the destination is zero-filled and nothing is read,
// so rows past the sequence end become zeros (never garbage that could turn 0 * x into NaN).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(valid ? 16 : 0));
}
// The same, to a shared-memory byte address (as smem_addr gives).
__device__ __forceinline__ void cp_async_16(uint32_t smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem),
               "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n");
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Copies kRows rows of D elements (row r at base + r * row_stride, from row0 on) into a padded
// shared tile (row stride D + 8) with cp.async; rows at or past valid_rows become zeros. Thread
// tid copies 16-byte chunk tid % (D / 8) of rows tid / (D / 8) + i * kRowStep: a compile-time
// trip count and one 64-bit address step per copy (a loop bounded by tid compiles to a generic
// loop with remainder handling, ~100 integer instructions per 64-row tile at D = 16, a third of
// the forward's per-block budget there).
template <typename T, int D, int kRows, int kThreads>
__device__ __forceinline__ void load_tile(T* dst, const T* base, int64_t row_stride, int row0,
                                          int valid_rows, int tid) {
  constexpr int kChunks = D / 8;
  constexpr int kStride = D + 8;
  static_assert(kThreads % kChunks == 0, "each thread copies one fixed chunk column");
  constexpr int kRowStep = kThreads / kChunks;
  const int r = tid / kChunks, c = tid % kChunks;
  const T* src = base + static_cast<int64_t>(row0 + r) * row_stride + c * 8;
#pragma unroll
  for (int i = 0; i < (kRows + kRowStep - 1) / kRowStep; ++i) {
    if (kRows % kRowStep != 0 && r + i * kRowStep >= kRows) break;
    const bool valid = row0 + r + i * kRowStep < valid_rows;
    cp_async_16(dst + (r + i * kRowStep) * kStride + c * 8, valid ? src : base, valid);
    src += kRowStep * row_stride;
  }
}

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ---- Sequence extents and masks, shared by the forward and backward kernels -----------------
// flash_fwd_kernel.cuh keeps its own inline copy of this index math: moving it onto these
// helpers changed ptxas's register allocation there (d128 prefill 212 -> 215 registers, decode
// spills 20 -> 24 bytes), and that kernel is the default path.

// Where sequence b starts in the packed (varlen) tensors and how long it is; dense batches start
// at row 0 with the common lengths.
struct SeqSpan {
  int64_t q_row0 = 0, k_row0 = 0, total_q = 0;
  int nq = 0, nk = 0;
};

__device__ __forceinline__ SeqSpan seq_span(const FwdKernelParams& p, int b) {
  SeqSpan s;
  s.nq = p.seqlen_q;
  s.nk = p.seqlen_k;
  if (p.cu_seqlens_q != nullptr) {
    s.q_row0 = p.cu_seqlens_q[b];
    s.nq = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
    s.k_row0 = p.cu_seqlens_k[b];
    s.nk = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    s.total_q = p.cu_seqlens_q[p.batch];
  }
  return s;
}

// Whether query row qrow sees key `key`: the window is bottom-right aligned (diag = N_k - N_q,
// spec.cpp visible_keys), left / right < 0 are unbounded.
__device__ __forceinline__ bool key_visible(int key, int qrow, int nk, int diag, int left,
                                            int right) {
  const int qd = qrow + diag;
  return key < nk && (left < 0 || key >= qd - left) && (right < 0 || key <= qd + right);
}

// Key blocks [begin, end) of block_n keys that some query row in [qrow_lo, qrow_hi] can see;
// begin == end when no row sees any key (an empty key sequence, or a window past the keys).
struct KeyBlocks {
  int begin = 0, end = 0;
};

__device__ __forceinline__ KeyBlocks visible_key_blocks(int qrow_lo, int qrow_hi, int nk, int diag,
                                                        int left, int right, int block_n) {
  int key_begin = 0, key_end = nk;
  if (left >= 0) key_begin = max(0, qrow_lo + diag - left);
  if (right >= 0) key_end = min(nk, qrow_hi + diag + right + 1);
  KeyBlocks r;
  r.begin = key_begin / block_n;
  r.end = key_end > key_begin ? (key_end + block_n - 1) / block_n : r.begin;
  return r;
}

// Whether every row in [qrow_lo, qrow_hi] sees every key of the block starting at key n0: such
// blocks skip the element-wise mask.
__device__ __forceinline__ bool key_block_unmasked(int n0, int block_n, int qrow_lo, int qrow_hi,
                                                   int nk, int diag, int left, int right) {
  return n0 + block_n <= nk && (left < 0 || n0 >= qrow_hi + diag - left) &&
         (right < 0 || n0 + block_n - 1 <= qrow_lo + diag + right);
}

// A 1-D grid over (block, unit) with units (heads) in chunks of `chunk`: each chunk's blocks
// before the next chunk's, units fastest inside a chunk. chunk = units is the plain units-fastest
// order. Returns (block, unit). `chunk` must divide `units` (raster_chunk ensures it).
struct RasterPlace {
  int block, unit;
};
__device__ __forceinline__ RasterPlace raster_place(int x, int blocks, int units, int chunk) {
  const int per_chunk = chunk * blocks;
  const int r = x % per_chunk;
  return {r / chunk, x / per_chunk * chunk + r % chunk};
}
// The chunk a raster setting gives: the setting when it is in 1..units and divides units, else
// all units.
__host__ __device__ __forceinline__ int raster_chunk(int setting, int units) {
  return setting > 0 && setting < units && units % setting == 0 ? setting : units;
}

// The forward grid (flash_fwd_launch.cuh): x = (row block, head group), z = (sequence, split).
// Causal tiles further down do more work: launch them first, for every head of the raster chunk
// (FwdKernelParams::raster_heads; api.cpp forward_raster) before the next row block (heads vary
// fastest), so the longest tiles start in the first wave and the tail of the grid is short also
// with few heads.
struct FwdTileCoords {
  int m_block = 0, head_group = 0, b = 0, split = 0;
};

__device__ __forceinline__ FwdTileCoords fwd_tile_coords(const FwdKernelParams& p) {
  FwdTileCoords c;
  const int num_m_blocks = static_cast<int>(gridDim.x) / p.num_head_groups;
  const RasterPlace at = raster_place(static_cast<int>(blockIdx.x), num_m_blocks, p.num_head_groups,
                                      raster_chunk(p.raster_heads, p.num_head_groups));
  c.m_block = num_m_blocks - 1 - at.block;
  c.head_group = at.unit;
  c.b = static_cast<int>(blockIdx.z) / p.num_splits;
  c.split = static_cast<int>(blockIdx.z) % p.num_splits;
  return c;
}

// Row of the lse / split workspace for (sequence b, attention head h, local query row r):
// dense (B, H_attn, N_q); varlen (H_attn, total_q).
__device__ __forceinline__ int64_t lse_row(const FwdKernelParams& p, int b, int h, int64_t q_row0,
                                           int r, int64_t total_q) {
  if (p.cu_seqlens_q != nullptr) return static_cast<int64_t>(h) * total_q + q_row0 + r;
  return (static_cast<int64_t>(b) * p.num_attention_heads + h) * p.seqlen_q + r;
}

}  // namespace sqa::cuda::detail
