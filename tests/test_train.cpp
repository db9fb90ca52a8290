// Training: AdamW against a float64 transcription of torch.optim.AdamW, clipping, schedules,
// gradient accumulation, learning, exact resume (N steps straight == N/2 + checkpoint +
// resume N/2, bitwise), and corrupt or truncated checkpoints.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "sqa/error.hpp"
#include "sqa/io.hpp"
#include "sqa/train.hpp"

namespace {

namespace fs = std::filesystem;

bool small_scale() {
  const char* s = std::getenv("SQA_TEST_SCALE");
  return s && std::string(s) == "small";
}

std::string temp_dir(const std::string& name) {
  const fs::path p =
      fs::temp_directory_path() / ("sqa_test_train_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

TEST(AdamW, MatchesFloat64Transcription) {
  std::mt19937_64 rng(1);
  std::normal_distribution<double> N(0, 1);
  const int n = 37;
  sqa::OptimizerConfig c;
  c.lr = 1e-2;
  c.weight_decay = 0.1;
  std::vector<float> w(n), g(n);
  std::vector<double> wd(n), m(n, 0), v(n, 0);
  for (int i = 0; i < n; ++i) wd[i] = w[i] = static_cast<float>(N(rng));
  sqa::AdamW opt(n);
  for (int t = 1; t <= 5; ++t) {
    for (int i = 0; i < n; ++i) g[i] = static_cast<float>(N(rng));
    const double lr = c.lr * t;
    opt.step(w.data(), g.data(), lr, c);
    for (int i = 0; i < n; ++i) {
      wd[i] *= 1 - lr * c.weight_decay;
      m[i] = c.beta1 * m[i] + (1 - c.beta1) * g[i];
      v[i] = c.beta2 * v[i] + (1 - c.beta2) * g[i] * static_cast<double>(g[i]);
      const double mh = m[i] / (1 - std::pow(c.beta1, t)), vh = v[i] / (1 - std::pow(c.beta2, t));
      wd[i] -= lr * mh / (std::sqrt(vh) + c.eps);
    }
  }
  for (int i = 0; i < n; ++i) EXPECT_NEAR(w[i], wd[i], 1e-5 * (1 + std::abs(wd[i]))) << i;
  EXPECT_EQ(opt.steps(), 5);
}

TEST(Clip, NormAndScaling) {
  std::vector<float> g = {3, 4, 0, 0, 0};
  EXPECT_DOUBLE_EQ(sqa::clip_grad_norm(g.data(), 5, 10.0), 5.0);
  EXPECT_EQ(g[0], 3.0f);  // under the limit: untouched
  EXPECT_DOUBLE_EQ(sqa::clip_grad_norm(g.data(), 5, 1.0), 5.0);
  EXPECT_NEAR(std::hypot(g[0], g[1]), 1.0, 1e-6);
  EXPECT_NEAR(g[0] / g[1], 0.75, 1e-6);
}

TEST(Schedule, WarmupCosineAndCosine) {
  using sqa::Schedule;
  const double lr = 1e-3;
  // 100 steps, 25% warm-up: linear to the peak at step 24, cosine to 0 at the end.
  EXPECT_NEAR(sqa::learning_rate(Schedule::warmup_cosine, lr, 0, 100, 0.25), lr / 25, 1e-15);
  EXPECT_NEAR(sqa::learning_rate(Schedule::warmup_cosine, lr, 24, 100, 0.25), lr, 1e-15);
  EXPECT_NEAR(sqa::learning_rate(Schedule::warmup_cosine, lr, 25, 100, 0.25), lr, 1e-15);
  EXPECT_NEAR(sqa::learning_rate(Schedule::warmup_cosine, lr, 25 + 75 / 2.0, 100, 0.25), lr / 2,
              lr * 0.03);
  EXPECT_LT(sqa::learning_rate(Schedule::warmup_cosine, lr, 99, 100, 0.25), lr * 1e-3);
  EXPECT_NEAR(sqa::learning_rate(Schedule::cosine, lr, 0, 100, 0.25), lr, 1e-15);
  EXPECT_NEAR(sqa::learning_rate(Schedule::cosine, lr, 50, 100, 0.0), lr / 2, 1e-12);
  double prev = lr;
  for (int s = 1; s < 100; ++s) {
    const double x = sqa::learning_rate(Schedule::cosine, lr, s, 100, 0.0);
    EXPECT_LE(x, prev);
    prev = x;
  }
  EXPECT_EQ(sqa::parse_schedule("cosine"), Schedule::cosine);
  EXPECT_THROW(sqa::parse_schedule("linear"), sqa::Error);
}

// A corpus with learnable structure: documents of repeating short patterns.
sqa::TokenCorpus make_corpus(int vocab, int docs, uint64_t seed) {
  std::mt19937_64 rng(seed);
  sqa::TokenCorpus c;
  c.vocab_size = vocab;
  for (int d = 0; d < docs; ++d) {
    std::vector<int32_t> ids;
    const int period = 2 + static_cast<int>(rng() % 4);
    std::vector<int32_t> pat;
    for (int i = 0; i < period; ++i) pat.push_back(1 + static_cast<int32_t>(rng() % (vocab - 1)));
    const int len = 20 + static_cast<int>(rng() % 40);
    for (int i = 0; i < len; ++i) ids.push_back(pat[static_cast<size_t>(i % period)]);
    c.add_doc(ids);
  }
  return c;
}

sqa::ModelConfig small_model(const std::string& extra = "") {
  std::string j = R"({"vocab_size": 32, "hidden_size": 32, "num_hidden_layers": 2,
      "num_attention_heads": 4, "attention_variant": "sqa", "intermediate_size": 48,
      "max_position_embeddings": 32)";
  if (!extra.empty()) j += ", " + extra;
  return sqa::parse_config(j + "}");
}

sqa::BatchLoader make_loader(int batch, bool shuffle = true) {
  sqa::BatchOptions o;
  o.batch_size = batch;
  o.context = 16;
  o.eos_id = 0;
  o.shuffle = shuffle;
  o.seed = 5;
  return sqa::BatchLoader(make_corpus(32, 60, 3), o);
}

sqa::TrainConfig train_config(int64_t steps) {
  sqa::TrainConfig t;
  t.steps = steps;
  t.optim.lr = 3e-3;
  t.seed = 77;
  t.grad_accum = 2;
  return t;
}

TEST(Trainer, LossFalls) {
  const int steps = small_scale() ? 60 : 150;
  sqa::TrainConfig tc = train_config(steps);
  tc.optim.lr = 1e-2;
  sqa::Trainer tr(small_model(), tc, make_loader(4));
  double first = 0, last = 0;
  for (int s = 0; s < steps; ++s) {
    const sqa::StepResult r = tr.step();
    ASSERT_TRUE(std::isfinite(r.loss));
    if (s == 0) first = r.loss;
    last = r.loss;
  }
  EXPECT_LT(last, 0.6 * first) << "first " << first << " last " << last;
  const sqa::EvalResult e = sqa::evaluate(tr.model(), tr.loader(), 4);
  EXPECT_GT(e.accuracy, 0.2);
  EXPECT_NEAR(e.perplexity, std::exp(e.loss), 1e-9 * e.perplexity);
}

// Accumulating 2 micro-batches of 2 equals one batch of 4 (no dropout, full masks): same loss
// and, after one step, nearly the same weights.
TEST(Trainer, GradientAccumulationMatchesLargerBatch) {
  const sqa::ModelConfig mc = small_model(R"("ffn_dropout": 0.0)");
  sqa::TrainConfig a = train_config(4), b = train_config(4);
  a.grad_accum = 2;
  b.grad_accum = 1;
  sqa::Trainer ta(mc, a, make_loader(2, false)), tb(mc, b, make_loader(4, false));
  const auto ra = ta.step();
  const auto rb = tb.step();
  EXPECT_NEAR(ra.loss, rb.loss, 1e-5 * rb.loss);
  EXPECT_NEAR(ra.grad_norm, rb.grad_norm, 1e-4 * rb.grad_norm);
  double diff = 0;
  for (size_t i = 0; i < ta.model().weights().size(); ++i) {
    diff = std::max(
        diff, static_cast<double>(std::abs(ta.model().weights()[i] - tb.model().weights()[i])));
  }
  EXPECT_LT(diff, 1e-4);
}

void run_resume_check(const std::string& extra) {
  const int N = small_scale() ? 6 : 10;
  const sqa::ModelConfig mc = small_model(extra);
  const std::string dir = temp_dir("resume");
  std::vector<double> straight, resumed;
  sqa::Trainer full(mc, train_config(N), make_loader(2));
  for (int s = 0; s < N; ++s) straight.push_back(full.step().loss);
  {
    sqa::Trainer first(mc, train_config(N), make_loader(2));
    for (int s = 0; s < N / 2; ++s) resumed.push_back(first.step().loss);
    first.save_checkpoint(dir);
    // Keep training past the checkpoint, as a run killed later would have.
    first.step();
  }
  sqa::TrainConfig other_seed_init = train_config(N);
  sqa::Trainer second(mc, other_seed_init, make_loader(2));
  second.load_checkpoint(dir);
  EXPECT_EQ(second.steps_done(), N / 2);
  for (int s = N / 2; s < N; ++s) resumed.push_back(second.step().loss);
  ASSERT_EQ(straight.size(), resumed.size());
  for (size_t i = 0; i < straight.size(); ++i) {
    EXPECT_EQ(straight[i], resumed[i]) << "step " << i;  // bitwise
  }
  const auto& wa = full.model().weights();
  const auto& wb = second.model().weights();
  ASSERT_EQ(wa.size(), wb.size());
  EXPECT_EQ(0, std::memcmp(wa.data(), wb.data(), wa.size() * sizeof(float)));
  fs::remove_all(dir);
}

TEST(Checkpoint, ResumeIsBitIdentical) {
  run_resume_check("");
}
TEST(Checkpoint, ResumeIsBitIdenticalMoe) {
  run_resume_check(R"("num_experts": 4, "moe_intermediate_size": 16)");
}

// Two identical runs at a context long enough for several attention key blocks per thread give
// bitwise identical weights (no reduction whose order depends on thread timing).
TEST(Trainer, RunsAreBitReproducible) {
  const sqa::ModelConfig mc = small_model(R"("max_position_embeddings": 512)");
  auto loader = [] {
    sqa::BatchOptions o;
    o.batch_size = 2;
    o.context = 320;
    o.eos_id = 0;
    o.seed = 5;
    return sqa::BatchLoader(make_corpus(32, 200, 3), o);
  };
  sqa::Trainer a(mc, train_config(3), loader()), b(mc, train_config(3), loader());
  for (int s = 0; s < 3; ++s) EXPECT_EQ(a.step().loss, b.step().loss);
  EXPECT_EQ(0, std::memcmp(a.model().weights().data(), b.model().weights().data(),
                           a.model().weights().size() * sizeof(float)));
}

TEST(Checkpoint, CorruptOrTruncatedFailsClearlyAndChangesNothing) {
  const sqa::ModelConfig mc = small_model();
  const std::string dir = temp_dir("corrupt");
  sqa::Trainer a(mc, train_config(4), make_loader(2));
  a.step();
  a.save_checkpoint(dir);
  const std::string good = sqa::read_file(dir + "/checkpoint.safetensors");
  sqa::Trainer b(mc, train_config(4), make_loader(2));
  const std::vector<float> before = b.model().weights();

  auto expect_fail = [&](const std::string& bytes, const std::string& what) {
    const std::string bad = temp_dir("corrupt_" + what);
    sqa::write_file_atomic(bad + "/checkpoint.safetensors", bytes);
    try {
      b.load_checkpoint(bad);
      ADD_FAILURE() << what << ": no error";
    } catch (const sqa::Error& e) {
      EXPECT_NE(std::string(e.what()).find("checkpoint.safetensors"), std::string::npos)
          << what << ": " << e.what();
    }
    EXPECT_EQ(b.model().weights(), before) << what;
    EXPECT_EQ(b.steps_done(), 0) << what;
    fs::remove_all(bad);
  };
  expect_fail(good.substr(0, good.size() / 2), "truncated");
  expect_fail(good.substr(0, 5), "tiny");
  std::string flipped = good;
  flipped[10] = '#';  // inside the JSON header
  expect_fail(flipped, "header");
  // Another model's checkpoint.
  sqa::Trainer other(small_model(R"("attention_variant": "mha")"), train_config(4), make_loader(2));
  const std::string odir = temp_dir("other");
  other.save_checkpoint(odir);
  expect_fail(sqa::read_file(odir + "/checkpoint.safetensors"), "other_model");
  fs::remove_all(odir);
  // The good checkpoint on disk is untouched by all of this, and still loads.
  EXPECT_EQ(sqa::read_file(dir + "/checkpoint.safetensors"), good);
  b.load_checkpoint(dir);
  EXPECT_EQ(b.steps_done(), 1);
  EXPECT_EQ(b.model().weights(), a.model().weights());
  fs::remove_all(dir);
}

TEST(Checkpoint, ExportedModelLoadsBack) {
  const sqa::ModelConfig mc = small_model(R"("final_norm": true)");
  const std::string dir = temp_dir("export");
  sqa::Trainer a(mc, train_config(2), make_loader(2));
  a.step();
  sqa::save_model(a.model(), dir);
  const sqa::ModelConfig back = sqa::load_model_config_for(dir);
  EXPECT_EQ(sqa::config_to_json(back), sqa::config_to_json(mc));
  sqa::Model<float> m(back);
  sqa::load_model_weights(m, dir);
  EXPECT_EQ(m.weights(), a.model().weights());
  fs::remove_all(dir);
}

}  // namespace
