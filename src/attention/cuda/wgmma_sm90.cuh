// Hopper (sm_90a) warpgroup matrix multiply (wgmma.mma_async) for the forward kernel of
// flash_fwd_wgmma.cuh: the synchronisation instructions, shared-memory matrix descriptors for the
// 128-byte swizzle, and the m64nNk16 instructions (fp32 accumulators, bf16 or fp16 inputs).
//
// A warpgroup is 4 consecutive warps (128 threads, the first warp index divisible by 4); every
// instruction here must be executed by all 128 threads of the warpgroup together.
//
// Accumulator layout of m64nNk16 (fp32), thread t of the warpgroup (w = t / 32, g = (t % 32) / 4,
// q = t % 4): d[4 j + e] holds row 16 w + g + 8 (e / 2), column 8 j + 2 q + (e % 2), for the
// column tiles j = 0 .. N / 8 - 1. Each warp's 16 x 8 tile is the mma.m16n8 C fragment.
// A from registers (m64k16, 4 registers of two 16-bit values): a0 = (row g, columns 2q, 2q+1),
// a1 = (row g + 8, 2q..), a2 = (row g, 8 + 2q..), a3 = (row g + 8, 8 + 2q..), rows offset by
// 16 w: the mma.m16n8k16 A fragment. So the accumulators of column tiles 2k and 2k + 1, rounded
// to 16 bits in pairs (e = 0,1 | 2,3), are the A fragment of k-step k of a following product.
//
// Shared-memory operands use the 128-byte swizzle: a tile of R rows of 64 16-bit elements
// (128 bytes) per "atom column", atoms of 8 rows x 128 bytes (1024 bytes, 1024-byte aligned)
// in which the 16-byte chunk c of row r is stored at chunk c ^ (r % 8). Wider rows (D = 128) are
// stored as D / 64 atom columns one after the other: [D / 64][R][64] (sw128_offset below).
// The D = 32 backward (flash_bwd_wgmma.cuh) stores its 64-byte rows with the 64-byte swizzle
// instead (sw64_offset, wgmma_desc with layout type 2).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace sqa::cuda::detail {

// Byte offset of 16-byte chunk `chunk` (8 elements, 0 .. D / 8 - 1) of row `row` in a
// [D / 64][kRows][64] tile with the 128-byte swizzle. The tile must start 1024-byte aligned:
// the hardware applies the XOR to address bits 4-6 from bits 7-9 of the absolute address.
template <int kRows>
__device__ __forceinline__ uint32_t sw128_offset(int row, int chunk) {
  static_assert(kRows % 8 == 0, "swizzle atoms are 8 rows");
  return static_cast<uint32_t>((chunk / 8) * kRows * 128 + row * 128 +
                               (((chunk % 8) ^ (row % 8)) * 16));
}

// Byte offset of 16-byte chunk `chunk` (0 .. 3) of row `row` in a [rows][32] tile of 16-bit
// elements with the 64-byte swizzle (flash_bwd_wgmma.cuh at D = 32; wgmma layout type 2): rows of
// 64 bytes, atoms of 8 rows (512 bytes, 512-byte aligned), chunk c of row r stored at chunk
// c ^ ((r / 2) % 4), i.e. address bits 4-5 XOR bits 7-8 (bits 7-8 of r * 64 are (r / 2) % 4).
__device__ __forceinline__ uint32_t sw64_offset(int row, int chunk) {
  return static_cast<uint32_t>(row * 64 + ((chunk ^ ((row >> 1) & 3)) * 16));
}

// Matrix descriptor (PTX ISA, "matrix descriptor format" of wgmma): start address, leading and
// stride dimension byte offsets (all >> 4, 14 bits each at bits 0, 16, 32), base offset 0 (the
// atoms are 1024-byte aligned), swizzle mode at bits 62-63 (1 = 128-byte swizzle).
//   K-major (A = Q, B = K for S = Q K^T): the 16-element k-slice lies inside one 128-byte row,
//   so the leading offset is unused (1 by convention); stride = 1024, from one 8-row group to the
//   next along M or N. A k-step of 16 elements inside an atom is +32 bytes on the start address.
//   MN-major (B = V for O = P V, transposed): leading = from one 64-column atom column to the
//   next along N (kRows * 128 bytes), stride = 1024, from one 8-row group to the next along K.
__device__ __forceinline__ uint64_t wgmma_desc_sw128(uint32_t smem_byte_addr,
                                                     uint32_t leading_bytes,
                                                     uint32_t stride_bytes) {
  return static_cast<uint64_t>((smem_byte_addr >> 4) & 0x3FFFu) |
         (static_cast<uint64_t>((leading_bytes >> 4) & 0x3FFFu) << 16) |
         (static_cast<uint64_t>((stride_bytes >> 4) & 0x3FFFu) << 32) | (uint64_t{1} << 62);
}

