// AdamW, clipping, schedules, the training step, evaluation and checkpoints (train.hpp).
#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "sqa/error.hpp"
#include "sqa/io.hpp"
#include "sqa/nn.hpp"
#include "sqa/safetensors.hpp"
#include "sqa/train.hpp"

namespace sqa {
namespace {

using json = nlohmann::json;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void make_dir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    throw Error(detail::concat("cannot create folder '", dir, "': ", std::strerror(errno)));
  }
  struct stat st {};
  require(::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode), "'", dir,
          "' exists and is not a folder");
}

std::span<const float> view(const std::vector<float>& v, const ParamSpec& p) {
  return {v.data() + p.offset, static_cast<size_t>(p.numel())};
}

// Per-step dropout seed: a pure function of the run seed, the step and the micro-batch.
uint64_t dropout_seed(uint64_t seed, int64_t step, int micro) {
  return nn::mix64(seed ^
                   nn::mix64(static_cast<uint64_t>(step) * 4096 + static_cast<uint64_t>(micro)));
}

// Uniform double in [0, 1) from the top 53 bits of a hash.
double unit_interval(uint64_t h) {
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

}  // namespace

void MlmConfig::validate() const {
  require(probability > 0 && probability < 1, "mlm probability (", probability,
          ") must be in (0, 1): the share of non-pad positions the masked-LM objective predicts");
  require(vocab_size > 0, "mlm vocab_size (", vocab_size,
          ") must be > 0: random replacements are drawn from [0, vocab_size)");
  require(mask_id >= 0 && mask_id < vocab_size, "mlm mask_id (", mask_id,
          ") must be a token id in [0, ", vocab_size,
          "): the masked-LM objective needs a \"<mask>\" token");
}

MlmChoice mlm_choice(uint64_t seed, uint64_t position, double probability, int32_t vocab_size,
                     int32_t* random_token) {
  // Two independent draws per position (streams 2i and 2i + 1), as dropout's mix64(seed ^
  // mix64(i)): whether it is chosen, then what becomes of it (80% mask, 10% random, 10% kept).
  if (unit_interval(nn::mix64(seed ^ nn::mix64(2 * position))) >= probability) {
    return MlmChoice::none;
  }
  const uint64_t h = nn::mix64(seed ^ nn::mix64(2 * position + 1));
  const double u = unit_interval(h);
  if (u < 0.8) return MlmChoice::mask;
  if (u < 0.9) {
    if (random_token) {
      *random_token = static_cast<int32_t>(nn::mix64(h) % static_cast<uint64_t>(vocab_size));
    }
    return MlmChoice::random;
  }
  return MlmChoice::keep;
}

uint64_t mlm_seed(uint64_t run_seed, int64_t step, int micro) {
  // Salted so that the masks are independent of the same step's dropout masks.
  return nn::mix64(dropout_seed(run_seed, step, micro) ^ 0x6d61736b2d6c6dULL);
}

void apply_mlm(Batch& b, const MlmConfig& mlm, uint64_t seed, uint64_t first_position) {
  mlm.validate();
  const size_t n = static_cast<size_t>(b.batch_size) * static_cast<size_t>(b.context);
  require(b.inputs.size() >= n && b.targets.size() >= n && b.loss_mask.size() >= n,
          "apply_mlm: the batch holds fewer than batch_size * context (", n, ") positions");
  for (size_t i = 0; i < n; ++i) {
    const int32_t token = b.inputs[i];
    b.targets[i] = token;  // the original token, not shifted
    int32_t random_token = 0;
    const MlmChoice c = token == mlm.pad_id ? MlmChoice::none
                                            : mlm_choice(seed, first_position + i, mlm.probability,
                                                         mlm.vocab_size, &random_token);
    b.loss_mask[i] = c == MlmChoice::none ? 0.0f : 1.0f;
    if (c == MlmChoice::mask) b.inputs[i] = mlm.mask_id;
    if (c == MlmChoice::random) b.inputs[i] = random_token;
  }
}

