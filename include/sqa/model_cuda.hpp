// The SQA-family transformer on one CUDA GPU: bf16 activations and matmuls (cuBLAS, fp32
// accumulation), fp32 master weights, fp32 gradients and the AdamW state on the device, the
// project's CUDA attention kernels (include/sqa/attention.hpp).
//
// Same parameter layout as the CPU model (model.hpp): one flat fp32 buffer whose offsets come
// from parameter_specs(), so weights, gradients and AdamW moments move between the two as plain
// arrays and a checkpoint written from either device loads on the other.
//
// Same numerics contract as Model<float>::forward/backward: dropout masks from the same
// counter-based hash (nn::dropout_keep) at the same flat indices, so a GPU training step and a
// CPU one see identical masks; loss masks, loss_scale and gradient accumulation as on the CPU.
// Differences: activations and matmul inputs are bf16 (expect ~1e-2 relative differences), the
// embedding gradient is summed with atomics (not bit-reproducible from run to run).
//
// MoE FFN as the CPU's: router softmax, top-k, renormalised gate weights, both aux losses (in
// LossStats::aux_loss; their gradient scaled by loss_scale as on the CPU). Routing and the
// counting sort of tokens by expert run on the device; each MoE layer's forward syncs with the
// host once to read the expert row counts (cuBLAS takes shapes from the host). Routing can
// differ from the CPU's where two experts' probabilities are within bf16 rounding.
// Without a CUDA build (SQA_CUDA=OFF) the constructor throws sqa::Error saying so.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "sqa/model.hpp"

namespace sqa {

// The H200 SXM dense bf16 tensor-core peak (NVIDIA datasheet, no sparsity), the MFU
// denominator of the GPU progress line and `sqa bench model`.
inline constexpr double kH200Bf16PeakFlops = 989.4e12;

struct CudaAdamW {
  double lr = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
  double grad_clip = 1.0;  // max global L2 norm; <= 0 disables
};

class CudaModel {
 public:
  // True when this build has CUDA and a device is present.
  static bool available();

  explicit CudaModel(const ModelConfig& config);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  const ModelConfig& config() const { return config_; }
  const std::vector<ParamSpec>& params() const { return params_; }
  int64_t num_params() const { return num_params_; }

  // Host <-> device copies of the flat fp32 buffers (num_params() floats each).
  void set_weights(const float* host);
  void get_weights(float* host) const;
  void get_grads(float* host) const;
  void set_optimizer_state(const float* exp_avg, const float* exp_avg_sq, int64_t steps);
  void get_optimizer_state(float* exp_avg, float* exp_avg_sq) const;
  int64_t optimizer_steps() const;

  void zero_grad();
  // As Model<float>::forward: tokens/targets/loss_mask are host arrays of batch*seqlen.
  LossStats forward(const int32_t* tokens, const int32_t* targets, const float* loss_mask,
                    int64_t batch, int64_t seqlen, bool training, uint64_t dropout_seed = 0,
                    double loss_scale = 1.0);
  // Accumulates d(loss_scale * (loss + aux_loss))/d(weights) into the device gradients.
  void backward();
  // Logits of the last forward as fp32 on the host, (batch*seqlen, vocab).
  std::vector<float> logits() const;
  // Clips the gradients to grad_clip (global L2 norm), then one AdamW step on the master
  // weights (torch.optim.AdamW semantics, as sqa::AdamW). Returns the norm before clipping.
  double optimizer_step(const CudaAdamW& settings);
  // Waits for the device (for timing).
  void synchronize() const;

  // KV-cache decoding, as Model<float>::decode_reset / decode_step, for `batch` sequences fed
  // in lockstep; eval mode (no dropout, no gradients). The cache holds every layer's K (after
  // RoPE) and V in bf16, (batch, max_len, H_kv, d_head) each, so the attention reads it as
  // strided K and V with its bottom-right aligned mask: N_q new queries over N_k cached keys,
  // sliding windows included, the split-KV path when N_q is small.
  // All sequences have the same length (no per-sequence lengths: one prompt length per batch).
  // decode_reset starts `batch` empty sequences of at most max_len tokens each (1 <= max_len <=
  // max_position_embeddings) for a decoder (causal) config; the cache grows to fit and keeps
  // its memory.
  void decode_reset(int64_t batch, int64_t max_len);
  // Feeds `count` tokens per sequence (host array (batch, count), row-major) at positions
  // [decode_length(), decode_length() + count): count > 1 is a prefill (a whole prompt in one
  // pass), count = 1 a step. Returns each sequence's logits at its last fed token, a host array
  // (batch, vocab) in fp32 (LM-head bias included) that stays valid until the next call.
  // Throws sqa::Error naming the value and the rule for a call before decode_reset, a count
  // that would pass max_len, or a token id outside the vocabulary.
  const float* decode_step(const int32_t* tokens, int64_t count);
  // Tokens fed per sequence since decode_reset (the cache length).
  int64_t decode_length() const;

 private:
  struct State;
  ModelConfig config_;
  std::vector<ParamSpec> params_;
  int64_t num_params_ = 0;
  std::unique_ptr<State> state_;
};

}  // namespace sqa
