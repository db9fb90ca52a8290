// FlashAttention-2-style forward for every SQA head layout (sm_80 warp MMA path, run on sm_90a).
//
// One CTA computes a BM x D output tile for one (row block, head group, sequence[, split]):
//   S = Q K^T over key blocks of BN, online softmax in base 2, O += P V, then O / rowsum and
//   lse = ln(sum_j exp(scale * s_j)). Q stays in registers (D <= 128) or is re-read from shared
//   memory (D = 256, to fit the register file). K and V are single shared buffers loaded with
//   cp.async in the FA2 order: V(j) streams in while S(j) is computed, K(j-1) while P(j) V(j) is.
// Head layouts come through head_pair() semantics without materialising anything: a tile row
// reads its query head from (h % H_q for rSQA, h otherwise) and the CTA's one KV head
// (h for rSQA, h / G otherwise). Key blocks that the window hides for every row of the tile are
// never visited; blocks that it hides partly are masked element by element.
// kTwoStage (small head dims, where a key block is only a few instructions per thread): K and V
// get two buffers each, so block j - 1 streams in during all of block j and each block costs one
// barrier instead of two.
#pragma once

#include <cuda_runtime.h>

#include <cfloat>
#include <type_traits>

#include "flash_common.cuh"
#include "flash_params.hpp"

