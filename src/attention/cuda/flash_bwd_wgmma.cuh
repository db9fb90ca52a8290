// Hopper (sm_90a) backward dK/dV kernel with warpgroup MMA (wgmma.mma_async), FlashAttention-3
// style, for head_dim 64 and 128: the default backward there (SQA_CUDA_BWD unset or wgmma), in
// both schemes; and for head_dim 32 on request (SQA_CUDA_BWD=wgmma; see "D = 32" below). It
// replaces flash_bwd_dkdv_kernel (flash_bwd_kernel.cuh, mma.sync) and keeps its semantics exactly:
// the same grid (key block, KV head, head split), the same loop over the query heads of the KV
// head's group (rSQA: one attention head reading query head kv_head % H_q) and the query blocks
// that see the CTA's keys, the same masks (causal / sliding window, bottom-right aligned, N_q !=
// N_k, varlen), the same numerics (P = exp2(scale_log2 S - lse log2 e) in fp32, dS = P (dP - D) in
// fp32, rounded to 16 bits for dK and dQ, dK scaled once at the end, dQ scaled before it is added
// into dq_accum), and the same outputs (dK / dV, or fp32 partial rows per head split). The dsum,
// dQ-convert, split-reduce and (deterministic) dQ kernels are shared.
//   kDq = true (the default scheme): the CTA also adds dQ += scale dS K for its keys into the
// fp32 workspace dq_accum (bulk reduce-adds; their order varies from run to run).
//   kDq = false (deterministic): dK and dV only; flash_bwd_dq_kernel computes dQ after it. Every
// dK / dV element is computed by one CTA in a fixed order (and the head splits are summed in
// order by flash_bwd_dkdv_reduce_kernel), so the result repeats bit for bit.
//
// Design (why it is what it is)
//   CTA = 2 warpgroups (256 threads) and BN = 128 keys; warpgroup w owns keys 64 w .. 64 w + 63,
//   which are the wgmma M of its products, and keeps their dK and dV accumulators (D / 2 fp32
//   each per thread) in registers for the whole CTA. Per step it takes BM = 64 query rows of one
//   attention head:
//     S^T  = K Q^T        m64n64k16, A = K and B = Q from shared memory (both K-major, the
//                         forward's S = Q K^T with the roles swapped);
//     dP^T = V dO^T       the same with V and dO;
//     P^T  = exp2(S^T scale_log2 - lse_q log2 e), masked;  dS^T = P^T (dP^T - D_q)  (registers:
//                         a query is an accumulator column, so lse and D are per column);
//     dV  += P^T dO       m64nDk16, A = P^T from registers (the S^T accumulators rounded to 16 bits
//                         are the A fragments, as P in the forward's O += P V), B = dO from
//                         shared memory MN-major (the forward's V operand); the first kDvEarly
//                         of its 4 k-steps (4 at D = 64, 3 at D = 128) are issued as soon as
//                         their P^T fragments are packed, before the wait for dP^T, so the
//                         tensor cores run them while the warps compute dS^T (FA3's order);
//     dK  += dS^T Q       the same with dS^T and Q;
//     dQ   = dS K         (kDq) M = the 64 queries, K = the CTA's 128 keys, so it needs both
//                         warpgroups' dS^T: each stores its dS^T (16-bit) to one shared [128
//                         keys][64 queries] tile, and after a CTA barrier warpgroup w computes
//                         dQ's columns w D / 2 .. (w + 1) D / 2 - 1 (m64n(D / 2)k16 over 8
//                         k-steps), A = dS read MN-major (the dS^T tile as stored) and B = K read
//                         MN-major (the K tile as stored, the same bytes as S^T's K-major A).
//                         Splitting N rather than the keys adds each dQ element once per CTA.
//                         The scaled dQ goes to an fp32 shared tile and from there to dq_accum
//                         by bulk reduce-adds (cp.reduce.async.bulk, one per row, issued at the
//                         next step), so the warps never wait for global atomics.
//   The transposes are free: S^T (keys as M) makes P^T and dS^T the register A operands of dV and
//   dK (no shared-memory round trip for them), and wgmma's transpose bits read Q, dO, K and dS^T
//   in their stored (row-major) form. Only dS^T goes through shared memory, as in every FA
//   backward (dQ contracts over keys, which are spread over the warpgroups).
//   Tiles: BM = 64 keeps S^T and dP^T at 32 registers each; with dK and dV (D registers per
//   thread) the live set peaks at ~200 values at D = 128, so the CTA is 1 per SM and the register
//   file holds two warpgroups (FA3 uses the same 64 x 128 tile at D = 128, with a third, producer
//   warpgroup and setmaxnreg, not done here). ptxas (CUDA 13, sm_90a), kDq: D = 64 230 registers,
//   D = 128 255; kDq = false: D = 64 210, D = 128 240; no spills, no stack (the dS^T store and
//   the fragment packs run one k-step at a time and the mask uses selects, not branches; a
//   per-element branch mask and separate store and pack passes had 8 bytes of spills at D = 128;
//   4 early dV k-steps at D = 128: 255 registers and 20 bytes of spills).
//   Shared memory: K, V 16 / 32 KB each, Q and dO 3 x 8 / 16 KB each, lse and D 3 x 256 B each,
//   + 1 KB alignment; kDq adds dS^T 16 KB and the dQ tile 18 / 34 KB: 116.5 KB at D = 64, 212.5
//   KB at D = 128 (kDq = false: 82.5 / 162.5 KB).
//   Loads: every thread copies its share with cp.async into 128-byte-swizzled tiles (the
//   forward's load_tile_sw128; no producer warp, no TMA): K and V once, then Q, dO, lse and D of
//   the query blocks through kStages (3) buffers, so two blocks stream in while one is computed.
//   lse and D come raw (4-byte cp.async, zero-filled past the sequence); the kernel masks rows
//   past the sequence explicitly (the mma.sync kernel gives them lse = +inf instead).
//   Schedule of a step (both warpgroups in step, two CTA barriers; kDq = false: one):
//     barrier 1 (block landed and fenced to the async proxy; every warpgroup finished the last
//     step, so the stage it read and the dS^T / dQ tiles are free); issue S^T and dP^T (two
//     groups); (kDq) the previous block's dQ rows to the TMA unit; copies of the block kStages - 1
//     ahead (into the stage no wgmma of this step reads); wait for S^T; P (the exponentials
//     overlap dP^T on the tensor cores); pack P^T's first kDvEarly k-steps and issue their dV
//     (one group); wait for dP^T; dS; pack P and dS, (kDq) store dS^T; issue the rest of dV and
//     dK (one group); kDq: wait for the reads of the dQ rows issued this step, barrier 2 (every
//     dS^T stored and fenced), issue dQ, wait for all, dQ to its tile (fenced for the bulk reads);
//     kDq = false: wait for all.
//   Hazards: a stage is overwritten only by copies issued after barrier 1 of the step after the
//   one that read it (every wgmma reading it completed before that barrier: wait_group 0 at the
//   end of each step); the dS^T tile is rewritten after barrier 1 of the next step, when every
//   dQ read of it completed; the dQ tile after barrier 2 of the next step, when the bulk reads
//   issued before it completed (wait_group.read). bench/gpu/wgmma_bwd_emulate.py checks the index
//   math, descriptors and fragment hand-overs (and this buffer order) against a float64
//   reference on the host, in both modes.
// Measured on the H200 (fwd+bwd TFLOP/s at d64 / d128, x cuDNN) and removed:
//   dQ by 16-byte fp32 atomics (RED.ADD.F32x4, lanes swapping halves; the first wgmma kernel):
//     320-341 (0.77-0.80x) / 416-434 (0.72-0.74x).
//   bulk dQ without the early dV k-steps (wgmmab): 337-361 / 452-472.
//   dQ split over the keys, both warpgroups adding all columns (wgmmak, d64 only): 0.85x of the
//     atomic kernel at d64.
//   kept (bulk dQ + early dV, was wgmma2): 341-363 (0.82-0.85x) / 464-472 (0.78-0.83x).
//   Not measured, not kept: waiting for dV / dK before issuing dQ (250 registers at D = 128, but
//   the tensor cores idle between the groups).
// The default on dense atomic-dQ batches (flash_bwd_dkdv_wgmma_tma_kernel): a producer warpgroup
// with TMA loads of Q / dO, mbarriers and setmaxnreg (see dkdv_wgmma_body). First H200 run
// (2026-11-29): small-scale tests passed, 8k-32k tokens gave wrong gradients (NaN at D = 128):
// the consumers' K / V cp.asyncs were waited by cp.async.wait_group 0 without a commit_group,
// which waits for nothing; fixed (wait_all). Second run (bench/results/2026-11-29-h200-wgmmatma):
// the same errors vs FA2 as the cp.async-only form, 3-7% faster fwd+bwd (d64 MHA 32k 353 -> 375
// TFLOP/s, d128 MHA 32k 440 -> 458, d128 SQA causal 485 -> 503).
// Not done (FA3 has these): the two warpgroups out of step (the dQ barrier pulls them
// together), a persistent grid.
// D = 32 (only with SQA_CUDA_BWD=wgmma or wgmmatma; the default there stays the mma.sync kernel,
// occ, 3 CTAs per SM, at ~1.0x cuDNN fwd+bwd, where the target is 1.5x): the same CTA, step and
// schedule, cp.async-only form in both schemes (the TMA form's boxes are 64 columns wide).
// K, V, Q and dO are [rows][32] tiles with the 64-byte swizzle (layout type 2, 8-row groups 512
// bytes apart; WgmmaBwdTile::desc, sw64_offset, load_bwd_tile), as the removed d32 wgmma forward
// stored them (fab843f; its tests passed on the H200): S^T / dP^T take two K-major k-steps (+32
// bytes), dV / dK are m64n32k16 (A from registers, B MN-major with the N = 32 columns of one
// swizzle row, k-steps of 16 rows = 1024 bytes), dQ is m64n16k16 per warpgroup (B = K MN-major,
// warpgroup 1 32 bytes into the rows). The dS^T tile keeps the 128-byte swizzle (64 queries per
// row). ptxas (CUDA 13): 188 registers (kDq), 170 (kDq = false), no spills; shared memory 68.5 /
// 42.5 KB. So one CTA (8 warps) per SM, register-bound: two would need <= 128 registers. Checked
// by bench/gpu/wgmma_bwd_emulate.py (D = 32 cases, d32 mutations); not yet run on a GPU.
#pragma once

