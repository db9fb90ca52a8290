// FlashAttention-2-style backward (sm_80 warp MMA path), recomputing P from the forward's lse:
//   P = exp(scale S - lse), dV = P^T dO, dP = dO V^T, dS = P * (dP - D) with D_i = dO_i . O_i,
//   dK = scale dS^T Q, dQ = scale dS K.
// Two schemes share the dsum and dK/dV kernels:
//   dsum:  D per (sequence, attention head, query row), in the lse layout;
//   dK/dV: one CTA per (key block, KV head); each warp owns 16 keys and accumulates their dK and
//          dV in registers while looping over every attention head of the KV head's group (G
//          heads for the GQA family, 1 for rSQA) and every query block that sees the keys.
// Default (FA2's scheme, 5 matmuls and 1 exponential per score): the dK/dV kernel also stages
// dS in shared memory and adds dQ += scale dS K for its keys into an fp32 workspace with atomics
// (rSQA's repeats of a query head simply add into the same rows); a last kernel converts it.
// The order of those additions varies from run to run, so dQ may differ in the last bits.
// Deterministic (AttentionBackwardParams::deterministic; 7 matmuls and 2 exponentials):
//   dQ:    one CTA per (query block, query head), looping over every attention head that reads
//          the query head (1 for the GQA family, H_kv / H_q for rSQA, whose dQ sums the repeats)
//          and every visible key block; it recomputes S and dP rather than reducing with atomics.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

#include "flash_common.cuh"
#include "flash_fwd_kernel.cuh"
#include "flash_params.hpp"

namespace sqa::cuda::detail {

constexpr float kLog2e = 1.4426950408889634f;

template <typename T>
__device__ __forceinline__ float to_float(T x) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(x);
  } else {
    return __bfloat162float(x);
  }
}