namespace sqa::cuda::detail {

template <typename T, int D, int kMT, int kNWarps, int BN, bool kTwoStage = false>
struct FwdTile {
  static constexpr int kThreads = kNWarps * 32;
  static constexpr int BM = 16 * kMT * kNWarps;  // query rows of the CTA
  static constexpr int kStride = D + 8;  // padded shared row: ldmatrix rows hit distinct banks
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
  static constexpr bool kQInRegs = D <= 128;
  static constexpr int kStages = kTwoStage ? 2 : 1;  // buffers each for K and V
  static constexpr int kSmemBytes = (BM + 2 * kStages * BN) * kStride * static_cast<int>(sizeof(T));
  static_assert(D % 16 == 0 && BN % 16 == 0, "tile shapes must be multiples of the MMA's k");
};

// kTuned (small head dims, where the softmax's instruction latency is the limit rather than the
// tensor cores): max as a tree instead of a serial chain, row sums by the tensor cores (P times a
// ones tile: exact fp32 sums of the same rounded P that feeds P V, no FADD chain), and a register
// cap for more resident warps.
// kLazy (two-stage, with the tensor-core row sums): lazy rescaling, checked after the fact on
// the block's row sums (see the key loop).
template <typename T, int D, int kMT, int kNWarps, int BN, bool kTuned, int kMinBlocks,
          bool kTwoStage, bool kLazy = false, bool kQFromSmem = false>
__global__ void __launch_bounds__(kNWarps * 32, kMinBlocks)
    flash_fwd_kernel(const FwdKernelParams p) {
  using Tile = FwdTile<T, D, kMT, kNWarps, BN, kTwoStage>;
  constexpr int BM = Tile::BM;
  constexpr int kStride = Tile::kStride;
  constexpr int kChunks = Tile::kChunks;
  constexpr int kThreads = Tile::kThreads;
  constexpr int kNT = BN / 8;  // 8-column tiles of S
  constexpr int kDT = D / 8;   // 8-column tiles of O
  constexpr int kKD = D / 16;  // k-steps of Q K^T
  using M = Mma<T>;
  // Tensor-core row sums cost one extra MMA per D / 8 of P V: worth it only at small D.
  constexpr bool kMmaRowSum = kTuned && D <= 32;
  static_assert(!kLazy || kMmaRowSum, "lazy rescaling is wired to the row-sum MMA path");
  static_assert(!kLazy || kTwoStage, "the sum-checked block skips the one-stage K reload");

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * kStride;                  // [kStages][BN * kStride]
  T* sV = sK + Tile::kStages * BN * kStride;  // [kStages][BN * kStride]

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  // Causal tiles further down do more work: launch them first, for every head before the next
  // row block (heads vary fastest), so the longest tiles of all heads start in the first wave
  // and the tail of the grid is short also with few heads.
  const int num_m_blocks = static_cast<int>(gridDim.x) / p.num_head_groups;
  const int m_block = num_m_blocks - 1 - static_cast<int>(blockIdx.x) / p.num_head_groups;
  const int head_group = static_cast<int>(blockIdx.x) % p.num_head_groups;
  const int b = blockIdx.z / p.num_splits;
  const int split = blockIdx.z % p.num_splits;

  int64_t q_row0 = 0, k_row0 = 0, total_q = 0;
  int nq = p.seqlen_q, nk = p.seqlen_k;
  if (p.cu_seqlens_q != nullptr) {
    q_row0 = p.cu_seqlens_q[b];
    nq = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
    k_row0 = p.cu_seqlens_k[b];
    nk = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    total_q = p.cu_seqlens_q[p.batch];
  }
  const int pack = p.pack;
  const int rows = nq * pack;
  const int m0 = m_block * BM;
  if (m0 >= rows) return;

  // Keys that any row of this tile can see (bottom-right aligned window, spec.cpp visible_keys).
  const int diag = nk - nq;
  const int qrow_lo = m0 / pack;
  const int qrow_hi = (min(rows, m0 + BM) - 1) / pack;
  const int left = p.window_left, right = p.window_right;
  int key_begin = 0, key_end = nk;
  if (left >= 0) key_begin = max(0, qrow_lo + diag - left);
  if (right >= 0) key_end = min(nk, qrow_hi + diag + right + 1);
  int nb_begin = key_begin / BN;
  int nb_end = key_end > key_begin ? (key_end + BN - 1) / BN : nb_begin;
  if (p.num_splits > 1) {
    const int per = (nb_end - nb_begin + p.num_splits - 1) / p.num_splits;
    const int s_begin = min(nb_end, nb_begin + split * per);
    nb_end = min(nb_end, s_begin + per);
    nb_begin = s_begin;
  }

  const int h0 = head_group * pack;
  const int kv_head = p.reverse ? h0 : h0 / p.group_size;
  const T* q_base = static_cast<const T*>(p.q) + b * p.q_batch + q_row0 * p.q_row;
  const T* k_base =
      static_cast<const T*>(p.k) + b * p.k_batch + k_row0 * p.k_row + kv_head * p.k_head;
  const T* v_base =
      static_cast<const T*>(p.v) + b * p.v_batch + k_row0 * p.v_row + kv_head * p.v_head;

  // Q tile: row i is query row (m0 + i) / pack of attention head h0 + (m0 + i) % pack.
#pragma unroll
  for (int idx = tid; idx < BM * kChunks; idx += kThreads) {
    const int i = idx / kChunks, c = idx % kChunks;
    const int m = m0 + i;
    const bool valid = m < rows;
    const T* src = q_base;
    if (valid) {
      const int h = h0 + m % pack;
      const int qh = p.reverse ? h % p.num_query_heads : h;
      src = q_base + static_cast<int64_t>(m / pack) * p.q_row + qh * p.q_head + c * 8;
    }
    cp_async_16(sQ + i * kStride + c * 8, src, valid);
  }
  auto load_kv = [&](T* dst, const T* base, int64_t row_stride, int nb) {
    load_tile<T, D, BN, kThreads>(dst, base, row_stride, nb * BN, nk, tid);
  };

  if (nb_end > nb_begin) {
    load_kv(sK, k_base, p.k_row, nb_end - 1);
    if constexpr (kTwoStage) load_kv(sV, v_base, p.v_row, nb_end - 1);
  }
  cp_async_commit();

  // Query row of each accumulator row this thread holds (rows g and g + 8 of each m-tile).
  int qrow_of[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r)
      qrow_of[mt][r] = (m0 + warp * 16 * kMT + mt * 16 + g + 8 * r) / pack;

  float o[kMT][kDT][4];
  float o_sum[kMT][4];  // kMmaRowSum: P times ones, every column is the row sum
  float row_max[kMT][2], row_sum[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][dt][e] = 0.0f;
#pragma unroll
    for (int e = 0; e < 4; ++e) o_sum[mt][e] = 0.0f;
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.0f;
  }