#include <cuda.h>  // CUtensorMap (a type only: the library does not link libcuda)
#include <cuda_runtime.h>

#include <cstdint>

#include "flash_bwd_kernel.cuh"
#include "flash_common.cuh"
#include "flash_fwd_wgmma.cuh"
#include "flash_params.hpp"
#include "wgmma_sm90.cuh"

namespace sqa::cuda::detail {

template <typename T, int D, bool kDq = true, bool kTma = false>
struct WgmmaBwdTile {
  static constexpr int kWarpGroups = 2;  // consumers: the MMA warpgroups
  static constexpr int kThreads = 128 * kWarpGroups;
  // kTma: a third, producer warpgroup (threads kThreads ..) loads Q, dO, lse and D.
  static constexpr int kCtaThreads = kThreads + (kTma ? 128 : 0);
  static constexpr int BN = 64 * kWarpGroups;  // keys per CTA: 64 per warpgroup (the wgmma M)
  static constexpr int BM = 64;                // query rows per step
  static constexpr int kStages = 3;            // Q / dO / lse / D buffers
  static constexpr int kKVBytes = BN * D * 2;  // K or V: [D / 64][BN][64] (D = 32: [BN][32])
  static constexpr int kQBytes = BM * D * 2;   // one Q or dO stage: [D / 64][BM][64] ([BM][32])
  // Layout of the K, V, Q and dO tiles (the operands the descriptors below read). D >= 64:
  // [D / 64][rows][64] with the 128-byte swizzle (layout type 1; 8-row groups 1024 bytes apart,
  // the next atom column rows * 128 bytes on). D = 32: [rows][32] with the 64-byte swizzle
  // (layout type 2; rows of 64 bytes, 8-row groups 512 bytes apart; sw64_offset), so no byte
  // of the tiles is padding (a 128-byte swizzle would leave half of every row empty) and the
  // K-major k-steps are +32 bytes inside a row as at D >= 64. The dS^T tile keeps the 128-byte
  // swizzle at every D (64 queries = one 128-byte row).
  static constexpr int kSwBytes = D == 32 ? 64 : 128;  // one swizzle row
  static constexpr int kSwElems = kSwBytes / 2;        // its 16-bit elements (atom column width)
  static __device__ __forceinline__ uint64_t desc(uint32_t addr, uint32_t leading_bytes) {
    if constexpr (D == 32) {
      return wgmma_desc(addr, leading_bytes, 8 * kSwBytes, 2u);
    } else {
      return wgmma_desc_sw128(addr, leading_bytes, 1024);
    }
  }
  // Start of K-major k-step kk (16 elements) in a tile of kRows rows: 32 bytes per k-step inside
  // a swizzle row, the next atom column (D = 128) every kSwBytes / 32 k-steps.
  template <int kRows>
  __host__ __device__ static constexpr uint32_t kstep_offset(int kk) {
    return static_cast<uint32_t>((kk / (kSwBytes / 32)) * kRows * kSwBytes +
                                 (kk % (kSwBytes / 32)) * 32);
  }
  static constexpr int kStatBytes = BM * 4;  // one stage of lse or D (fp32)
  // kDq: dS^T, [BN][BM = 64], swizzled; then the block's scaled dQ (fp32) [BM][D], rows padded
  // by 32 bytes (a row stride of 32 mod 128 bytes makes the accumulators' 8-byte stores
  // conflict-free: a half warp's 4 rows x 4 lanes x 8 bytes cover the 32 banks once); one bulk
  // reduce-add per row, so the padding is never read.
  static constexpr int kDsBytes = kDq ? BN * BM * 2 : 0;
  static constexpr int kDqRowBytes = D * 4 + 32;
  static constexpr int kDqBytes = kDq ? BM * kDqRowBytes : 0;
  // dV's k-steps (of BM / 16 = 4) issued before the wait for dP^T: 4 at D = 32, 64; 3 at D = 128,
  // where 4 spill (the P^T values stay live until dS^T is computed: 4 registers per k-step).
  // kTma: the consumers get 240 registers (setmaxnreg; 24 stay with the producer), where 3
  // k-steps at D = 128 spill 4 bytes (ptxas), so 2.
  static constexpr int kDvEarly = D <= 64 ? 4 : kTma ? 2 : 3;
  // kTma: a 'full' and an 'empty' mbarrier per stage, after the dQ tile.
  static constexpr int kBarBytes = kTma ? 2 * kStages * 8 : 0;
  static constexpr int kSmemBytes = 2 * kKVBytes + 2 * kStages * kQBytes + kDsBytes +
                                    2 * kStages * kStatBytes + kDqBytes + kBarBytes + 1024;
  static_assert(sizeof(T) == 2, "16-bit inputs");
  static_assert(D == 32 || D == 64 || D == 128,
                "wgmma wrappers exist for N = 32, 64 and 128 (dK, dV) and N = D / 2 (dQ)");
  static_assert(kSmemBytes <= 227 * 1024, "the sm_90 limit of dynamic shared memory per CTA");
  static_assert(kDqRowBytes % 128 == 32 && kDqRowBytes % 16 == 0, "conflict-free, 16-byte rows");
  static_assert((2 * kKVBytes + 2 * kStages * kQBytes) % 1024 == 0,
                "the dS^T tile starts 1024-byte aligned (128-byte swizzle)");
  // Its tensor maps write 64-column boxes with the 128-byte swizzle (encode_qdo_tensor_map).
  static_assert(!kTma || D >= 64, "the TMA producer form exists for D = 64 and 128 only");
};

// Bulk asynchronous reduce-add (sm_90, the async proxy; the TMA unit): nbytes of fp32 from shared
// memory added element-wise into global memory (both 16-byte aligned, nbytes a multiple of 16),
// in this thread's current bulk group. The shared source may be rewritten only after
// cp_async_bulk_wait_read (its reads done); the global adds are complete at kernel end.
__device__ __forceinline__ void bulk_reduce_add_f32(float* gmem, uint32_t smem, uint32_t nbytes) {
  asm volatile(
      "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(gmem),
      "r"(smem), "r"(nbytes)
      : "memory");
}
__device__ __forceinline__ void cp_async_bulk_commit() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
// Waits until every bulk group of this thread finished reading its shared-memory source.
__device__ __forceinline__ void cp_async_bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
// Waits until every bulk group of this thread completed (its writes done).
__device__ __forceinline__ void cp_async_bulk_wait_all() {
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

// 4-byte global->shared copy (lse and D); zero-fills when !valid (nothing is read).
__device__ __forceinline__ void cp_async_4(uint32_t smem, const void* gmem, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem), "l"(gmem),
               "r"(valid ? 4 : 0));
}

