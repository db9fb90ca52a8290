// Host-side interface between the CUDA backend's entry points (api.cpp, plain C++) and the
// kernels (one .cu per head dim, so builds stay parallel and incremental).
#pragma once

#include "flash_params.hpp"

namespace sqa::cuda::detail {

// Tile shapes, shared by the launcher (templates) and the host heuristics (split-KV).
//   prefill: 4 warps; 2 m16 tiles per warp up to D = 64, 1 above; BN = 64 (32 at D = 256)
//   decode:  1 warp, one m16 tile, for a handful of query rows against a long cache
constexpr int fwd_block_n(int head_dim) {
  return head_dim <= 128 ? 64 : 32;
}
// Rows of the decode tile (the prefill tile depends on the variant; see the launcher).
constexpr int fwd_block_m(int head_dim, bool decode) {
  return decode ? 16 : 16 * 4 * (head_dim <= 64 ? 2 : 1);
}
constexpr int kMaxSplits = 32;  // the combine kernel gives each split one lane

// Launches the forward (and the split-KV combine when p.num_splits > 1) on `stream`
// (a cudaStream_t). Throws std::runtime_error naming the CUDA call that failed.
using FwdLauncher = void (*)(const FwdKernelParams& p, bool fp16, bool decode, void* stream);
void run_flash_fwd_hdim16(const FwdKernelParams& p, bool fp16, bool decode, void* stream);
void run_flash_fwd_hdim32(const FwdKernelParams& p, bool fp16, bool decode, void* stream);
void run_flash_fwd_hdim64(const FwdKernelParams& p, bool fp16, bool decode, void* stream);
void run_flash_fwd_hdim128(const FwdKernelParams& p, bool fp16, bool decode, void* stream);
void run_flash_fwd_hdim256(const FwdKernelParams& p, bool fp16, bool decode, void* stream);

// Backward (dsum, dK/dV, dQ kernels) on `stream`; head dims 16, 32, 64, 128.
using BwdLauncher = void (*)(const BwdKernelParams& g, bool fp16, void* stream);
void run_flash_bwd_hdim16(const BwdKernelParams& g, bool fp16, void* stream);
void run_flash_bwd_hdim32(const BwdKernelParams& g, bool fp16, void* stream);
void run_flash_bwd_hdim64(const BwdKernelParams& g, bool fp16, void* stream);
void run_flash_bwd_hdim128(const BwdKernelParams& g, bool fp16, void* stream);

// Prefill kernel variant, from the environment SQA_CUDA_FWD (base, ilp, occ, pipe, sum2,
// sum2occ, sum2occq, wgmma, wgmmapp, wgmmatma or wgmmatma3; unset: the default per head dim).
// See flash_fwd_launch.cuh.
enum class FwdVariant {
  automatic,
  base,
  ilp,
  occ,
  pipe,
  sum2,
  sum2occ,
  sum2occq,
  wgmma,
  wgmmapp,
  wgmmatma,
  wgmmatma3
};
FwdVariant fwd_variant();

// Backward dK/dV kernel variant, from the environment SQA_CUDA_BWD (base, occ, occ2, wgmma or
// wgmmatma; unset: the default, the Hopper warpgroup-MMA dK/dV kernel (flash_bwd_wgmma.cuh) at
// D = 64 and 128, occ elsewhere). The default and wgmmatma run it in its TMA-producer form on
// dense batches in the atomic-dQ scheme and in its cp.async-only form otherwise (varlen, the
// deterministic scheme: dK / dV only, then the dQ kernel); wgmma runs the cp.async-only form
// everywhere (A/B). base / occ / occ2: register caps of the mma.sync kernel. At D = 32 wgmma and
// wgmmatma run the wgmma kernel in its cp.async-only form (64-byte swizzled tiles; unset: occ).
// At D = 16 they give the default. See flash_bwd_launch.cuh.
enum class BwdVariant { automatic, base, occ, occ2, wgmma, wgmmatma };
BwdVariant bwd_variant();
// Whether the backward at this head dim runs the wgmma dK/dV kernel (D = 64 or 128 and
// SQA_CUDA_BWD unset, wgmma or wgmmatma; D = 32 and SQA_CUDA_BWD wgmma or wgmmatma: same grid
// and tile); the launcher and the head-split heuristic (api.cpp) agree on it.
bool bwd_dkdv_wgmma(int head_dim);

// Throws std::runtime_error("<what>: <CUDA error string>") unless status is cudaSuccess (0).
void check_cuda(int status, const char* what);

}  // namespace sqa::cuda::detail
