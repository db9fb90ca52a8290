// Launch templates for the backward kernels; each flash_bwd_hdim*.cu instantiates one head dim.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

#include "flash_bwd_kernel.cuh"
#include "flash_bwd_wgmma.cuh"
#include "flash_fwd.hpp"

namespace sqa::cuda::detail {

template <typename Kernel>
void set_smem_limit(Kernel* kernel, int smem) {
  if (smem > 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
               "cudaFuncSetAttribute(backward kernel, max dynamic shared memory)");
  }
}

// Tile shapes: dK/dV keeps K and V fragments in registers up to D = 32 and takes 32 query rows
// per step at D = 128 (register file); dQ takes 32 keys per step at D = 128 for the same reason.
template <typename T, int D>
void run_flash_bwd_typed(const BwdKernelParams& g, cudaStream_t stream) {
  const FwdKernelParams& p = g.fwd;
  const bool atomic_dq = !g.deterministic;
  if (atomic_dq && g.dq_rows > 0) {
    check_cuda(
        cudaMemsetAsync(g.dq_accum, 0, static_cast<size_t>(g.dq_rows) * D * sizeof(float), stream),
        "cudaMemsetAsync(dQ workspace)");
  }
  if (g.lse_rows > 0) {  // a varlen batch of empty query sequences has no rows at all
    const int64_t threads = g.lse_rows * (D / 8);
    flash_bwd_dsum_kernel<T, D>
        <<<static_cast<unsigned>((threads + 255) / 256), 256, 0, stream>>>(g);
    check_cuda(cudaGetLastError(), "flash_bwd_dsum_kernel launch");
  }

  constexpr int kBM = D <= 64 ? 64 : 32;
  constexpr bool kKVInRegs = D <= 32;
  // dK/dV register caps (CTAs per SM, SQA_CUDA_BWD): base 3 at D = 16 and none above; occ (the
  // default) 4 at D = 16 (128 registers, ~40 bytes of spills) and 3 at D = 32 (166 registers,
  // no spills; uncapped the atomic kernel takes 240 and fits 2): +7-10% fwd+bwd at 32k causal
  // (run 15); occ2 5 at D = 16 (96 registers, ~80 bytes of spills) and 4 at D = 32 (128, ~56).
  const BwdVariant variant = bwd_variant();
  auto launch_dkdv = [&](auto atomic_tag) {
    constexpr bool kAtomic = decltype(atomic_tag)::value;
    using DkDv = BwdDkDvTile<T, D, kBM, 4, kKVInRegs, kAtomic>;
    constexpr int kBaseBlocks = D <= 16 ? 3 : 1;
    constexpr int kOccBlocks = D <= 16 ? 4 : D <= 32 ? 3 : 1;
    constexpr int kOcc2Blocks = D <= 16 ? 5 : D <= 32 ? 4 : 1;
    auto* dkdv = variant == BwdVariant::base
                     ? &flash_bwd_dkdv_kernel<T, D, kBM, 4, kKVInRegs, kAtomic, kBaseBlocks>
                 : variant == BwdVariant::occ2
                     ? &flash_bwd_dkdv_kernel<T, D, kBM, 4, kKVInRegs, kAtomic, kOcc2Blocks>
                     : &flash_bwd_dkdv_kernel<T, D, kBM, 4, kKVInRegs, kAtomic, kOccBlocks>;
    set_smem_limit(dkdv, DkDv::kSmemBytes);
    const int64_t n_blocks = (p.seqlen_k + DkDv::BN - 1) / DkDv::BN;
    const dim3 grid_kv(static_cast<unsigned>(n_blocks * p.num_kv_heads * g.dkdv_splits), 1,
                       p.batch);
    dkdv<<<grid_kv, DkDv::kThreads, DkDv::kSmemBytes, stream>>>(g);
    check_cuda(cudaGetLastError(), "flash_bwd_dkdv_kernel launch");
    if (g.dkdv_splits > 1) {
      const int64_t threads =
          static_cast<int64_t>(p.batch) * p.num_kv_heads * p.seqlen_k * (2 * D / 8);
      flash_bwd_dkdv_reduce_kernel<T>
          <<<static_cast<unsigned>((threads + 255) / 256), 256, 0, stream>>>(g, D);
      check_cuda(cudaGetLastError(), "flash_bwd_dkdv_reduce_kernel launch");
    }
  };
  // The Hopper warpgroup-MMA dK/dV kernel (flash_bwd_wgmma.cuh): the default at D = 64 and 128
  // with atomic dQ (SQA_CUDA_BWD unset or wgmma; H200, 2026-11-29: fwd+bwd 0.75-0.80x cuDNN
  // against 0.42-0.60x with the mma.sync kernel, bench/results/2026-11-29-h200-bwd-wgmma/), and
  // its variants wgmmak / wgmma2 / wgmmab. Other head dims, deterministic mode and
  // SQA_CUDA_BWD=base / occ / occ2 take the mma.sync kernels below.
  if constexpr (D == 64 || D == 128) {
    if (atomic_dq && (variant == BwdVariant::automatic || variant == BwdVariant::wgmma ||
                      variant == BwdVariant::wgmmak || variant == BwdVariant::wgmma2 ||
                      variant == BwdVariant::wgmmab)) {
      using Wg = WgmmaBwdTile<T, D>;
      // wgmmak: dQ split over the keys (D = 64; at D = 128 the same kernel as wgmma). wgmma2: dQ
      // through a shared tile and bulk reduce-adds (kDqBulk; more shared memory) and dV issued
      // before the wait for dP^T (kDvEarly: all 4 k-steps at D = 64, 3 at D = 128, where 4 spill);
      // wgmmab: kDqBulk alone.
      const bool bulk = variant == BwdVariant::wgmma2 || variant == BwdVariant::wgmmab;
      constexpr int kDvEarly = D == 64 ? 4 : 3;
      auto* dkdv =
          variant == BwdVariant::wgmma2 ? &flash_bwd_dkdv_wgmma_kernel<T, D, false, true, kDvEarly>
          : variant == BwdVariant::wgmmab ? &flash_bwd_dkdv_wgmma_kernel<T, D, false, true>
          : D == 64 && variant == BwdVariant::wgmmak ? &flash_bwd_dkdv_wgmma_kernel<T, D, D == 64>
                                                     : &flash_bwd_dkdv_wgmma_kernel<T, D, false>;
      const int smem_bytes = bulk ? WgmmaBwdTile<T, D, true>::kSmemBytes : Wg::kSmemBytes;
      check_cuda(
          cudaFuncSetAttribute(dkdv, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes),
          "cudaFuncSetAttribute(flash_bwd_dkdv_wgmma_kernel, max dynamic shared memory)");
      const int64_t n_blocks = (p.seqlen_k + Wg::BN - 1) / Wg::BN;
      const dim3 grid_kv(static_cast<unsigned>(n_blocks * p.num_kv_heads * g.dkdv_splits), 1,
                         p.batch);
      dkdv<<<grid_kv, Wg::kThreads, smem_bytes, stream>>>(g);
      check_cuda(cudaGetLastError(), "flash_bwd_dkdv_wgmma_kernel launch");
      if (g.dkdv_splits > 1) {
        const int64_t threads =
            static_cast<int64_t>(p.batch) * p.num_kv_heads * p.seqlen_k * (2 * D / 8);
        flash_bwd_dkdv_reduce_kernel<T>
            <<<static_cast<unsigned>((threads + 255) / 256), 256, 0, stream>>>(g, D);
        check_cuda(cudaGetLastError(), "flash_bwd_dkdv_reduce_kernel launch");
      }
      if (g.dq_rows > 0) {
        const int64_t threads = g.dq_rows * (D / 8);
        flash_bwd_dq_convert_kernel<T>
            <<<static_cast<unsigned>((threads + 255) / 256), 256, 0, stream>>>(g, g.dq_rows, D);
        check_cuda(cudaGetLastError(), "flash_bwd_dq_convert_kernel launch");
      }
      return;
    }
  }
  if (atomic_dq) {
    launch_dkdv(std::true_type{});
    if (g.dq_rows > 0) {
      const int64_t threads = g.dq_rows * (D / 8);
      flash_bwd_dq_convert_kernel<T>
          <<<static_cast<unsigned>((threads + 255) / 256), 256, 0, stream>>>(g, g.dq_rows, D);
      check_cuda(cudaGetLastError(), "flash_bwd_dq_convert_kernel launch");
    }
    return;
  }
  launch_dkdv(std::false_type{});

  constexpr int kBN = D <= 64 ? 64 : 32;
  using Dq = BwdDqTile<T, D, kBN, 4>;
  auto* dq = &flash_bwd_dq_kernel<T, D, kBN, 4>;
  set_smem_limit(dq, Dq::kSmemBytes);
  const int64_t m_blocks = (p.seqlen_q + Dq::BM - 1) / Dq::BM;
  const dim3 grid_q(static_cast<unsigned>(m_blocks * p.num_query_heads), 1, p.batch);
  dq<<<grid_q, Dq::kThreads, Dq::kSmemBytes, stream>>>(g);
  check_cuda(cudaGetLastError(), "flash_bwd_dq_kernel launch");
}

template <int D>
void run_flash_bwd(const BwdKernelParams& g, bool fp16, void* stream) {
  if (fp16) {
    run_flash_bwd_typed<__half, D>(g, static_cast<cudaStream_t>(stream));
  } else {
    run_flash_bwd_typed<__nv_bfloat16, D>(g, static_cast<cudaStream_t>(stream));
  }
}

}  // namespace sqa::cuda::detail
