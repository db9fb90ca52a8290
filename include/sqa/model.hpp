// The SQA-family transformer (paper.md, "The paper's model"): configuration, parameter layout,
// and the CPU model with forward, backward and KV-cache decoding.
//
// Default architecture (exactly the reference code): pre-norm RMSNorm blocks, RoPE on q and k,
// Q/K/V without bias, W_o with bias, SwiGLU FFN with biases and dropout on its output, no final
// norm, untied LM head with bias. Options: final norm, tied embeddings, GELU MLP, head layout
// and sliding window per layer, encoder (bidirectional) or decoder (causal), MoE FFN.
//
// Parameters live in one flat buffer with named views (llm.c style); the names are the
// safetensors tensor names (PyTorch layout: a Linear weight is (out_features, in_features)):
//   embed.weight                               (vocab, d_model)
//   layers.{i}.attn_norm.weight                (d_model)
//   layers.{i}.attn.q_proj.weight              (H_q * d_head, d_model)
//   layers.{i}.attn.k_proj.weight              (H_kv * d_head, d_model)
//   layers.{i}.attn.v_proj.weight              (H_kv * d_head, d_model)
//   layers.{i}.attn.o_proj.weight / .bias      (d_model, max(H_q, H_kv) * d_head) / (d_model)
//   layers.{i}.ffn_norm.weight                 (d_model)
//   dense:  layers.{i}.ffn.fc1.weight / .bias  (2 ff, d_model) swiglu [value; gate], (ff, d) gelu
//           layers.{i}.ffn.fc2.weight / .bias  (d_model, ff)
//   MoE:    layers.{i}.ffn.router.weight       (num_experts, d_model)
//           layers.{i}.ffn.experts.{e}.fc1.weight / .bias, .fc2.weight / .bias  (as dense)
//   final_norm.weight                          (d_model)          only with final_norm
//   lm_head.weight                             (vocab, d_model)   absent when tied
//   lm_head.bias                               (vocab)            only with lm_head_bias
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sqa/spec.hpp"

namespace sqa {

enum class Activation { swiglu, gelu };
enum class AuxLoss { none, paper, switch_ };  // MoE load-balancing loss (see model.cpp)
enum class Init { pytorch, normal };

// One layer's attention: head layout and sliding window (0 = full attention).
struct LayerConfig {
  HeadLayout heads;
  int sliding_window = 0;
};

struct ModelConfig {
  bool causal = true;  // "architecture": "decoder" (causal) or "encoder" (bidirectional)
  int vocab_size = 0;
  int d_model = 0;                  // hidden_size
  int num_layers = 0;               // num_hidden_layers
  int num_baseline_heads = 0;       // num_attention_heads: H of the comparable MHA
  int head_dim = 0;                 // d_head; default d_model / H
  int ff_dim = 0;                   // intermediate_size (dense FFN)
  int max_seq_len = 0;              // max_position_embeddings
  std::vector<LayerConfig> layers;  // one per layer
  Activation activation = Activation::swiglu;
  double rope_theta = 10000.0;
  double norm_eps = 1e-6;
  double ffn_dropout = 0.1;
  bool final_norm = false;
  bool tie_word_embeddings = false;
  bool lm_head_bias = true;
  // MoE FFN (num_experts > 0): router linear without bias, softmax, top-k, renormalise.
  int num_experts = 0;
  int top_k = 2;          // num_experts_per_tok
  int expert_ff_dim = 0;  // moe_intermediate_size
  AuxLoss aux_loss = AuxLoss::paper;
  double aux_loss_coef = 0.01;
  Init init = Init::pytorch;
  double init_std = 0.02;  // initializer_range, for Init::normal
  std::string name;        // free text, e.g. "dense-sqa"