// cp.async of rows row0 .. row0 + kRows - 1 of a [rows][D] matrix (row r at base + r *
// row_stride) into a tile in WgmmaBwdTile's layout; rows at or past valid_rows become zeros.
// D >= 64: load_tile_sw128. D = 32: thread tid copies chunk tid % 4 of rows tid / 4 + i kThreads /
// 4 (a multiple of the 8-row swizzle period, so every i's destination is the first one plus i
// kThreads / 4 rows).
template <typename T, int D, int kRows, int kThreads>
__device__ __forceinline__ void load_bwd_tile(uint32_t dst, const T* base, int64_t row_stride,
                                              int row0, int valid_rows, int tid) {
  if constexpr (D == 32) {
    constexpr int kRowStep = kThreads / 4;
    static_assert(kRowStep % 8 == 0 && kRows % kRowStep == 0, "whole swizzle atoms per step");
    const int r = tid / 4, c = tid % 4;
    const T* src = base + static_cast<int64_t>(row0 + r) * row_stride + c * 8;
    const uint32_t to = dst + sw64_offset(r, c);
#pragma unroll
    for (int i = 0; i < kRows / kRowStep; ++i) {
      const bool valid = row0 + r + i * kRowStep < valid_rows;
      cp_async_16(to + static_cast<uint32_t>(i * kRowStep * 64), valid ? src : base, valid);
      src += kRowStep * row_stride;
    }
  } else {
    load_tile_sw128<T, D, kRows, kThreads>(dst, base, row_stride, row0, valid_rows, tid);
  }
}

