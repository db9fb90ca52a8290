// Training in fp32 on the CPU, or on the GPU through CudaModel (model_cuda.hpp): AdamW, gradient
// clipping, the paper's learning-rate schedules, gradient accumulation, evaluation, and
// checkpoints with exact resume (exact on the CPU; the GPU's bf16 step is not bit-reproducible).
//
// Determinism: dropout masks are a pure function of (seed, step, micro-batch, layer), an
// encoder's masked-LM masks of (seed, step, micro-batch, position) (MlmConfig below), the data
// order is the BatchLoader's (seed, epoch) permutation, and every reduction runs in a fixed
// order, so a run killed and resumed from a checkpoint continues bit-identically (same thread
// count).
//
// Checkpoint folder (every file written atomically: temporary file, fsync, rename):
//   checkpoint.safetensors  the resume state in ONE file, so it can never be half-written:
//                           model tensors under their names (model.hpp), AdamW moments as
//                           "optimizer.exp_avg.<name>" / "optimizer.exp_avg_sq.<name>", and
//                           metadata "config" (config.json), "trainer_state" (JSON: step, seed,
//                           optimiser and schedule settings, data loader state).
//   model.safetensors       model tensors only: loads into a PyTorch module with the same names
//   config.json             the model config
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sqa/attention.hpp"
#include "sqa/data.hpp"
#include "sqa/model.hpp"
#include "sqa/model_cuda.hpp"

namespace sqa {

struct OptimizerConfig {
  double lr = 5e-4;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // PyTorch AdamW defaults
  double weight_decay = 0.01;                     // on all parameters, as the paper
  double grad_clip = 1.0;                         // max global L2 norm; <= 0 disables
};

// AdamW (decoupled weight decay, bias-corrected moments), as torch.optim.AdamW:
//   w -= lr * wd * w;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
class AdamW {
 public:
  explicit AdamW(int64_t num_params = 0)
      : m_(static_cast<size_t>(num_params), 0.0f), v_(m_.size(), 0.0f) {}
  void step(float* weights, const float* grads, double lr, const OptimizerConfig& config);
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }
  std::vector<float>& exp_avg() { return m_; }
  std::vector<float>& exp_avg_sq() { return v_; }
  const std::vector<float>& exp_avg() const { return m_; }
  const std::vector<float>& exp_avg_sq() const { return v_; }

 private:
  std::vector<float> m_, v_;
  int64_t t_ = 0;
};

// Global L2 norm of grads (fixed summation order); when > max_norm > 0, scales grads by
// max_norm / norm. Returns the norm before clipping.
double clip_grad_norm(float* grads, int64_t n, double max_norm);

enum class Schedule {
  warmup_cosine,  // paper dense: linear warm-up over warmup_fraction of the steps, cosine to 0
  cosine,         // paper MoE: cosine from lr to 0, no warm-up
  constant,
};
Schedule parse_schedule(const std::string& name);  // "warmup-cosine" | "cosine" | "constant"
const char* schedule_name(Schedule s);
// Learning rate for optimizer step `step` (0-based) of `total_steps`.
double learning_rate(Schedule schedule, double base_lr, int64_t step, int64_t total_steps,
                     double warmup_fraction);

// Masked-language-model objective (BERT, Devlin et al. 2019), how an encoder trains: a share
// `probability` of the non-pad positions is chosen; a chosen input becomes the mask token (80%),
// a random token (10%) or stays as it is (10%); the model predicts the original token there
// (targets are not shifted) and loss and accuracy count the chosen positions only.
//
// Determinism: every decision is a pure function of (seed, position), a counter-based hash as
// for dropout, and a training step's seed is a pure function of (run seed, step, micro-batch),
// so the masks need no RNG state and no checkpoint entry, and a resumed run continues
// bit-identically.
struct MlmConfig {
  double probability = 0.15;  // share of the non-pad positions chosen; in (0, 1)
  int32_t mask_id = -1;       // the "<mask>" token; required
  int32_t pad_id = -1;        // positions holding it are never chosen; -1: none
  int32_t vocab_size = 0;     // random replacements from [0, vocab_size); 0: the data's
  uint64_t eval_seed = 0;     // evaluation masks: fixed, the same in every evaluation
  // Throws sqa::Error naming the field, the value and the rule (vocab_size must be set).
  void validate() const;
};

// What happens to one position.
enum class MlmChoice : uint8_t { none, mask, random, keep };
// The choice at `position` (a pure function of its arguments); with it, for MlmChoice::random,
// the replacement token in [0, vocab_size).
MlmChoice mlm_choice(uint64_t seed, uint64_t position, double probability, int32_t vocab_size = 1,
                     int32_t* random_token = nullptr);