  bool is_moe() const { return num_experts > 0; }
  // Throws sqa::Error naming the field, the value and the rule.
  void validate() const;
  AttentionSpec attention_spec(int layer) const;
};

// HF-style config.json. Unknown keys are errors (they are usually typos). Keys:
//   architecture ("decoder"|"encoder"), vocab_size, hidden_size, num_hidden_layers,
//   num_attention_heads, head_dim, attention_variant (preset name) or num_query_heads +
//   num_key_value_heads, sliding_window, layer_types (array of per-layer overrides with the
//   same three keys), intermediate_size, hidden_act ("swiglu"|"gelu"), max_position_embeddings,
//   rope_theta, rms_norm_eps, ffn_dropout, final_norm, tie_word_embeddings, lm_head_bias,
//   num_experts, num_experts_per_tok, moe_intermediate_size, router_aux_loss
//   ("paper"|"switch"|"none"), router_aux_loss_coef, initializer ("pytorch"|"normal"),
//   initializer_range, name, model_type ("sqa").
ModelConfig parse_config(const std::string& json_text, const std::string& origin = "config");
ModelConfig load_config(const std::string& path);
std::string config_to_json(const ModelConfig& config);

// Named view into the flat parameter buffer.
struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // in elements
  int64_t numel() const;
};
std::vector<ParamSpec> parameter_specs(const ModelConfig& config);
int64_t count_parameters(const ModelConfig& config);
// Parameters touched per token (MoE: top_k of num_experts experts), for FLOP/MFU counts.
int64_t count_active_parameters(const ModelConfig& config);
// Model FLOPs of one training step over `batch` sequences of `seqlen` tokens: 6 * active
// non-embedding params * tokens (forward 2, backward 4) + attention core forward and backward
// from spec.hpp. The embedding lookup is not a matmul and is left out.
double training_flops(const ModelConfig& config, int64_t batch, int64_t seqlen);
double forward_flops(const ModelConfig& config, int64_t batch, int64_t seqlen);

// Checks a batch of token ids (batch, seqlen) before a forward: batch and seqlen >= 1, seqlen
// within max_position_embeddings, every token and target id (targets may be null) inside the
// vocabulary. Throws sqa::Error naming the value, its position and the rule.
void validate_batch(const ModelConfig& config, const int32_t* tokens, const int32_t* targets,
                    int64_t batch, int64_t seqlen);

struct LossStats {
  double loss = 0;      // mean cross-entropy over counted tokens
  double aux_loss = 0;  // MoE aux loss (summed over layers)
  double tokens = 0;    // counted (mask-weighted) tokens
  double correct = 0;   // next-token top-1 hits among counted tokens
};

// The CPU model in precision Real (float for training, double for gradient checks).
template <typename Real>
class Model {
 public:
  explicit Model(const ModelConfig& config);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return config_; }
  const std::vector<ParamSpec>& params() const { return params_; }
  std::vector<Real>& weights() { return weights_; }
  const std::vector<Real>& weights() const { return weights_; }
  std::vector<Real>& grads() { return grads_; }
  const ParamSpec& param(const std::string& name) const;
  Real* weight(const std::string& name);

  // PyTorch default init (Embedding N(0,1), Linear U(+-1/sqrt(fan_in)), norms 1) or N(0, std).
  void init_weights(uint64_t seed);
  void zero_grad();

  // Forward over tokens (batch, seqlen). With targets, computes the loss; `loss_mask`
  // (batch*seqlen weights, null = all 1) selects counted positions. `training` enables dropout,
  // whose masks are a pure function of dropout_seed (no hidden RNG state). `loss_scale` scales
  // the gradient that backward() will accumulate (e.g. 1/accumulation steps).
  LossStats forward(const int32_t* tokens, const int32_t* targets, const float* loss_mask,
                    int64_t batch, int64_t seqlen, bool training, uint64_t dropout_seed = 0,
                    double loss_scale = 1.0);
  // Accumulates d(loss_scale * (loss + aux_loss)) / d(weights) into grads(). Needs a forward
  // with targets and training = true (for gradients without dropout, set ffn_dropout to 0).
  void backward();
  // Logits of the last forward, (batch*seqlen, vocab).
  const Real* logits() const;

  // Bit-reproducible backward (default on): exact resume needs it. Off lets the CPU attention
  // backward use every thread, at the price of run-to-run differences in the last bits.
  void set_deterministic(bool on) { deterministic_ = on; }
  bool deterministic() const { return deterministic_; }

  // KV-cache decoding: start a sequence, then feed tokens; returns the logits of the last
  // token fed (vocab). Positions continue from the cache length.
  void decode_reset(int64_t max_len);
  const Real* decode_step(const int32_t* tokens, int64_t count);

 private:
  struct State;
  ModelConfig config_;
  std::vector<ParamSpec> params_;
  std::vector<Real> weights_, grads_;
  std::unique_ptr<State> state_;
  bool deterministic_ = true;
};

extern template class Model<float>;
extern template class Model<double>;

}  // namespace sqa