// D_i = dO_i . O_i for every row of the lse layout. D / 8 neighbouring lanes share a row, one
// 16-byte chunk of O and dO each, so a row's loads fill whole sectors and the lanes of a warp
// cover consecutive rows, whose dsum stores coalesce (a warp per row left most lanes idle at
// small head dims and moved 2 bytes per load).
template <typename T, int D>
__global__ void __launch_bounds__(256) flash_bwd_dsum_kernel(const BwdKernelParams g) {
  static_assert(D % 8 == 0 && D / 8 <= 32, "dsum: D / 8 lanes per row within one warp");
  constexpr int kLanes = D / 8;
  const FwdKernelParams& p = g.fwd;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t rid = t / kLanes;
  const int part = static_cast<int>(t % kLanes);
  float sum = 0.0f;
  if (rid < g.lse_rows) {
    int64_t o_off, do_off;
    if (p.cu_seqlens_q != nullptr) {
      const int64_t total_q = p.cu_seqlens_q[p.batch];
      const int64_t h = rid / total_q, tok = rid % total_q;
      o_off = tok * p.o_row + h * p.o_head;
      do_off = tok * g.do_row + h * g.do_head;
    } else {
      const int64_t qrow = rid % p.seqlen_q;
      const int64_t h = (rid / p.seqlen_q) % p.num_attention_heads;
      const int64_t b = rid / (static_cast<int64_t>(p.seqlen_q) * p.num_attention_heads);
      o_off = b * p.o_batch + qrow * p.o_row + h * p.o_head;
      do_off = b * g.do_batch + qrow * g.do_row + h * g.do_head;
    }
    // Row starts and strides are multiples of 8 elements (api.cpp checks), so chunks align.
    const uint4 o_raw =
        *reinterpret_cast<const uint4*>(static_cast<const T*>(p.out) + o_off + part * 8);
    const uint4 do_raw =
        *reinterpret_cast<const uint4*>(static_cast<const T*>(g.dout) + do_off + part * 8);
    const T* o = reinterpret_cast<const T*>(&o_raw);
    const T* dout = reinterpret_cast<const T*>(&do_raw);
#pragma unroll
    for (int c = 0; c < 8; ++c) sum += to_float(o[c]) * to_float(dout[c]);
  }
#pragma unroll
  for (int off = kLanes / 2; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (rid < g.lse_rows && part == 0) g.dsum[rid] = sum;
}

// Per-sequence row bases of a dK/dV CTA (both dK/dV kernels), fixed before the loop so a step
// adds only head and row offsets: the lse / D row of (head h, query q) is
// lse_base + h * lse_head + q (lse_row), and the fp32 dQ workspace, dense (B, H_q, N_q) or varlen
// (H_q, total_q) with D floats a row, has row dq_base + qh * lse_head + q for (query head qh, q).
struct BwdRowBases {
  int64_t lse_head, lse_base, dq_base;
  __device__ __forceinline__ int64_t lse(int h, int q) const { return lse_base + h * lse_head + q; }
  __device__ __forceinline__ int64_t dq(int qh, int q) const { return dq_base + qh * lse_head + q; }
};
__device__ __forceinline__ BwdRowBases bwd_row_bases(const FwdKernelParams& p, const SeqSpan& s,
                                                     int b) {
  const bool varlen = p.cu_seqlens_q != nullptr;
  BwdRowBases r;
  r.lse_head = varlen ? s.total_q : p.seqlen_q;
  r.lse_base = varlen ? s.q_row0 : static_cast<int64_t>(b) * p.num_attention_heads * p.seqlen_q;
  r.dq_base = varlen ? s.q_row0 : static_cast<int64_t>(b) * p.num_query_heads * p.seqlen_q;
  return r;
}

// Sequence b's rows of Q (query head qh) and dO (attention head h), for a dK/dV query block.
template <typename T>
struct BwdQdOBases {
  const T* q;
  const T* dout;
};
template <typename T>
__device__ __forceinline__ BwdQdOBases<T> bwd_q_do_bases(const BwdKernelParams& g, const SeqSpan& s,
                                                         int b, int qh, int h) {
  const FwdKernelParams& p = g.fwd;
  return {static_cast<const T*>(p.q) + b * p.q_batch + s.q_row0 * p.q_row + qh * p.q_head,
          static_cast<const T*>(g.dout) + b * g.do_batch + s.q_row0 * g.do_row + h * g.do_head};
}

// A dK/dV CTA's place in the grid, the same for the mma.sync and the wgmma kernel: x = (key
// block, KV head, split), splits fastest and heads before key blocks (within the raster chunk
// of BwdKernelParams::raster_units; all units by default), so the causal mask's longest key
// blocks (the first) of every head start in the first wave; z = batch entry. The CTA owns keys
// [n0, n0 + BN) of sequence b (none when n0 >= s.nk).
struct DkDvCta {
  int b, kv_head, split, n0;
  SeqSpan s;
};
template <int BN>
__device__ __forceinline__ DkDvCta dkdv_cta(const BwdKernelParams& g) {
  const int splits = g.dkdv_splits;
  const int units = g.fwd.num_kv_heads * splits;  // (KV head, split), split fastest
  const RasterPlace at =
      raster_place(static_cast<int>(blockIdx.x), static_cast<int>(gridDim.x) / units, units,
                   raster_chunk(g.raster_units, units));
  const int n_block = at.block;
  DkDvCta c;
  c.kv_head = at.unit / splits;
  c.split = at.unit % splits;
  c.b = blockIdx.z;
  c.s = seq_span(g.fwd, c.b);
  c.n0 = n_block * BN;
  return c;
}

// The query work of that CTA: its attention heads h_first .. h_first + h_count - 1 (the split's
// share of the KV head's group; rSQA: one head, whose query head is rsqa_qh, divided once here),
// and its query blocks qb_begin .. qb_begin + nqb - 1 of BM rows, those that see at least one
// of its keys; n_iter = h_count * nqb steps.
struct DkDvQueries {
  int h_first, h_count, rsqa_qh, qb_begin, nqb, n_iter;
};
template <int BN, int BM>
__device__ __forceinline__ DkDvQueries dkdv_queries(const BwdKernelParams& g, const DkDvCta& c) {
  const FwdKernelParams& p = g.fwd;
  const int splits = g.dkdv_splits;
  const int diag = c.s.nk - c.s.nq, left = p.window_left, right = p.window_right;
  const int group_lo = c.split * p.group_size / splits;
  const int group_hi = (c.split + 1) * p.group_size / splits;
  DkDvQueries r;
  r.h_first = p.reverse ? c.kv_head : c.kv_head * p.group_size + group_lo;
  r.h_count = p.reverse ? 1 : group_hi - group_lo;
  r.rsqa_qh = p.reverse ? c.kv_head % p.num_query_heads : 0;
  const int last_key = min(c.n0 + BN, c.s.nk) - 1;
  int q_lo = 0, q_hi = c.s.nq;
  if (right >= 0) q_lo = max(0, c.n0 - diag - right);
  if (left >= 0) q_hi = min(c.s.nq, last_key - diag + left + 1);
  r.qb_begin = q_lo / BM;
  r.nqb = q_hi > q_lo ? (q_hi + BM - 1) / BM - r.qb_begin : 0;
  r.n_iter = r.h_count * r.nqb;
  return r;
}

template <typename T, int D, int BM, int kNWarps, bool kKVInRegs, bool kAtomicDq>
struct BwdDkDvTile {
  static constexpr int kThreads = kNWarps * 32;
  static constexpr int BN = 16 * kNWarps;  // keys per CTA: 16 per warp
  static constexpr int kStride = D + 8;
  static constexpr int kSStride = BM + 8;  // dS^T tile (keys x query rows), padded like the rest
  // Query-block stages (Q, dO, lse, D): with three, the block two steps ahead streams into the
  // stage of the step before, so one barrier per step suffices (two with the dQ step).
  static constexpr int kQStages = 3;
  static constexpr int kSmemBytes =
      (2 * BN + 2 * kQStages * BM) * kStride * static_cast<int>(sizeof(T)) +
      2 * kQStages * BM * static_cast<int>(sizeof(float)) +
      (kAtomicDq ? BN * kSStride * static_cast<int>(sizeof(T)) : 0);
  // dQ step: BM / 16 row tiles of 16 query rows; the warps of a row tile split D between them.
  static constexpr int kWarpsPerRowTile = kNWarps / (BM / 16);
  static constexpr int kDqDims = D / kWarpsPerRowTile;
  static_assert(kNWarps % (BM / 16) == 0 && kDqDims % 16 == 0, "dQ step tiling");
};

// kMinBlocks: CTAs per SM that ptxas must fit (a register cap). At D = 16 three (a
// 170-register cap) keep enough warps resident to hide the softmax's latencies; ptxas otherwise
// takes ~200 registers there and fits only two. See run_flash_bwd_typed for the choices.
template <typename T, int D, int BM, int kNWarps, bool kKVInRegs, bool kAtomicDq, int kMinBlocks>
__global__ void __launch_bounds__(kNWarps * 32, kMinBlocks)
    flash_bwd_dkdv_kernel(const BwdKernelParams g) {
  using Tile = BwdDkDvTile<T, D, BM, kNWarps, kKVInRegs, kAtomicDq>;
  constexpr int BN = Tile::BN;
  constexpr int kStride = Tile::kStride;
  constexpr int kThreads = Tile::kThreads;
  constexpr int kQT = BM / 8;
  constexpr int kDT = D / 8;
  constexpr int kKD = D / 16;
  using M = Mma<T>;
  const FwdKernelParams& p = g.fwd;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + BN * kStride;
  constexpr int kQStages = Tile::kQStages;
  T* sQ = sV + BN * kStride;                                            // [kQStages][BM*kStride]
  T* sdO = sQ + kQStages * BM * kStride;                                // [kQStages][BM*kStride]
  float* sL = reinterpret_cast<float*>(sdO + kQStages * BM * kStride);  // [kQStages][BM]
  float* sD = sL + kQStages * BM;                                       // [kQStages][BM]: D
  T* sdS = reinterpret_cast<T*>(sD + kQStages * BM);                    // kAtomicDq: [BN][kSStride]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g4 = lane / 4, t = lane % 4;
  const DkDvCta cta = dkdv_cta<BN>(g);
  const int b = cta.b, kv_head = cta.kv_head, split = cta.split, n0 = cta.n0;
  const SeqSpan s = cta.s;
  if (n0 >= s.nk) return;
  const int diag = s.nk - s.nq, left = p.window_left, right = p.window_right;
  const DkDvQueries work = dkdv_queries<BN, BM>(g, cta);
  const int h_first = work.h_first, rsqa_qh = work.rsqa_qh;
  const int qb_begin = work.qb_begin, nqb = work.nqb, n_iter = work.n_iter;

  const T* k_base =
      static_cast<const T*>(p.k) + b * p.k_batch + s.k_row0 * p.k_row + kv_head * p.k_head;
  const T* v_base =
      static_cast<const T*>(p.v) + b * p.v_batch + s.k_row0 * p.v_row + kv_head * p.v_head;
  load_tile<T, D, BN, kThreads>(sK, k_base, p.k_row, n0, s.nk, tid);
  load_tile<T, D, BN, kThreads>(sV, v_base, p.v_row, n0, s.nk, tid);

  // Step it works on head h_first + it / nqb and query block qb_begin + it % nqb; both are
  // tracked by counters (a division by the runtime nqb costs ~20 integer instructions a step).
  const BwdRowBases rows = bwd_row_bases(p, s, b);
  auto load_q_block = [&](int stage, int h, int m0) {
    const BwdQdOBases<T> base = bwd_q_do_bases<T>(g, s, b, p.reverse ? rsqa_qh : h, h);
    load_tile<T, D, BM, kThreads>(sQ + stage * BM * kStride, base.q, p.q_row, m0, s.nq, tid);
    load_tile<T, D, BM, kThreads>(sdO + stage * BM * kStride, base.dout, g.do_row, m0, s.nq, tid);
    const int64_t lse0 = rows.lse(h, m0);
#pragma unroll
    for (int i0 = 0; i0 < BM; i0 += kThreads) {
      const int i = i0 + tid;
      if (i >= BM) break;
      const bool valid = m0 + i < s.nq;
      // Rows past the sequence get lse = +inf, so their P is exactly 0.
      sL[stage * BM + i] = valid ? p.lse[lse0 + i] * kLog2e : INFINITY;
      sD[stage * BM + i] = valid ? g.dsum[lse0 + i] : 0.0f;
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
  if (n_iter > 0) load_next(0);
  cp_async_commit();
  if (n_iter > 1) load_next(1);
  cp_async_commit();

  float dk[kDT][4], dv[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[dt][e] = dv[dt][e] = 0.0f;
  uint32_t kf[kKVInRegs ? kKD : 1][4], vf[kKVInRegs ? kKD : 1][4];
  auto load_a = [&](uint32_t(&a)[4], const T* tile, int kk) {
    ldmatrix_x4(a, smem_addr(tile + (warp * 16 + lane % 16) * kStride + kk * 16 + (lane / 16) * 8));
  };
  const float scale_log2 = p.scale_log2;

  for (int it = 0, h = h_first, qb = 0; it < n_iter; ++it) {
    const int stage = it % kQStages;
    const int m0 = (qb_begin + qb) * BM;
    const int qh = p.reverse ? rsqa_qh : h;
    cp_async_wait<1>();  // block it landed (block it + 1 may still be in flight)
    // Every warp is done with step it - 1, so the stage that step it - 1 read (the third one)
    // can take block it + 2, and the dQ step's dS^T tile can be rewritten.
    __syncthreads();
    if (it + 2 < n_iter) load_next((it + 2) % kQStages);
    cp_async_commit();
    if (kKVInRegs && it == 0) {
#pragma unroll
      for (int kk = 0; kk < kKD; ++kk) {
        load_a(kf[kk], sK, kk);
        load_a(vf[kk], sV, kk);
      }
    }
    const T* q_tile = sQ + stage * BM * kStride;
    const T* do_tile = sdO + stage * BM * kStride;
    const float* l_tile = sL + stage * BM;
    const float* d_tile = sD + stage * BM;

    // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys.
    float st[kQT][4], dpt[kQT][4];
#pragma unroll
    for (int j = 0; j < kQT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[j][e] = dpt[j][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kKD; ++kk) {
      uint32_t ak[4], av[4];
      if constexpr (kKVInRegs) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          ak[e] = kf[kk][e];
          av[e] = vf[kk][e];
        }
      } else {
        load_a(ak, sK, kk);
        load_a(av, sV, kk);
      }
#pragma unroll
      for (int n2 = 0; n2 < BM / 16; ++n2) {
        const int row = n2 * 16 + (lane / 16) * 8 + (lane % 8);
        const int col = kk * 16 + ((lane / 8) % 2) * 8;
        uint32_t bq[4], bo[4];
        ldmatrix_x4(bq, smem_addr(q_tile + row * kStride + col));
        ldmatrix_x4(bo, smem_addr(do_tile + row * kStride + col));
        M::run(st[2 * n2], ak, bq[0], bq[1]);
        M::run(st[2 * n2 + 1], ak, bq[2], bq[3]);
        M::run(dpt[2 * n2], av, bo[0], bo[1]);
        M::run(dpt[2 * n2 + 1], av, bo[2], bo[3]);
      }
    }

    // P^T = exp2(scale_log2 S^T - lse log2 e), dS^T = P^T (dP^T - D); masked entries are 0.
    const int q_last = min(m0 + BM, s.nq) - 1;
    const bool full = n0 + BN <= s.nk && m0 + BM <= s.nq &&
                      (left < 0 || n0 >= q_last + diag - left) &&
                      (right < 0 || n0 + BN - 1 <= m0 + diag + right);
#pragma unroll
    for (int j = 0; j < kQT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        st[j][e] = fast_exp2(st[j][e] * scale_log2 - l_tile[j * 8 + 2 * t + (e & 1)]);
    // One branch for the block (a test per element compiled to a branch per element).
    if (!full) {
#pragma unroll
      for (int j = 0; j < kQT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = n0 + warp * 16 + g4 + 8 * (e / 2);
          if (!key_visible(key, m0 + j * 8 + 2 * t + (e & 1), s.nk, diag, left, right))
            st[j][e] = 0.0f;
        }
    }
#pragma unroll
    for (int j = 0; j < kQT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        dpt[j][e] = st[j][e] * (dpt[j][e] - d_tile[j * 8 + 2 * t + (e & 1)]);

    if constexpr (kAtomicDq) {
      // dS^T to shared memory (key-major, two query rows per 32-bit store) for the dQ step.
      T* dst = sdS + (warp * 16 + g4) * Tile::kSStride + 2 * t;
#pragma unroll
      for (int j = 0; j < kQT; ++j) {
        *reinterpret_cast<uint32_t*>(dst + j * 8) = M::pack(dpt[j][0], dpt[j][1]);
        *reinterpret_cast<uint32_t*>(dst + 8 * Tile::kSStride + j * 8) =
            M::pack(dpt[j][2], dpt[j][3]);
      }
    }

    // dV += P^T dO, dK += dS^T Q (the accumulators are already A fragments over query rows).
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      uint32_t pa[4], da[4];
      pa[0] = M::pack(st[2 * kk][0], st[2 * kk][1]);
      pa[1] = M::pack(st[2 * kk][2], st[2 * kk][3]);
      pa[2] = M::pack(st[2 * kk + 1][0], st[2 * kk + 1][1]);
      pa[3] = M::pack(st[2 * kk + 1][2], st[2 * kk + 1][3]);
      da[0] = M::pack(dpt[2 * kk][0], dpt[2 * kk][1]);
      da[1] = M::pack(dpt[2 * kk][2], dpt[2 * kk][3]);
      da[2] = M::pack(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]);
      da[3] = M::pack(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
#pragma unroll
      for (int d2 = 0; d2 < D / 16; ++d2) {
        const int row = kk * 16 + ((lane / 8) % 2) * 8 + (lane % 8);
        const int col = d2 * 16 + (lane / 16) * 8;
        uint32_t bo[4], bq[4];
        ldmatrix_x4_trans(bo, smem_addr(do_tile + row * kStride + col));
        ldmatrix_x4_trans(bq, smem_addr(q_tile + row * kStride + col));
        M::run(dv[2 * d2], pa, bo[0], bo[1]);
        M::run(dv[2 * d2 + 1], pa, bo[2], bo[3]);
        M::run(dk[2 * d2], da, bq[0], bq[1]);
        M::run(dk[2 * d2 + 1], da, bq[2], bq[3]);
      }
    }
    if constexpr (kAtomicDq) {
      __syncthreads();  // every warp's dS^T is in shared memory
      // dQ(rows of this warp's row tile, its D slice) += dS K over the CTA's BN keys; the
      // fragments come from the key-major tiles through ldmatrix.trans.
      constexpr int kDqT = Tile::kDqDims / 8;
      const int row_tile = warp % (BM / 16);
      const int dim0 = (warp / (BM / 16)) * Tile::kDqDims;
      float dqp[kDqT][4];
#pragma unroll
      for (int dt = 0; dt < kDqT; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) dqp[dt][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        uint32_t as[4];
        ldmatrix_x4_trans(as,
                          smem_addr(sdS + (kk * 16 + (lane / 16) * 8 + lane % 8) * Tile::kSStride +
                                    row_tile * 16 + ((lane / 8) % 2) * 8));
#pragma unroll
        for (int d2 = 0; d2 < Tile::kDqDims / 16; ++d2) {
          uint32_t bk[4];
          ldmatrix_x4_trans(
              bk, smem_addr(sK + (kk * 16 + ((lane / 8) % 2) * 8 + lane % 8) * kStride + dim0 +
                            d2 * 16 + (lane / 16) * 8));
          M::run(dqp[2 * d2], as, bk[0], bk[1]);
          M::run(dqp[2 * d2 + 1], as, bk[2], bk[3]);
        }
      }
      const float scale = g.scale;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int q = m0 + row_tile * 16 + g4 + 8 * r;
        if (q >= s.nq) continue;
        float* dst = g.dq_accum + rows.dq(qh, q) * D + dim0 + 2 * t;
#pragma unroll
        for (int dt = 0; dt < kDqT; ++dt) {
          // No return value: compiles to a fire-and-forget vector reduction (RED.E.ADD.F32x2).
          atomicAdd(reinterpret_cast<float2*>(dst + dt * 8),
                    make_float2(dqp[dt][2 * r] * scale, dqp[dt][2 * r + 1] * scale));
        }
      }
    }
    if (++qb == nqb) {
      qb = 0;
      ++h;
    }
  }
  cp_async_wait<0>();

  const float scale = g.scale;
  if (g.dkdv_splits > 1) {
    // Partial rows [dK | dV] in fp32; dK already scaled (a sum of scaled parts is the scaled sum).
    const int64_t kv_rows = static_cast<int64_t>(p.batch) * p.num_kv_heads * p.seqlen_k;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = n0 + warp * 16 + g4 + 8 * r;
      if (key >= s.nk) continue;
      const int64_t row = (static_cast<int64_t>(b) * p.num_kv_heads + kv_head) * p.seqlen_k + key;
      float* dst = g.dkdv_accum + (split * kv_rows + row) * (2 * D) + 2 * t;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        *reinterpret_cast<float2*>(dst + dt * 8) =
            make_float2(dk[dt][2 * r] * scale, dk[dt][2 * r + 1] * scale);
        *reinterpret_cast<float2*>(dst + D + dt * 8) =
            make_float2(dv[dt][2 * r], dv[dt][2 * r + 1]);
      }
    }
    return;
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = n0 + warp * 16 + g4 + 8 * r;
    if (key >= s.nk) continue;
    T* dk_row =
        static_cast<T*>(g.dk) + b * g.dk_batch + (s.k_row0 + key) * g.dk_row + kv_head * g.dk_head;
    T* dv_row =
        static_cast<T*>(g.dv) + b * g.dv_batch + (s.k_row0 + key) * g.dv_row + kv_head * g.dv_head;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      *reinterpret_cast<uint32_t*>(dk_row + dt * 8 + 2 * t) =
          M::pack(dk[dt][2 * r] * scale, dk[dt][2 * r + 1] * scale);
      *reinterpret_cast<uint32_t*>(dv_row + dt * 8 + 2 * t) =
          M::pack(dv[dt][2 * r], dv[dt][2 * r + 1]);
    }
  }
}

