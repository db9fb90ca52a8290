// Hopper (sm_90a) backward dK/dV kernel, second schedule: SQA_CUDA_BWD=wgmma2 (not the default;
// not run on a GPU yet), head_dim 64 and 128, atomic-dQ scheme only (in the deterministic
// scheme wgmma2 runs flash_bwd_wgmma.cuh's kernel with kDq = false; flash_bwd_launch.cuh).
// It is flash_bwd_dkdv_wgmma_kernel (flash_bwd_wgmma.cuh) with ONE CTA barrier per query step
// instead of two; grid, query work, masks, numerics, tiles, descriptors, fragment hand-overs and
// outputs are that kernel's (read its design comment first). What changes:
//   - dQ(it - 1) = dS(it - 1) K is issued right after the barrier of step it, back to back with
//     S^T(it) (at D = 64 also dP^T(it)), so the dQ tile store of block it - 1 runs while the
//     tensor cores compute S^T(it). The old second barrier (both dS^T stored) becomes the next
//     step's barrier, which the copies need anyway.
//   - The dQ fp32 tile is used as one half per warpgroup (the columns w D / 2 .. its dQ wgmma
//     computes): each warpgroup's 64 issuers (lanes 0 .. 15 of its warps, a row each, the rows
//     of their own warp) hand the rows of its half to the TMA unit, after a named barrier of the
//     warpgroup's 128 threads only.
//   - The dS^T tile passes between the warpgroups by named barriers: after its wait for dQ(it - 1)
//     (its last read of the tile) a warpgroup bar.arrives on the other's barrier; before its
//     dS^T(it) stores a warpgroup bar.syncs on its own.
//   - kStages = 4 query stages at D = 64 (133 KB of shared memory), 3 at D = 128 (212.5 KB; 4
//     would need 244.5 KB > 227 KB): the copies run kStages - 1 blocks ahead.
//
// Schedule of step it, warpgroup w (its 128 threads; the two warpgroups meet only at B(it) and
// at the dS^T hand-over):
//   issuers: cp.async.bulk.wait_group.read 0        (reads of half w issued at step it - 1)
//   cp.async.wait_group kStages - 2; fence.proxy.async  (this thread's copies of block it)
//   B(it) = __syncthreads                           (the one CTA barrier)
//   issue dQ(it - 1), S^T(it), [D = 64: dP^T(it)]; the copies of block it + kStages - 1
//   wait for dQ(it - 1); bar.arrive ds(1 - w), 256; scaled dQ(it - 1) to half w;
//     fence.proxy.async; bar.sync dq(w), 128; issuers: the bulk adds of half w's rows
//   [D = 128: issue dP^T(it): its accumulators take the registers dQ(it - 1) freed]
//   wait S^T; P^T; pack and issue the early dV k-steps; wait dP^T; dS^T;
//   bar.sync ds(w), 256; dS^T to rows 64 w .. of the tile (with the packs);
//   fence.proxy.async; issue the rest of dV and dK; wait_group 0.
// After the loop: issuers' bulk wait.read; B(end); dQ(last) issued, waited, to half w,
// bar.sync dq(w), bulk adds, wait_group 0 (the adds complete before the CTA exits).
// Step 0 runs the same code: the dS^T tile is zeroed before B(0), so dQ(-1) is a dQ of zeros
// that goes to the tile but to no row of dq_accum (dq_pend_rows = 0). With the dQ group issued
// on one path only, ptxas serialized every wgmma of the kernel (C7514) and spilled at D = 128.
// Named barrier ids: 0 is __syncthreads; ds(w) = 1 + w (256 threads: w syncs, the other arrives);
// dq(w) = 3 + w (128 threads: warpgroup w alone).
//
// Hazards (which barrier guarantees what):
//   Q / dO / lse / D stage s. Landed: block j sits in stage j % kStages, copied in cp.async group
//     j (the prologue commits blocks 0 .. kStages - 2, step it commits block it + kStages - 1);
//     at step j every thread waits for its group j (wait_group kStages - 2) and fences it to the
//     async proxy before B(j), so after B(j) both warpgroups' wgmmas and lse / D loads see all
//     of it. Free: the copies of step it fill stage (it - 1) % kStages after B(it); its last
//     readers are step it - 1's S^T, dP^T, dV, dK (each warpgroup's wait_group 0 at the end of
//     step it - 1 precedes its arrival at B(it)) and step it - 1's lse / D loads (before B(it)).
//   dS^T tile. Landed for dQ(it): each warpgroup stores its rows at step it and fences them
//     before B(it + 1) (or B(end)); dQ(it) is issued after it (dQ(-1): the zeros, stored and
//     fenced by every thread before B(0)). Free for dS^T(it) of warpgroup w: its own
//     dQ(it - 1) completed at its wait earlier in the step; the other warpgroup's
//     dQ(it - 1) completed before that warpgroup's bar.arrive ds(w) of step it, which w's
//     bar.sync ds(w) waits for. Generations: the other warpgroup's arrive of step it + 1 comes
//     after B(it + 1), which w passes only after its bar.sync of step it, so an arrive never
//     runs into the next generation; both sides run once per step (n_iter times each), so
//     both barriers end balanced. The bar.sync is late in the step (after dP^T): the other
//     warpgroup arrives early in it, so the wait is short.
//   dQ tile half w (only warpgroup w writes it, only its issuers' bulk adds read it). Stored ->
//     read: every thread of w fences its stores to the async proxy, then bar.sync dq(w), 128,
//     then the issuers issue. Read -> rewritten: dQ(it - 1) is stored after B(it); the bulk
//     reads of the previous contents (dQ(it - 2), issued at step it - 1) completed at each
//     issuer's wait_group.read before its arrival at B(it) (B(end) for the last block).
//     The global adds complete before exit (wait_group 0 after the last issue).
//   K and V: copied once (group 0, landed by B(0)), then only read.
//   Registers: dQ's accumulators are read (tile store) only after the wait that completes dQ;
//     S^T's and dP^T's after theirs; dK, dV and the A fragments (P^T, dS^T) are rewritten only
//     after the wait_group 0 at the end of the step; the wgmma_fence after B(it) orders the
//     ordinary reads and writes of the last step before the wgmmas that overwrite dQ, S^T, dP^T.
// bench/gpu/wgmma_bwd_emulate.py wgmma2 runs this schedule on the host with the two warpgroups as
// separate programs under greedy and random interleavings and PTX named-barrier semantics, in
// both async orders, against float64; its mutations mode checks that dropped or misplaced
// barriers and waits, a wrong dQ half or stage, and a barrier id mix-up are caught.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "flash_bwd_kernel.cuh"
#include "flash_bwd_wgmma.cuh"
#include "flash_common.cuh"
#include "flash_fwd_wgmma.cuh"
#include "flash_params.hpp"
#include "wgmma_sm90.cuh"

