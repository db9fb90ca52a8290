// Next-token sampling for text generation: greedy, temperature, top-k and top-p (nucleus).
#pragma once

#include <cstdint>
#include <random>

namespace sqa {

struct SamplingOptions {
  double temperature = 0.8;  // 0: greedy
  int64_t top_k = 40;        // 0: no limit
  double top_p = 0.95;       // in (0, 1]; 1: no limit
};

// Throws sqa::Error naming the option and the rule.
void validate(const SamplingOptions& options);

// The next token from logits[0 .. usable). A model's vocabulary may be larger than its
// tokenizer's (vocab_size padded past the ids the tokenizer defines): those rows have logits
// but no text, so ids at or above `usable` are never chosen. Greedy (temperature 0) takes the
// largest logit, the lower id on ties; otherwise the top_k largest, softmax at the
// temperature, then the smallest prefix whose probability reaches top_p, sampled with rng.
int32_t sample_token(const float* logits, int usable, const SamplingOptions& options,
                     std::mt19937_64& rng);

}  // namespace sqa
