#include "sqa/sampling.hpp"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "sqa/error.hpp"

namespace sqa {

void validate(const SamplingOptions& o) {
  require(o.temperature >= 0 && std::isfinite(o.temperature), "option --temperature (",
          o.temperature, ") must be >= 0 (0 = greedy)");
  require(o.top_k >= 0, "option --top-k (", o.top_k, ") must be >= 0 (0 = no limit)");
  require(o.top_p > 0 && o.top_p <= 1, "option --top-p (", o.top_p, ") must be in (0, 1]");
}

int32_t sample_token(const float* logits, int usable, const SamplingOptions& o,
                     std::mt19937_64& rng) {
  require(usable >= 1, "sample_token: no usable token ids (", usable, ")");
  validate(o);
  if (o.temperature == 0) {
    return static_cast<int32_t>(std::max_element(logits, logits + usable) - logits);
  }
  std::vector<std::pair<float, int32_t>> cand(static_cast<size_t>(usable));
  for (int v = 0; v < usable; ++v) cand[static_cast<size_t>(v)] = {logits[v], v};
  const size_t k = o.top_k > 0 && o.top_k < usable ? static_cast<size_t>(o.top_k) : cand.size();
  // Only the k largest need ordering (k is small next to a vocabulary).
  std::partial_sort(cand.begin(), cand.begin() + static_cast<long>(k), cand.end(),
                    [](const auto& x, const auto& y) {
                      return x.first > y.first || (x.first == y.first && x.second < y.second);
                    });
  cand.resize(k);
  std::vector<double> p(k);
  double sum = 0;
  for (size_t i = 0; i < k; ++i) {
    p[i] = std::exp((static_cast<double>(cand[i].first) - cand[0].first) / o.temperature);
    sum += p[i];
  }
  double mass = 0;
  size_t keep = k;
  for (size_t i = 0; i < k; ++i) {
    mass += p[i] / sum;
    if (mass >= o.top_p) {
      keep = i + 1;
      break;
    }
  }
  std::discrete_distribution<size_t> pick(p.begin(), p.begin() + static_cast<long>(keep));
  return cand[pick(rng)].second;
}

}  // namespace sqa