  const int warp_row = warp * 16 * kMT;
  // Q fragments stay in registers across the key loop unless kQFromSmem: then they are reloaded
  // from shared memory each block (one ldmatrix per m-tile and k-step), which frees registers
  // for a kernel capped at 128 (sum2occ spills 168 bytes at D = 16).
  constexpr bool kQRegs = Tile::kQInRegs && !kQFromSmem;
  uint32_t qf[kQRegs ? kMT : 1][kQRegs ? kKD : 1][4];
  auto load_q_frag = [&](uint32_t(&a)[4], int mt, int kk) {
    const int row = warp_row + mt * 16 + (lane % 16);
    const int col = kk * 16 + (lane / 16) * 8;
    ldmatrix_x4(a, smem_addr(sQ + row * kStride + col));
  };
  const float scale_log2 = p.scale_log2;

  // S = Q K^T for one key block (K in sKc).
  auto compute_s = [&](float(&s)[kMT][kNT][4], const T* sKc) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kKD; ++kk) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        if constexpr (kQRegs) {
#pragma unroll
          for (int e = 0; e < 4; ++e) a[mt][e] = qf[mt][kk][e];
        } else {
          load_q_frag(a[mt], mt, kk);
        }
      }
#pragma unroll
      for (int n2 = 0; n2 < BN / 16; ++n2) {
        uint32_t bk[4];
        const int key = n2 * 16 + (lane / 16) * 8 + (lane % 8);
        const int dim = kk * 16 + ((lane / 8) % 2) * 8;
        ldmatrix_x4(bk, smem_addr(sKc + key * kStride + dim));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          M::run(s[mt][2 * n2], a[mt], bk[0], bk[1]);
          M::run(s[mt][2 * n2 + 1], a[mt], bk[2], bk[3]);
        }
      }
    }
  };

  // Masks block nb where the window or the sequence end cuts it for some row of the tile, then
  // the online softmax (base 2): when the running max grows, the sum and the output are
  // rescaled; s becomes P.
  auto mask_block = [&](float(&s)[kMT][kNT][4], int nb) {
    const int n0 = nb * BN;
    const bool full = n0 + BN <= nk && (left < 0 || n0 >= qrow_hi + diag - left) &&
                      (right < 0 || n0 + BN - 1 <= qrow_lo + diag + right);
    if (!full) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int col = n0 + nt * 8 + 2 * t + (e & 1);
            const int qr = qrow_of[mt][e / 2] + diag;
            const bool visible =
                col < nk && (left < 0 || col >= qr - left) && (right < 0 || col <= qr + right);
            if (!visible) s[mt][nt][e] = -INFINITY;
          }
    }
  };
  auto softmax = [&](float(&s)[kMT][kNT][4], int nb) {
    mask_block(s, nb);
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = row_max[mt][r];
        if constexpr (kTuned) {
          float part[kNT];
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) part[nt] = fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]);
#pragma unroll
          for (int w = kNT / 2; w > 0; w /= 2)