// kDq: the dQ of the CTA's keys, without atomics on the warps' path. Each warpgroup stores its
// scaled dQ accumulators (columns dq_col0 ..) to an fp32 shared tile [BM][D] (8-byte stores,
// conflict-free rows); after barrier 1 and the S^T / dP^T issue of the next step (or after the
// loop and a barrier) 64 threads (lanes 0 .. 7 of each warp) hand one row each (D * 4 bytes: the
// block's rows of dq_accum are rows of the workspace, a row per query) to the TMA unit as a bulk
// reduce-add and go on. The issuing threads wait for the reads of their row (wait_group.read)
// just before barrier 2 of that next step, so the tile is free when it is rewritten after
// barrier 2; the adds to global memory complete behind the warps (the kernel's end waits for
// them). At D = 64 warpgroup 1's B operand of dQ (K, MN-major) starts 64 bytes into the 128-byte
// swizzle atom rows (the hardware applies the swizzle to the summed address, as for the
// forward's 32-byte k-steps of K-major operands).
// kDq = false: no dS^T tile, dQ wgmma, dQ tile, bulk adds or barrier 2; each step ends with the
// wait for its dV / dK group (the next step's copies refill the stage it read, after barrier 1).
// kTma (the default on dense atomic-dQ batches; deterministic only with SQA_CUDA_BWD=wgmmatma):
// warp specialisation as in FA3. A third
// warpgroup (threads 256 .. 383, after the two MMA warpgroups, so theirs keep the indices above)
// is the producer: after setmaxnreg.dec its first warp loads each block's Q and dO with TMA
// (tensor maps tm_q / tm_do with the 128-byte swizzle, so the boxes land in exactly the
// [D / 64][BM][64] swizzled layout the descriptors read; rows past the sequence arrive as zeros)
// and lse / D with 4-byte cp.async, into the same kStages buffers. Per stage a 'full' mbarrier
// (33 arrivals: lane 0's arrive.expect_tx of the Q + dO bytes, and each lane's
// cp.async.mbarrier.arrive.noinc when its lse / D copies landed) and an 'empty' one (8 arrivals:
// lane 0 of each consumer warp after the step's wgmma.wait_group 0, i.e. once the warp's wgmmas and
// its lse / D reads of the stage are done). Step it uses stage it % kStages and phase
// (it / kStages) & 1 of both; the producer refills a stage after waiting for the empty phase of
// the step that read it. The consumers (setmaxnreg.inc) load K / V with cp.async as before and
// run the same step; the CTA barriers become named barrier 1 over their 256 threads (the
// producer never joins): barrier 1 still orders the dS^T / dQ tiles between steps, barrier 2
// the dS^T stores before dQ. Loads no longer sit between the consumers' instructions.
// kTma with kDq = false: the same producer; the consumers' step ends with the wait for its dV /
// dK group, which is then the only wait retiring the wgmmas that read the stage's Q and dO, so
// the empty arrive follows it (bench/gpu/wgmma_bwd_emulate.py tma-mutations: det_early_empty).
// Barrier 1 stays: K / V are copied by both warpgroups' threads, so each warpgroup's first step
// needs the other's copies (det_no_bar1); after the first step it only keeps the warpgroups in
// step (the empty mbarriers alone would order the stages). Its kDvEarly at D = 128 (2, the
// cp.async form's 3) moves only the commit point of a dV k-step, not the order in which the
// accumulators take the k-steps, so dK / dV should equal the cp.async form's bit for bit
// (CudaBackward.WgmmaTmaDeterministicMatchesWgmmaAtScale checks it).
template <typename T, int D, bool kDq, bool kTma>
__device__ __forceinline__ void dkdv_wgmma_body(const BwdKernelParams& g, const void* tm_q,
                                                const void* tm_do) {
  using Tile = WgmmaBwdTile<T, D, kDq, kTma>;
  constexpr int BN = Tile::BN;
  constexpr int BM = Tile::BM;
  constexpr int kThreads = Tile::kThreads;
  constexpr int kStages = Tile::kStages;
  constexpr int kQT = BM / 8;       // 8-column tiles of S^T / dP^T (query columns)
  constexpr int kKSteps = D / 16;   // k-steps of S^T and dP^T
  constexpr int kMSteps = BM / 16;  // k-steps of dV and dK (over the step's query rows)
  constexpr int kDvEarly = Tile::kDvEarly;
  // k-steps of dQ (over the CTA's keys) and its columns per warpgroup.
  constexpr int kNSteps = BN / 16;
  constexpr int kDqN = D / 2;
  constexpr int kDqT = kDqN / 8;  // their 8-column tiles
  using GemmS = Wgmma<T, 64>;     // S^T, dP^T: m64n64 (N = BM)
  using GemmKV = Wgmma<T, D>;     // dV, dK: m64nD, A from registers
  using GemmQ = WgmmaSSTrans<T, kDqN>;
  using M = Mma<T>;
  static_assert(BM == 64, "S^T and dP^T are m64n64; the dS^T tile is one 128-byte atom column");
  const FwdKernelParams& p = g.fwd;

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw_addr = smem_addr(smem_raw);
  const uint32_t sK = (raw_addr + 1023u) & ~1023u;     // [D / 64][BN][64]
  const uint32_t sV = sK + Tile::kKVBytes;             // [D / 64][BN][64]
  const uint32_t sQ = sV + Tile::kKVBytes;             // [kStages][D / 64][BM][64]
  const uint32_t sdO = sQ + kStages * Tile::kQBytes;   // [kStages][D / 64][BM][64]
  const uint32_t sdS = sdO + kStages * Tile::kQBytes;  // kDq: [BN][64]
  const uint32_t sStat = sdS + Tile::kDsBytes;         // lse [kStages][BM], D [kStages][BM]
  // kDq: the dQ tile, [BM][D + 8] fp32.
  [[maybe_unused]] const uint32_t sDq = sStat + 2 * kStages * Tile::kStatBytes;
  // kTma: full[kStages], then empty[kStages] (8 bytes each).
  [[maybe_unused]] const uint32_t sFull = sDq + Tile::kDqBytes;
  [[maybe_unused]] const uint32_t sEmpty = sFull + kStages * 8;
  unsigned char* const smem = smem_raw + (sK - raw_addr);  // generic pointer to sK
  const float* const stat = reinterpret_cast<const float*>(smem + (sStat - sK));

  const int tid = threadIdx.x;
  const int wg = tid / 128;
  const int warp_in_group = (tid % 128) / 32;
  const int lane = tid % 32;
  const int g4 = lane / 4;
  const int t = lane % 4;

  // flash_bwd_dkdv_kernel's grid and query work (dkdv_cta, dkdv_queries).
  const DkDvCta cta = dkdv_cta<BN>(g);
  const int b = cta.b, kv_head = cta.kv_head, split = cta.split, n0 = cta.n0;
  const SeqSpan s = cta.s;
  if (n0 >= s.nk) return;  // the whole CTA
  const int nq = s.nq, nk = s.nk;
  const int diag = nk - nq, left = p.window_left, right = p.window_right;

  const DkDvQueries work = dkdv_queries<BN, BM>(g, cta);
  const int h_first = work.h_first, rsqa_qh = work.rsqa_qh;
  const int qb_begin = work.qb_begin, nqb = work.nqb, n_iter = work.n_iter;

  if constexpr (kTma) {
    if (tid == 0) {
#pragma unroll
      for (int i = 0; i < kStages; ++i) {
        mbar_init(sFull + i * 8, 33);  // lane 0's expect_tx + 32 lanes' cp.async arrivals
        mbar_init(sEmpty + i * 8, 8);  // lane 0 of each consumer warp
      }
      mbar_fence_init();
    }
    __syncthreads();  // the only CTA-wide barrier: the mbarriers are initialised
    if (tid >= kThreads) {
      setmaxnreg_dec<24>();
      if (tid - kThreads >= 32) return;  // one producer warp; the other three are done
      const BwdRowBases rows = bwd_row_bases(p, s, b);
      for (int it = 0, h = h_first, qb = 0; it < n_iter; ++it) {
        const int stage = it % kStages;
        const uint32_t full = sFull + stage * 8;
        // The step that last read this stage (it - kStages) released it.
        if (it >= kStages) mbar_wait(sEmpty + stage * 8, ((it / kStages) & 1) ^ 1);
        const int m0 = (qb_begin + qb) * BM;
        const int qh = p.reverse ? rsqa_qh : h;
        if (lane == 0) {
          mbar_arrive_expect_tx(full, 2 * Tile::kQBytes);
          // Boxes of 64 columns x 1 head x BM rows x 1 batch entry: (column, head, row, batch).
#pragma unroll
          for (int c = 0; c < D / 64; ++c) {
            tma_load_4d(sQ + stage * Tile::kQBytes + c * BM * 128, tm_q, full, c * 64, qh, m0, b);
            tma_load_4d(sdO + stage * Tile::kQBytes + c * BM * 128, tm_do, full, c * 64, h, m0, b);
          }
        }
        // lse (copies 0 .. 63) and D (64 .. 127), lane + 32 i; zeros past the sequence.
#pragma unroll
        for (int i = 0; i < 2 * BM / 32; ++i) {
          const int c = lane + 32 * i;
          const int r = c % BM;
          const bool is_d = c >= BM;
          const bool valid = m0 + r < nq;
          const float* src = is_d ? g.dsum : p.lse;
          cp_async_4(sStat + ((is_d ? kStages : 0) + stage) * Tile::kStatBytes + r * 4,
                     valid ? src + rows.lse(h, m0) + r : src, valid);
        }
        cp_async_mbar_arrive_noinc(full);
        if (++qb == nqb) {
          qb = 0;
          ++h;
        }
      }
      cp_async_wait_all();  // this thread's copies landed before it exits
      return;
    }
    setmaxnreg_inc<240>();
  }

  const T* k_base =
      static_cast<const T*>(p.k) + b * p.k_batch + s.k_row0 * p.k_row + kv_head * p.k_head;
  const T* v_base =
      static_cast<const T*>(p.v) + b * p.v_batch + s.k_row0 * p.v_row + kv_head * p.v_head;
  load_bwd_tile<T, D, BN, kThreads>(sK, k_base, p.k_row, n0, nk, tid);
  load_bwd_tile<T, D, BN, kThreads>(sV, v_base, p.v_row, n0, nk, tid);

  // Row bases as in flash_bwd_dkdv_kernel (bwd_row_bases).
  const BwdRowBases rows = bwd_row_bases(p, s, b);
  // Consumers' (CTA barrier) among the MMA warpgroups: every thread, or (kTma) named barrier 1
  // over the 256 consumer threads.
  auto consumer_barrier = []() {
    if constexpr (kTma) {
      named_barrier_sync(1, kThreads);
    } else {
      __syncthreads();
    }
  };
  auto load_q_block = [&](int stage, int h, int m0) {
    const BwdQdOBases<T> base = bwd_q_do_bases<T>(g, s, b, p.reverse ? rsqa_qh : h, h);
    load_bwd_tile<T, D, BM, kThreads>(sQ + stage * Tile::kQBytes, base.q, p.q_row, m0, nq, tid);
    load_bwd_tile<T, D, BM, kThreads>(sdO + stage * Tile::kQBytes, base.dout, g.do_row, m0, nq,
                                      tid);
    if (tid < 2 * BM) {  // threads 0 .. 63 copy lse, 64 .. 127 D; zeros past the sequence
      const int i = tid % BM;
      const bool is_d = tid >= BM;
      const bool valid = m0 + i < nq;
      const int64_t row = rows.lse(h, m0) + i;
      const float* src = is_d ? g.dsum : p.lse;
      cp_async_4(sStat + ((is_d ? kStages : 0) + stage) * Tile::kStatBytes + i * 4,
                 valid ? src + row : src, valid);
    }
  };
  int load_h = h_first, load_qb = 0;  // the next block to load
  auto load_next = [&](int stage) {
    load_q_block(stage, load_h, (qb_begin + load_qb) * BM);
    if (++load_qb == nqb) {
      load_qb = 0;
      ++load_h;
    }
  };
  if constexpr (kTma) {
    // K and V visible to the wgmmas after barrier 1 of the first step. wait_all: the K / V
    // copies were never committed to a group, and cp.async.wait_group 0 waits only for committed
    // groups (it compiled to a lone DEPBAR, no LDGDEPBAR: the first steps read K and V before
    // they landed when the copies were slow; H200 2026-11-29: wrong dQ / dK / dV, NaN at D = 128,
    // at 8k-32k tokens; bench/gpu/wgmma_bwd_emulate.py tma-mutations: kv_wait_group).
    cp_async_wait_all();
    fence_proxy_async_shared();
  } else {
    // Group j (j < kStages - 1) holds block j; K and V ride in group 0.
#pragma unroll
    for (int j = 0; j < kStages - 1; ++j) {
      if (j < n_iter) load_next(j);
      cp_async_commit();
    }
  }

  // This thread's keys (accumulator rows of S^T, dP^T, dK, dV): local rows kr[0], kr[1].
  const int key_local0 = wg * 64 + warp_in_group * 16 + g4;
  const int key[2] = {n0 + key_local0, n0 + key_local0 + 8};
  // This warpgroup's keys, for the block-level mask test.
  const int wg_key0 = n0 + wg * 64;

  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.0f;
  float st[BM / 2], dpt[BM / 2];  // S^T then P^T; dP^T then dS^T (accumulator layout)
  [[maybe_unused]] float dq[kDqN / 2];
  uint32_t pa[kMSteps][4], da[kMSteps][4];  // P^T and dS^T as A fragments of dV and dK
  const float scale_log2 = p.scale_log2;
  const float scale = g.scale;

  // Descriptors (Tile::desc: the tile layout's swizzle and 8-row group stride). K-major (S^T,
  // dP^T): leading offset unused. This warpgroup's 64 keys start 64 rows into K and V.
  constexpr int kSw = Tile::kSwBytes, kSwElems = Tile::kSwElems;
  const uint64_t k_desc = Tile::desc(sK + wg * 64 * kSw, 16);
  const uint64_t v_desc = Tile::desc(sV + wg * 64 * kSw, 16);
  // dQ: A = dS^T tile read MN-major (64 queries in one 128-byte atom column; 8-key groups 1024
  // bytes apart), B = K read MN-major from dQ column wg * D / 2 on: atom column (wg * D / 2) /
  // kSwElems, plus (wg * D / 2) % kSwElems elements inside the swizzle rows (D = 64: 64 bytes
  // into the 128-byte rows for warpgroup 1; D = 32: 32 bytes into the 64-byte rows; the start
  // stays below bit 7 of the atom, so the base offset stays 0).
  [[maybe_unused]] const uint64_t ds_desc = wgmma_desc_sw128(sdS, BN * 128, 1024);
  [[maybe_unused]] const uint32_t dq_col0 = static_cast<uint32_t>(wg * kDqN);
  [[maybe_unused]] const uint64_t kt_desc =
      Tile::desc(sK + (dq_col0 / kSwElems) * BN * kSw + (dq_col0 % kSwElems) * 2, BN * kSw);

  // kDq: the dQ tile waiting for its bulk adds (dq_accum row of its row 0, its rows inside the
  // sequence; 0: none) and this thread's row to hand over (lanes 0 .. 7 of each warp).
  [[maybe_unused]] int64_t dq_pend_row = 0;
  [[maybe_unused]] int dq_pend_rows = 0;
  [[maybe_unused]] const int dq_issue_row = (tid / 32) * 8 + lane;
  [[maybe_unused]] const bool dq_issuer = kDq && lane < 8;
  [[maybe_unused]] auto issue_dq_bulk = [&]() {
    if (dq_issuer && dq_issue_row < dq_pend_rows) {
      bulk_reduce_add_f32(g.dq_accum + (dq_pend_row + dq_issue_row) * D,
                          sDq + dq_issue_row * Tile::kDqRowBytes, D * 4);
      cp_async_bulk_commit();
    }
  };

  for (int it = 0, h = h_first, qb = 0; it < n_iter; ++it) {
    const int stage = it % kStages;
    const int m0 = (qb_begin + qb) * BM;
    [[maybe_unused]] const int qh = p.reverse ? rsqa_qh : h;
    // Barrier 1: block it landed and is visible to the async proxy; every warpgroup finished
    // step it - 1 (its wgmmas, its reads of lse / D), so stage (it - 1) % kStages and the dS^T
    // tile are free.
    // kTma: the producer's 'full' phase of this stage stands for "landed" (TMA and cp.async
    // writes are visible to this thread and its wgmmas once the phase completed).
    if constexpr (kTma) {
      mbar_wait(sFull + stage * 8, (it / kStages) & 1);
    } else {
      cp_async_wait<kStages - 2>();
      fence_proxy_async_shared();
    }
    consumer_barrier();

    const uint32_t q_stage = sQ + stage * Tile::kQBytes;
    const uint32_t do_stage = sdO + stage * Tile::kQBytes;
    // S^T = K Q^T and dP^T = V dO^T (A: this warpgroup's keys; B: the block's query rows).
    {
      const uint64_t q_desc = Tile::desc(q_stage, 16);
      const uint64_t do_desc = Tile::desc(do_stage, 16);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
        const uint32_t a_off = Tile::template kstep_offset<BN>(kk);
        const uint32_t b_off = Tile::template kstep_offset<BM>(kk);
        GemmS::ss(st, wgmma_desc_advance(k_desc, a_off), wgmma_desc_advance(q_desc, b_off),
                  kk > 0 ? 1 : 0);
      }
      wgmma_commit_group();
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
        const uint32_t a_off = Tile::template kstep_offset<BN>(kk);
        const uint32_t b_off = Tile::template kstep_offset<BM>(kk);
        GemmS::ss(dpt, wgmma_desc_advance(v_desc, a_off), wgmma_desc_advance(do_desc, b_off),
                  kk > 0 ? 1 : 0);
      }
      wgmma_commit_group();
    }
    // The previous block's dQ tile (kDq; stored and fenced before barrier 1) to the TMA unit,
    // then the copies of the block kStages - 1 ahead, while S^T runs: after the S^T / dP^T issue,
    // so the tensor cores start sooner after the barrier (they fill stage (it - 1) % kStages,
    // which no wgmma of this step reads).
    if constexpr (kDq) issue_dq_bulk();
    if constexpr (!kTma) {
      if (it + kStages - 1 < n_iter) load_next((it + kStages - 1) % kStages);
      cp_async_commit();
    }

    // P^T = exp2(scale_log2 S^T - lse log2 e): query column 8 j + 2 t + (e & 1) of the block.
    const float* l_tile = stat + stage * BM;
    const float* d_tile = stat + (kStages + stage) * BM;
    // Every key of this warpgroup visible from every row of the block (and every row real)?
    const int q_last = min(m0 + BM, nq) - 1;
    const bool full = wg_key0 + 64 <= nk && m0 + BM <= nq &&
                      (left < 0 || wg_key0 >= q_last + diag - left) &&
                      (right < 0 || wg_key0 + 63 <= m0 + diag + right);
    wgmma_wait_group<1>();  // S^T done; dP^T may still run
    fence_registers(st);