void AdamW::step(float* w, const float* g, double lr, const OptimizerConfig& c) {
  ++t_;
  const double bc1 = 1.0 - std::pow(c.beta1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(c.beta2, static_cast<double>(t_));
  const float b1 = static_cast<float>(c.beta1), b2 = static_cast<float>(c.beta2);
  const float decay = static_cast<float>(1.0 - lr * c.weight_decay);
  const float step_size = static_cast<float>(lr / bc1);
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  const float eps = static_cast<float>(c.eps);
  const int64_t n = static_cast<int64_t>(m_.size());
  float* m = m_.data();
  float* v = v_.data();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    m[i] = b1 * m[i] + (1.0f - b1) * g[i];
    v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
    w[i] = w[i] * decay - step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
  }
}

double clip_grad_norm(float* g, int64_t n, double max_norm) {
  // Fixed chunks, summed in order: the norm does not depend on the thread count.
  constexpr int64_t kChunks = 64;
  double partial[kChunks] = {};
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < kChunks; ++c) {
    const int64_t begin = n * c / kChunks, end = n * (c + 1) / kChunks;
    double s = 0;
    for (int64_t i = begin; i < end; ++i) s += static_cast<double>(g[i]) * g[i];
    partial[c] = s;
  }
  double total = 0;
  for (double p : partial) total += p;
  const double norm = std::sqrt(total);
  if (max_norm > 0 && norm > max_norm) {
    const float scale = static_cast<float>(max_norm / (norm + 1e-6));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) g[i] *= scale;
  }
  return norm;
}

Schedule parse_schedule(const std::string& name) {
  if (name == "warmup-cosine") return Schedule::warmup_cosine;
  if (name == "cosine") return Schedule::cosine;
  if (name == "constant") return Schedule::constant;
  throw Error(
      detail::concat("unknown schedule '", name, "': expected warmup-cosine, cosine or constant"));
}

const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::warmup_cosine:
      return "warmup-cosine";
    case Schedule::cosine:
      return "cosine";
    case Schedule::constant:
      return "constant";
  }
  return "?";
}

double learning_rate(Schedule schedule, double base_lr, int64_t step, int64_t total,
                     double warmup_fraction) {
  if (schedule == Schedule::constant || total <= 0) return base_lr;
  const double pi = 3.14159265358979323846;
  int64_t warmup = 0;
  if (schedule == Schedule::warmup_cosine) {
    warmup = static_cast<int64_t>(std::llround(warmup_fraction * static_cast<double>(total)));
  }
  if (step < warmup) return base_lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const int64_t span = std::max<int64_t>(total - warmup, 1);
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / span);
  return 0.5 * base_lr * (1.0 + std::cos(pi * progress));
}

namespace {

// Fills what the caller may leave unset: random replacements from the data's vocabulary (the
// model's may be larger), and in pad mode the loader's pad token is never chosen.
MlmConfig mlm_defaults(MlmConfig m, const BatchLoader& loader, const ModelConfig& model) {
  if (m.vocab_size <= 0) {
    m.vocab_size = loader.corpus().vocab_size > 0 ? loader.corpus().vocab_size : model.vocab_size;
  }
  if (m.pad_id < 0 && loader.options().mode == BatchMode::pad) m.pad_id = loader.options().pad_id;
  return m;
}

// The evaluation loop of both models: loss, accuracy and tokens/s over the eval batches; an
// encoder's batches are masked with the fixed evaluation seed.
template <typename M>
EvalResult evaluate_model(M& model, const BatchLoader& loader, int64_t max_batches,
                          const MlmConfig* mlm) {
  const bool masked = !model.config().causal;
  require(!masked || mlm != nullptr,
          "evaluating an encoder (architecture 'encoder') needs the masked-LM settings "
          "(MlmConfig): next-token prediction is meaningless for bidirectional attention");
  MlmConfig m;
  if (masked) m = mlm_defaults(*mlm, loader, model.config());
  const auto t0 = std::chrono::steady_clock::now();
  EvalResult r;
  int64_t n = loader.num_eval_batches();
  if (max_batches > 0) n = std::min(n, max_batches);
  double loss_sum = 0, all_tokens = 0;
  for (int64_t i = 0; i < n; ++i) {
    Batch b = loader.eval_batch(i);
    if (masked) {
      // Batch i holds windows from i * batch_size on: masks follow the window.
      const uint64_t first = static_cast<uint64_t>(i) *
                             static_cast<uint64_t>(loader.options().batch_size) *
                             static_cast<uint64_t>(b.context);
      apply_mlm(b, m, mlm_seed(m.eval_seed, 0, 0), first);
    }
    const LossStats s = model.forward(b.inputs.data(), b.targets.data(), b.loss_mask.data(),
                                      b.batch_size, b.context, false);
    loss_sum += s.loss * s.tokens;
    r.tokens += s.tokens;
    r.accuracy += s.correct;
    all_tokens += static_cast<double>(b.batch_size) * b.context;
  }
  r.batches = n;
  r.loss = r.tokens > 0 ? loss_sum / r.tokens : 0.0;
  r.accuracy = r.tokens > 0 ? r.accuracy / r.tokens : 0.0;
  r.perplexity = std::exp(r.loss);
  const double secs = seconds_since(t0);
  r.tokens_per_second = secs > 0 ? all_tokens / secs : 0.0;
  return r;
}

}  // namespace

