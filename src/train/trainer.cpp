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

}  // namespace

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

EvalResult evaluate(Model<float>& model, const BatchLoader& loader, int64_t max_batches) {
  const auto t0 = std::chrono::steady_clock::now();
  EvalResult r;
  int64_t n = loader.num_eval_batches();
  if (max_batches > 0) n = std::min(n, max_batches);
  double loss_sum = 0, all_tokens = 0;
  for (int64_t i = 0; i < n; ++i) {
    const Batch b = loader.eval_batch(i);
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

// The same loop on the GPU model (bf16): loss, accuracy and tokens/s as above.
EvalResult evaluate(CudaModel& model, const BatchLoader& loader, int64_t max_batches) {
  const auto t0 = std::chrono::steady_clock::now();
  EvalResult r;
  int64_t n = loader.num_eval_batches();
  if (max_batches > 0) n = std::min(n, max_batches);
  double loss_sum = 0, all_tokens = 0;
  for (int64_t i = 0; i < n; ++i) {
    const Batch b = loader.eval_batch(i);
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

EvalResult Trainer::evaluate(const BatchLoader& loader, int64_t max_batches) {
  if (gpu_) return sqa::evaluate(*gpu_, loader, max_batches);
  return sqa::evaluate(*model_, loader, max_batches);
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
  model_ = std::make_unique<Model<float>>(model_config_);
  model_->init_weights(config_.seed);
  optimizer_ = AdamW(static_cast<int64_t>(model_->weights().size()));
  if (config_.device == Device::cuda) {
    gpu_ = std::make_unique<CudaModel>(model_config_);
    gpu_->set_weights(model_->weights().data());
  }
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
      loader_.next(batch_);
      const LossStats s = g.forward(batch_.inputs.data(), batch_.targets.data(),
                                    batch_.loss_mask.data(), batch_.batch_size, batch_.context,
                                    true, dropout_seed(config_.seed, step, micro), scale);
      g.backward();
      r.loss += s.loss * scale;
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
    loader_.next(batch_);
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