namespace sqa::cuda::detail {

template <typename T, int D>
struct WgmmaBwd2Tile {
  static constexpr int kWarpGroups = 2;
  static constexpr int kThreads = 128 * kWarpGroups;
  static constexpr int BN = 64 * kWarpGroups;  // keys per CTA: 64 per warpgroup (the wgmma M)
  static constexpr int BM = 64;                // query rows per step
  // Q / dO / lse / D buffers: 4 at D = 64; 3 at D = 128 (4 do not fit in 227 KB).
  static constexpr int kStages = D == 64 ? 4 : 3;
  static constexpr int kKVBytes = BN * D * 2;   // K or V: [D / 64][BN][64], swizzled
  static constexpr int kQBytes = BM * D * 2;    // one Q or dO stage: [D / 64][BM][64]
  static constexpr int kStatBytes = BM * 4;     // one stage of lse or D (fp32)
  static constexpr int kDsBytes = BN * BM * 2;  // dS^T, [BN][BM = 64], swizzled
  // The scaled dQ (fp32) [BM][D], rows padded by 32 bytes (conflict-free 8-byte stores, as in
  // WgmmaBwdTile); warpgroup w's half is columns w D / 2 .., kDqHalfBytes per row.
  static constexpr int kDqRowBytes = D * 4 + 32;
  static constexpr int kDqHalfBytes = D / 2 * 4;
  static constexpr int kDqBytes = BM * kDqRowBytes;
  static constexpr int kDvEarly = D == 64 ? 4 : 3;  // as WgmmaBwdTile
  static constexpr int kSmemBytes =
      2 * kKVBytes + 2 * kStages * kQBytes + kDsBytes + 2 * kStages * kStatBytes + kDqBytes + 1024;
  static_assert(sizeof(T) == 2, "16-bit inputs");
  static_assert(D == 64 || D == 128, "wgmma wrappers exist for N = 64 and 128 (dK, dV)");
  static_assert(kSmemBytes <= 227 * 1024, "the sm_90 limit of dynamic shared memory per CTA");
  static_assert(kDqRowBytes % 128 == 32 && kDqHalfBytes % 16 == 0, "conflict-free, 16-byte rows");
};

template <typename T, int D>
__global__ void __launch_bounds__(256, 1) flash_bwd_dkdv_wgmma2_kernel(const BwdKernelParams g) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // wgmma needs sm_90a (CMakeLists.txt builds only that)
#else
  using Tile = WgmmaBwd2Tile<T, D>;
  constexpr int BN = Tile::BN;
  constexpr int BM = Tile::BM;
  constexpr int kThreads = Tile::kThreads;
  constexpr int kStages = Tile::kStages;
  constexpr int kQT = BM / 8;       // 8-column tiles of S^T / dP^T (query columns)
  constexpr int kKSteps = D / 16;   // k-steps of S^T and dP^T
  constexpr int kMSteps = BM / 16;  // k-steps of dV and dK (over the step's query rows)
  constexpr int kDvEarly = Tile::kDvEarly;
  constexpr int kNSteps = BN / 16;  // k-steps of dQ (over the CTA's keys)
  constexpr int kDqN = D / 2;       // dQ columns per warpgroup
  constexpr int kDqT = kDqN / 8;    // their 8-column tiles
  // dP^T issued with S^T right after the barrier (D = 64), or after the dQ tile store, in the
  // registers dQ frees (D = 128: dK, dV, S^T, dP^T and dQ together would not fit in 255).
  constexpr bool kDptWithS = D == 64;
  // Named barriers (0 is __syncthreads): the dS^T tile free for warpgroup w's stores, and
  // warpgroup w's dQ half stored.
  constexpr uint32_t kBarDs0 = 1, kBarDq0 = 3;
  using GemmS = Wgmma<T, 64>;  // S^T, dP^T: m64n64 (N = BM)
  using GemmKV = Wgmma<T, D>;  // dV, dK: m64nD, A from registers
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
  const uint32_t sdS = sdO + kStages * Tile::kQBytes;  // [BN][64]
  const uint32_t sStat = sdS + Tile::kDsBytes;         // lse [kStages][BM], D [kStages][BM]
  const uint32_t sDq = sStat + 2 * kStages * Tile::kStatBytes;  // [BM][D + 8] fp32
  unsigned char* const smem = smem_raw + (sK - raw_addr);       // generic pointer to sK
  const float* const stat = reinterpret_cast<const float*>(smem + (sStat - sK));