// The masking seed of micro-batch `micro` of optimizer step `step` (independent of the dropout
// masks of that step).
uint64_t mlm_seed(uint64_t run_seed, int64_t step, int micro);
// Rewrites a batch in BatchLoader's next-token layout into a masked-LM batch, in place: the
// original inputs become the targets, loss_mask is 1 at the chosen positions and 0 elsewhere,
// and chosen inputs are replaced. Row r, column t is position first_position + r * context + t,
// so evaluation masks depend on the window, not on how windows are grouped into batches.
void apply_mlm(Batch& batch, const MlmConfig& mlm, uint64_t seed, uint64_t first_position = 0);

struct TrainConfig {
  int64_t steps = 100;  // optimizer steps
  int grad_accum = 1;   // micro-batches per optimizer step
  OptimizerConfig optim;
  Schedule schedule = Schedule::warmup_cosine;
  double warmup_fraction = 0.25;
  uint64_t seed = 1234;
  // cuda: weights, gradients and AdamW state live on the GPU (CudaModel, bf16 compute); the
  // host model and optimiser are synchronised for checkpoints. Same checkpoint format.
  Device device = Device::cpu;
  // The objective follows the model: next-token prediction for a decoder, masked-LM (these
  // settings) for an encoder.
  MlmConfig mlm;
};

struct StepResult {
  int64_t step = 0;  // optimizer steps done after this one
  double loss = 0;   // mean over the micro-batches of their mean cross-entropy
  double aux_loss = 0;
  double grad_norm = 0;  // before clipping
  double lr = 0;
  double tokens = 0;  // tokens processed (all positions, batch * context * grad_accum)
  double seconds = 0;
};

struct EvalResult {
  double loss = 0;        // mean cross-entropy per counted token
  double perplexity = 0;  // exp(loss)
  double accuracy = 0;    // top-1 over counted tokens (next token, or masked-LM chosen ones)
  double tokens = 0;      // counted tokens
  double tokens_per_second = 0;
  int64_t batches = 0;
};

// Evaluates `model` on up to max_batches (<= 0: all) of loader's eval batches, no dropout.
// An encoder needs `mlm`: the masked-LM loss over the chosen positions, masks from
// mlm->eval_seed (the same for every call). A decoder ignores it.
EvalResult evaluate(Model<float>& model, const BatchLoader& loader, int64_t max_batches = 0,
                    const MlmConfig* mlm = nullptr);
EvalResult evaluate(CudaModel& model, const BatchLoader& loader, int64_t max_batches = 0,
                    const MlmConfig* mlm = nullptr);

class Trainer {
 public:
  // Fresh run: weights initialised from config.seed. An encoder trains with the masked-LM
  // objective and needs config.mlm.mask_id.
  Trainer(const ModelConfig& model_config, const TrainConfig& config, BatchLoader train_loader);

  StepResult step();
  int64_t steps_done() const { return optimizer_.steps(); }
  const TrainConfig& config() const { return config_; }
  // The host model; with device cuda its weights are current only after save_checkpoint().
  Model<float>& model() { return *model_; }
  CudaModel* cuda_model() { return gpu_.get(); }  // null unless device cuda
  // Validation on the training device.
  EvalResult evaluate(const BatchLoader& loader, int64_t max_batches);
  BatchLoader& loader() { return loader_; }

  // Writes the checkpoint folder (see above); creates the folder if needed.
  void save_checkpoint(const std::string& dir) const;
  // Restores weights, optimiser, step and loader state from dir/checkpoint.safetensors. The
  // model config must match the checkpoint's; the training config is kept from this Trainer
  // except what must match for an exact continuation (seed). Throws sqa::Error with the path
  // and the rule on a corrupt, truncated or mismatching checkpoint, before changing anything.
  void load_checkpoint(const std::string& dir);

 private:
  // The loader's next batch into batch_, masked for an encoder.
  void next_batch(int64_t step, int micro);

  ModelConfig model_config_;
  TrainConfig config_;
  BatchLoader loader_;
  std::unique_ptr<Model<float>> model_;
  AdamW optimizer_;  // with device cuda: only the step count (moments on the GPU)
  std::unique_ptr<CudaModel> gpu_;
  Batch batch_;
};

// Model weights from a checkpoint folder (checkpoint.safetensors or model.safetensors) or a
// .safetensors file next to a config.json. Returns the config; fills the model.
ModelConfig load_model_config_for(const std::string& path);
void load_model_weights(Model<float>& model, const std::string& path);
// Writes model.safetensors (+ config.json) for export.
void save_model(const Model<float>& model, const std::string& dir);

}  // namespace sqa
