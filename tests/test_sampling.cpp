// sample_token: greedy, temperature, top-k, top-p, and never an id the tokenizer cannot decode.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "sqa/sampling.hpp"
#include "test_util.hpp"

namespace {

using sqa::sample_token;
using sqa::SamplingOptions;

SamplingOptions options(double temperature, int64_t top_k, double top_p) {
  SamplingOptions o;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  return o;
}

// The largest logits sit past `usable` (a padded vocabulary): no mode may return them.
TEST(Sampling, NeverPicksIdsPastTheUsableVocabulary) {
  std::vector<float> logits = {0.1f, 0.3f, 0.2f, 9.0f, 8.0f};
  std::mt19937_64 rng(5);
  EXPECT_EQ(sample_token(logits.data(), 3, options(0, 0, 1), rng), 1);
  for (const SamplingOptions& o : {options(1, 0, 1), options(5, 2, 1), options(2, 0, 0.99)}) {
    for (int i = 0; i < 2000; ++i) EXPECT_LT(sample_token(logits.data(), 3, o, rng), 3);
  }
}

TEST(Sampling, GreedyTakesTheLowerIdOnTies) {
  const std::vector<float> logits = {1.0f, 4.0f, 2.0f, 4.0f};
  std::mt19937_64 rng(1);
  EXPECT_EQ(sample_token(logits.data(), 4, options(0, 0, 1), rng), 1);
  // top-k 1 is greedy at any temperature, with the same tie rule.
  for (int i = 0; i < 100; ++i) EXPECT_EQ(sample_token(logits.data(), 4, options(3, 1, 1), rng), 1);
}

// p(a) / p(b) = exp((l_a - l_b) / T): with logits log 3 and log 1 at T = 1 the first is drawn
// 3/4 of the time; at T = 2 it is sqrt(3) / (sqrt(3) + 1).
TEST(Sampling, TemperatureSetsTheDistribution) {
  const std::vector<float> logits = {static_cast<float>(std::log(3.0)), 0.0f};
  for (const double t : {1.0, 2.0}) {
    std::mt19937_64 rng(42);
    const int n = 40000;
    int first = 0;
    for (int i = 0; i < n; ++i) first += sample_token(logits.data(), 2, options(t, 0, 1), rng) == 0;
    const double expect = t == 1.0 ? 0.75 : std::sqrt(3.0) / (std::sqrt(3.0) + 1);
    EXPECT_NEAR(static_cast<double>(first) / n, expect, 0.01) << "T = " << t;
  }
}

// Probabilities 0.5, 0.3, 0.2 (logits log of them, T = 1): top-p 0.6 keeps the first two, 0.5
// keeps only the first; top-k 2 drops the third.
TEST(Sampling, TopPAndTopKCutTheTail) {
  const std::vector<float> logits = {static_cast<float>(std::log(0.3)),
                                     static_cast<float>(std::log(0.5)),
                                     static_cast<float>(std::log(0.2))};
  std::mt19937_64 rng(9);
  std::vector<int> seen(3, 0);
  for (int i = 0; i < 5000; ++i) ++seen[sample_token(logits.data(), 3, options(1, 0, 0.6), rng)];
  EXPECT_EQ(seen[2], 0);
  EXPECT_GT(seen[0], 0);
  EXPECT_GT(seen[1], seen[0]);
  for (int i = 0; i < 1000; ++i)
    EXPECT_EQ(sample_token(logits.data(), 3, options(1, 0, 0.5), rng), 1);
  seen.assign(3, 0);
  for (int i = 0; i < 5000; ++i) ++seen[sample_token(logits.data(), 3, options(1, 2, 1), rng)];
  EXPECT_EQ(seen[2], 0);
  EXPECT_GT(seen[0], 0);
}

TEST(Sampling, BadOptionsNameTheRule) {
  const std::vector<float> logits = {0.0f, 1.0f};
  std::mt19937_64 rng(1);
  sqa::test::expect_error([&] { sample_token(logits.data(), 2, options(-1, 0, 1), rng); },
                          {"--temperature (-1)", ">= 0"});
  sqa::test::expect_error([&] { sample_token(logits.data(), 2, options(1, -3, 1), rng); },
                          {"--top-k (-3)", ">= 0"});
  sqa::test::expect_error([&] { sample_token(logits.data(), 2, options(1, 0, 0), rng); },
                          {"--top-p (0)", "(0, 1]"});
  sqa::test::expect_error([&] { sample_token(logits.data(), 0, options(1, 0, 1), rng); },
                          {"usable token ids (0)"});
}

}  // namespace