#pragma unroll
    for (int j = 0; j < kQT; ++j) {
      const float2 l = *reinterpret_cast<const float2*>(l_tile + j * 8 + 2 * t);
      const float l2[2] = {l.x * kLog2e, l.y * kLog2e};
#pragma unroll
      for (int e = 0; e < 4; ++e) st[4 * j + e] = fast_exp2(st[4 * j + e] * scale_log2 - l2[e & 1]);
    }
    if (!full) {  // one branch per block (warp-uniform)
      // key_visible and the row test with bitwise operators: selects, not a branch per element.
#pragma unroll
      for (int j = 0; j < kQT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qrow = m0 + j * 8 + 2 * t + (e & 1);
          const int qd = qrow + diag, k = key[e / 2];
          const bool ok = (qrow < nq) & (k < nk) & ((left < 0) | (k >= qd - left)) &
                          ((right < 0) | (k <= qd + right));
          st[4 * j + e] = ok ? st[4 * j + e] : 0.0f;
        }
    }
    const uint64_t dob_desc = Tile::desc(do_stage, BM * kSw);
    static_assert(kDvEarly > 0 && kDvEarly <= kMSteps, "k-steps of dV issued early");
    // P^T's first kDvEarly k-steps as A fragments, then their dV += P^T dO (B MN-major, see
    // below) behind dP^T. S^T (P^T in fp32) stays live until dS^T is computed (the numerics
    // are unchanged).