#pragma unroll
            for (int i = 0; i < w; ++i) part[i] = fmaxf(part[i], part[i + w]);
          mx = fmaxf(mx, part[0]);
        } else {
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt)
            mx = fmaxf(mx, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // A row that has seen no visible key yet keeps max -inf; offset 0 makes its p exactly 0.
        const float m_use = mx == -INFINITY ? 0.0f : mx;
        const float offset = m_use * scale_log2;
        const float corr = fast_exp2(row_max[mt][r] * scale_log2 - offset);
        row_max[mt][r] = mx;
        row_sum[mt][r] *= corr;
        o_sum[mt][2 * r] *= corr;
        o_sum[mt][2 * r + 1] *= corr;
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
          o[mt][dt][2 * r] *= corr;
          o[mt][dt][2 * r + 1] *= corr;
        }
        if constexpr (kMmaRowSum) {
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              s[mt][nt][2 * r + e] = fast_exp2(fmaf(s[mt][nt][2 * r + e], scale_log2, -offset));
            }
        } else {
          float sum = 0.0f;
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float pe = fast_exp2(fmaf(s[mt][nt][2 * r + e], scale_log2, -offset));
              s[mt][nt][2 * r + e] = pe;
              sum += pe;
            }
          row_sum[mt][r] += sum;  // per-thread partial; reduced over the quad once at the end
        }
      }
  };

  // P (fp32, in the S accumulators) as the A fragments of k-step kk.
  auto pack_p = [&](uint32_t(&pa)[4], const float(&sm)[kNT][4], int kk) {
    pa[0] = M::pack(sm[2 * kk][0], sm[2 * kk][1]);
    pa[1] = M::pack(sm[2 * kk][2], sm[2 * kk][3]);
    pa[2] = M::pack(sm[2 * kk + 1][0], sm[2 * kk + 1][1]);
    pa[3] = M::pack(sm[2 * kk + 1][2], sm[2 * kk + 1][3]);
  };
  // O += P V for k-step kk (V in sVc).
  auto pv_step = [&](const uint32_t(&pa)[kMT][4], const T* sVc, int kk) {
#pragma unroll
    for (int d2 = 0; d2 < D / 16; ++d2) {
      uint32_t bv[4];
      const int key = kk * 16 + ((lane / 8) % 2) * 8 + (lane % 8);
      const int dim = d2 * 16 + (lane / 16) * 8;
      ldmatrix_x4_trans(bv, smem_addr(sVc + key * kStride + dim));
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        M::run(o[mt][2 * d2], pa[mt], bv[0], bv[1]);
        M::run(o[mt][2 * d2 + 1], pa[mt], bv[2], bv[3]);
      }
    }
  };
  // O += P V (V in sVc): the S accumulators are already laid out as the A fragments.
  auto accumulate_pv = [&](float(&s)[kMT][kNT][4], const T* sVc) {
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t pa[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        pack_p(pa[mt], s[mt], kk);
        if constexpr (kMmaRowSum) M::run(o_sum[mt], pa[mt], M::kOnes, M::kOnes);
      }
      pv_step(pa, sVc, kk);
    }
  };
  // kLazy (FlashAttention-4's lazy rescaling): the exponentials with the running max as it is,
  // and the row sums of the block's P (tensor cores, fresh accumulators). Every P <= its row's
  // sum, so sums within kSumBound (and not NaN) mean no P left the safe range: the block is
  // accepted without looking at its max, and the max, the sums and O need no rescale. Otherwise
  // (a new max by more than about 2^9, a row with nothing visible before, or an overflow) the
  // caller recomputes S and takes the full rescale. 2^15 keeps fp16 P finite; P that large is
  // far from overflow in the fp32 sums, and bf16/fp16 keep their relative precision.
  constexpr float kSumBound = 32768.0f;
  auto lazy_block = [&](float(&s)[kMT][kNT][4], uint32_t(&pa)[kMT][BN / 16][4],
                        float(&block_sum)[kMT][4]) {
    bool ok = true;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        // A row with max -inf: a finite offset keeps masked scores at p = 0, and any visible
        // score overflows to inf, which fails the check below.
        const float offset = fmaxf(row_max[mt][r] * scale_log2, -FLT_MAX);
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            s[mt][nt][2 * r + e] = fast_exp2(fmaf(s[mt][nt][2 * r + e], scale_log2, -offset));
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) block_sum[mt][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        pack_p(pa[mt][kk], s[mt], kk);
        M::run(block_sum[mt], pa[mt][kk], M::kOnes, M::kOnes);
      }
      // Every column holds the row sum: [0] is row g, [2] row g + 8. NaN compares false.
      ok &= (block_sum[mt][0] <= kSumBound) & (block_sum[mt][2] <= kSumBound);
    }
    return __all_sync(0xffffffffu, ok);
  };
  auto load_q_frags = [&] {
    if constexpr (kQRegs) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int kk = 0; kk < kKD; ++kk) load_q_frag(qf[mt][kk], mt, kk);
    }
  };

  for (int nb = nb_end - 1; nb >= nb_begin; --nb) {
    // Two-stage: block nb sits in buffer (nb_end - 1 - nb) % 2.
    const int stage = kTwoStage ? (nb_end - 1 - nb) & 1 : 0;
    cp_async_wait<0>();
    // Two-stage: K(nb) and V(nb) landed; every warp is done with block nb + 1's buffers,
    // which block nb - 1 refills now. One stage: K(nb) landed; every warp is done reading
    // V(nb + 1).
    __syncthreads();
    if (nb == nb_end - 1) load_q_frags();
    if constexpr (kTwoStage) {
      if (nb > nb_begin) {
        load_kv(sK + (stage ^ 1) * BN * kStride, k_base, p.k_row, nb - 1);
        load_kv(sV + (stage ^ 1) * BN * kStride, v_base, p.v_row, nb - 1);
      }
    } else {
      load_kv(sV, v_base, p.v_row, nb);
    }
    cp_async_commit();
    float s[kMT][kNT][4];
    compute_s(s, sK + stage * BN * kStride);
    if constexpr (kLazy) {
      mask_block(s, nb);
      uint32_t pa[kMT][BN / 16][4];
      float block_sum[kMT][4];
      if (lazy_block(s, pa, block_sum)) {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int e = 0; e < 4; ++e) o_sum[mt][e] += block_sum[mt][e];
            // P V from the packed fragments, copied per k-step: laid out k-step first instead, the
            // d32 kernel allocates registers differently (+16 instructions in SASS).
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
          uint32_t pk[kMT][4];
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
            for (int e = 0; e < 4; ++e) pk[mt][e] = pa[mt][kk][e];
          pv_step(pk, sV + stage * BN * kStride, kk);
        }
        continue;
      }
      compute_s(s, sK + stage * BN * kStride);  // the rare block: S again, full rescale
    }
    softmax(s, nb);
    if constexpr (!kTwoStage) {
      cp_async_wait<0>();
      __syncthreads();  // V(nb) landed; every warp is done reading K(nb)
      if (nb > nb_begin) load_kv(sK, k_base, p.k_row, nb - 1);
      cp_async_commit();
    }
    accumulate_pv(s, sV + stage * BN * kStride);
  }
  cp_async_wait<0>();

  // Epilogue: normalise, write lse, and write O (through shared memory for 16-byte stores).
  float inv[kMT][2], lse_val[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = row_sum[mt][r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      if constexpr (kMmaRowSum) sum = o_sum[mt][2 * r];  // already summed over the quad
      const bool any = sum > 0.0f;
      inv[mt][r] = any ? 1.0f / sum : 0.0f;
      // lse = ln(sum_j exp(scale s_j)) = (max * scale_log2 + log2(sum)) * ln 2.
      lse_val[mt][r] =
          any ? (row_max[mt][r] * scale_log2 + __log2f(sum)) * 0.69314718055994531f : -INFINITY;
    }

  if (p.num_splits > 1) {
    // Partial results stay fp32 for the combine kernel.
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int m = m0 + warp_row + mt * 16 + g + 8 * r;
        if (m >= rows) continue;
        const int64_t rid =
            split * p.accum_rows + lse_row(p, b, h0 + m % pack, q_row0, m / pack, total_q);
        float* dst = p.out_accum + rid * D;
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
          *reinterpret_cast<float2*>(dst + dt * 8 + 2 * t) =
              make_float2(o[mt][dt][2 * r] * inv[mt][r], o[mt][dt][2 * r + 1] * inv[mt][r]);
        }
        if (t == 0) p.lse_accum[rid] = lse_val[mt][r];
      }
    return;
  }

  __syncthreads();  // every warp is done with sQ (D = 256 reads Q from it in the loop)
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = warp_row + mt * 16 + g + 8 * r;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        *reinterpret_cast<uint32_t*>(sQ + i * kStride + dt * 8 + 2 * t) =
            M::pack(o[mt][dt][2 * r] * inv[mt][r], o[mt][dt][2 * r + 1] * inv[mt][r]);
      }
      const int m = m0 + i;
      if (p.lse != nullptr && t == 0 && m < rows) {
        p.lse[lse_row(p, b, h0 + m % pack, q_row0, m / pack, total_q)] = lse_val[mt][r];
      }
    }
  __syncthreads();
  T* o_base = static_cast<T*>(p.out) + b * p.o_batch + q_row0 * p.o_row;
