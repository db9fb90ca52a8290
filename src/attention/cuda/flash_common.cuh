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

}  // namespace sqa::cuda::detail