// The same for any layout type (bits 62-63): 0 = interleave (no swizzle), 1 = 128-byte,
// 2 = 64-byte, 3 = 32-byte swizzle. The swizzle of a mode of W bytes (W = 32, 64, 128) XORs the
// 16-byte chunk index (address bits 4 .. 3 + log2(W / 16)) with address bits 7 .. 6 + log2(W /
// 16): atoms of 8 rows x W bytes, repeating every 8 W bytes (256, 512, 1024), at which the tiles
// must be aligned (base offset 0).
__device__ __forceinline__ uint64_t wgmma_desc(uint32_t smem_byte_addr, uint32_t leading_bytes,
                                               uint32_t stride_bytes, uint32_t layout_type) {
  return static_cast<uint64_t>((smem_byte_addr >> 4) & 0x3FFFu) |
         (static_cast<uint64_t>((leading_bytes >> 4) & 0x3FFFu) << 16) |
         (static_cast<uint64_t>((stride_bytes >> 4) & 0x3FFFu) << 32) |
         (static_cast<uint64_t>(layout_type & 3u) << 62);
}

// The descriptor moved by `bytes` (a multiple of 16): only the start address field changes, and
// it cannot carry into the next field while the address stays below 256 KB (all of shared memory).
__device__ __forceinline__ uint64_t wgmma_desc_advance(uint64_t desc, uint32_t bytes) {
  return desc + (bytes >> 4);
}

// Orders this thread's earlier register and shared-memory accesses before the warpgroup's next
// wgmma: needed before the first wgmma of a batch whenever accumulators or A registers were
// written by other instructions (rescaled O, freshly packed P).
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void wgmma_commit_group() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

// Waits until at most kPending of this warpgroup's committed wgmma groups are still running
// (groups complete in commit order).
template <int kPending>
__device__ __forceinline__ void wgmma_wait_group() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Makes this thread's shared-memory writes through the generic proxy (plain stores, cp.async)
// visible to the async proxy, through which wgmma reads its shared-memory operands. Each writing
// thread runs it after its writes landed and before the barrier that the reading warpgroups wait
// on.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Named barriers (ids 1 .. 15; 0 is __syncthreads) over `threads` threads (a multiple of 32):
// bar.sync waits until that many threads have arrived (its own included), bar.arrive counts this
// thread without waiting. Both order this thread's earlier memory accesses before the barrier
// completes, for every participating thread (FlashAttention-3's warp scheduler barriers).
__device__ __forceinline__ void named_barrier_sync(uint32_t id, uint32_t threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(uint32_t id, uint32_t threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// mbarriers (sm_90, shared::cta, 8 bytes each) for the producer / consumer pipeline of the TMA
// kernels. A phase completes when `count` arrivals were made and the transaction count is back at
// zero: arrive.expect_tx adds the bytes a TMA load will write, and the load's complete_tx takes
// them off as they land. try_wait.parity(p) returns once the phase with parity p completed (a
// waiter on a phase that has not started yet spins: the caller tracks the parity per stage).
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the inits visible to the async proxy (the TMA unit's complete_tx) before first use.
__device__ __forceinline__ void mbar_fence_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred P1;\n"
      "LAB_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
      "@P1 bra DONE;\n"
      "bra LAB_WAIT;\n"
      "DONE:\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// The mbarrier receives one arrival (not counted in advance: .noinc) when every cp.async this
// thread issued before has landed.
__device__ __forceinline__ void cp_async_mbar_arrive_noinc(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// Waits for every cp.async this thread issued (committed or not).
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}
// TMA tile load of a 4-D tensor map box (coordinates innermost first, in elements) into shared
// memory at dst (1024-byte aligned for the 128-byte swizzle), completing `bytes` on mbarrier bar.
// Coordinates past the map's extent read as zeros. tmap: the generic address of a CUtensorMap
// (a __grid_constant__ kernel parameter).
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const void* tmap, uint32_t bar, int c0,
                                            int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}
// Warp-specialised register split (FlashAttention-3): the producer warpgroup gives registers
// back, the consumer warpgroups take them (per thread, multiples of 8; every warp of the
// warpgroup runs the same instruction).
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// Register fences: the compiler sees every register as read and rewritten here, so it neither
// moves a use of an accumulator above the wgmma.wait_group that completes it, nor reuses the
// register of an A operand (packed P) for something else while a wgmma may still read it.
template <int N>
__device__ __forceinline__ void fence_registers(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N, int M>
__device__ __forceinline__ void fence_registers(uint32_t (&r)[N][M]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < M; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

// wgmma.mma_async m64nNk16 with fp32 accumulators, for 16-bit inputs T and N columns. The scale
// and transpose immediates: A and B unscaled (1, 1); ss: both operands K-major (0, 0); rs_mn: B
// MN-major (transpose 1). `accumulate` = 0 overwrites D (no zeroing needed), 1 adds to it.
//
// bf16 and fp16 differ only in the input types of the instruction name (.f32.bf16.bf16 against
// .f32.f16.f16), and inline asm takes its text only as string literals, so each shape is written
// once as a macro on (T, PTX type name) and stamped out for both types, as CUTLASS does for its
// MMA atoms. N stays written out per shape: it fixes the operand numbering (%i), the accumulators
// being the first operands.
template <typename T, int N>
struct Wgmma;

// The accumulators d[0 .. N / 2 - 1] of m64nN as read-write ("+f") asm operands, written once for
// all shapes (each list extends the one of half its length). They are the first operands of every
// wgmma below, so %0 .. %(N / 2 - 1) in the asm text.
#define SQA_WGMMA_ACC4(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
#define SQA_WGMMA_ACC8(d) SQA_WGMMA_ACC4(d), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
#define SQA_WGMMA_ACC16(d)                                                                       \
  SQA_WGMMA_ACC8(d), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), \
      "+f"(d[14]), "+f"(d[15])
#define SQA_WGMMA_ACC32(d)                                                                       \
  SQA_WGMMA_ACC16(d), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),           \
      "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
      "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define SQA_WGMMA_ACC64(d)                                                                       \
  SQA_WGMMA_ACC32(d), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),           \
      "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), \
      "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), \
      "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), \
      "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// Wgmma<T, 64>:
//   ss:    D (m64n64, fp32) += A (m64k16, shared memory, K-major) * B (k16n64, shared, K-major).
//   rs_mn: D (m64n64, fp32) += A (m64k16, registers) * B (k16n64, shared memory, MN-major).
#define SQA_WGMMA_M64N64(T, TYPE)                                                               \
  template <>                                                                                   \
  struct Wgmma<T, 64> {                                                                         \
    static __device__ __forceinline__ void ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b, \
                                              int accumulate) {                                 \
      asm volatile(                                                                             \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                          \
          "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                           \
          " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "            \
          "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "   \
          "%32, %33, p, 1, 1, 0, 0;\n}\n"                                                       \
          : SQA_WGMMA_ACC32(d)                                                                  \
          : "l"(desc_a), "l"(desc_b), "r"(accumulate));                                         \
    }                                                                                           \
    static __device__ __forceinline__ void rs_mn(float (&d)[32], const uint32_t (&a)[4],        \
                                                 uint64_t desc_b) {                             \
      asm volatile(                                                                             \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                          \
          "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                           \
          " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "            \
          "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "   \
          "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"                                         \
          : SQA_WGMMA_ACC32(d)                                                                  \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));                   \
    }                                                                                           \
  };

// Wgmma<T, 128>: the same two forms for m64n128 (64 accumulators per thread).
#define SQA_WGMMA_M64N128(T, TYPE)                                                              \
  template <>                                                                                   \
  struct Wgmma<T, 128> {                                                                        \
    static __device__ __forceinline__ void ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b, \
                                              int accumulate) {                                 \
      asm volatile(                                                                             \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                          \
          "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE                          \
          " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "            \
          "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "    \
          "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "    \
          "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "   \
          "%64, %65, p, 1, 1, 0, 0;\n}\n"                                                       \
          : SQA_WGMMA_ACC64(d)                                                                  \
          : "l"(desc_a), "l"(desc_b), "r"(accumulate));                                         \
    }                                                                                           \
    static __device__ __forceinline__ void rs_mn(float (&d)[64], const uint32_t (&a)[4],        \
                                                 uint64_t desc_b) {                             \
      asm volatile(                                                                             \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                          \
          "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE                          \
          " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "            \
          "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "    \
          "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "    \
          "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "   \
          "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                                         \
          : SQA_WGMMA_ACC64(d)                                                                  \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));                   \
    }                                                                                           \
  };

// Wgmma<T, 32>: rs_mn only (flash_bwd_wgmma.cuh's dV / dK at D = 32, m64n32k16, 16
// accumulators per thread).
#define SQA_WGMMA_M64N32(T, TYPE)                                                        \
  template <>                                                                            \
  struct Wgmma<T, 32> {                                                                  \
    static __device__ __forceinline__ void rs_mn(float (&d)[16], const uint32_t (&a)[4], \
                                                 uint64_t desc_b) {                      \
      asm volatile(                                                                      \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"                                   \
          "wgmma.mma_async.sync.aligned.m64n32k16.f32." TYPE "." TYPE                    \
          " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "    \
          "{%16, %17, %18, %19}, %20, p, 1, 1, 1;\n}\n"                                  \
          : SQA_WGMMA_ACC16(d)                                                           \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));            \
    }                                                                                    \
  };

SQA_WGMMA_M64N32(__nv_bfloat16, "bf16")
SQA_WGMMA_M64N32(__half, "f16")
SQA_WGMMA_M64N64(__nv_bfloat16, "bf16")
SQA_WGMMA_M64N64(__half, "f16")
SQA_WGMMA_M64N128(__nv_bfloat16, "bf16")
SQA_WGMMA_M64N128(__half, "f16")
#undef SQA_WGMMA_M64N32
#undef SQA_WGMMA_M64N64
#undef SQA_WGMMA_M64N128

// ---- Both operands from shared memory, both MN-major (flash_bwd_wgmma.cuh's dQ = dS K) ---------
// D (m64nN, fp32) (+)= A (m64k16, shared, MN-major: stored k-row by k-row, M contiguous) * B
// (k16nN, shared, MN-major). The transpose immediates are 1 and 1; `accumulate` = 0 overwrites D.
// N = 16 (D = 32), 32 (D = 64: each warpgroup takes half of dQ's columns) and 64 (D = 128).
template <typename T, int N>
struct WgmmaSSTrans;

#define SQA_WGMMA_SS_TT_M64N16(T, TYPE)                                                         \
  template <>                                                                                   \
  struct WgmmaSSTrans<T, 16> {                                                                  \
    static __device__ __forceinline__ void run(float (&d)[8], uint64_t desc_a, uint64_t desc_b, \
                                               int accumulate) {                                \
      asm volatile(                                                                             \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"                                          \
          "wgmma.mma_async.sync.aligned.m64n16k16.f32." TYPE "." TYPE                           \
          " {%0, %1, %2, %3, %4, %5, %6, %7}, "                                                 \
          "%8, %9, p, 1, 1, 1, 1;\n}\n"                                                         \
          : SQA_WGMMA_ACC8(d)                                                                   \
          : "l"(desc_a), "l"(desc_b), "r"(accumulate));                                         \
    }                                                                                           \
  };

#define SQA_WGMMA_SS_TT_M64N32(T, TYPE)                                                          \
  template <>                                                                                    \
  struct WgmmaSSTrans<T, 32> {                                                                   \
    static __device__ __forceinline__ void run(float (&d)[16], uint64_t desc_a, uint64_t desc_b, \
                                               int accumulate) {                                 \
      asm volatile(                                                                              \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"                                           \
          "wgmma.mma_async.sync.aligned.m64n32k16.f32." TYPE "." TYPE                            \
          " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "            \
          "%16, %17, p, 1, 1, 1, 1;\n}\n"                                                        \
          : SQA_WGMMA_ACC16(d)                                                                   \
          : "l"(desc_a), "l"(desc_b), "r"(accumulate));                                          \
    }                                                                                            \
  };

#define SQA_WGMMA_SS_TT_M64N64(T, TYPE)                                                          \
  template <>                                                                                    \
  struct WgmmaSSTrans<T, 64> {                                                                   \
    static __device__ __forceinline__ void run(float (&d)[32], uint64_t desc_a, uint64_t desc_b, \
                                               int accumulate) {                                 \
      asm volatile(                                                                              \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                           \
          "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                            \
          " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "             \
          "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "    \
          "%32, %33, p, 1, 1, 1, 1;\n}\n"                                                        \
          : SQA_WGMMA_ACC32(d)                                                                   \
          : "l"(desc_a), "l"(desc_b), "r"(accumulate));                                          \
    }                                                                                            \
  };

SQA_WGMMA_SS_TT_M64N16(__nv_bfloat16, "bf16")
SQA_WGMMA_SS_TT_M64N16(__half, "f16")
SQA_WGMMA_SS_TT_M64N32(__nv_bfloat16, "bf16")
SQA_WGMMA_SS_TT_M64N32(__half, "f16")
SQA_WGMMA_SS_TT_M64N64(__nv_bfloat16, "bf16")
SQA_WGMMA_SS_TT_M64N64(__half, "f16")
#undef SQA_WGMMA_SS_TT_M64N16
#undef SQA_WGMMA_SS_TT_M64N32
#undef SQA_WGMMA_SS_TT_M64N64
#undef SQA_WGMMA_ACC4
#undef SQA_WGMMA_ACC8
#undef SQA_WGMMA_ACC16
#undef SQA_WGMMA_ACC32
#undef SQA_WGMMA_ACC64

}  // namespace sqa::cuda::detail