// dK and dV from the head splits' fp32 partial rows (dkdv_accum, dense batches): the splits
// summed in order (the same result every run), 8 elements per thread.
template <typename T>
__global__ void __launch_bounds__(256)
    flash_bwd_dkdv_reduce_kernel(const BwdKernelParams g, int head_dim) {
  const FwdKernelParams& p = g.fwd;
  const int chunks = 2 * head_dim / 8;  // dK's chunks, then dV's
  const int64_t kv_rows = static_cast<int64_t>(p.batch) * p.num_kv_heads * p.seqlen_k;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= kv_rows * chunks) return;
  const int64_t row = idx / chunks;
  const int c = static_cast<int>(idx % chunks);
  float sum[8] = {};
  for (int split = 0; split < g.dkdv_splits; ++split) {
    const float4* src = reinterpret_cast<const float4*>(
        g.dkdv_accum + (split * kv_rows + row) * (2 * head_dim) + c * 8);
    const float4 a = src[0], b4 = src[1];
    sum[0] += a.x, sum[1] += a.y, sum[2] += a.z, sum[3] += a.w;
    sum[4] += b4.x, sum[5] += b4.y, sum[6] += b4.z, sum[7] += b4.w;
  }
  const int64_t key = row % p.seqlen_k;
  const int64_t kv_head = row / p.seqlen_k % p.num_kv_heads;
  const int64_t b = row / (static_cast<int64_t>(p.seqlen_k) * p.num_kv_heads);
  const bool is_dv = c * 8 >= head_dim;
  const int col = is_dv ? c * 8 - head_dim : c * 8;
  T* dst = is_dv ? static_cast<T*>(g.dv) + b * g.dv_batch + key * g.dv_row + kv_head * g.dv_head
                 : static_cast<T*>(g.dk) + b * g.dk_batch + key * g.dk_row + kv_head * g.dk_head;
  uint4 packed;
  packed.x = Mma<T>::pack(sum[0], sum[1]);
  packed.y = Mma<T>::pack(sum[2], sum[3]);
  packed.z = Mma<T>::pack(sum[4], sum[5]);
  packed.w = Mma<T>::pack(sum[6], sum[7]);
  *reinterpret_cast<uint4*>(dst + col) = packed;
}

