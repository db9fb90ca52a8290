// Batches of next-token windows with a loss mask and a resumable shuffled order (data.hpp).
#include <algorithm>
#include <nlohmann/json.hpp>

#include "sqa/data.hpp"
#include "sqa/error.hpp"

namespace sqa {
namespace {

// SplitMix64: a tiny generator whose whole state is one word, with our own bounded draw, so
// the shuffle is identical on every platform and standard library (std distributions are not).
struct SplitMix {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, bound) by rejection of the biased top range.
  uint64_t below(uint64_t bound) {
    const uint64_t limit = ~uint64_t{0} - (~uint64_t{0} % bound);
    for (;;) {
      const uint64_t x = next();
      if (x < limit) return x % bound;
    }
  }
};

uint64_t epoch_seed(uint64_t seed, uint64_t epoch) {
  SplitMix mix{seed ^ (0xd1b54a32d192ed03ull * (epoch + 1))};
  return mix.next();
}

uint64_t mix_in(uint64_t hash, uint64_t value) {
  SplitMix mix{hash ^ value};
  return mix.next();
}

}  // namespace

double Batch::counted_tokens() const {
  double total = 0;
  for (float m : loss_mask) total += m;
  return total;
}

std::string LoaderState::to_json() const {
  nlohmann::ordered_json j;
  j["seed"] = seed;
  j["epoch"] = epoch;
  j["position"] = position;
  j["rng_state"] = rng_state;
  j["num_windows"] = num_windows;
  j["corpus_fingerprint"] = corpus_fingerprint;
  return j.dump();
}

LoaderState LoaderState::from_json(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(detail::concat("data loader state is not valid JSON (", e.what(), ")"));
  }
  require(j.is_object(), "data loader state must be a JSON object");
  LoaderState state;
  const auto field = [&](const char* name, uint64_t& out) {
    require(j.contains(name) && j[name].is_number_unsigned(), "data loader state field '", name,
            "' must be a non-negative integer");
    out = j[name].get<uint64_t>();
  };
  field("seed", state.seed);
  field("epoch", state.epoch);
  field("position", state.position);
  field("rng_state", state.rng_state);
  field("num_windows", state.num_windows);
  field("corpus_fingerprint", state.corpus_fingerprint);
  return state;
}

BatchLoader::BatchLoader(TokenCorpus corpus, const BatchOptions& options)
    : corpus_(std::move(corpus)), options_(options) {
  require(options_.batch_size > 0, "batch_size (", options_.batch_size, ") must be positive");
  require(options_.context > 0, "context (", options_.context, ") must be positive");
  require(!options_.append_eos || options_.eos_id >= 0,
          "an EOS token id is needed to append EOS after documents (eos_id = ", options_.eos_id,
          "; the tokenizer has no <|endoftext|>?)");
  const int64_t window = int64_t{options_.context} + 1;
  if (options_.mode == BatchMode::pack) {
    stream_.reserve(corpus_.tokens.size() + static_cast<size_t>(corpus_.num_docs()));
    for (int64_t d = 0; d < corpus_.num_docs(); ++d) {
      const auto ids = corpus_.doc(d);
      stream_.insert(stream_.end(), ids.begin(), ids.end());
      if (options_.append_eos) stream_.push_back(options_.eos_id);
    }
    // Windows of context + 1 tokens start every `context` tokens, so each stream token after
    // the first is a target exactly once.
    num_windows_ = static_cast<int64_t>(stream_.size()) >= window
                       ? (static_cast<int64_t>(stream_.size()) - 1) / options_.context
                       : 0;
    require(num_windows_ > 0, "the corpus has ", stream_.size(),
            " tokens (with EOS), fewer than one window of context + 1 = ", window);
  } else {
    require(options_.pad_id >= 0,
            "pad-to-length mode needs a pad token id (pad_id = ", options_.pad_id,
            "; the tokenizer has no <pad>?)");
    for (int64_t d = 0; d < corpus_.num_docs(); ++d)
      if (!corpus_.doc(d).empty()) doc_of_window_.push_back(d);
    num_windows_ = static_cast<int64_t>(doc_of_window_.size());
    require(num_windows_ > 0, "the corpus has no non-empty document");
  }
  // The state check covers everything that shapes the windows, not only the tokens.
  uint64_t hash = corpus_.fingerprint();
  hash = mix_in(hash, static_cast<uint64_t>(options_.context));
  hash = mix_in(hash, static_cast<uint64_t>(options_.mode));
  hash = mix_in(hash, options_.append_eos ? 1 : 0);
  hash = mix_in(hash, static_cast<uint64_t>(static_cast<uint32_t>(options_.eos_id)));
  hash = mix_in(hash, static_cast<uint64_t>(static_cast<uint32_t>(options_.pad_id)));
  fingerprint_ = hash;
  start_epoch(0);
}