#pragma unroll
  for (int idx = tid; idx < BM * kChunks; idx += kThreads) {
    const int i = idx / kChunks, c = idx % kChunks;
    const int m = m0 + i;
    if (m >= rows) continue;
    T* dst = o_base + static_cast<int64_t>(m / pack) * p.o_row + (h0 + m % pack) * p.o_head + c * 8;
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(sQ + i * kStride + c * 8);
  }
}

// Merges the split-KV partial outputs: lse = log sum_s exp(lse_s), O = sum_s exp(lse_s - lse) O_s.
// One warp per output row.
template <typename T>
__global__ void __launch_bounds__(128)
    flash_fwd_combine_kernel(const FwdKernelParams p, int head_dim) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t rid = static_cast<int64_t>(blockIdx.x) * 4 + warp;
  if (rid >= p.accum_rows) return;
  const int S = p.num_splits;  // <= 32: one split per lane
  const float l = lane < S ? p.lse_accum[lane * p.accum_rows + rid] : -INFINITY;
  float mx = l;
#pragma unroll
  for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  const float m_use = mx == -INFINITY ? 0.0f : mx;
  float w = lane < S ? __expf(l - m_use) : 0.0f;
  float sum = w;
#pragma unroll
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  const bool any = sum > 0.0f;
  w = any ? w / sum : 0.0f;

  int64_t out_off;
  int h;
  if (p.cu_seqlens_q != nullptr) {
    const int64_t total_q = p.cu_seqlens_q[p.batch];
    h = static_cast<int>(rid / total_q);
    out_off = (rid % total_q) * p.o_row + h * p.o_head;
  } else {
    const int64_t qrow = rid % p.seqlen_q;
    h = static_cast<int>((rid / p.seqlen_q) % p.num_attention_heads);
    const int64_t b = rid / (static_cast<int64_t>(p.seqlen_q) * p.num_attention_heads);
    out_off = b * p.o_batch + qrow * p.o_row + h * p.o_head;
  }
  T* out = static_cast<T*>(p.out) + out_off;
  for (int c0 = 0; c0 < head_dim; c0 += 32) {
    const int c = c0 + lane;
    float acc = 0.0f;
    for (int s = 0; s < S; ++s) {
      const float ws = __shfl_sync(0xffffffffu, w, s);  // every lane shuffles, then filters
      if (ws != 0.0f && c < head_dim)
        acc += ws * p.out_accum[(s * p.accum_rows + rid) * head_dim + c];
    }
    if (c >= head_dim) continue;
    if constexpr (std::is_same_v<T, __half>) {
      out[c] = __float2half_rn(acc);
    } else {
      out[c] = __float2bfloat16_rn(acc);
    }
  }
  if (lane == 0 && p.lse != nullptr) p.lse[rid] = any ? m_use + __logf(sum) : -INFINITY;
}

}  // namespace sqa::cuda::detail