#pragma unroll
    for (int kk = 0; kk < kDvEarly; ++kk)
#pragma unroll
      for (int i = 0; i < 4; ++i) pa[kk][i] = M::pack(st[8 * kk + 2 * i], st[8 * kk + 2 * i + 1]);
    wgmma_fence();  // P^T was packed by ordinary instructions
#pragma unroll
    for (int kk = 0; kk < kDvEarly; ++kk)
      GemmKV::rs_mn(dv, pa[kk], wgmma_desc_advance(dob_desc, kk * 16 * kSw));
    wgmma_commit_group();
    wgmma_wait_group<1>();  // dP^T done; dV may run
    fence_registers(dpt);
    // dS^T = P^T (dP^T - D), stored (kDq; 16-bit) to the dS^T tile for dQ: row = key, 64
    // queries in one swizzled 128-byte row; the 32-bit store of (column 8 j + 2 t, + 1) sits in
    // 16-byte chunk j ^ (row % 8) (conflict-free: the 32 lanes hit 32 different banks).
    // P^T and dS^T as A fragments: k-step kk = accumulator column tiles 2 kk and 2 kk + 1; the
    // dS^T fragment registers are also what goes to the dS^T tile (a_i = row g + 8 (i % 2), tile
    // 2 kk + i / 2). One k-step at a time, so S^T and dP^T die as the fragments are born.
