// Attention entry points. One parameter struct carries every pointer, shape and stride into
// every backend (CPU reference, CPU fast path, CUDA), in the spirit of FlashAttention's
// Flash_fwd_params.
//
// Layouts (strides in elements, so views of a fused QKV buffer work):
//   dense:  q (B, N_q, H_q, d)   k, v (B, N_k, H_kv, d)   out (B, N_q, H_attn, d)
//           lse (B, H_attn, N_q) float32
//   varlen: q (total_q, H_q, d)  k, v (total_k, H_kv, d)  out (total_q, H_attn, d)
//           lse (H_attn, total_q) float32; sequence b spans rows
//           [cu_seqlens_q[b], cu_seqlens_q[b+1]) of q and likewise of k, v.
// H_attn = max(H_q, H_kv) (spec.heads.num_attention_heads()).
#pragma once

#include <cstdint>

#include "sqa/dtype.hpp"
#include "sqa/spec.hpp"

namespace sqa {

enum class Device { cpu, cuda };

// Which implementation serves a CUDA call. automatic: cuDNN's fused attention where it is faster
// and supports the layout (src/attention/cuda/cudnn_backend.cpp), this project's kernels
// elsewhere; the environment variable SQA_CUDA_BACKEND=own|cudnn|auto overrides automatic.
enum class CudaBackend { automatic, own, cudnn };

struct TensorStrides {
  int64_t batch = 0;  // ignored in varlen mode
  int64_t row = 0;    // token
  int64_t head = 0;   // the element stride inside a head is always 1
};

struct AttentionParams {
  AttentionSpec spec;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  void* stream = nullptr;  // cudaStream_t for Device::cuda

  int64_t batch = 0;
  int64_t seqlen_q = 0;                   // varlen: max_seqlen_q
  int64_t seqlen_k = 0;                   // varlen: max_seqlen_k
  const int32_t* cu_seqlens_q = nullptr;  // varlen when both are set; length batch + 1
  const int32_t* cu_seqlens_k = nullptr;

  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;  // optional in the forward (may be null), required by the backward

  TensorStrides q_strides, k_strides, v_strides, out_strides;
  CudaBackend cuda_backend = CudaBackend::automatic;  // the backward reads forward.cuda_backend

  bool is_varlen() const { return cu_seqlens_q != nullptr; }
  // Fills the strides for contiguous tensors in the layouts above.
  void set_contiguous_strides();
  // Throws sqa::Error naming the value and the rule for inconsistent shapes, null pointers or
  // an invalid spec.
  void validate() const;
};

struct AttentionBackwardParams {
  AttentionParams forward;  // q, k, v, out and lse of the forward (lse required)
  const void* dout = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  TensorStrides dout_strides, dq_strides, dk_strides, dv_strides;
  // CUDA: true runs the fixed-order scheme (separate dQ kernel, bit-identical from run to run);
  // false (default) runs FlashAttention's scheme, dQ summed in fp32 by atomics (head_dim 16 and
  // 32) or by the TMA unit's bulk reduce-adds (64 and 128), in any order (faster; dQ may differ
  // from run to run in the last bits). dK and dV are deterministic either way.
  bool deterministic = false;

  void set_contiguous_strides();
  void validate() const;
};

// Dispatch by params.device to the fastest backend for the layout.
void attention_forward(const AttentionParams& params);
void attention_backward(const AttentionBackwardParams& params);

namespace cpu {
// float64 oracle. dtype may be f64 (inputs and outputs in double) or f32/bf16 (inputs read,
// arithmetic in double, outputs rounded once).
void attention_forward_reference(const AttentionParams& params);
void attention_backward_reference(const AttentionBackwardParams& params);
// Fast path: tiled online softmax, SIMD (AVX-512 / AVX2 / portable by runtime dispatch),
// threads over (batch, head, query block). dtype f32 or bf16, fp32 accumulation.
void attention_forward(const AttentionParams& params);
void attention_backward(const AttentionBackwardParams& params);
// Which SIMD path the fast kernels use on this CPU: "avx512", "avx2" or "portable".
const char* simd_path();
}  // namespace cpu

namespace cuda {
bool available();  // compiled with CUDA and a device is present
void attention_forward(const AttentionParams& params);
void attention_backward(const AttentionBackwardParams& params);
// The implementation a call with these params runs on: "cudnn" or "own" (for benchmarks and
// tests; may build and cache the cuDNN plan to find out).
const char* chosen_backend(const AttentionParams& params, bool backward);
}  // namespace cuda

}  // namespace sqa
