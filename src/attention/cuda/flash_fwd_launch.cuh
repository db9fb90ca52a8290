// Launch templates for the forward kernels; each flash_fwd_hdim*.cu instantiates one head dim.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <type_traits>

#include "flash_fwd.hpp"
#include "flash_fwd_kernel.cuh"
#include "flash_fwd_wgmma.cuh"
#include "tma_host.hpp"

namespace sqa::cuda::detail {

template <typename T, int D, int kMT, int kNWarps, int BN, bool kTuned = false, int kMinBlocks = 1,
          bool kTwoStage = false, bool kLazy = false, bool kQFromSmem = false>
void launch_flash_fwd(const FwdKernelParams& p, cudaStream_t stream) {
  using Tile = FwdTile<T, D, kMT, kNWarps, BN, kTwoStage>;
  auto* kernel =
      &flash_fwd_kernel<T, D, kMT, kNWarps, BN, kTuned, kMinBlocks, kTwoStage, kLazy, kQFromSmem>;
  constexpr int smem = Tile::kSmemBytes;
  if constexpr (smem > 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
               "cudaFuncSetAttribute(flash_fwd_kernel, max dynamic shared memory)");
  }
  // x = (row block, head group) with head groups fastest; see the kernel's m_block.
  const int64_t m_blocks = (static_cast<int64_t>(p.seqlen_q) * p.pack + Tile::BM - 1) / Tile::BM;
  const dim3 grid(static_cast<unsigned>(m_blocks * p.num_head_groups), 1, p.batch * p.num_splits);
  kernel<<<grid, Tile::kThreads, smem, stream>>>(p);
  check_cuda(cudaGetLastError(), "flash_fwd_kernel launch");
  if (p.num_splits > 1) {
    const auto blocks = static_cast<unsigned>((p.accum_rows + 3) / 4);
    flash_fwd_combine_kernel<T><<<blocks, 128, 0, stream>>>(p, D);
    check_cuda(cudaGetLastError(), "flash_fwd_combine_kernel launch");
  }
}

// The Hopper warpgroup-MMA prefill kernel (flash_fwd_wgmma.cuh); same grid as launch_flash_fwd.
template <typename T, int D, int BN, int kWarpGroups, int kSched = kWgmmaSchedDefault>
void launch_flash_fwd_wgmma(const FwdKernelParams& p, cudaStream_t stream) {
  using Tile = WgmmaFwdTile<T, D, BN, kWarpGroups, kSched>;
  if (p.pack != 1 || p.num_splits != 1) {
    // The dispatcher sends decode (the only user of head packing and split-KV) elsewhere.
    throw std::runtime_error("flash_fwd_wgmma_kernel takes prefill only (pack 1, num_splits 1)");
  }
  auto* kernel = &flash_fwd_wgmma_kernel<T, D, BN, kWarpGroups, kSched>;
  constexpr int smem = Tile::kSmemBytes;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
             "cudaFuncSetAttribute(flash_fwd_wgmma_kernel, max dynamic shared memory)");
  const int64_t m_blocks = (static_cast<int64_t>(p.seqlen_q) + Tile::BM - 1) / Tile::BM;
  const dim3 grid(static_cast<unsigned>(m_blocks * p.num_head_groups), 1, p.batch);
  kernel<<<grid, Tile::kThreads, smem, stream>>>(p);
  check_cuda(cudaGetLastError(), "flash_fwd_wgmma_kernel launch");
}

// SQA_CUDA_FWD=wgmmatma (the default at D = 64 / 128): the ping-pong kernel with a TMA producer
// warpgroup (flash_fwd_wgmma.cuh, kWgmmaSchedTma), dense batches only (the tensor maps span
// (head_dim, heads, seqlen, batch)); the maps are encoded per call on the host (a few microseconds)
// and passed by value. kWarpGroups = 3 (SQA_CUDA_FWD=wgmmatma3, D = 64): three consumer
// warpgroups, 192-row tiles (the Q box has BM rows).
template <typename T, int D, int kWarpGroups = 2>
void launch_flash_fwd_wgmma_tma(const FwdKernelParams& p, cudaStream_t stream) {
  using Tile = WgmmaFwdTile<T, D, 128, kWarpGroups, kWgmmaSchedTma>;
  if (p.pack != 1 || p.num_splits != 1 || p.cu_seqlens_q != nullptr) {
    throw std::runtime_error(
        "flash_fwd_wgmma_tma_kernel takes dense prefill only (pack 1, num_splits 1, no "
        "cu_seqlens)");
  }
  constexpr bool kFp16 = std::is_same_v<T, __half>;
  CUtensorMap tm_q, tm_k, tm_v;
  encode_qdo_tensor_map(&tm_q, p.q, kFp16, D, p.num_query_heads, p.seqlen_q, p.batch, p.q_head,
                        p.q_row, p.q_batch, Tile::BM);
  encode_qdo_tensor_map(&tm_k, p.k, kFp16, D, p.num_kv_heads, p.seqlen_k, p.batch, p.k_head,
                        p.k_row, p.k_batch, 128);
  encode_qdo_tensor_map(&tm_v, p.v, kFp16, D, p.num_kv_heads, p.seqlen_k, p.batch, p.v_head,
                        p.v_row, p.v_batch, 128);
  auto* kernel = &flash_fwd_wgmma_tma_kernel<T, D, kWarpGroups>;
  constexpr int smem = Tile::kSmemBytes;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
             "cudaFuncSetAttribute(flash_fwd_wgmma_tma_kernel, max dynamic shared memory)");
  const int64_t m_blocks = (static_cast<int64_t>(p.seqlen_q) + Tile::BM - 1) / Tile::BM;
  const dim3 grid(static_cast<unsigned>(m_blocks * p.num_head_groups), 1, p.batch);
  kernel<<<grid, Tile::kCtaThreads, smem, stream>>>(p, tm_q, tm_k, tm_v);
  check_cuda(cudaGetLastError(), "flash_fwd_wgmma_tma_kernel launch");
}

