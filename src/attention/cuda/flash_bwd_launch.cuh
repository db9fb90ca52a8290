// Launch templates for the backward kernels; each flash_bwd_hdim*.cu instantiates one head dim.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

#include "flash_bwd_kernel.cuh"
#include "flash_bwd_wgmma.cuh"
#include "flash_fwd.hpp"
#include "tma_host.hpp"

namespace sqa::cuda::detail {

template <typename Kernel>
void set_smem_limit(Kernel* kernel, int smem) {
  if (smem > 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
               "cudaFuncSetAttribute(backward kernel, max dynamic shared memory)");
  }
}

// One dK/dV kernel launch: grid (key blocks of bn keys x KV heads x head splits, batch).
template <typename Kernel>
void launch_dkdv(Kernel* kernel, int bn, int threads, int smem, const BwdKernelParams& g,
                 cudaStream_t stream) {
  const FwdKernelParams& p = g.fwd;
  set_smem_limit(kernel, smem);
  const int64_t n_blocks = (p.seqlen_k + bn - 1) / bn;
  const dim3 grid(static_cast<unsigned>(n_blocks * p.num_kv_heads * g.dkdv_splits), 1, p.batch);
  kernel<<<grid, threads, smem, stream>>>(g);
  check_cuda(cudaGetLastError(), "dK/dV kernel launch");
}

