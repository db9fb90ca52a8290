// The transformer: parameter counts of the paper's configs, config errors, whole-model
// gradient checks in double against central differences (dense, GELU, tied, final norm, rSQA
// layer, sliding window, encoder, MoE with both aux losses), float against double, and
// KV-cache decoding against the full forward.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "sqa/error.hpp"
#include "sqa/model.hpp"

namespace {

bool small_scale() {
  const char* s = std::getenv("SQA_TEST_SCALE");
  return s && std::string(s) == "small";
}

std::string config_path(const std::string& rel) {
  return std::string(SQA_SOURCE_DIR) + "/" + rel;
}

TEST(ModelConfig, PaperParameterCounts) {
  const std::pair<const char*, int64_t> expected[] = {
      {"configs/paper/dense-mha.json", 11966224},   {"configs/paper/dense-gqa.json", 11179792},
      {"configs/paper/dense-mqa.json", 10983184},   {"configs/paper/dense-sqa.json", 10655504},
      {"configs/paper/dense-ssqa.json", 10917648},  {"configs/paper/dense-xsqa.json", 10393360},
      {"configs/paper/dense-xsmqa.json", 10196752}, {"configs/paper/moe-gqa.json", 8666248},
  };
  for (const auto& [path, count] : expected) {
    const sqa::ModelConfig c = sqa::load_config(config_path(path));
    EXPECT_EQ(sqa::count_parameters(c), count) << path;
  }
  // The other MoE variants differ from MoE GQA (H_q 8, H_kv 2) only in the attention
  // projections of the 6 layers (d_model 128, d_head 16): e.g. MQA saves the k/v rows of one KV
  // head, 6 * 2 * 16 * 128 = 24,576.
  const std::pair<const char*, int64_t> moe[] = {
      {"mqa", 8666248 - 24576},
      {"sqa", 8666248 - 6 * (4 * 16 * 128 + 128 * 4 * 16)},
      {"ssqa", 8666248 - 6 * (4 * 16 * 128 + 128 * 4 * 16) + 6 * 2 * 2 * 16 * 128},
      {"xsqa", 8666248 - 6 * (6 * 16 * 128 + 128 * 6 * 16)},
  };
  for (const auto& [v, count] : moe) {
    const sqa::ModelConfig c =
        sqa::load_config(config_path(std::string("configs/paper/moe-") + v + ".json"));
    EXPECT_EQ(sqa::count_parameters(c), count) << v;
  }
}

TEST(ModelConfig, RoundTripsThroughJson) {
  for (const char* path :
       {"configs/paper/dense-sqa.json", "configs/paper/moe-xsqa.json", "configs/demo/sqa.json"}) {
    const sqa::ModelConfig a = sqa::load_config(config_path(path));
    const sqa::ModelConfig b = sqa::parse_config(sqa::config_to_json(a));
    EXPECT_EQ(sqa::config_to_json(a), sqa::config_to_json(b)) << path;
    EXPECT_EQ(sqa::count_parameters(a), sqa::count_parameters(b));
  }
}

void expect_error(const std::string& json, const std::string& fragment) {
  try {
    sqa::parse_config(json, "cfg");
    ADD_FAILURE() << "no error for " << json;
  } catch (const sqa::Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos)
        << "message '" << e.what() << "' lacks '" << fragment << "'";
  }
}