// Prefill variants (SQA_CUDA_FWD selects one, for A/B timing in one process):
//   base: 2 m-tiles per warp, plain softmax, no register cap;
//   ilp:  as base with the tuned softmax (tree max, tensor-core row sums);
//   occ:  1 m-tile per warp, tuned softmax, register cap for 4 (D <= 32) or 3 (D = 64) CTAs per
//         SM: latency hiding by more resident warps;
//   sum2: pipe with 2 m-tiles per warp (two independent softmax chains per warp, 3 CTAs/SM) and
//         FlashAttention-4's lazy rescaling: the running max moves only when a block needs it,
//         tested on the block's row sums after the exponentials (see the kernel's key loop);
//   sum2occ: sum2 capped for 4 CTAs/SM (128 registers: some spills at D = 16, more at D = 32);
//   sum2occq: sum2occ with the Q fragments reloaded from shared memory every block (fewer
//         live registers under the 128-register cap);
//   pipe: as occ (D <= 32 only) with two-stage K/V buffers: one barrier per key block instead
//         of two, and the next block's loads overlap the whole current block (ptxas: 127 / 128
//         registers at D = 16 / 32, a 64-byte spill at 32).
//   wgmmapp: D = 64 and 128 only, the Hopper warpgroup-MMA kernel (flash_fwd_wgmma.cuh, 2
//         warpgroups, 128 x 128 tiles) with FlashAttention-3's inter-warpgroup ping-pong: named
//         barriers order the two warpgroups' wgmma issues so that one's softmax runs while the
//         tensor cores do the other's products; three K and V buffers instead of a CTA barrier
//         per key block. At other head dims it falls back to the default.
//   wgmma: the same kernel with both warpgroups in step (one __syncthreads per key block).
//   wgmmatma: wgmmapp with FlashAttention-3's warp specialisation: a producer warpgroup loads
//         Q, K and V by TMA, full / empty mbarriers per stage, setmaxnreg (the default at D = 64
//         and 128 since run 35). Dense batches; varlen takes wgmmapp.
//   wgmmatma3: D = 64 only (the default there on large grids since 2026-11-30, +7-21% at 32k;
//         FwdKernelParams::three_warpgroups): wgmmatma with three consumer warpgroups in a
//         round robin of turns, 192 x 128 tiles (FlashAttention-3's shape at D = 64), 512
//         threads, 160 registers per consumer thread. Dense batches; varlen and the other head
//         dims take the default.
// (128-key blocks with a looser register cap, "wide", ran at 55-65% of pipe: removed, run 6.)
// Tried on the H200 and removed (run 19, bench/results/2026-11-29-h200-wgmma-next/): wgmma
// kernels for D = 16 and 32 (3 warpgroups with 64- / 32-byte swizzles, row sums by a ones-tile
// wgmma, lazy rescaling; and a 2-warpgroup form with two P buffers) ran at 0.49-0.76x of the
// default sum2occq / sum2 (Nsight Compute at D = 32: tensor pipe 24%, XU (exponentials) 44%,
// issue slots 34%, 1 CTA per SM by registers); at D = 64 two P register buffers in the in-step
// schedule lost 4-10% to it.
// Defaults from the H200 A/B runs (docs/dev/cuda-notes.md): sum2occq at D = 16 and sum2 at D = 32
// (run 14: D = 16 200k 191-196 TF/s, 32k causal 167-188; D = 32 258-269), wgmmapp at D = 64 and
// 128 (run 19: 430-433 / 534-601 TF/s at 32k, 0.90-1.05x cuDNN; in-step wgmma 338-342 /
// 452-461), base at D = 256. The lazy
// test first ran on each block's max before the exponentials (lazy2 / lazy2occ, runs 10-11:
// +8-12% over pipe at D = 16, +15-20% at D = 32); on the row sums it drops the 60 max
// instructions per block and gained another 2-8% (run 13), so that form was removed. Also tried
// and removed: lazy rescaling with 1 m-tile per warp (+3-4% over pipe), pipe2 (+0-4%), pipe8
// (8 warps per CTA, -1-4%), pipe128 (128-key blocks, 0.4-0.5x), lazy4 (4 m-tiles, 2 CTAs/SM,
// -6-12%), poly1 / poly2 (1 or 2 of every 8 exponentials of an unmasked block on the FMA pipe
// by a cubic: -13-17% at D = 16 in run 14; the extra FMA/ALU issue costs more than the MUFU
// time it frees).
// Decode: 1-warp CTAs capped at 10 per SM (the shared-memory limit), so enough loads stay in
// flight to stream the cache.
template <typename T, int D>
void run_flash_fwd_typed(const FwdKernelParams& p, bool decode, cudaStream_t stream) {
  static_assert(fwd_block_m(D, true) == 16);
  constexpr int kMT = D <= 64 ? 2 : 1;
  constexpr int BN = fwd_block_n(D);
  if (decode) {
    launch_flash_fwd<T, D, 1, 1, BN, false, 10>(p, stream);
    return;
  }
  FwdVariant v = fwd_variant();
  if constexpr (D == 64 || D == 128) {
    // The default there: the ping-pong (run 19: +17-31% over the in-step schedule) fed by the
    // TMA producer warpgroup on dense batches (run 35: +8-11% at D = 128 except MHA without a
    // mask, -3% to +3%; a tie at D = 64), at D = 64 with three consumer warpgroups (192-row
    // tiles; session 11 call 6: +7-21% over two at 32k, 457-510 TF/s, 0.98-1.20x cuDNN) when
    // the grid is large enough (FwdKernelParams::three_warpgroups), the ping-pong with cp.async
    // on varlen batches.
    if (v == FwdVariant::automatic && D == 64 && p.three_warpgroups) v = FwdVariant::wgmmatma3;
    if (v == FwdVariant::wgmmatma3) {
      if constexpr (D == 64) {
        if (p.cu_seqlens_q == nullptr) {
          launch_flash_fwd_wgmma_tma<T, D, 3>(p, stream);
          return;
        }
      }
      v = FwdVariant::automatic;  // D = 128 or varlen: the default
    }
    if (v == FwdVariant::automatic) v = FwdVariant::wgmmatma;
    if (v == FwdVariant::wgmmapp) {
      launch_flash_fwd_wgmma<T, D, 128, 2, kWgmmaSchedPingPong>(p, stream);
      return;
    }
    if (v == FwdVariant::wgmma) {
      launch_flash_fwd_wgmma<T, D, 128, 2, kWgmmaSchedDefault>(p, stream);
      return;
    }
    if (v == FwdVariant::wgmmatma) {
      if (p.cu_seqlens_q == nullptr) {
        launch_flash_fwd_wgmma_tma<T, D>(p, stream);
      } else {
        launch_flash_fwd_wgmma<T, D, 128, 2, kWgmmaSchedPingPong>(p, stream);
      }
      return;
    }
  }
  if constexpr (D <= 64) {
    // wgmma / wgmmapp / wgmmatma / wgmmatma3 reach here only at D = 16 and 32, where they have no
    // kernel: the default.
    if (v == FwdVariant::automatic || v == FwdVariant::wgmma || v == FwdVariant::wgmmapp ||
        v == FwdVariant::wgmmatma || v == FwdVariant::wgmmatma3) {
      v = D == 16 ? FwdVariant::sum2occq : D == 32 ? FwdVariant::sum2 : FwdVariant::base;
    }
    if constexpr (D <= 32) {
      if (v == FwdVariant::pipe) {
        launch_flash_fwd<T, D, 1, 4, 64, true, 4, true>(p, stream);
        return;
      }
      if (v == FwdVariant::sum2) {
        launch_flash_fwd<T, D, 2, 4, 64, true, 3, true, true>(p, stream);
        return;
      }
      if (v == FwdVariant::sum2occq) {
        launch_flash_fwd<T, D, 2, 4, 64, true, 4, true, true, true>(p, stream);
        return;
      }
      if (v == FwdVariant::sum2occ) {
        launch_flash_fwd<T, D, 2, 4, 64, true, 4, true, true>(p, stream);
        return;
      }
    }
    if (v == FwdVariant::occ || v == FwdVariant::pipe) {
      launch_flash_fwd<T, D, 1, 4, BN, true, D <= 32 ? 4 : 3>(p, stream);
      return;
    }
    if (v == FwdVariant::ilp) {
      launch_flash_fwd<T, D, kMT, 4, BN, true>(p, stream);
      return;
    }
  }
  launch_flash_fwd<T, D, kMT, 4, BN>(p, stream);
}

template <int D>
void run_flash_fwd(const FwdKernelParams& p, bool fp16, bool decode, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (fp16) {
    run_flash_fwd_typed<__half, D>(p, decode, stream);
  } else {
    run_flash_fwd_typed<__nv_bfloat16, D>(p, decode, stream);
  }
}

}  // namespace sqa::cuda::detail