  const int tid = threadIdx.x;
  const int wg = tid / 128;
  const int warp_in_group = (tid % 128) / 32;
  const int lane = tid % 32;
  const int g4 = lane / 4;
  const int t = lane % 4;
  const uint32_t bar_ds_mine = kBarDs0 + wg, bar_ds_other = kBarDs0 + 1 - wg;
  const uint32_t bar_dq_mine = kBarDq0 + wg;

  // flash_bwd_dkdv_kernel's grid and query work (dkdv_cta, dkdv_queries).
  const DkDvCta cta = dkdv_cta<BN>(g);
  const int b = cta.b, kv_head = cta.kv_head, split = cta.split, n0 = cta.n0;
  const SeqSpan s = cta.s;
  if (n0 >= s.nk) return;
  const int nq = s.nq, nk = s.nk;
  const int diag = nk - nq, left = p.window_left, right = p.window_right;

  const DkDvQueries work = dkdv_queries<BN, BM>(g, cta);
  const int h_first = work.h_first, rsqa_qh = work.rsqa_qh;
  const int qb_begin = work.qb_begin, nqb = work.nqb, n_iter = work.n_iter;

  const T* k_base =
      static_cast<const T*>(p.k) + b * p.k_batch + s.k_row0 * p.k_row + kv_head * p.k_head;
  const T* v_base =
      static_cast<const T*>(p.v) + b * p.v_batch + s.k_row0 * p.v_row + kv_head * p.v_head;
  load_tile_sw128<T, D, BN, kThreads>(sK, k_base, p.k_row, n0, nk, tid);
  load_tile_sw128<T, D, BN, kThreads>(sV, v_base, p.v_row, n0, nk, tid);