EvalResult evaluate(Model<float>& model, const BatchLoader& loader, int64_t max_batches,
                    const MlmConfig* mlm) {
  return evaluate_model(model, loader, max_batches, mlm);
}

// The same loop on the GPU model (bf16).
EvalResult evaluate(CudaModel& model, const BatchLoader& loader, int64_t max_batches,
                    const MlmConfig* mlm) {
  return evaluate_model(model, loader, max_batches, mlm);
}

EvalResult Trainer::evaluate(const BatchLoader& loader, int64_t max_batches) {
  if (gpu_) return sqa::evaluate(*gpu_, loader, max_batches, &config_.mlm);
  return sqa::evaluate(*model_, loader, max_batches, &config_.mlm);
}

Trainer::Trainer(const ModelConfig& model_config, const TrainConfig& config,
                 BatchLoader train_loader)
    : model_config_(model_config), config_(config), loader_(std::move(train_loader)) {
  require(config_.steps >= 1, "steps (", config_.steps, ") must be at least 1");
  require(config_.grad_accum >= 1, "grad_accum (", config_.grad_accum, ") must be at least 1");
  require(config_.optim.lr > 0, "lr (", config_.optim.lr, ") must be > 0");
  require(config_.warmup_fraction >= 0 && config_.warmup_fraction < 1, "warmup_fraction (",
          config_.warmup_fraction, ") must be in [0, 1)");
  require(loader_.options().context <= model_config_.max_seq_len, "context (",
          loader_.options().context, ") exceeds max_position_embeddings (",
          model_config_.max_seq_len, ")");
  require(
      loader_.corpus().vocab_size <= 0 || loader_.corpus().vocab_size <= model_config_.vocab_size,
      "the data's vocabulary (", loader_.corpus().vocab_size,
      ") is larger than the model's vocab_size (", model_config_.vocab_size, ")");
  if (!model_config_.causal) {
    config_.mlm = mlm_defaults(config_.mlm, loader_, model_config_);
    require(config_.mlm.mask_id >= 0,
            "an encoder (architecture 'encoder') trains with the masked-LM objective, which "
            "needs the id of a \"<mask>\" token (mlm.mask_id is ",
            config_.mlm.mask_id, ")");
    require(config_.mlm.mask_id < model_config_.vocab_size, "the mask token id (",
            config_.mlm.mask_id, ") is outside the model's vocab_size (", model_config_.vocab_size,
            ")");
    require(config_.mlm.vocab_size <= model_config_.vocab_size, "mlm vocab_size (",
            config_.mlm.vocab_size, ") is larger than the model's vocab_size (",
            model_config_.vocab_size, ")");
    config_.mlm.validate();
  }
  model_ = std::make_unique<Model<float>>(model_config_);
  model_->init_weights(config_.seed);
  optimizer_ = AdamW(static_cast<int64_t>(model_->weights().size()));
  if (config_.device == Device::cuda) {
    gpu_ = std::make_unique<CudaModel>(model_config_);
    gpu_->set_weights(model_->weights().data());
  }
}

void Trainer::next_batch(int64_t step, int micro) {
  loader_.next(batch_);
  if (!model_config_.causal) apply_mlm(batch_, config_.mlm, mlm_seed(config_.seed, step, micro));
}