TEST(ModelConfig, BadConfigsNameTheFieldAndRule) {
  const std::string base =
      R"("vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
         "intermediate_size": 128, "max_position_embeddings": 64)";
  EXPECT_NO_THROW(sqa::parse_config("{" + base + "}"));
  expect_error("{" + base + R"(, "num_query_heads": 6, "num_key_value_heads": 4})",
               "num_query_heads (6) must be a multiple of num_key_value_heads (4)");
  expect_error("{" + base + R"(, "attention_variant": "fastest"})", "unknown variant 'fastest'");
  expect_error(R"({"vocab_size": 100, "hidden_size": 60, "num_hidden_layers": 2,
      "num_attention_heads": 8, "intermediate_size": 128, "max_position_embeddings": 64})",
               "hidden_size (60) must be divisible by num_attention_heads (8)");
  expect_error(R"({"vocab_size": 100, "hidden_size": 64, "num_attention_heads": 8,
      "intermediate_size": 128, "max_position_embeddings": 64})",
               "missing required field 'num_hidden_layers'");
  expect_error("{" + base + R"(, "num_heads": 3})", "unknown field 'num_heads'");
  expect_error("{" + base + R"(, "hidden_act": "relu"})", "hidden_act ('relu')");
  expect_error("{" + base + R"(, "head_dim": 7})", "head_dim (7) must be even");
  expect_error("{" + base + R"(, "num_experts": 4, "moe_intermediate_size": 32,
      "num_experts_per_tok": 5})",
               "num_experts_per_tok (5) must be in [1, num_experts (4)]");
  expect_error("{" + base + R"(, "layer_types": [{"attention_variant": "sqa"}]})",
               "layer_types has 1 entries but num_hidden_layers is 2");
  expect_error("{" + base + R"(, "hidden_size": "64"})",
               "field 'hidden_size' (\"64\") must be an integer");
  expect_error("{" + base + R"(, "ffn_dropout": 1.5})", "ffn_dropout (1.5) must be in [0, 1)");
  expect_error("{" + base + R"(, "sliding_window": -4})", "'sliding_window' (-4) is out of range");
  expect_error("{ not json", "not valid JSON");
  EXPECT_THROW(sqa::load_config("/nonexistent/config.json"), sqa::Error);
}

// Tiny shapes gain nothing from threads, and on a loaded machine every parallel region of the
// ~1000 forwards of a gradient check costs a scheduling round trip (23 s instead of 0.2 s for
// the preset sweep): these tests run on one thread. ModelFloat and test_train keep all threads.
struct OneThread {
  int saved = omp_get_max_threads();
  OneThread() { omp_set_num_threads(1); }
  ~OneThread() { omp_set_num_threads(saved); }
  OneThread(const OneThread&) = delete;
  OneThread& operator=(const OneThread&) = delete;
};

// A tiny config for gradient checks; `extra` is merged JSON.
sqa::ModelConfig tiny(const std::string& extra) {
  std::string json = R"({"vocab_size": 13, "hidden_size": 12, "num_hidden_layers": 2,
      "num_attention_heads": 4, "head_dim": 4, "intermediate_size": 10,
      "max_position_embeddings": 16, "ffn_dropout": 0.25)";
  if (!extra.empty()) json += ", " + extra;
  json += "}";
  return sqa::parse_config(json, "tiny");
}

struct Batch {
  std::vector<int32_t> tokens, targets;
  std::vector<float> mask;
};

Batch make_batch(const sqa::ModelConfig& c, int B, int T, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Batch b;
  for (int i = 0; i < B * T; ++i) {
    b.tokens.push_back(static_cast<int32_t>(rng() % c.vocab_size));
    b.targets.push_back(static_cast<int32_t>(rng() % c.vocab_size));
    b.mask.push_back(rng() % 5 == 0 ? 0.0f : 1.0f);
  }
  return b;
}

