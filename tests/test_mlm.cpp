// The masked-LM objective of encoders (train.hpp): BERT masking statistics, determinism per
// (seed, step, position), the loss over the chosen positions only against a hand computation,
// the wiring of a training step, exact resume, an encoder learning real text (python3.11-doc),
// and errors that name the value and the rule.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "data/data_test_util.hpp"
#include "sqa/error.hpp"
#include "sqa/train.hpp"
#include "test_util.hpp"

namespace sqa {
namespace {

namespace fs = std::filesystem;

bool small_scale() {
  const char* s = std::getenv("SQA_TEST_SCALE");
  return s && std::string(s) == "small";
}

// A batch of random tokens in [3, vocab) whose rows end in a run of padding (id 1), as the
// loader's pad mode gives.
Batch random_batch(int rows, int context, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Batch b;
  b.batch_size = rows;
  b.context = context;
  const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(context);
  b.inputs.resize(n);
  b.targets.resize(n);
  b.loss_mask.assign(n, 1.0f);
  for (int r = 0; r < rows; ++r) {
    const int real = context / 2 + static_cast<int>(rng() % static_cast<uint64_t>(context / 2));
    for (int t = 0; t < context; ++t) {
      const size_t i = static_cast<size_t>(r) * context + t;
      b.inputs[i] = t < real ? 3 + static_cast<int32_t>(rng() % (vocab - 3)) : 1;
      b.targets[i] = static_cast<int32_t>(rng() % vocab);  // next-token targets, overwritten
    }
  }
  return b;
}

MlmConfig mlm_config(int vocab, double probability = 0.15) {
  MlmConfig m;
  m.probability = probability;
  m.mask_id = 2;
  m.pad_id = 1;
  m.vocab_size = vocab;
  return m;
}

// Fractions over a large sample: chosen share of the non-pad positions, and the 80/10/10 split
// of the chosen ones; pads are never chosen, targets are the original tokens, unchosen inputs
// are untouched. Tolerances are about 5 standard deviations of the binomial counts.
TEST(Mlm, MaskingStatistics) {
  const int vocab = 5000;
  for (double p : {0.05, 0.15, 0.5}) {
    const Batch original = random_batch(64, 512, vocab, 11);
    Batch b = original;
    const MlmConfig m = mlm_config(vocab, p);
    apply_mlm(b, m, mlm_seed(42, 7, 0));
    double real = 0, chosen = 0, masked = 0, random = 0, kept = 0;
    for (size_t i = 0; i < b.inputs.size(); ++i) {
      const int32_t orig = original.inputs[i];
      ASSERT_EQ(b.targets[i], orig) << i;
      if (orig == m.pad_id) {
        ASSERT_EQ(b.loss_mask[i], 0.0f) << "pad chosen at " << i;
        ASSERT_EQ(b.inputs[i], orig);
        continue;
      }
      ++real;
      if (b.loss_mask[i] == 0.0f) {
        ASSERT_EQ(b.inputs[i], orig) << i;
        continue;
      }
      ASSERT_EQ(b.loss_mask[i], 1.0f);
      ++chosen;
      ASSERT_TRUE(b.inputs[i] >= 0 && b.inputs[i] < vocab) << b.inputs[i];
      if (b.inputs[i] == m.mask_id) {
        ++masked;
      } else if (b.inputs[i] != orig) {
        ++random;
      } else {
        ++kept;  // includes the rare random draw equal to the original (1 / vocab)
      }
    }
    const double sd = std::sqrt(p * (1 - p) / real);
    EXPECT_NEAR(chosen / real, p, 5 * sd) << "p " << p;
    EXPECT_NEAR(masked / chosen, 0.8, 5 * std::sqrt(0.16 / chosen)) << "p " << p;
    EXPECT_NEAR(random / chosen, 0.1, 5 * std::sqrt(0.09 / chosen)) << "p " << p;
    EXPECT_NEAR(kept / chosen, 0.1, 5 * std::sqrt(0.09 / chosen)) << "p " << p;
    EXPECT_EQ(chosen, b.counted_tokens());
  }
}

bool same_batch(const Batch& a, const Batch& b) {
  return a.inputs == b.inputs && a.targets == b.targets && a.loss_mask == b.loss_mask;
}

// Masks are a pure function of (seed, step, micro-batch, position): the same arguments give the
// same batch; another step, micro-batch or run seed gives another; and a window's masks do not
// depend on how windows are grouped into batches (first_position).
TEST(Mlm, DeterministicPerSeedStepAndPosition) {
  const int vocab = 300;
  const Batch original = random_batch(8, 64, vocab, 3);
  const MlmConfig m = mlm_config(vocab);
  auto masked = [&](uint64_t seed) {
    Batch b = original;
    apply_mlm(b, m, seed);
    return b;
  };
  const Batch a = masked(mlm_seed(5, 10, 0));
  EXPECT_TRUE(same_batch(a, masked(mlm_seed(5, 10, 0))));
  EXPECT_FALSE(same_batch(a, masked(mlm_seed(5, 11, 0))));
  EXPECT_FALSE(same_batch(a, masked(mlm_seed(5, 10, 1))));
  EXPECT_FALSE(same_batch(a, masked(mlm_seed(6, 10, 0))));
  // The masking seed is not the step's dropout seed: the two are independent streams.
  EXPECT_NE(mlm_seed(5, 10, 0), mlm_seed(5, 10, 1));
  for (uint64_t pos = 0; pos < 1000; ++pos) {
    int32_t t1 = -1, t2 = -1;
    const MlmChoice c1 = mlm_choice(9, pos, 0.3, vocab, &t1);
    const MlmChoice c2 = mlm_choice(9, pos, 0.3, vocab, &t2);
    ASSERT_EQ(c1, c2);
    if (c1 == MlmChoice::random) {
      ASSERT_EQ(t1, t2);
    }
  }
  // Rows 4..7 masked on their own, starting at their position in the whole batch.
  Batch tail;
  tail.batch_size = 4;
  tail.context = 64;
  const size_t half = original.inputs.size() / 2;
  tail.inputs.assign(original.inputs.begin() + static_cast<long>(half), original.inputs.end());
  tail.targets.assign(half, 0);
  tail.loss_mask.assign(half, 1.0f);
  apply_mlm(tail, m, mlm_seed(5, 10, 0), half);
  EXPECT_TRUE(std::equal(tail.inputs.begin(), tail.inputs.end(), a.inputs.begin() + half));
  EXPECT_TRUE(std::equal(tail.loss_mask.begin(), tail.loss_mask.end(), a.loss_mask.begin() + half));
}

TEST(Mlm, BadSettingsNameTheValueAndTheRule) {
  for (double p : {0.0, 1.0, 1.5, -0.1}) {
    MlmConfig m = mlm_config(100, p);
    test::expect_error([&] { m.validate(); }, {"probability", "(0, 1)"});
  }
  test::expect_error([] { mlm_config(100, 1.5).validate(); }, {"1.5"});
  MlmConfig no_mask = mlm_config(100);
  no_mask.mask_id = -1;
  test::expect_error([&] { no_mask.validate(); }, {"mask_id (-1)", "<mask>"});
  MlmConfig outside = mlm_config(100);
  outside.mask_id = 100;
  test::expect_error([&] { outside.validate(); }, {"mask_id (100)", "[0, 100)"});
}

// Synthetic corpus with learnable structure (as test_train.cpp): repeating short patterns of
// ids 3..vocab-1 (0 = EOS, 1 = pad, 2 = mask).
TokenCorpus make_corpus(int vocab, int docs, uint64_t seed) {
  std::mt19937_64 rng(seed);
  TokenCorpus c;
  c.vocab_size = vocab;
  for (int d = 0; d < docs; ++d) {
    const int period = 2 + static_cast<int>(rng() % 4);
    std::vector<int32_t> pat, ids;
    for (int i = 0; i < period; ++i) pat.push_back(3 + static_cast<int32_t>(rng() % (vocab - 3)));
    const int len = 20 + static_cast<int>(rng() % 40);
    for (int i = 0; i < len; ++i) ids.push_back(pat[static_cast<size_t>(i % period)]);
    c.add_doc(ids);
  }
  return c;
}

ModelConfig encoder(const std::string& extra = "") {
  std::string j = R"({"architecture": "encoder", "vocab_size": 32, "hidden_size": 32,
      "num_hidden_layers": 2, "num_attention_heads": 4, "attention_variant": "sqa",
      "intermediate_size": 48, "max_position_embeddings": 32)";
  if (!extra.empty()) j += ", " + extra;
  return parse_config(j + "}");
}

BatchLoader make_loader(int batch, BatchMode mode = BatchMode::pack) {
  BatchOptions o;
  o.batch_size = batch;
  o.context = 16;
  o.eos_id = 0;
  o.pad_id = 1;
  o.mode = mode;
  o.seed = 5;
  return BatchLoader(make_corpus(32, 60, 3), o);
}

TrainConfig train_config(int64_t steps) {
  TrainConfig t;
  t.steps = steps;
  t.optim.lr = 3e-3;
  t.seed = 77;
  t.grad_accum = 2;
  t.mlm.mask_id = 2;
  t.mlm.probability = 0.25;
  return t;
}

// Hand computation of the masked-LM loss in float64 from the logits: -log softmax at the
// target over the chosen positions only.
struct HandLoss {
  double loss_sum = 0, count = 0, correct = 0;
};
void add_hand_loss(HandLoss& h, const float* logits, const Batch& b, int vocab) {
  for (size_t i = 0; i < b.targets.size(); ++i) {
    if (b.loss_mask[i] == 0.0f) continue;
    const float* row = logits + i * static_cast<size_t>(vocab);
    double mx = row[0];
    int arg = 0;
    for (int v = 1; v < vocab; ++v) {
      if (row[v] > mx) {
        mx = row[v];
        arg = v;
      }
    }
    double sum = 0;
    for (int v = 0; v < vocab; ++v) sum += std::exp(row[v] - mx);
    h.loss_sum += std::log(sum) + mx - row[b.targets[i]];
    h.count += 1;
    h.correct += arg == b.targets[i] ? 1 : 0;
  }
}

// evaluate() of an encoder: the loss and accuracy over the chosen positions of the fixed
// evaluation masks equal a hand computation from the logits; targets outside the chosen
// positions do not matter; evaluation is repeatable.
TEST(Mlm, LossCountsOnlyChosenPositions) {
  for (BatchMode mode : {BatchMode::pack, BatchMode::pad}) {
    Model<float> model(encoder());
    model.init_weights(9);
    const BatchLoader loader = make_loader(4, mode);
    MlmConfig m = mlm_config(32, 0.3);
    m.eval_seed = 123;
    const int64_t batches = 3;
    const EvalResult e = evaluate(model, loader, batches, &m);
    HandLoss h;
    for (int64_t i = 0; i < batches; ++i) {
      Batch b = loader.eval_batch(i);
      apply_mlm(b, m, mlm_seed(m.eval_seed, 0, 0), static_cast<uint64_t>(i) * 4 * 16);
      // Unchosen targets are garbage on purpose: they must not count.
      std::vector<int32_t> garbage = b.targets;
      for (size_t k = 0; k < garbage.size(); ++k) {
        if (b.loss_mask[k] == 0.0f) garbage[k] = static_cast<int32_t>((k * 7) % 32);
      }
      const LossStats s = model.forward(b.inputs.data(), garbage.data(), b.loss_mask.data(),
                                        b.batch_size, b.context, false);
      add_hand_loss(h, model.logits(), b, 32);
      EXPECT_GT(s.tokens, 0);
    }
    ASSERT_GT(h.count, 0);
    EXPECT_EQ(e.tokens, h.count);
    EXPECT_NEAR(e.loss, h.loss_sum / h.count, 1e-5 * e.loss);
    EXPECT_NEAR(e.accuracy, h.correct / h.count, 1e-12);
    EXPECT_NEAR(e.perplexity, std::exp(e.loss), 1e-9 * e.perplexity);
    const EvalResult again = evaluate(model, loader, batches, &m);
    EXPECT_EQ(again.loss, e.loss);
  }
  Model<float> model(encoder());
  model.init_weights(9);
  test::expect_error([&] { evaluate(model, make_loader(4), 1); }, {"encoder", "masked-LM"});
}

// A training step of an encoder is the step of a model on the batch masked with
// mlm_seed(run seed, step, micro): the same loss from a separate forward.
TEST(Mlm, TrainerStepTrainsOnTheMaskedBatch) {
  const ModelConfig mc = encoder(R"("ffn_dropout": 0.0)");
  TrainConfig tc = train_config(3);
  tc.grad_accum = 1;
  Trainer trainer(mc, tc, make_loader(4));
  const double loss0 = trainer.step().loss;

  Model<float> model(mc);
  model.init_weights(tc.seed);
  BatchLoader loader = make_loader(4);
  Batch b = loader.next();
  MlmConfig m = tc.mlm;
  m.vocab_size = 32;
  m.pad_id = -1;
  apply_mlm(b, m, mlm_seed(tc.seed, 0, 0));
  const LossStats s = model.forward(b.inputs.data(), b.targets.data(), b.loss_mask.data(),
                                    b.batch_size, b.context, false);
  EXPECT_EQ(s.loss, loss0);
  EXPECT_LT(s.tokens, 0.5 * b.batch_size * b.context);  // only the chosen ~25%
}

TEST(Mlm, TrainerRefusesAnEncoderWithoutMaskToken) {
  TrainConfig tc = train_config(3);
  tc.mlm.mask_id = -1;
  test::expect_error([&] { Trainer(encoder(), tc, make_loader(4)); },
                     {"encoder", "masked-LM", "<mask>"});
  tc.mlm.mask_id = 2;
  tc.mlm.probability = 1.5;
  test::expect_error([&] { Trainer(encoder(), tc, make_loader(4)); }, {"1.5", "(0, 1)"});
}

// Killing an encoder's run and resuming it from the checkpoint continues bit-identically: the
// masks need nothing from the checkpoint.
TEST(Mlm, ResumeIsBitIdentical) {
  const int N = small_scale() ? 6 : 10;
  const ModelConfig mc = encoder();
  const fs::path dir = fs::temp_directory_path() / ("sqa_test_mlm_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  std::vector<double> straight, resumed;
  Trainer full(mc, train_config(N), make_loader(2));
  for (int s = 0; s < N; ++s) straight.push_back(full.step().loss);
  {
    Trainer first(mc, train_config(N), make_loader(2));
    for (int s = 0; s < N / 2; ++s) resumed.push_back(first.step().loss);
    first.save_checkpoint(dir.string());
    first.step();  // a run killed later than its checkpoint
  }
  Trainer second(mc, train_config(N), make_loader(2));
  second.load_checkpoint(dir.string());
  for (int s = N / 2; s < N; ++s) resumed.push_back(second.step().loss);
  for (size_t i = 0; i < straight.size(); ++i) EXPECT_EQ(straight[i], resumed[i]) << "step " << i;
  const auto& wa = full.model().weights();
  const auto& wb = second.model().weights();
  EXPECT_EQ(0, std::memcmp(wa.data(), wb.data(), wa.size() * sizeof(float)));
  fs::remove_all(dir);
}

TEST(Mlm, TokenizerForAnEncoderHasAMaskToken) {
  const std::vector<std::string> docs = {"the cat sat on the mat", "the dog sat on the log"};
  BpeTrainOptions o;
  o.vocab_size = 300;
  EXPECT_EQ(Tokenizer::train(docs, o).mask_id(), -1);  // decoder default: layout unchanged
  o.special_tokens.push_back("<mask>");
  const Tokenizer tok = Tokenizer::train(docs, o);
  EXPECT_EQ(tok.eos_id(), 0);
  EXPECT_EQ(tok.pad_id(), 1);
  EXPECT_EQ(tok.mask_id(), 2);
  EXPECT_TRUE(tok.is_special(2));
  EXPECT_EQ(Tokenizer::from_json(tok.to_json()).mask_id(), 2);
}

// An encoder learns the Python tutorial (python3.11-doc): its masked-LM loss on held-out text
// falls by more than 0.5 nats below the untrained model's (about log(vocab)).
TEST(Mlm, EncoderLearnsRealText) {
  std::vector<std::string> pages = load_documents(test::python_docs_dir() + "/tutorial");
  ASSERT_GE(pages.size(), 5u);
  pages.resize(small_scale() ? 4 : 8);
  BpeTrainOptions bpe;
  bpe.vocab_size = 512;
  bpe.special_tokens.push_back("<mask>");
  const Tokenizer tok = Tokenizer::train(pages, bpe);
  TokenCorpus corpus = tokenize_documents(tok, pages);
  corpus.vocab_size = tok.vocab_size();
  CorpusSplit split = split_corpus(corpus, 0.9, 0.1);
  BatchOptions bo;
  bo.batch_size = 8;
  bo.context = 64;
  bo.eos_id = tok.eos_id();
  bo.pad_id = tok.pad_id();
  BatchOptions vo = bo;
  vo.shuffle = false;
  const BatchLoader val(std::move(split.validation), vo);
  const ModelConfig mc = parse_config(R"({"architecture": "encoder", "vocab_size": 512,
      "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
      "attention_variant": "sqa", "intermediate_size": 128, "max_position_embeddings": 64,
      "ffn_dropout": 0.0})");
  TrainConfig tc;
  tc.steps = small_scale() ? 80 : 150;
  tc.optim.lr = 5e-3;
  tc.seed = 3;
  tc.mlm.mask_id = tok.mask_id();
  tc.mlm.pad_id = tok.pad_id();
  Trainer trainer(mc, tc, BatchLoader(std::move(split.train), bo));
  const EvalResult before = trainer.evaluate(val, 4);
  double first = 0, last = 0;
  for (int64_t s = 0; s < tc.steps; ++s) {
    const StepResult r = trainer.step();
    ASSERT_TRUE(std::isfinite(r.loss));
    if (s < 10) first += r.loss / 10;
    if (s >= tc.steps - 10) last += r.loss / 10;
  }
  const EvalResult after = trainer.evaluate(val, 4);
  RecordProperty("val_loss_before", std::to_string(before.loss));
  RecordProperty("val_loss_after", std::to_string(after.loss));
  RecordProperty("val_acc_after", std::to_string(after.accuracy));
  RecordProperty("train_loss_first_last", std::to_string(first) + " " + std::to_string(last));
  EXPECT_GT(before.loss, 5.5);  // near log(512) = 6.24
  EXPECT_LT(last, first - 0.5) << "first " << first << " last " << last;
  EXPECT_LT(after.loss, before.loss - 0.5) << before.loss << " -> " << after.loss;
  EXPECT_GT(after.accuracy, 0.05);
}

}  // namespace
}  // namespace sqa