#pragma unroll
    for (int kk = 0; kk < kMSteps; ++kk) {
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        const int j = 2 * kk + jj;
        const float2 dd = *reinterpret_cast<const float2*>(d_tile + j * 8 + 2 * t);
#pragma unroll
        for (int e = 0; e < 4; ++e)
          dpt[4 * j + e] = st[4 * j + e] * (dpt[4 * j + e] - (e & 1 ? dd.y : dd.x));
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (kk >= kDvEarly) pa[kk][i] = M::pack(st[8 * kk + 2 * i], st[8 * kk + 2 * i + 1]);
        da[kk][i] = M::pack(dpt[8 * kk + 2 * i], dpt[8 * kk + 2 * i + 1]);
        if constexpr (kDq) {
          unsigned char* const ds_tile = smem + (sdS - sK);
          const int row = key_local0 + 8 * (i % 2);
          *reinterpret_cast<uint32_t*>(ds_tile + sw128_offset<BN>(row, 2 * kk + i / 2) + 4 * t) =
              da[kk][i];
        }
      }
    }
    // this thread's dS^T stores, for the dQ wgmmas (async proxy)
    if constexpr (kDq) fence_proxy_async_shared();
    // dV += P^T dO and dK += dS^T Q: B MN-major (atom columns of kSwElems dims BM * kSw bytes
    // apart, used at D = 128 only; 8-row groups 8 kSw bytes apart; k-step kk starts at query row
    // 16 kk).
    {
      const uint64_t qb_desc = Tile::desc(q_stage, BM * kSw);
      wgmma_fence();  // P^T and dS^T were packed by ordinary instructions
      // (the k-steps of dV not issued early; the same shape, so no fence between the groups)
#pragma unroll
      for (int kk = kDvEarly; kk < kMSteps; ++kk)
        GemmKV::rs_mn(dv, pa[kk], wgmma_desc_advance(dob_desc, kk * 16 * kSw));
#pragma unroll
      for (int kk = 0; kk < kMSteps; ++kk)
        GemmKV::rs_mn(dk, da[kk], wgmma_desc_advance(qb_desc, kk * 16 * kSw));
      wgmma_commit_group();
    }
    if constexpr (kDq) {
      // Barrier 2: both warpgroups' dS^T are in shared memory (and fenced), and the dQ tile's
      // reads issued this step are done before anyone passes it and rewrites the tile (no bulk
      // groups: returns at once).
      cp_async_bulk_wait_read();
      consumer_barrier();
      // dQ(block rows, columns dq_col0 ..) = dS K over the CTA's keys; k-step kk = keys 16 kk.
      wgmma_fence();  // its accumulators last held dP^T / dS^T, written by ordinary instructions
#pragma unroll
      for (int kk = 0; kk < kNSteps; ++kk) {
        GemmQ::run(dq, wgmma_desc_advance(ds_desc, kk * 16 * 128),
                   wgmma_desc_advance(kt_desc, kk * 16 * kSw), kk > 0 ? 1 : 0);
      }
      wgmma_commit_group();
    }
    wgmma_wait_group<0>();  // every wgmma of the step: its stage is refilled after barrier 1
    if constexpr (kDq) fence_registers(dq);
    fence_registers(dk);
    fence_registers(dv);
    fence_registers(pa);
    fence_registers(da);
    if constexpr (kTma) {
      // This warp's wgmmas and lse / D reads of the stage are done: release it to the producer.
      __syncwarp();
      if (lane == 0) mbar_arrive(sEmpty + stage * 8);
    }
    if constexpr (kDq) {
      // Scaled dQ to the tile: accumulator row 16 warp + g (+ 8) = query row of the block,
      // columns dq_col0 + 8 j + 2 t (+ 1); fenced for the bulk reads after barrier 1.
      unsigned char* const dq_tile = smem + (sDq - sK);
      const int r0 = warp_in_group * 16 + g4;
#pragma unroll
      for (int j = 0; j < kDqT; ++j) {
        const int col = static_cast<int>(dq_col0) + 8 * j + 2 * t;
        *reinterpret_cast<float2*>(dq_tile + r0 * Tile::kDqRowBytes + col * 4) =
            make_float2(dq[4 * j] * scale, dq[4 * j + 1] * scale);
        *reinterpret_cast<float2*>(dq_tile + (r0 + 8) * Tile::kDqRowBytes + col * 4) =
            make_float2(dq[4 * j + 2] * scale, dq[4 * j + 3] * scale);
      }
      fence_proxy_async_shared();
      dq_pend_row = rows.dq(qh, m0);
      dq_pend_rows = min(BM, nq - m0);
    }
    if (++qb == nqb) {
      qb = 0;
      ++h;
    }
  }
  if constexpr (!kTma) cp_async_wait<0>();
  if constexpr (kDq) {
    // The last block's dQ tile: every warp stored and fenced it; its adds complete before exit.
    if (n_iter > 0) {
      consumer_barrier();
      issue_dq_bulk();
      cp_async_bulk_wait_all();
    }
  }

  // Epilogue: this thread's dK / dV rows (keys key[r]), columns 8 j + 2 t (+ 1).
  if (g.dkdv_splits > 1) {
    // Partial rows [dK | dV] in fp32; dK already scaled.
    const int64_t kv_rows = static_cast<int64_t>(p.batch) * p.num_kv_heads * p.seqlen_k;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (key[r] >= nk) continue;
      const int64_t row =
          (static_cast<int64_t>(b) * p.num_kv_heads + kv_head) * p.seqlen_k + key[r];
      float* dst = g.dkdv_accum + (split * kv_rows + row) * (2 * D) + 2 * t;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<float2*>(dst + j * 8) =
            make_float2(dk[4 * j + 2 * r] * scale, dk[4 * j + 2 * r + 1] * scale);
        *reinterpret_cast<float2*>(dst + D + j * 8) =
            make_float2(dv[4 * j + 2 * r], dv[4 * j + 2 * r + 1]);
      }
    }
    return;
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (key[r] >= nk) continue;
    T* dk_row = static_cast<T*>(g.dk) + b * g.dk_batch + (s.k_row0 + key[r]) * g.dk_row +
                kv_head * g.dk_head;
    T* dv_row = static_cast<T*>(g.dv) + b * g.dv_batch + (s.k_row0 + key[r]) * g.dv_row +
                kv_head * g.dv_head;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      *reinterpret_cast<uint32_t*>(dk_row + j * 8 + 2 * t) =
          M::pack(dk[4 * j + 2 * r] * scale, dk[4 * j + 2 * r + 1] * scale);
      *reinterpret_cast<uint32_t*>(dv_row + j * 8 + 2 * t) =
          M::pack(dv[4 * j + 2 * r], dv[4 * j + 2 * r + 1]);
    }
  }
}