// dQ from the fp32 workspace (already scaled) to the output layout; 8 elements per thread.
template <typename T>
__global__ void __launch_bounds__(256)
    flash_bwd_dq_convert_kernel(const BwdKernelParams g, int64_t dq_rows, int head_dim) {
  const FwdKernelParams& p = g.fwd;
  const int chunks = head_dim / 8;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= dq_rows * chunks) return;
  const int64_t rid = idx / chunks;
  const int c = static_cast<int>(idx % chunks);
  int64_t off;
  if (p.cu_seqlens_q != nullptr) {
    const int64_t total_q = p.cu_seqlens_q[p.batch];
    off = (rid % total_q) * g.dq_row + (rid / total_q) * g.dq_head;
  } else {
    const int64_t qrow = rid % p.seqlen_q;
    const int64_t qh = (rid / p.seqlen_q) % p.num_query_heads;
    const int64_t b = rid / (static_cast<int64_t>(p.seqlen_q) * p.num_query_heads);
    off = b * g.dq_batch + qrow * g.dq_row + qh * g.dq_head;
  }
  const float4* src = reinterpret_cast<const float4*>(g.dq_accum + rid * head_dim + c * 8);
  const float4 a = src[0], b4 = src[1];
  uint4 packed;
  packed.x = Mma<T>::pack(a.x, a.y);
  packed.y = Mma<T>::pack(a.z, a.w);
  packed.z = Mma<T>::pack(b4.x, b4.y);
  packed.w = Mma<T>::pack(b4.z, b4.w);
  *reinterpret_cast<uint4*>(static_cast<T*>(g.dq) + off + c * 8) = packed;
}

