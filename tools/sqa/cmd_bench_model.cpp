// `sqa bench model`: whole-model throughput on the GPU. Times the forward (dropout on, as the
// PyTorch peer's default "train" forward mode in bench/torch_reference.py) and, with --train,
// a full training step (forward with loss, backward, gradient clipping, AdamW) over random
// tokens, and reports tokens/s, ms and MFU against the H200 bf16 peak.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "sqa/args.hpp"
#include "sqa/commands.hpp"
#include "sqa/error.hpp"
#include "sqa/io.hpp"
#include "sqa/model.hpp"
#include "sqa/model_cuda.hpp"

namespace sqa::cli {
namespace {

using json = nlohmann::json;

struct Timing {
  double median_s = 0, min_s = 0;
  int iters = 0;
};

// Median and minimum of `iters` synchronised runs after `warmup` untimed ones.
template <typename Fn>
Timing time_runs(Fn&& fn, CudaModel& model, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  model.synchronize();
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    model.synchronize();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], t.front(), iters};
}

}  // namespace

int bench_model(const Args& a) {
  a.reject_unknown(
      {"config", "device", "batch", "seq", "train", "json", "warmup", "iters", "seed", "help"});
  if (a.flag("help")) {
    std::printf(
        "usage: sqa bench model --config FILE --device cuda --batch B --seq N [--train]\n"
        "                       [--warmup 3] [--iters 10] [--seed 1] [--json out.json]\n\n"
        "Times the whole GPU model on random tokens: forward, and with --train a training step\n"
        "(forward, backward, AdamW); median of --iters synchronised runs; tokens/s and MFU\n"
        "against the H200 bf16 peak. --seed sets the weights.\n");
    return 0;
  }
  const std::string config_path = a.require("config");
  const ModelConfig cfg = load_config(config_path);
  const std::string device = a.get("device", "cuda");
  require(device == "cuda", "option --device (", device,
          ") must be 'cuda': sqa bench model times the GPU model (CPU training speed is in the "
          "progress line of sqa train)");
  const int64_t B = a.get_int("batch", 1), T = a.get_int("seq", cfg.max_seq_len);
  require(B >= 1 && T >= 1, "--batch (", B, ") and --seq (", T, ") must be at least 1");
  const int warmup = static_cast<int>(a.get_int("warmup", 3));
  const int iters = static_cast<int>(a.get_int("iters", 10));
  require(iters >= 1, "--iters (", iters, ") must be at least 1");
  // Long sequences beyond max_position_embeddings are a throughput question only (the paper's
  // 200k-token forward); RoPE positions simply continue.
  ModelConfig run_cfg = cfg;
  run_cfg.max_seq_len = std::max<int>(cfg.max_seq_len, static_cast<int>(T));

  Model<float> host(run_cfg);
  host.init_weights(static_cast<uint64_t>(a.get_int("seed", 1)));
  CudaModel model(run_cfg);
  model.set_weights(host.weights().data());
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> tok(0, cfg.vocab_size - 1);
  std::vector<int32_t> tokens(static_cast<size_t>(B * T)), targets(tokens.size());
  for (auto& t : tokens) t = tok(rng);
  for (auto& t : targets) t = tok(rng);

  const double peak = kH200Bf16PeakFlops;
  json j{{"tool", "sqa bench model"},
         {"config", config_path},
         {"name", cfg.name},
         {"batch", B},
         {"seqlen", T},
         {"parameters", count_parameters(cfg)},
         {"num_query_heads", cfg.layers[0].heads.num_query_heads},
         {"num_kv_heads", cfg.layers[0].heads.num_kv_heads},
         {"sliding_window", cfg.layers[0].sliding_window},
         {"peak_flops", peak},
         {"timing", "host clock around each synchronised call; median"}};
  const Timing fwd = time_runs(
      [&] { model.forward(tokens.data(), nullptr, nullptr, B, T, true, 1); }, model, warmup, iters);
  const double fwd_flops = forward_flops(run_cfg, B, T);
  j["forward"] = {{"median_s", fwd.median_s},
                  {"min_s", fwd.min_s},
                  {"iters", fwd.iters},
                  {"tokens_per_s", B * T / fwd.median_s},
                  {"mfu", fwd_flops / fwd.median_s / peak}};
  std::printf("%s forward  B=%lld N=%lld: %9.2f ms  %8.3f M tok/s  MFU %.1f%%\n", cfg.name.c_str(),
              static_cast<long long>(B), static_cast<long long>(T), fwd.median_s * 1e3,
              B * T / fwd.median_s / 1e6, 100 * fwd_flops / fwd.median_s / peak);
  if (a.flag("train")) {
    int64_t step = 0;
    const Timing tr = time_runs(
        [&] {
          model.zero_grad();
          model.forward(tokens.data(), targets.data(), nullptr, B, T, true,
                        static_cast<uint64_t>(++step));
          model.backward();
          model.optimizer_step({5e-4, 0.9, 0.999, 1e-8, 0.01, 1.0});
        },
        model, warmup, iters);
    const double train_flops = training_flops(run_cfg, B, T);
    j["train"] = {{"median_s", tr.median_s},
                  {"min_s", tr.min_s},
                  {"iters", tr.iters},
                  {"tokens_per_s", B * T / tr.median_s},
                  {"mfu", train_flops / tr.median_s / peak}};
    std::printf("%s train    B=%lld N=%lld: %9.2f ms  %8.3f M tok/s  MFU %.1f%%\n",
                cfg.name.c_str(), static_cast<long long>(B), static_cast<long long>(T),
                tr.median_s * 1e3, B * T / tr.median_s / 1e6,
                100 * train_flops / tr.median_s / peak);
  }
  if (a.has("json")) write_file_atomic(a.get("json", ""), j.dump(2) + "\n");
  return 0;
}

}  // namespace sqa::cli