// Whole-model check: analytic gradient vs central differences of loss + aux_loss, with
// dropout on (its masks are a pure function of the seed) and a loss mask.
void gradient_check(const sqa::ModelConfig& c, int B, int T, double tol = 1e-6) {
  const OneThread one;
  sqa::Model<double> m(c);
  m.init_weights(7);
  const Batch b = make_batch(c, B, T, 11);
  const double scale = 0.5;  // loss_scale, as with gradient accumulation
  auto loss = [&] {
    const sqa::LossStats s =
        m.forward(b.tokens.data(), b.targets.data(), b.mask.data(), B, T, true, 99, scale);
    return scale * (s.loss + s.aux_loss);
  };
  m.zero_grad();
  loss();
  m.backward();
  const std::vector<double> g = m.grads();
  std::vector<double>& w = m.weights();
  // Every parameter tensor is probed; large ones at a fixed random subset of elements.
  std::mt19937_64 rng(3);
  const int per_tensor = small_scale() ? 3 : 12;
  double num = 0, den = 0;
  for (const sqa::ParamSpec& p : m.params()) {
    double pnum = 0, pden = 0;
    for (int k = 0; k < per_tensor; ++k) {
      const int64_t i = p.offset + static_cast<int64_t>(rng() % static_cast<uint64_t>(p.numel()));
      const double keep = w[static_cast<size_t>(i)];
      const double eps = 1e-5;
      w[static_cast<size_t>(i)] = keep + eps;
      const double lp = loss();
      w[static_cast<size_t>(i)] = keep - eps;
      const double lm = loss();
      w[static_cast<size_t>(i)] = keep;
      const double fd = (lp - lm) / (2 * eps);
      const double an = g[static_cast<size_t>(i)];
      pnum += (an - fd) * (an - fd);
      pden += fd * fd;
    }
    num += pnum;
    den += pden;
    EXPECT_LE(std::sqrt(pnum), tol * std::sqrt(pden) + 1e-9) << p.name;
  }
  EXPECT_LT(std::sqrt(num / den), tol);
}

TEST(ModelGrad, DenseSwiGlu) {
  gradient_check(tiny(R"("attention_variant": "gqa")"), 2, 5);
}
TEST(ModelGrad, GeluTiedFinalNormNoHeadBias) {
  gradient_check(tiny(R"("attention_variant": "xsqa", "hidden_act": "gelu",
      "tie_word_embeddings": true, "final_norm": true, "lm_head_bias": false)"),
                 2, 5);
}
TEST(ModelGrad, PerLayerRsqaAndSlidingWindow) {
  gradient_check(tiny(R"("num_attention_heads": 8, "layer_types": [
      {"attention_variant": "rsqa"}, {"num_query_heads": 6, "num_key_value_heads": 2,
       "sliding_window": 3}])"),
                 2, 6);
}
TEST(ModelGrad, Encoder) {
  gradient_check(tiny(R"("architecture": "encoder", "attention_variant": "sqa",
      "sliding_window": 4)"),
                 2, 6);
}
TEST(ModelGrad, MoePaperAux) {
  gradient_check(tiny(R"("num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 6,
      "attention_variant": "sqa", "router_aux_loss_coef": 0.5)"),
                 2, 6);
}
TEST(ModelGrad, MoeSwitchAuxTop1) {
  gradient_check(tiny(R"("num_experts": 3, "num_experts_per_tok": 1, "moe_intermediate_size": 6,
      "router_aux_loss": "switch", "router_aux_loss_coef": 0.5)"),
                 2, 6);
}

// Property sweep: every preset, with and without a sliding window, decoder and encoder.
TEST(ModelGrad, EveryPresetSweep) {
  int i = 0;
  for (sqa::Variant v : sqa::all_variants()) {
    if (small_scale() && i % 3 != 0) {
      ++i;
      continue;
    }
    const bool window = i % 2 == 1, encoder = i % 4 == 3;
    std::string extra = std::string(R"("num_attention_heads": 8, "attention_variant": ")") +
                        std::string(sqa::variant_name(v)) + "\"";
    if (window) extra += R"(, "sliding_window": 2)";
    if (encoder) extra += R"(, "architecture": "encoder")";
    SCOPED_TRACE(extra);
    gradient_check(tiny(extra), 2, 5);
    ++i;
  }
}

TEST(ModelParams, BufferMatchesCountAndNamesAreUnique) {
  for (const char* extra : {"", R"("num_experts": 3, "moe_intermediate_size": 6)",
                            R"("tie_word_embeddings": true, "final_norm": true)"}) {
    const sqa::ModelConfig c = tiny(extra);
    sqa::Model<float> m(c);
    EXPECT_EQ(static_cast<int64_t>(m.weights().size()), sqa::count_parameters(c));
    std::set<std::string> names;
    int64_t next = 0;
    for (const auto& p : m.params()) {
      EXPECT_TRUE(names.insert(p.name).second) << p.name;
      EXPECT_EQ(p.offset, next);
      next += p.numel();
    }
  }
}