void BatchLoader::start_epoch(uint64_t epoch) {
  epoch_ = epoch;
  position_ = 0;
  rng_state_ = epoch_seed(options_.seed, epoch);
  order_.resize(static_cast<size_t>(num_windows_));
  for (int64_t i = 0; i < num_windows_; ++i) order_[static_cast<size_t>(i)] = i;
  if (!options_.shuffle) return;
  SplitMix rng{rng_state_};
  // Fisher-Yates.
  for (int64_t i = num_windows_ - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1));
    std::swap(order_[static_cast<size_t>(i)], order_[static_cast<size_t>(j)]);
  }
}

void BatchLoader::fill_window(int64_t window, int row, Batch& out) const {
  const int context = options_.context;
  const size_t base = static_cast<size_t>(row) * static_cast<size_t>(context);
  int32_t* inputs = out.inputs.data() + base;
  int32_t* targets = out.targets.data() + base;
  float* mask = out.loss_mask.data() + base;
  if (options_.mode == BatchMode::pack) {
    const int32_t* tokens = stream_.data() + window * context;
    std::copy(tokens, tokens + context, inputs);
    std::copy(tokens + 1, tokens + context + 1, targets);
    std::fill(mask, mask + context, 1.0f);
    return;
  }
  // Pad mode: the document (+ EOS), truncated to context + 1 tokens, then padding. A target is
  // padding by its position, so a pad id equal to EOS is still handled correctly.
  const auto ids = corpus_.doc(doc_of_window_[static_cast<size_t>(window)]);
  const int64_t real = std::min<int64_t>(
      static_cast<int64_t>(ids.size()) + (options_.append_eos ? 1 : 0), int64_t{context} + 1);
  const auto token_at = [&](int64_t p) -> int32_t {
    if (p >= real) return options_.pad_id;
    return p < static_cast<int64_t>(ids.size()) ? ids[static_cast<size_t>(p)] : options_.eos_id;
  };
  const float pad_weight = options_.count_pad_in_loss ? 1.0f : 0.0f;
  for (int t = 0; t < context; ++t) {
    inputs[t] = token_at(t);
    targets[t] = token_at(t + 1);
    mask[t] = t + 1 < real ? 1.0f : pad_weight;
  }
}

Batch BatchLoader::next() {
  Batch out;
  next(out);
  return out;
}

void BatchLoader::next(Batch& out) {
  const size_t cells =
      static_cast<size_t>(options_.batch_size) * static_cast<size_t>(options_.context);
  out.batch_size = options_.batch_size;
  out.context = options_.context;
  out.inputs.resize(cells);
  out.targets.resize(cells);
  out.loss_mask.resize(cells);
  for (int row = 0; row < options_.batch_size; ++row) {
    if (position_ >= static_cast<uint64_t>(num_windows_)) start_epoch(epoch_ + 1);
    fill_window(order_[static_cast<size_t>(position_++)], row, out);
  }
}

int64_t BatchLoader::num_eval_batches() const {
  return (num_windows_ + options_.batch_size - 1) / options_.batch_size;
}

Batch BatchLoader::eval_batch(int64_t index) const {
  require(index >= 0 && index < num_eval_batches(), "eval batch ", index, " is outside [0, ",
          num_eval_batches(), ")");
  const int64_t first = index * options_.batch_size;
  const auto rows = static_cast<int>(std::min<int64_t>(options_.batch_size, num_windows_ - first));
  Batch out;
  out.batch_size = rows;
  out.context = options_.context;
  const size_t cells = static_cast<size_t>(rows) * static_cast<size_t>(options_.context);
  out.inputs.resize(cells);
  out.targets.resize(cells);
  out.loss_mask.resize(cells);
  for (int row = 0; row < rows; ++row) fill_window(first + row, row, out);
  return out;
}

int64_t BatchLoader::batches_per_epoch() const {
  return std::max<int64_t>(1, num_windows_ / options_.batch_size);
}

LoaderState BatchLoader::state() const {
  LoaderState state;
  state.seed = options_.seed;
  state.epoch = epoch_;
  state.position = position_;
  state.rng_state = rng_state_;
  state.num_windows = static_cast<uint64_t>(num_windows_);
  state.corpus_fingerprint = fingerprint_;
  return state;
}

void BatchLoader::restore(const LoaderState& state) {
  require(state.num_windows == static_cast<uint64_t>(num_windows_), "data loader state has ",
          state.num_windows, " windows but this data gives ", num_windows_,
          " (different data, context or mode?)");
  require(state.corpus_fingerprint == fingerprint_, "data loader state fingerprint ",
          state.corpus_fingerprint, " does not match this data (", fingerprint_,
          "): different corpus, context or mode");
  require(state.seed == options_.seed, "data loader state seed ", state.seed,
          " differs from the configured seed ", options_.seed);
  require(state.position <= state.num_windows, "data loader state position ", state.position,
          " is past the ", state.num_windows, " windows of an epoch");
  start_epoch(state.epoch);
  require(state.rng_state == rng_state_, "data loader state rng_state ", state.rng_state,
          " does not match epoch ", state.epoch, " of seed ", state.seed, " (expected ", rng_state_,
          ")");
  position_ = state.position;
}

}  // namespace sqa