StepResult Trainer::step() {
  const auto t0 = std::chrono::steady_clock::now();
  StepResult r;
  const int64_t step = optimizer_.steps();
  r.lr = learning_rate(config_.schedule, config_.optim.lr, step, config_.steps,
                       config_.warmup_fraction);
  const double scale = 1.0 / config_.grad_accum;
  if (gpu_) {
    CudaModel& g = *gpu_;
    g.zero_grad();
    for (int micro = 0; micro < config_.grad_accum; ++micro) {
      next_batch(step, micro);
      const LossStats s = g.forward(batch_.inputs.data(), batch_.targets.data(),
                                    batch_.loss_mask.data(), batch_.batch_size, batch_.context,
                                    true, dropout_seed(config_.seed, step, micro), scale);
      g.backward();
      r.loss += s.loss * scale;
      r.aux_loss += s.aux_loss * scale;
      r.tokens += static_cast<double>(batch_.batch_size) * batch_.context;
    }
    const OptimizerConfig& o = config_.optim;
    r.grad_norm = g.optimizer_step({r.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.grad_clip});
    optimizer_.set_steps(g.optimizer_steps());
    r.step = optimizer_.steps();
    r.seconds = seconds_since(t0);
    return r;
  }
  Model<float>& m = *model_;
  m.zero_grad();
  for (int micro = 0; micro < config_.grad_accum; ++micro) {
    next_batch(step, micro);
    const LossStats s = m.forward(batch_.inputs.data(), batch_.targets.data(),
                                  batch_.loss_mask.data(), batch_.batch_size, batch_.context, true,
                                  dropout_seed(config_.seed, step, micro), scale);
    m.backward();
    r.loss += s.loss * scale;
    r.aux_loss += s.aux_loss * scale;
    r.tokens += static_cast<double>(batch_.batch_size) * batch_.context;
  }
  r.grad_norm = clip_grad_norm(m.grads().data(), static_cast<int64_t>(m.grads().size()),
                               config_.optim.grad_clip);
  optimizer_.step(m.weights().data(), m.grads().data(), r.lr, config_.optim);
  r.step = optimizer_.steps();
  r.seconds = seconds_since(t0);
  return r;
}

void Trainer::save_checkpoint(const std::string& dir) const {
  make_dir(dir);
  // With device cuda the GPU holds the state: bring the weights into the host model (so that
  // save_model below and model() see them) and the moments into local copies.
  std::vector<float> gpu_m, gpu_v;
  if (gpu_) {
    gpu_->get_weights(model_->weights().data());
    gpu_m.resize(model_->weights().size());
    gpu_v.resize(model_->weights().size());
    gpu_->get_optimizer_state(gpu_m.data(), gpu_v.data());
  }
  const std::vector<float>& exp_avg = gpu_ ? gpu_m : optimizer_.exp_avg();
  const std::vector<float>& exp_avg_sq = gpu_ ? gpu_v : optimizer_.exp_avg_sq();
  const Model<float>& m = *model_;
  SafeTensorsWriter all;
  for (const ParamSpec& p : m.params()) all.add_f32(p.name, p.shape, view(m.weights(), p));
  for (const ParamSpec& p : m.params()) {
    all.add_f32("optimizer.exp_avg." + p.name, p.shape, view(exp_avg, p));
    all.add_f32("optimizer.exp_avg_sq." + p.name, p.shape, view(exp_avg_sq, p));
  }
  json state;
  state["step"] = optimizer_.steps();
  state["seed"] = config_.seed;
  state["total_steps"] = config_.steps;
  state["grad_accum"] = config_.grad_accum;
  state["lr"] = config_.optim.lr;
  state["weight_decay"] = config_.optim.weight_decay;
  state["grad_clip"] = config_.optim.grad_clip;
  state["schedule"] = schedule_name(config_.schedule);
  state["warmup_fraction"] = config_.warmup_fraction;
  state["loader"] = json::parse(loader_.state().to_json());
  const std::string config_json = config_to_json(model_config_);
  all.set_metadata("format", "sqa-checkpoint-1");
  all.set_metadata("config", config_json);
  all.set_metadata("trainer_state", state.dump());
  all.save(dir + "/checkpoint.safetensors");
  save_model(m, dir);
}