template <typename T, int D, int BN, int kNWarps>
struct BwdDqTile {
  static constexpr int kThreads = kNWarps * 32;
  static constexpr int BM = 16 * kNWarps;
  static constexpr int kStride = D + 8;
  static constexpr int kSmemBytes = (2 * BM + 4 * BN) * kStride * static_cast<int>(sizeof(T));
};

template <typename T, int D, int BN, int kNWarps>
__global__ void __launch_bounds__(kNWarps * 32) flash_bwd_dq_kernel(const BwdKernelParams g) {
  using Tile = BwdDqTile<T, D, BN, kNWarps>;
  constexpr int BM = Tile::BM;
  constexpr int kStride = Tile::kStride;
  constexpr int kThreads = Tile::kThreads;
  constexpr int kNT = BN / 8;
  constexpr int kDT = D / 8;
  constexpr int kKD = D / 16;
  using M = Mma<T>;
  const FwdKernelParams& p = g.fwd;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sdO = sQ + BM * kStride;
  T* sK = sdO + BM * kStride;  // [2][BN * kStride]
  T* sV = sK + 2 * BN * kStride;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g4 = lane / 4, t = lane % 4;
  // x = (query block, query head), heads fastest, the longest (last) query blocks first.
  const int m_block = static_cast<int>(gridDim.x) / p.num_query_heads - 1 -
                      static_cast<int>(blockIdx.x) / p.num_query_heads;
  const int qh = static_cast<int>(blockIdx.x) % p.num_query_heads;
  const int b = blockIdx.z;
  const SeqSpan s = seq_span(p, b);
  const int m0 = m_block * BM;
  if (m0 >= s.nq) return;
  const int diag = s.nk - s.nq, left = p.window_left, right = p.window_right;
  const int q_last = min(m0 + BM, s.nq) - 1;
  int key_begin = 0, key_end = s.nk;
  if (left >= 0) key_begin = max(0, m0 + diag - left);
  if (right >= 0) key_end = min(s.nk, q_last + diag + right + 1);
  const int nb_begin = key_begin / BN;
  const int nkb = key_end > key_begin ? (key_end + BN - 1) / BN - nb_begin : 0;

  // rSQA: query head qh is read by attention heads qh, qh + H_q, ...: its dQ sums them.
  const int h_count = p.reverse ? p.num_kv_heads / p.num_query_heads : 1;
  const T* q_base = static_cast<const T*>(p.q) + b * p.q_batch + s.q_row0 * p.q_row + qh * p.q_head;
  load_tile<T, D, BM, kThreads>(sQ, q_base, p.q_row, m0, s.nq, tid);

  float dq[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[dt][e] = 0.0f;
  uint32_t qf[kKD][4], of[kKD][4];
  auto load_a = [&](uint32_t(&a)[4], const T* tile, int kk) {
    ldmatrix_x4(a, smem_addr(tile + (warp * 16 + lane % 16) * kStride + kk * 16 + (lane / 16) * 8));
  };
  const float scale_log2 = p.scale_log2;
  int qrow[2];
  qrow[0] = m0 + warp * 16 + g4;
  qrow[1] = qrow[0] + 8;

  for (int hi = 0; hi < h_count; ++hi) {
    const int h = p.reverse ? qh + hi * p.num_query_heads : qh;
    const int kv_head = p.reverse ? h : h / p.group_size;
    const T* k_base =
        static_cast<const T*>(p.k) + b * p.k_batch + s.k_row0 * p.k_row + kv_head * p.k_head;
    const T* v_base =
        static_cast<const T*>(p.v) + b * p.v_batch + s.k_row0 * p.v_row + kv_head * p.v_head;
    const T* do_base =
        static_cast<const T*>(g.dout) + b * g.do_batch + s.q_row0 * g.do_row + h * g.do_head;
    __syncthreads();  // the previous head is done with sdO, sK, sV
    load_tile<T, D, BM, kThreads>(sdO, do_base, g.do_row, m0, s.nq, tid);
    if (nkb > 0) {
      load_tile<T, D, BN, kThreads>(sK, k_base, p.k_row, nb_begin * BN, s.nk, tid);
      load_tile<T, D, BN, kThreads>(sV, v_base, p.v_row, nb_begin * BN, s.nk, tid);
    }
    cp_async_commit();
    float l2[2], dsum[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const bool valid = qrow[r] < s.nq;
      const int64_t rid = valid ? lse_row(p, b, h, s.q_row0, qrow[r], s.total_q) : 0;
      l2[r] = valid ? p.lse[rid] * kLog2e : INFINITY;
      dsum[r] = valid ? g.dsum[rid] : 0.0f;
    }

    for (int it = 0; it < nkb; ++it) {
      const int stage = it & 1;
      const int nb = nb_begin + it;
      if (it + 1 < nkb) {
        load_tile<T, D, BN, kThreads>(sK + (stage ^ 1) * BN * kStride, k_base, p.k_row,
                                      (nb + 1) * BN, s.nk, tid);
        load_tile<T, D, BN, kThreads>(sV + (stage ^ 1) * BN * kStride, v_base, p.v_row,
                                      (nb + 1) * BN, s.nk, tid);
      }
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();
      if (it == 0) {
#pragma unroll
        for (int kk = 0; kk < kKD; ++kk) {
          load_a(qf[kk], sQ, kk);
          load_a(of[kk], sdO, kk);
        }
      }
      const T* k_tile = sK + stage * BN * kStride;
      const T* v_tile = sV + stage * BN * kStride;

      // S = Q K^T and dP = dO V^T.
      float sc[kNT][4], dp[kNT][4];
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kKD; ++kk) {
#pragma unroll
        for (int n2 = 0; n2 < BN / 16; ++n2) {
          const int row = n2 * 16 + (lane / 16) * 8 + (lane % 8);
          const int col = kk * 16 + ((lane / 8) % 2) * 8;
          uint32_t bk[4], bv[4];
          ldmatrix_x4(bk, smem_addr(k_tile + row * kStride + col));
          ldmatrix_x4(bv, smem_addr(v_tile + row * kStride + col));
          M::run(sc[2 * n2], qf[kk], bk[0], bk[1]);
          M::run(sc[2 * n2 + 1], qf[kk], bk[2], bk[3]);
          M::run(dp[2 * n2], of[kk], bv[0], bv[1]);
          M::run(dp[2 * n2 + 1], of[kk], bv[2], bv[3]);
        }
      }
      const int n0 = nb * BN;
      const bool full = n0 + BN <= s.nk && m0 + BM <= s.nq &&
                        (left < 0 || n0 >= q_last + diag - left) &&
                        (right < 0 || n0 + BN - 1 <= m0 + diag + right);
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e / 2;
          float pv = fast_exp2(sc[nt][e] * scale_log2 - l2[r]);
          if (!full) {
            const int key = n0 + nt * 8 + 2 * t + (e & 1);
            if (!key_visible(key, qrow[r], s.nk, diag, left, right)) pv = 0.0f;
          }
          dp[nt][e] = pv * (dp[nt][e] - dsum[r]);
        }
        // dQ += dS K.
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        uint32_t da[4];
        da[0] = M::pack(dp[2 * kk][0], dp[2 * kk][1]);
        da[1] = M::pack(dp[2 * kk][2], dp[2 * kk][3]);
        da[2] = M::pack(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
        da[3] = M::pack(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
        for (int d2 = 0; d2 < D / 16; ++d2) {
          const int row = kk * 16 + ((lane / 8) % 2) * 8 + (lane % 8);
          const int col = d2 * 16 + (lane / 16) * 8;
          uint32_t bk[4];
          ldmatrix_x4_trans(bk, smem_addr(k_tile + row * kStride + col));
          M::run(dq[2 * d2], da, bk[0], bk[1]);
          M::run(dq[2 * d2 + 1], da, bk[2], bk[3]);
        }
      }
      __syncthreads();  // this stage is refilled at the next iteration
    }
    cp_async_wait<0>();
  }

  const float scale = g.scale;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (qrow[r] >= s.nq) continue;
    T* dq_row =
        static_cast<T*>(g.dq) + b * g.dq_batch + (s.q_row0 + qrow[r]) * g.dq_row + qh * g.dq_head;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      *reinterpret_cast<uint32_t*>(dq_row + dt * 8 + 2 * t) =
          M::pack(dq[dt][2 * r] * scale, dq[dt][2 * r + 1] * scale);
    }
  }
}

}  // namespace sqa::cuda::detail