  const BwdRowBases rows = bwd_row_bases(p, s, b);
  auto load_q_block = [&](int stage, int h, int m0) {
    const BwdQdOBases<T> base = bwd_q_do_bases<T>(g, s, b, p.reverse ? rsqa_qh : h, h);
    load_tile_sw128<T, D, BM, kThreads>(sQ + stage * Tile::kQBytes, base.q, p.q_row, m0, nq, tid);
    load_tile_sw128<T, D, BM, kThreads>(sdO + stage * Tile::kQBytes, base.dout, g.do_row, m0, nq,
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
  // The dS^T tile starts as zeros for step 0's dQ(-1) (see the schedule above); fenced for the
  // async proxy before B(0).
  {
    unsigned char* const ds_tile = smem + (sdS - sK);
#pragma unroll
    for (int i = 0; i < Tile::kDsBytes / (16 * kThreads); ++i)
      *reinterpret_cast<uint4*>(ds_tile + (i * kThreads + tid) * 16) = make_uint4(0, 0, 0, 0);
    fence_proxy_async_shared();
  }
  // Group j (j < kStages - 1) holds block j; K and V ride in group 0.
#pragma unroll
  for (int j = 0; j < kStages - 1; ++j) {
    if (j < n_iter) load_next(j);
    cp_async_commit();
  }

  // This thread's keys (accumulator rows of S^T, dP^T, dK, dV): local rows kr[0], kr[1].
  const int key_local0 = wg * 64 + warp_in_group * 16 + g4;
  const int key[2] = {n0 + key_local0, n0 + key_local0 + 8};
  const int wg_key0 = n0 + wg * 64;

  float dk[D / 2], dv[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.0f;
  float st[BM / 2], dpt[BM / 2];  // S^T then P^T; dP^T then dS^T (accumulator layout)
  float dq[kDqN / 2];
  uint32_t pa[kMSteps][4], da[kMSteps][4];  // P^T and dS^T as A fragments of dV and dK
  const float scale_log2 = p.scale_log2;
  const float scale = g.scale;

  // Descriptors, as in flash_bwd_dkdv_wgmma_kernel.
  const uint64_t k_desc = wgmma_desc_sw128(sK + wg * 64 * 128, 16, 1024);
  const uint64_t v_desc = wgmma_desc_sw128(sV + wg * 64 * 128, 16, 1024);
  const uint64_t ds_desc = wgmma_desc_sw128(sdS, BN * 128, 1024);
  const uint32_t dq_col0 = static_cast<uint32_t>(wg * kDqN);
  const uint64_t kt_desc =
      wgmma_desc_sw128(sK + (dq_col0 / 64) * BN * 128 + (dq_col0 % 64) * 2, BN * 128, 1024);

  // The dQ block waiting in the warpgroups' registers / tile (dq_accum row of its row 0, its rows
  // inside the sequence), and this thread's row of half wg to hand over: lanes 0 .. 15 of warp
  // w, rows 16 w .., which are the rows warp w stores.
  int64_t dq_pend_row = 0;
  int dq_pend_rows = 0;
  const int dq_issue_row = warp_in_group * 16 + lane;
  const bool dq_issuer = lane < 16;

  auto issue_dq = [&]() {  // dQ(block rows, columns dq_col0 ..) = dS K; k-step kk = keys 16 kk
#pragma unroll
    for (int kk = 0; kk < kNSteps; ++kk) {
      GemmQ::run(dq, wgmma_desc_advance(ds_desc, kk * 16 * 128),
                 wgmma_desc_advance(kt_desc, kk * 16 * 128), kk > 0 ? 1 : 0);
    }
    wgmma_commit_group();
  };
  auto issue_dpt = [&](uint32_t do_stage) {  // dP^T = V dO^T
    const uint64_t do_desc = wgmma_desc_sw128(do_stage, 16, 1024);
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      const uint32_t a_off = (kk / 4) * BN * 128 + (kk % 4) * 32;
      const uint32_t b_off = (kk / 4) * BM * 128 + (kk % 4) * 32;
      GemmS::ss(dpt, wgmma_desc_advance(v_desc, a_off), wgmma_desc_advance(do_desc, b_off),
                kk > 0 ? 1 : 0);
    }
    wgmma_commit_group();
  };
  // Scaled dQ (its wait done) to half wg of the tile: accumulator row 16 warp + g (+ 8), columns
  // dq_col0 + 8 j + 2 t (+ 1); fenced for the bulk reads; then, after the warpgroup's barrier,
  // the issuers hand the half's rows to the TMA unit.
  auto dq_to_tile_and_bulk = [&]() {
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
    named_barrier_sync(bar_dq_mine, 128);  // half wg stored and fenced by all its writers
    if (dq_issuer && dq_issue_row < dq_pend_rows) {
      bulk_reduce_add_f32(g.dq_accum + (dq_pend_row + dq_issue_row) * D + dq_col0,
                          sDq + dq_issue_row * Tile::kDqRowBytes + dq_col0 * 4, kDqN * 4);
      cp_async_bulk_commit();
    }
  };

  for (int it = 0, h = h_first, qb = 0; it < n_iter; ++it) {
    const int stage = it % kStages;
    const int m0 = (qb_begin + qb) * BM;
    const int qh = p.reverse ? rsqa_qh : h;
    // B(it): block it landed and is visible to the async proxy; both warpgroups stored and
    // fenced dS^T(it - 1), finished step it - 1's wgmmas and lse / D reads (stage (it - 1) %
    // kStages is free), and their issuers' reads of the dQ halves are done (hazards above).
    if (dq_issuer) cp_async_bulk_wait_read();
    cp_async_wait<kStages - 2>();
    fence_proxy_async_shared();
    __syncthreads();

    const uint32_t q_stage = sQ + stage * Tile::kQBytes;
    const uint32_t do_stage = sdO + stage * Tile::kQBytes;
    // dQ(it - 1), S^T = K Q^T (and at D = 64 dP^T = V dO^T), back to back.
    wgmma_fence();  // dQ's, S^T's and dP^T's accumulators were last written by ordinary code
    issue_dq();
    {
      const uint64_t q_desc = wgmma_desc_sw128(q_stage, 16, 1024);
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
        const uint32_t a_off = (kk / 4) * BN * 128 + (kk % 4) * 32;
        const uint32_t b_off = (kk / 4) * BM * 128 + (kk % 4) * 32;
        GemmS::ss(st, wgmma_desc_advance(k_desc, a_off), wgmma_desc_advance(q_desc, b_off),
                  kk > 0 ? 1 : 0);
      }
      wgmma_commit_group();
    }
    if constexpr (kDptWithS) issue_dpt(do_stage);
    // The copies of the block kStages - 1 ahead into stage (it - 1) % kStages (no wgmma of this
    // step reads it), after the issue so that the tensor cores start sooner after the barrier.
    if (it + kStages - 1 < n_iter) load_next((it + kStages - 1) % kStages);
    cp_async_commit();

    // dQ(it - 1) done (S^T, and at D = 64 dP^T, may still run): this warpgroup no longer reads
    // the dS^T tile; its dQ half to the tile and the TMA unit under S^T. (Step 0: dQ of the
    // zeroed tile, no rows to add.)
    wgmma_wait_group<kDptWithS ? 2 : 1>();
    fence_registers(dq);
    named_barrier_arrive(bar_ds_other, 256);
    dq_to_tile_and_bulk();
    dq_pend_row = rows.dq(qh, m0);  // block it's dQ goes out at step it + 1 (or after the loop)
    dq_pend_rows = min(BM, nq - m0);
    if constexpr (!kDptWithS) {
      wgmma_fence();  // dQ's registers, which dP^T's accumulators may reuse, were just read
      issue_dpt(do_stage);
    }

    // P^T = exp2(scale_log2 S^T - lse log2 e): query column 8 j + 2 t + (e & 1) of the block.
    const float* l_tile = stat + stage * BM;
    const float* d_tile = stat + (kStages + stage) * BM;
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
    if (!full) {  // one branch per block (warp-uniform); selects, not a branch per element
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
    const uint64_t dob_desc = wgmma_desc_sw128(do_stage, BM * 128, 1024);
    static_assert(kDvEarly > 0 && kDvEarly <= kMSteps, "k-steps of dV issued early");
#pragma unroll
    for (int kk = 0; kk < kDvEarly; ++kk)
#pragma unroll
      for (int i = 0; i < 4; ++i) pa[kk][i] = M::pack(st[8 * kk + 2 * i], st[8 * kk + 2 * i + 1]);
    wgmma_fence();  // P^T was packed by ordinary instructions
#pragma unroll
    for (int kk = 0; kk < kDvEarly; ++kk)
      GemmKV::rs_mn(dv, pa[kk], wgmma_desc_advance(dob_desc, kk * 16 * 128));
    wgmma_commit_group();
    wgmma_wait_group<1>();  // dP^T done; dV may run
    fence_registers(dpt);
    // The other warpgroup's dQ(it - 1) read the whole dS^T tile: wait for its arrive.
    named_barrier_sync(bar_ds_mine, 256);
    // dS^T = P^T (dP^T - D), stored (16-bit) to rows 64 wg .. of the dS^T tile and packed as
    // flash_bwd_dkdv_wgmma_kernel does, one k-step at a time.
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
        unsigned char* const ds_tile = smem + (sdS - sK);
        const int row = key_local0 + 8 * (i % 2);
        *reinterpret_cast<uint32_t*>(ds_tile + sw128_offset<BN>(row, 2 * kk + i / 2) + 4 * t) =
            da[kk][i];
      }
    }
    fence_proxy_async_shared();  // this thread's dS^T stores, for dQ(it) after B(it + 1)
    // dV += P^T dO (the k-steps not issued early) and dK += dS^T Q: B MN-major.
    {
      const uint64_t qb_desc = wgmma_desc_sw128(q_stage, BM * 128, 1024);
      wgmma_fence();  // P^T and dS^T were packed by ordinary instructions
#pragma unroll
      for (int kk = kDvEarly; kk < kMSteps; ++kk)
        GemmKV::rs_mn(dv, pa[kk], wgmma_desc_advance(dob_desc, kk * 16 * 128));
#pragma unroll
      for (int kk = 0; kk < kMSteps; ++kk)
        GemmKV::rs_mn(dk, da[kk], wgmma_desc_advance(qb_desc, kk * 16 * 128));
      wgmma_commit_group();
    }
    wgmma_wait_group<0>();  // every wgmma of the step: its stage is refilled after B(it + 1)
    fence_registers(dk);
    fence_registers(dv);
    fence_registers(pa);
    fence_registers(da);
    if (++qb == nqb) {
      qb = 0;
      ++h;
    }
  }
  cp_async_wait<0>();
  if (n_iter > 0) {
    // The last block's dQ: B(end) as B(it) for its dS^T tile and the dQ halves.
    if (dq_issuer) cp_async_bulk_wait_read();
    __syncthreads();
    wgmma_fence();
    issue_dq();
    wgmma_wait_group<0>();
    fence_registers(dq);
    dq_to_tile_and_bulk();
    if (dq_issuer) cp_async_bulk_wait_all();  // the adds complete before the CTA exits
  }

  // Epilogue: this thread's dK / dV rows (keys key[r]), columns 8 j + 2 t (+ 1).
  if (g.dkdv_splits > 1) {
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
#endif
}

}  // namespace sqa::cuda::detail