// The kernels of one backward, in order: dsum; dK/dV (with atomic dQ also adding dQ into the
// fp32 workspace); the split reduce (dK/dV head splits); then the dQ convert (atomic dQ) or the
// dQ kernel (deterministic).
// dK/dV kernel: the Hopper warpgroup-MMA one (flash_bwd_wgmma.cuh) at D = 64 and 128 unless
// SQA_CUDA_BWD names an mma.sync variant (bwd_dkdv_wgmma; H200: fwd+bwd 0.82-0.85x cuDNN at
// D = 64, 0.78-0.83x at D = 128, the mma.sync kernel 0.42-0.60x; see flash_bwd_wgmma.cuh), with
// dQ (kDq) or, deterministic, without; elsewhere flash_bwd_dkdv_kernel (mma.sync), whose tile
// keeps K and V fragments in registers up to D = 32 and takes 32 query rows per step at D = 128
// (register file); the dQ kernel takes 32 keys per step at D = 128 for the same reason.
// On dense batches with atomic dQ the wgmma kernel runs in its TMA-producer form (tensor maps
// built here per call; H200 run 32: 3-7% faster fwd+bwd, same errors vs FA2); SQA_CUDA_BWD=wgmma
// keeps the cp.async-only form everywhere. Varlen batches take it always, and so does the
// deterministic scheme unless SQA_CUDA_BWD=wgmmatma asks for its TMA form (kDq = false; not yet
// run on a GPU, so not the default until an H200 run shows it correct and faster). D = 32 (64-byte
// swizzled tiles; flash_bwd_wgmma.cuh) runs the wgmma kernel only when SQA_CUDA_BWD=wgmma or
// wgmmatma asks for it (bwd_dkdv_wgmma), always in the cp.async-only form (no TMA form there): not
// yet measured against the mma.sync default (occ).
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

  bool wgmma = false;
  if constexpr (D == 32 || D == 64 || D == 128) {
    wgmma = bwd_dkdv_wgmma(D);
    // The TMA producer form: dense batches only (the tensor maps cover (batch, seqlen) boxes;
    // varlen takes the cp.async-only kernel), D = 64 and 128 only. Atomic dQ: unless
    // SQA_CUDA_BWD=wgmma. Deterministic: at D = 64 unless SQA_CUDA_BWD=wgmma, at D = 128 only
    // when SQA_CUDA_BWD=wgmmatma names it (H200, session 11 call 1: fwd + deterministic bwd
    // +4.5-5.2% at D = 64, -0.8 to -1.4% at D = 128 against the cp.async-only kernel).
    bool tma = false;
    if constexpr (D != 32) {
      const BwdVariant variant = bwd_variant();
      const bool det_tma = D == 64 ? variant != BwdVariant::wgmma : variant == BwdVariant::wgmmatma;
      tma = wgmma && p.cu_seqlens_q == nullptr &&
            (atomic_dq ? variant != BwdVariant::wgmma : det_tma);
      if (tma) {
        using Wt = WgmmaBwdTile<T, D, true, true>;  // the box rows (BM) are the same without dQ
        constexpr bool kFp16 = std::is_same_v<T, __half>;
        CUtensorMap tm_q, tm_do;
        encode_qdo_tensor_map(&tm_q, p.q, kFp16, D, p.num_query_heads, p.seqlen_q, p.batch,
                              p.q_head, p.q_row, p.q_batch, Wt::BM);
        encode_qdo_tensor_map(&tm_do, g.dout, kFp16, D, p.num_attention_heads, p.seqlen_q, p.batch,
                              g.do_head, g.do_row, g.do_batch, Wt::BM);
        auto* kernel = atomic_dq ? &flash_bwd_dkdv_wgmma_tma_kernel<T, D, true>
                                 : &flash_bwd_dkdv_wgmma_tma_kernel<T, D, false>;
        const int smem = atomic_dq ? Wt::kSmemBytes : WgmmaBwdTile<T, D, false, true>::kSmemBytes;
        set_smem_limit(kernel, smem);
        const int64_t n_blocks = (p.seqlen_k + Wt::BN - 1) / Wt::BN;
        const dim3 grid(static_cast<unsigned>(n_blocks * p.num_kv_heads * g.dkdv_splits), 1,
                        p.batch);
        kernel<<<grid, Wt::kCtaThreads, smem, stream>>>(g, tm_q, tm_do);
        check_cuda(cudaGetLastError(), "dK/dV kernel launch (wgmmatma)");
      }
    }
    if (wgmma && !tma) {
      auto* dkdv = atomic_dq ? &flash_bwd_dkdv_wgmma_kernel<T, D, true>
                             : &flash_bwd_dkdv_wgmma_kernel<T, D, false>;
      using Wg = WgmmaBwdTile<T, D>;
      const int smem = atomic_dq ? Wg::kSmemBytes : WgmmaBwdTile<T, D, false>::kSmemBytes;
      launch_dkdv(dkdv, Wg::BN, Wg::kThreads, smem, g, stream);
    }
  }
  if (!wgmma) {
    constexpr int kBM = D <= 64 ? 64 : 32;
    constexpr bool kKVInRegs = D <= 32;
    // dK/dV register caps (CTAs per SM, SQA_CUDA_BWD): base 3 at D = 16 and none above; occ
    // (the default) 4 at D = 16 (128 registers, ~40 bytes of spills) and 3 at D = 32 (166
    // registers, no spills; uncapped the atomic kernel takes 240 and fits 2): +7-10% fwd+bwd at
    // 32k causal (run 15); occ2 5 at D = 16 (96 registers, ~80 bytes of spills) and 4 at D = 32
    // (128, ~56).
    const BwdVariant variant = bwd_variant();
    auto launch_mma = [&](auto atomic_tag) {
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
      launch_dkdv(dkdv, DkDv::BN, DkDv::kThreads, DkDv::kSmemBytes, g, stream);
    };
    if (atomic_dq) {
      launch_mma(std::true_type{});
    } else {
      launch_mma(std::false_type{});
    }
  }
  if (g.dkdv_splits > 1) {
    const int64_t threads =
        static_cast<int64_t>(p.batch) * p.num_kv_heads * p.seqlen_k * (2 * D / 8);
    flash_bwd_dkdv_reduce_kernel<T>
        <<<static_cast<unsigned>((threads + 255) / 256), 256, 0, stream>>>(g, D);
    check_cuda(cudaGetLastError(), "flash_bwd_dkdv_reduce_kernel launch");
  }

  if (atomic_dq) {
    if (g.dq_rows > 0) {
      const int64_t threads = g.dq_rows * (D / 8);
      flash_bwd_dq_convert_kernel<T>
          <<<static_cast<unsigned>((threads + 255) / 256), 256, 0, stream>>>(g, g.dq_rows, D);
      check_cuda(cudaGetLastError(), "flash_bwd_dq_convert_kernel launch");
    }
    return;
  }
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
