// `sqa train`, `sqa eval`, `sqa generate`: the model engine from the command line.
#include <cblas.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/ceilings.hpp"
#include "sqa/args.hpp"
#include "sqa/commands.hpp"
#include "sqa/data.hpp"
#include "sqa/error.hpp"
#include "sqa/io.hpp"
#include "sqa/model.hpp"
#include "sqa/model_cuda.hpp"
#include "sqa/sampling.hpp"
#include "sqa/tokenizer.hpp"
#include "sqa/train.hpp"

namespace sqa::cli {
namespace {

using json = nlohmann::json;

std::string format_duration(double s) {
  char buf[32];
  if (s < 0 || !std::isfinite(s)) return "?";
  const long t = std::lround(s);
  if (t >= 3600) {
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  }
  return buf;
}

// --device cpu (default) | cuda.
Device parse_device(const Args& a) {
  const std::string d = a.get("device", "cpu");
  require(d == "cpu" || d == "cuda", "option --device (", d, ") must be 'cpu' or 'cuda'");
  return d == "cuda" ? Device::cuda : Device::cpu;
}

BatchMode parse_mode(const std::string& m) {
  require(m == "pack" || m == "pad", "option --mode (", m, ") must be 'pack' or 'pad'");
  return m == "pad" ? BatchMode::pad : BatchMode::pack;
}

// The file get_tokenizer reads ("" when it trains one).
std::string tokenizer_source(const Args& a, const std::string& fallback_file) {
  if (a.has("tokenizer")) return a.get("tokenizer", "");
  return is_regular_file(fallback_file) ? fallback_file : "";
}

// The tokenizer: --tokenizer FILE, else DIR/tokenizer.json from an earlier run or a model
// folder, else trained on `documents` with the model's vocab size (and a "<mask>" token when
// it is for an encoder).
Tokenizer get_tokenizer(const Args& a, const std::string& fallback_file,
                        const std::vector<std::string>* documents, int vocab_size,
                        bool for_encoder = false) {
  if (a.has("tokenizer")) return Tokenizer::load(a.get("tokenizer", ""));
  if (is_regular_file(fallback_file)) return Tokenizer::load(fallback_file);
  require(documents != nullptr, "no tokenizer: give --tokenizer FILE (expected '", fallback_file,
          "')");
  BpeTrainOptions o;
  o.vocab_size = vocab_size;
  if (for_encoder) o.special_tokens.push_back("<mask>");
  std::fprintf(stderr, "training a byte-level BPE tokenizer (vocab %d) on %zu documents\n",
               vocab_size, documents->size());
  return Tokenizer::train(*documents, o);
}

TextOptions text_options(const Args& a) {
  TextOptions t;
  const std::string split = a.get("split-docs", "separator");
  if (split == "separator") {
    t.split = TextSplit::separator;
  } else if (split == "file") {
    t.split = TextSplit::file;
  } else if (split == "paragraph") {
    t.split = TextSplit::paragraph;
  } else if (split == "line") {
    t.split = TextSplit::line;
  } else {
    throw Error(detail::concat("option --split-docs (", split,
                               ") must be separator, file, paragraph or line"));
  }
  return t;
}

// libgomp's default wait policy spins idle workers at every barrier. On a dedicated machine that
// is a little faster; on a shared one (CI runners, several jobs on 2 cores) a worker that loses
// its core stalls every parallel region while the other spins, and training ran 5-9x slower
// in our measurements. The policy is read once when libgomp loads, so the program re-executes
// itself with OMP_WAIT_POLICY=passive unless the user chose a policy.
void reexec_with_passive_omp_wait(const char* command, const std::vector<std::string>& argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("SQA_OMP_REEXEC") != nullptr) {
    return;
  }
  ::setenv("OMP_WAIT_POLICY", "passive", 1);
  ::setenv("SQA_OMP_REEXEC", "1", 1);
  std::vector<std::string> words = {"sqa", command};
  words.insert(words.end(), argv.begin(), argv.end());
  std::vector<char*> ptrs;
  for (auto& w : words) ptrs.push_back(w.data());
  ptrs.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  ::execv("/proc/self/exe", ptrs.data());
  // exec failed: carry on with the default policy.
}

// Masked-LM settings of an encoder from the options: --mlm-probability and --mlm-seed
// (evaluation masks); a decoder refuses them.
MlmConfig mlm_options(const Args& a, const ModelConfig& cfg) {
  MlmConfig m;
  if (cfg.causal) {
    for (const char* option : {"mlm-probability", "mlm-seed"}) {
      require(!a.has(option), "option --", option,
              " sets the masked-LM objective of an encoder (architecture 'encoder'); this "
              "config is a decoder, which trains next-token prediction");
    }
    return m;
  }
  m.probability = a.get_double("mlm-probability", 0.15);
  require(m.probability > 0 && m.probability < 1, "option --mlm-probability (", m.probability,
          ") must be in (0, 1): the share of non-pad positions the masked-LM objective predicts");
  m.eval_seed = static_cast<uint64_t>(a.get_int("mlm-seed", 0));
  require(!a.flag("count-pad"),
          "option --count-pad counts padding targets of next-token prediction; an encoder's "
          "masked-LM objective never chooses padding positions");
  return m;
}

// The tokenizer's mask token into m; an error naming the rule when it has none.
void set_mask_token(MlmConfig& m, const Tokenizer& tokenizer, const std::string& tokenizer_origin) {
  m.mask_id = tokenizer.mask_id();
  require(m.mask_id >= 0, "the tokenizer (", tokenizer_origin,
          ") has no \"<mask>\" token; an encoder (architecture 'encoder') trains and evaluates "
          "with the masked-LM objective, which needs one: let sqa train train a tokenizer for "
          "the encoder (no --tokenizer, a fresh --out), or add \"<mask>\" to the tokenizer's "
          "added_tokens");
  m.vocab_size = tokenizer.vocab_size();
}

constexpr const char* kTrainUsage =
    R"(usage: sqa train --config FILE --data PATH --out DIR [options]

Trains a model and writes DIR/{config.json, model.safetensors, tokenizer.json, checkpoint,
metrics.jsonl, summary.json}. Decoders learn next-token prediction, encoders masked-LM.

data
  --data PATH           text file, folder of .txt/.html, .jsonl ("text" field) or a .tok shard
  --tokenizer FILE      HF tokenizer.json (default: DIR's, else train one at the config's vocab);
                        with a .tok shard, the one that made it (checked, copied into DIR)
  --vocab-size N        override the config's vocab_size
  --split-docs S        separator | file | paragraph | line (default separator: <|endoftext|>)
  --val-fraction F      last fraction of the token stream held out (default 0.05)
  --mode M              pack (default) | pad (the paper's pad-to-length)
  --count-pad           count padding targets in loss and accuracy (the paper's mode)
  --no-shuffle          keep sequence order
optimisation
  --steps N (200)  --batch B (8)  --context T (min(max_position, 128))  --accum K (1)
  --lr X (5e-4)  --schedule warmup-cosine|cosine|constant  --warmup F (0.25)
  --weight-decay X (0.01)  --grad-clip X (1.0, 0 = off)  --dropout P (config's)  --seed S (1234)
  --mlm-probability P (0.15)  --mlm-seed S (0)   encoders only
progress and checkpoints
  --log-every N (steps/50)  --eval-every N (steps/4)  --eval-batches N (8)
  --ckpt-every N (steps/4)  --resume (continue DIR's checkpoint exactly)
  --stop-at N (stop after step N of --steps; resume later)  --quiet
device
  --device cpu|cuda (cpu)  --nondeterministic (CPU: faster attention backward)
  --ceiling-size N (1536: the in-run sgemm size behind the CPU MFU)
)";

constexpr const char* kEvalUsage = R"(usage: sqa eval --model DIR --data PATH [options]

Validation loss, perplexity, next-token (or masked-token) accuracy and tokens/s of a trained
model on all of PATH, or with --val-fraction F on the tail that `sqa train` held out.
  --tokenizer FILE  --batch B (8)  --context T  --max-batches N (0 = all)  --mode pack|pad
  --count-pad  --split-docs S  --val-fraction F  --json FILE  --device cpu|cuda
  --mlm-probability P  --mlm-seed S   encoders only
)";

constexpr const char* kGenerateUsage = R"(usage: sqa generate --model DIR [options]

Samples text from a decoder with a KV cache: the prompt in one pass, then one token per step
(--device cuda: bf16 cache and activations on the GPU, as its forward).
  --prompt TEXT  --tokens N (100)  --temperature X (0.8, 0 = greedy)  --top-k K (40, 0 = off)
  --top-p P (0.95)  --seed S (1)  --tokenizer FILE  --device cpu|cuda
)";

// A token shard says which vocabulary made it; a tokenizer given with it must be that one,
// or everything decoded from the run (generate, the MLM mask token) would be wrong text.
void check_shard_tokenizer(const Tokenizer& tokenizer, const std::string& origin,
                           const TokenCorpus& corpus, const std::string& shard) {
  require(corpus.vocab_size == 0 || tokenizer.vocab_size() == corpus.vocab_size, "the tokenizer '",
          origin, "' (vocabulary ", tokenizer.vocab_size(), ") did not make the token shard '",
          shard, "' (vocabulary ", corpus.vocab_size,
          "): give the tokenizer the shard was made with");
}

// --help prints the usage and ends the command.
bool print_help(const Args& a, const char* usage) {
  if (!a.flag("help")) return false;
  std::fputs(usage, stdout);
  return true;
}

}  // namespace

int cmd_train(const std::vector<std::string>& argv) {
  reexec_with_passive_omp_wait("train", argv);
  const Args a(argv, {"resume", "count-pad", "no-shuffle", "quiet", "nondeterministic", "help"});
  if (print_help(a, kTrainUsage)) return 0;
  a.reject_unknown({"nondeterministic",
                    "stop-at",
                    "config",
                    "data",
                    "out",
                    "steps",
                    "batch",
                    "context",
                    "accum",
                    "lr",
                    "schedule",
                    "warmup",
                    "seed",
                    "tokenizer",
                    "vocab-size",
                    "eval-every",
                    "eval-batches",
                    "ckpt-every",
                    "resume",
                    "val-fraction",
                    "mode",
                    "count-pad",
                    "weight-decay",
                    "grad-clip",
                    "log-every",
                    "ceiling-size",
                    "split-docs",
                    "no-shuffle",
                    "quiet",
                    "dropout",
                    "device",
                    "mlm-probability",
                    "mlm-seed"});
  ModelConfig cfg = load_config(a.require("config"));
  const std::string data = a.require("data");
  const std::string out = a.require("out");
  // An encoder trains with the masked-LM objective (train.hpp); check its options before
  // any work.
  MlmConfig mlm = mlm_options(a, cfg);
  if (a.has("vocab-size")) {
    cfg.vocab_size = static_cast<int>(a.get_int("vocab-size", cfg.vocab_size));
    cfg.validate();
  }
  if (a.has("dropout")) {
    cfg.ffn_dropout = a.get_double("dropout", cfg.ffn_dropout);
    cfg.validate();
  }
  const Device device = parse_device(a);
  const bool on_gpu = device == Device::cuda;
  std::filesystem::create_directories(out);
  // In-run ceiling: the sgemm rate of this machine now (all OpenBLAS threads), the denominator
  // of MFU. Measured before the model's first product switches OpenBLAS to one thread per
  // caller (src/nn/layers.cpp). On the GPU the denominator is the H200's bf16 peak instead.
  SgemmCeiling ceiling;
  if (on_gpu) {
    ceiling.gflops = kH200Bf16PeakFlops / 1e9;
    ceiling.corename = "H200 bf16 peak";
  } else {
    ceiling = measure_sgemm(static_cast<int>(a.get_int("ceiling-size", 1536)), 5);
  }

  // Data: tokenizer (given, from an earlier run in --out, or trained now), corpus, split.
  const std::string tok_file = out + "/tokenizer.json";
  std::vector<std::string> documents;
  const bool shard = is_token_shard(data);
  Tokenizer tokenizer;
  TokenCorpus corpus;
  std::string tok_origin = tokenizer_source(a, tok_file);
  bool have_tokenizer = false;
  if (shard) {
    corpus = read_token_shard(data);
    // An encoder's mask token comes from the shard's tokenizer.
    require(cfg.causal || !tok_origin.empty(),
            "an encoder (architecture 'encoder') trained on a token shard "
            "needs --tokenizer FILE for the id of its \"<mask>\" token");
    // With the shard's tokenizer the run folder is complete: eval and generate find it there.
    if (!tok_origin.empty()) {
      tokenizer = Tokenizer::load(tok_origin);
      check_shard_tokenizer(tokenizer, tok_origin, corpus, data);
      have_tokenizer = true;
    }
  } else {
    documents = load_documents(data, text_options(a));
    require(!documents.empty(), "no documents found in --data '", data, "'");
    tokenizer = get_tokenizer(a, tok_file, &documents, cfg.vocab_size, !cfg.causal);
    if (tok_origin.empty()) tok_origin = "trained now";
    if (!is_regular_file(tok_file)) tokenizer.save(tok_file);
    corpus = tokenize_documents(tokenizer, documents);
    corpus.vocab_size = tokenizer.vocab_size();
    documents.clear();
  }
  require(corpus.vocab_size <= cfg.vocab_size, "the tokenizer's vocabulary (", corpus.vocab_size,
          ") is larger than the model's vocab_size (", cfg.vocab_size, "); pass --vocab-size");
  const double val_fraction = a.get_double("val-fraction", 0.05);
  require(val_fraction > 0 && val_fraction < 1, "option --val-fraction (", val_fraction,
          ") must be in (0, 1)");
  CorpusSplit split = split_corpus(corpus, 1.0 - val_fraction, val_fraction);

  BatchOptions bo;
  bo.batch_size = static_cast<int>(a.get_int("batch", 8));
  bo.context = static_cast<int>(a.get_int("context", std::min(cfg.max_seq_len, 128)));
  bo.mode = parse_mode(a.get("mode", "pack"));
  bo.count_pad_in_loss = a.flag("count-pad");
  bo.shuffle = !a.flag("no-shuffle");
  const int32_t eos = shard ? 0 : tokenizer.eos_id();
  const int32_t pad = shard ? 1 : tokenizer.pad_id();
  bo.eos_id = eos >= 0 ? eos : 0;
  bo.pad_id = pad >= 0 ? pad : bo.eos_id;

  TrainConfig tc;
  tc.steps = a.get_int("steps", 200);
  tc.grad_accum = static_cast<int>(a.get_int("accum", 1));
  tc.optim.lr = a.get_double("lr", 5e-4);
  tc.optim.weight_decay = a.get_double("weight-decay", 0.01);
  tc.optim.grad_clip = a.get_double("grad-clip", 1.0);
  tc.schedule = parse_schedule(a.get("schedule", "warmup-cosine"));
  tc.warmup_fraction = a.get_double("warmup", 0.25);
  tc.seed = static_cast<uint64_t>(a.get_int("seed", 1234));
  tc.device = device;
  if (!cfg.causal) {
    set_mask_token(mlm, tokenizer, tok_origin);
    mlm.pad_id = bo.pad_id;
    tc.mlm = mlm;
    if (corpus.vocab_size > 0) tc.mlm.vocab_size = corpus.vocab_size;
  }
  bo.seed = tc.seed;
  const int64_t eval_every = a.get_int("eval-every", std::max<int64_t>(tc.steps / 4, 1));
  const int64_t eval_batches = a.get_int("eval-batches", 8);
  const int64_t ckpt_every = a.get_int("ckpt-every", std::max<int64_t>(tc.steps / 4, 1));
  const int64_t log_every = a.get_int("log-every", std::max<int64_t>(tc.steps / 50, 1));
  const bool quiet = a.flag("quiet");

  BatchLoader val_loader(std::move(split.validation), [&] {
    BatchOptions v = bo;
    v.shuffle = false;
    return v;
  }());
  Trainer trainer(cfg, tc, BatchLoader(std::move(split.train), bo));
  // --nondeterministic: all threads in the attention backward (faster at long contexts; a
  // resumed run then matches a straight one only approximately).
  trainer.model().set_deterministic(!a.flag("nondeterministic"));
  if (a.flag("resume") && is_regular_file(out + "/checkpoint.safetensors")) {
    trainer.load_checkpoint(out);
    std::fprintf(stderr, "resumed from %s/checkpoint.safetensors at step %lld\n", out.c_str(),
                 static_cast<long long>(trainer.steps_done()));
  }

  const double step_flops =
      training_flops(cfg, bo.batch_size, bo.context) * static_cast<double>(tc.grad_accum);
  std::printf(
      "model %s: %lld parameters, variant per layer 0: H_q=%d H_kv=%d; data: %lld train "
      "tokens, %lld val tokens; batch %d x %d x accum %d; device %s; MFU denominator %.1f "
      "GFLOP/s (%d threads, %s)\n",
      cfg.name.empty() ? "?" : cfg.name.c_str(), static_cast<long long>(count_parameters(cfg)),
      cfg.layers[0].heads.num_query_heads, cfg.layers[0].heads.num_kv_heads,
      static_cast<long long>(trainer.loader().corpus().num_tokens()),
      static_cast<long long>(val_loader.corpus().num_tokens()), bo.batch_size, bo.context,
      tc.grad_accum, on_gpu ? "cuda" : "cpu", ceiling.gflops, ceiling.threads,
      ceiling.corename.c_str());
  if (!cfg.causal) {
    std::printf(
        "objective: masked-LM (encoder): %.0f%% of the non-pad positions chosen (80%% mask id "
        "%d, 10%% random, 10%% kept); loss and accuracy over the chosen positions\n",
        100 * tc.mlm.probability, tc.mlm.mask_id);
  }
  std::fflush(stdout);

  std::ofstream metrics(out + "/metrics.jsonl", std::ios::app);
  double window_time = 0, window_tokens = 0, total_time = 0, total_tokens = 0;
  double window_loss = 0;
  int64_t window_steps = 0, timed_steps = 0;
  // The reported final training loss is the mean of the last (up to) 10 steps: one batch's
  // loss alone is too noisy to compare two models by.
  std::vector<double> recent_losses;
  EvalResult last_eval;
  bool have_eval = false;
  auto run_eval = [&](int64_t step) {
    last_eval = trainer.evaluate(val_loader, eval_batches);
    have_eval = true;
    std::printf("step %6lld | val %s %.4f | ppl %.3f | acc %.2f%% | %.0f tok/s\n",
                static_cast<long long>(step), cfg.causal ? "loss" : "MLM loss", last_eval.loss,
                last_eval.perplexity, 100 * last_eval.accuracy, last_eval.tokens_per_second);
    std::fflush(stdout);
    metrics << json{{"step", step},
                    {"val_loss", last_eval.loss},
                    {"val_ppl", last_eval.perplexity},
                    {"val_acc", last_eval.accuracy}}
                   .dump()
            << std::endl;  // flushed: a killed run keeps its log
  };
  // --stop-at N: leave after step N with a checkpoint, as a run killed there (tests, time boxes);
  // --resume continues it.
  const int64_t stop_at = std::min<int64_t>(tc.steps, a.get_int("stop-at", tc.steps));
  while (trainer.steps_done() < stop_at) {
    const StepResult r = trainer.step();
    recent_losses.push_back(r.loss);
    if (recent_losses.size() > 10) recent_losses.erase(recent_losses.begin());
    window_time += r.seconds;
    window_tokens += r.tokens;
    window_loss += r.loss;
    ++window_steps;
    // The first step warms caches and allocates buffers; leave it out of the averages.
    if (r.step > 1 || tc.steps == 1) {
      total_time += r.seconds;
      total_tokens += r.tokens;
      ++timed_steps;
    }
    const bool last = r.step == tc.steps || r.step == stop_at;
    if (r.step % log_every == 0 || last) {
      const double tps = window_tokens / window_time;
      const double mfu = step_flops * window_steps / window_time / (ceiling.gflops * 1e9);
      const double eta = (tc.steps - r.step) * window_time / window_steps;
      if (!quiet) {
        std::printf(
            "step %6lld/%lld | loss %.4f | lr %.2e | gnorm %.2f | %.0f tok/s | MFU "
            "%.1f%% | ETA %s\n",
            static_cast<long long>(r.step), static_cast<long long>(tc.steps),
            window_loss / window_steps, r.lr, r.grad_norm, tps, 100 * mfu,
            format_duration(eta).c_str());
        std::fflush(stdout);
      }
      metrics << json{{"step", r.step},      {"loss", window_loss / window_steps},
                      {"lr", r.lr},          {"grad_norm", r.grad_norm},
                      {"tokens_per_s", tps}, {"mfu", mfu}}
                     .dump()
              << std::endl;
      window_time = window_tokens = window_loss = 0;
      window_steps = 0;
    }
    if (r.step % eval_every == 0 || last) run_eval(r.step);
    if (r.step % ckpt_every == 0 || last) trainer.save_checkpoint(out);
  }
  if (!is_regular_file(out + "/tokenizer.json") && (!shard || have_tokenizer)) {
    tokenizer.save(out + "/tokenizer.json");
  }
  // The ceiling again at the end (all threads), and MFU against the better of the two: on a
  // shared machine the first measurement may have been taken while something else ran.
  openblas_set_num_threads(omp_get_max_threads());
  const SgemmCeiling end_ceiling =
      on_gpu ? ceiling : measure_sgemm(static_cast<int>(a.get_int("ceiling-size", 1536)), 5);
  const double best_gflops = std::max(ceiling.gflops, end_ceiling.gflops);
  const double tps = timed_steps > 0 ? total_tokens / total_time : 0.0;
  const double mfu =
      timed_steps > 0 ? step_flops * timed_steps / total_time / (best_gflops * 1e9) : 0.0;
  json summary{
      {"config", cfg.name},
      {"parameters", count_parameters(cfg)},
      {"steps", trainer.steps_done()},
      {"batch", bo.batch_size},
      {"context", bo.context},
      {"grad_accum", tc.grad_accum},
      {"final_train_loss", recent_losses.empty()
                               ? 0.0
                               : std::accumulate(recent_losses.begin(), recent_losses.end(), 0.0) /
                                     static_cast<double>(recent_losses.size())},
      {"train_tokens_per_s", tps},
      {"train_seconds", total_time},
      {"mfu", mfu},
      {"sgemm_gflops", best_gflops},
      {"sgemm_gflops_start", ceiling.gflops},
      {"sgemm_gflops_end", end_ceiling.gflops},
      {"threads", omp_get_max_threads()},
      {"device", on_gpu ? "cuda" : "cpu"},
      {"model_gflop_per_step", step_flops / 1e9}};
  if (!cfg.causal) {
    summary["objective"] = "masked-lm";
    summary["mlm_probability"] = tc.mlm.probability;
  }
  if (have_eval) {
    summary["val_loss"] = last_eval.loss;
    summary["val_ppl"] = last_eval.perplexity;
    summary["val_acc"] = last_eval.accuracy;
  }
  write_file_atomic(out + "/summary.json", summary.dump(2) + "\n");
  std::printf("done: %lld steps, %.0f tok/s, MFU %.1f%% of %.1f GFLOP/s (%s); checkpoint in %s\n",
              static_cast<long long>(trainer.steps_done()), tps, 100 * mfu, best_gflops,
              on_gpu ? "H200 bf16 peak" : "sgemm", out.c_str());
  return 0;
}

int cmd_eval(const std::vector<std::string>& argv) {
  reexec_with_passive_omp_wait("eval", argv);
  const Args a(argv, {"count-pad", "help"});
  if (print_help(a, kEvalUsage)) return 0;
  a.reject_unknown({"model", "data", "tokenizer", "batch", "context", "max-batches", "mode",
                    "count-pad", "split-docs", "val-fraction", "json", "device", "mlm-probability",
                    "mlm-seed"});
  const std::string model_dir = a.require("model");
  const ModelConfig cfg = load_model_config_for(model_dir);
  // An encoder is evaluated on its masked-LM objective, with fixed masks (--mlm-seed).
  MlmConfig mlm = mlm_options(a, cfg);
  const Device device = parse_device(a);
  Model<float> model(cfg);
  load_model_weights(model, model_dir);
  std::unique_ptr<CudaModel> gpu;
  if (device == Device::cuda) {
    gpu = std::make_unique<CudaModel>(cfg);
    gpu->set_weights(model.weights().data());
  }
  const std::string data = a.require("data");
  Tokenizer tokenizer;
  TokenCorpus corpus;
  const bool shard = is_token_shard(data);
  if (shard) {
    corpus = read_token_shard(data);
  } else {
    tokenizer = get_tokenizer(a, model_dir + "/tokenizer.json", nullptr, cfg.vocab_size);
    corpus = load_corpus(data, tokenizer, text_options(a));
  }
  if (!cfg.causal) {
    // The mask token comes from the tokenizer, also for token shards.
    const std::string origin = tokenizer_source(a, model_dir + "/tokenizer.json");
    require(!origin.empty(),
            "evaluating an encoder needs its tokenizer (for the \"<mask>\" "
            "token): give --tokenizer FILE (expected '",
            model_dir, "/tokenizer.json')");
    if (shard) {
      tokenizer = Tokenizer::load(origin);
      check_shard_tokenizer(tokenizer, origin, corpus, data);
    }
    set_mask_token(mlm, tokenizer, origin);
  }
  // --val-fraction F: evaluate the same tail split `sqa train` held out; default all data.
  if (a.has("val-fraction")) {
    const double f = a.get_double("val-fraction", 0.05);
    corpus = split_corpus(corpus, 1.0 - f, f).validation;
  }
  BatchOptions bo;
  bo.batch_size = static_cast<int>(a.get_int("batch", 8));
  bo.context = static_cast<int>(a.get_int("context", std::min(cfg.max_seq_len, 128)));
  bo.mode = parse_mode(a.get("mode", "pack"));
  bo.count_pad_in_loss = a.flag("count-pad");
  bo.shuffle = false;
  const int32_t eos = shard ? 0 : tokenizer.eos_id();
  const int32_t pad = shard ? 1 : tokenizer.pad_id();
  bo.eos_id = eos >= 0 ? eos : 0;
  bo.pad_id = pad >= 0 ? pad : bo.eos_id;
  mlm.pad_id = bo.pad_id;
  if (!cfg.causal && corpus.vocab_size > 0) mlm.vocab_size = corpus.vocab_size;
  const BatchLoader loader(std::move(corpus), bo);
  const int64_t max_batches = a.get_int("max-batches", 0);
  const EvalResult r =
      gpu ? evaluate(*gpu, loader, max_batches, &mlm) : evaluate(model, loader, max_batches, &mlm);
  if (!cfg.causal) {
    std::printf("eval %s: masked-LM, %.0f%% of the positions chosen, mask seed %llu\n",
                model_dir.c_str(), 100 * mlm.probability,
                static_cast<unsigned long long>(mlm.eval_seed));
  }
  std::printf(
      "eval %s: %lld batches, %.0f tokens | loss %.4f | ppl %.3f | acc %.2f%% | %.0f "
      "tok/s\n",
      model_dir.c_str(), static_cast<long long>(r.batches), r.tokens, r.loss, r.perplexity,
      100 * r.accuracy, r.tokens_per_second);
  if (a.has("json")) {
    json j{{"loss", r.loss},
           {"perplexity", r.perplexity},
           {"accuracy", r.accuracy},
           {"tokens", r.tokens},
           {"tokens_per_s", r.tokens_per_second},
           {"device", gpu ? "cuda" : "cpu"}};
    if (!cfg.causal) {
      j["objective"] = "masked-lm";
      j["mlm_probability"] = mlm.probability;
      j["mlm_seed"] = mlm.eval_seed;
    }
    write_file_atomic(a.get("json", ""), j.dump(2) + "\n");
  }
  return 0;
}

int cmd_generate(const std::vector<std::string>& argv) {
  const Args a(argv, {"help"});
  if (print_help(a, kGenerateUsage)) return 0;
  a.reject_unknown({"model", "prompt", "tokenizer", "tokens", "temperature", "top-k", "top-p",
                    "seed", "device"});
  const std::string model_dir = a.require("model");
  const ModelConfig cfg = load_model_config_for(model_dir);
  require(cfg.causal, "sqa generate needs a decoder (causal) model; this config is an encoder");
  Model<float> model(cfg);
  load_model_weights(model, model_dir);
  std::unique_ptr<CudaModel> gpu;
  if (parse_device(a) == Device::cuda) {
    gpu = std::make_unique<CudaModel>(cfg);
    gpu->set_weights(model.weights().data());
  }
  const Tokenizer tokenizer = get_tokenizer(a, model_dir + "/tokenizer.json", nullptr, 0);
  const std::string prompt = a.get("prompt", "");
  const int64_t max_new = a.get_int("tokens", 100);
  SamplingOptions sampling;
  sampling.temperature = a.get_double("temperature", sampling.temperature);
  sampling.top_k = a.get_int("top-k", sampling.top_k);
  sampling.top_p = a.get_double("top-p", sampling.top_p);
  validate(sampling);
  require(max_new >= 1, "option --tokens (", max_new, ") must be at least 1");
  // Rows of a vocabulary padded past the tokenizer's ids have no text: never sample them.
  const int usable = std::min(cfg.vocab_size, tokenizer.vocab_size());
  std::vector<int32_t> ids = tokenizer.encode(prompt);
  if (ids.empty()) ids.push_back(tokenizer.eos_id() >= 0 ? tokenizer.eos_id() : 0);
  const int64_t total =
      std::min<int64_t>(cfg.max_seq_len, static_cast<int64_t>(ids.size()) + max_new);
  require(static_cast<int64_t>(ids.size()) < total, "the prompt (", ids.size(),
          " tokens) fills the context (", cfg.max_seq_len, ")");
  std::mt19937_64 rng(static_cast<uint64_t>(a.get_int("seed", 1)));
  const auto t0 = now_seconds();
  const float* logits = nullptr;
  if (gpu) {
    gpu->decode_reset(1, total);
    logits = gpu->decode_step(ids.data(), static_cast<int64_t>(ids.size()));
  } else {
    model.decode_reset(total);
    logits = model.decode_step(ids.data(), static_cast<int64_t>(ids.size()));
  }
  const size_t prompt_len = ids.size();
  while (static_cast<int64_t>(ids.size()) < total) {
    const int32_t next = sample_token(logits, usable, sampling, rng);
    ids.push_back(next);
    if (next == tokenizer.eos_id()) break;
    if (static_cast<int64_t>(ids.size()) >= total) break;
    logits = gpu ? gpu->decode_step(&next, 1) : model.decode_step(&next, 1);
  }
  const double secs = now_seconds() - t0;
  const std::vector<int32_t> generated(ids.begin() + static_cast<long>(prompt_len), ids.end());
  std::printf("%s%s\n", prompt.c_str(), tokenizer.decode(generated).c_str());
  std::fprintf(stderr, "generated %zu tokens in %.2f s (%.1f tok/s, %s)\n", generated.size(), secs,
               generated.size() / secs, gpu ? "cuda, KV cache" : "KV cache");
  return 0;
}

}  // namespace sqa::cli