template <typename T, int D, bool kDq = true>
__global__ void __launch_bounds__(256, 1) flash_bwd_dkdv_wgmma_kernel(const BwdKernelParams g) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // wgmma needs sm_90a (CMakeLists.txt builds only that)
#else
  dkdv_wgmma_body<T, D, kDq, false>(g, nullptr, nullptr);
#endif
}

// The default on dense atomic-dQ batches: the same step with a TMA producer warpgroup (see
// dkdv_wgmma_body). tm_q / tm_do: Q and dO as 4-D tensor maps (head_dim, heads, seqlen_q, batch)
// with 64 x 1 x 64 x 1 boxes and the 128-byte swizzle (encode_qdo_tensor_map, tma_host.cpp).
// kDq = false (deterministic; only with SQA_CUDA_BWD=wgmmatma until an H200 run shows it correct
// and faster, see flash_bwd_launch.cuh): the same producer and stages, the consumers' step
// without dQ.
template <typename T, int D, bool kDq = true>
__global__ void __launch_bounds__(384, 1)
    flash_bwd_dkdv_wgmma_tma_kernel(const BwdKernelParams g,
                                    const __grid_constant__ CUtensorMap tm_q,
                                    const __grid_constant__ CUtensorMap tm_do) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();
#else
  dkdv_wgmma_body<T, D, kDq, true>(g, &tm_q, &tm_do);
#endif
}

}  // namespace sqa::cuda::detail