// float model (fast attention kernels, sgemm) against the double model (oracle, dgemm).
TEST(ModelFloat, MatchesDouble) {
  const sqa::ModelConfig c = tiny(R"("attention_variant": "sqa", "hidden_size": 32,
      "head_dim": 8, "num_experts": 4, "moe_intermediate_size": 16)");
  sqa::Model<double> md(c);
  sqa::Model<float> mf(c);
  md.init_weights(5);
  mf.init_weights(5);
  for (size_t i = 0; i < md.weights().size(); ++i) {
    ASSERT_EQ(mf.weights()[i], static_cast<float>(md.weights()[i]));
  }
  const int B = 2, T = 16;
  const Batch b = make_batch(c, B, T, 2);
  md.zero_grad();
  mf.zero_grad();
  const auto sd = md.forward(b.tokens.data(), b.targets.data(), b.mask.data(), B, T, true, 1);
  const auto sf = mf.forward(b.tokens.data(), b.targets.data(), b.mask.data(), B, T, true, 1);
  EXPECT_NEAR(sf.loss, sd.loss, 1e-5 * std::abs(sd.loss));
  EXPECT_NEAR(sf.aux_loss, sd.aux_loss, 1e-5 * std::abs(sd.aux_loss) + 1e-9);
  md.backward();
  mf.backward();
  double num = 0, den = 0;
  for (size_t i = 0; i < md.grads().size(); ++i) {
    const double e = mf.grads()[i] - md.grads()[i];
    num += e * e;
    den += md.grads()[i] * md.grads()[i];
  }
  EXPECT_LT(std::sqrt(num / den), 1e-4);
}

// Decoding token by token (and a prefill chunk) with the KV cache gives the logits of the
// full forward at each position, including a sliding window narrower than the sequence.
TEST(ModelDecode, KvCacheMatchesFullForward) {
  const OneThread one;
  for (const char* extra : {R"("attention_variant": "sqa")",
                            R"("attention_variant": "xsmqa", "sliding_window": 3,
                               "final_norm": true)",
                            R"("num_experts": 3, "moe_intermediate_size": 6)"}) {
    const sqa::ModelConfig c = tiny(extra);
    sqa::Model<double> m(c);
    m.init_weights(9);
    const int T = 9;
    const Batch b = make_batch(c, 1, T, 4);
    m.forward(b.tokens.data(), nullptr, nullptr, 1, T, false);
    const std::vector<double> full(m.logits(), m.logits() + T * c.vocab_size);
    m.decode_reset(T);
    const int prefill = 4;
    const double* z = m.decode_step(b.tokens.data(), prefill);
    for (int v = 0; v < c.vocab_size; ++v) {
      EXPECT_NEAR(z[v], full[static_cast<size_t>((prefill - 1) * c.vocab_size + v)], 1e-10);
    }
    for (int t = prefill; t < T; ++t) {
      z = m.decode_step(b.tokens.data() + t, 1);
      for (int v = 0; v < c.vocab_size; ++v) {
        EXPECT_NEAR(z[v], full[static_cast<size_t>(t * c.vocab_size + v)], 1e-10) << extra;
      }
    }
    EXPECT_THROW(m.decode_step(b.tokens.data(), 1), sqa::Error);
  }
}

TEST(ModelForward, RejectsOutOfVocabularyTokens) {
  const sqa::ModelConfig c = tiny("");
  sqa::Model<float> m(c);
  std::vector<int32_t> tok = {1, 2, 13};
  EXPECT_THROW(m.forward(tok.data(), nullptr, nullptr, 1, 3, false), sqa::Error);
  // backward() after an evaluation forward (no loss gradient kept) is an error, not garbage.
  tok[2] = 3;
  m.forward(tok.data(), tok.data(), nullptr, 1, 3, false);
  EXPECT_THROW(m.backward(), sqa::Error);
}

}  // namespace