void Trainer::load_checkpoint(const std::string& dir) {
  const std::string path = dir + "/checkpoint.safetensors";
  // Everything is read and checked before any state of this Trainer changes.
  const SafeTensorsFile f = SafeTensorsFile::load(path);
  const auto& meta = f.metadata();
  require(meta.count("config") && meta.count("trainer_state"), path,
          ": not an sqa training checkpoint (metadata 'config' and 'trainer_state' missing)");
  const ModelConfig saved = parse_config(meta.at("config"), path + " [config]");
  require(config_to_json(saved) == config_to_json(model_config_), path,
          ": the checkpoint's model config differs from the one given; resume with the "
          "checkpoint's config.json");
  json state;
  try {
    state = json::parse(meta.at("trainer_state"));
  } catch (const json::exception& e) {
    throw Error(detail::concat(path, ": trainer_state is not valid JSON: ", e.what()));
  }
  for (const char* key : {"step", "seed", "loader"}) {
    require(state.contains(key), path, ": trainer_state lacks '", key, "'");
  }
  const int64_t step = state.at("step").get<int64_t>();
  const uint64_t seed = state.at("seed").get<uint64_t>();
  require(seed == config_.seed, path, ": checkpoint seed (", seed, ") differs from --seed (",
          config_.seed, "); an exact continuation needs the same seed");
  require(step >= 0 && step <= config_.steps, path, ": checkpoint step (", step,
          ") is outside [0, steps (", config_.steps, ")]");
  const size_t n = model_->weights().size();
  std::vector<float> w(n), m(n), v(n);
  for (const ParamSpec& p : model_->params()) {
    f.at(p.name, p.shape).copy_to_f32(w.data() + p.offset);
    f.at("optimizer.exp_avg." + p.name, p.shape).copy_to_f32(m.data() + p.offset);
    f.at("optimizer.exp_avg_sq." + p.name, p.shape).copy_to_f32(v.data() + p.offset);
  }
  const LoaderState ls = LoaderState::from_json(state.at("loader").dump());
  loader_.restore(ls);  // throws for another corpus before changing the loader
  model_->weights() = std::move(w);
  optimizer_.exp_avg() = std::move(m);
  optimizer_.exp_avg_sq() = std::move(v);
  optimizer_.set_steps(step);
  if (gpu_) {
    gpu_->set_weights(model_->weights().data());
    gpu_->set_optimizer_state(optimizer_.exp_avg().data(), optimizer_.exp_avg_sq().data(), step);
  }
}

void save_model(const Model<float>& m, const std::string& dir) {
  make_dir(dir);
  SafeTensorsWriter w;
  for (const ParamSpec& p : m.params()) w.add_f32(p.name, p.shape, view(m.weights(), p));
  w.set_metadata("format", "pt");
  w.save(dir + "/model.safetensors");
  write_file_atomic(dir + "/config.json", config_to_json(m.config()));
}

namespace {
std::string weights_file(const std::string& path) {
  if (is_regular_file(path)) return path;
  for (const char* name : {"/model.safetensors", "/checkpoint.safetensors"}) {
    if (is_regular_file(path + name)) return path + name;
  }
  throw Error(detail::concat("no model found at '", path,
                             "': expected a .safetensors file or a folder with "
                             "model.safetensors or checkpoint.safetensors"));
}
std::string parent_dir(const std::string& file) {
  const size_t slash = file.find_last_of('/');
  return slash == std::string::npos ? "." : file.substr(0, slash);
}
}  // namespace

ModelConfig load_model_config_for(const std::string& path) {
  const std::string file = weights_file(path);
  const std::string sibling = parent_dir(file) + "/config.json";
  if (is_regular_file(sibling)) return load_config(sibling);
  const SafeTensorsFile f = SafeTensorsFile::load(file);
  require(f.metadata().count("config") > 0, "no config.json next to '", file,
          "' and no 'config' in its metadata");
  return parse_config(f.metadata().at("config"), file + " [config]");
}

void load_model_weights(Model<float>& model, const std::string& path) {
  const std::string file = weights_file(path);
  const SafeTensorsFile f = SafeTensorsFile::load(file);
  std::vector<float> w(model.weights().size());
  for (const ParamSpec& p : model.params()) f.at(p.name, p.shape).copy_to_f32(w.data() + p.offset);
  model.weights() = std::move(w);
}

}  // namespace sqa
