// Byte-level BPE: pre-tokenization, merges, training and tokenizer.json (see tokenizer.hpp).
#include "sqa/tokenizer.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <queue>
#include <utility>

#include "data/unicode_tables.hpp"
#include "data/utf8.hpp"
#include "sqa/error.hpp"
#include "sqa/io.hpp"

namespace sqa {
namespace {

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// Decodes one UTF-8 code point at text[i]; returns its length in bytes. Invalid or truncated
// sequences, overlongs and surrogates decode as a single byte with cp = kInvalid, so that
// arbitrary bytes still pre-tokenize (as "other" symbols) and round-trip.
constexpr char32_t kInvalid = 0xFFFFFFFF;
int decode_utf8(std::string_view text, size_t i, char32_t& cp) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  cp = kInvalid;
  if (lead < 0x80) {
    cp = lead;
    return 1;
  }
  int length;
  char32_t value;
  char32_t minimum;
  if ((lead & 0xE0) == 0xC0) {
    length = 2, value = lead & 0x1F, minimum = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3, value = lead & 0x0F, minimum = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4, value = lead & 0x07, minimum = 0x10000;
  } else {
    return 1;
  }
  if (i + static_cast<size_t>(length) > text.size()) return 1;
  for (int k = 1; k < length; ++k) {
    const unsigned char next = byte(i + static_cast<size_t>(k));
    if ((next & 0xC0) != 0x80) return 1;
    value = (value << 6) | (next & 0x3F);
  }
  if (value < minimum || value > 0x10FFFF || (value >= 0xD800 && value <= 0xDFFF)) return 1;
  cp = value;
  return length;
}

enum class CharClass { letter, number, space, other };

CharClass classify(char32_t cp) {
  if (cp == kInvalid) return CharClass::other;
  if (cp < 0x80) {
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CharClass::letter;
    if (cp >= '0' && cp <= '9') return CharClass::number;
    if (unicode::is_space(cp)) return CharClass::space;
    return CharClass::other;
  }
  if (unicode::is_space(cp)) return CharClass::space;
  if (unicode::is_letter(cp)) return CharClass::letter;
  if (unicode::is_number(cp)) return CharClass::number;
  return CharClass::other;
}

// GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100 upwards in byte order, so every byte becomes a visible character in vocab strings.
struct ByteMap {
  char32_t to_char[256];
  std::string to_utf8[256];
  ByteMap() {
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      to_char[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
      utf8::append(to_utf8[b], to_char[b]);
    }
  }
  // Byte for a byte-level character, -1 when it is not one.
  int to_byte(char32_t cp) const {
    if (cp < 256) return to_char[cp] == cp ? static_cast<int>(cp) : -1;
    if (cp >= 256 + 68) return -1;
    for (int b = 0; b < 256; ++b)
      if (to_char[b] == cp) return b;
    return -1;
  }
};

const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}

std::string to_byte_level(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += byte_map().to_utf8[b];
  return out;
}

}  // namespace

// -----------------------------------------------------------------------------------------------
// Pre-tokenization: the GPT-2 pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Every position starts a match of some alternative, so the pieces tile the text; the function
// below takes the first alternative that matches at each position, as the regex engine would.

std::vector<std::string_view> Tokenizer::pre_tokenize(std::string_view text) {
  // Code points with their byte offsets (offsets has one extra entry: text.size()).
  std::vector<char32_t> cps;
  std::vector<size_t> offsets;
  cps.reserve(text.size());
  offsets.reserve(text.size() + 1);
  for (size_t i = 0; i < text.size();) {
    char32_t cp;
    const int length = decode_utf8(text, i, cp);
    cps.push_back(cp);
    offsets.push_back(i);
    i += static_cast<size_t>(length);
  }
  offsets.push_back(text.size());
  const size_t n = cps.size();
  std::vector<CharClass> classes(n);
  for (size_t i = 0; i < n; ++i) classes[i] = classify(cps[i]);

  std::vector<std::string_view> pieces;
  const auto emit = [&](size_t from, size_t to) {
    pieces.push_back(text.substr(offsets[from], offsets[to] - offsets[from]));
  };
  const auto run_end = [&](size_t from, CharClass cls) {
    while (from < n && classes[from] == cls) ++from;
    return from;
  };
  size_t i = 0;
  while (i < n) {
    // Contractions (case-sensitive, as in GPT-2).
    if (cps[i] == '\'' && i + 1 < n) {
      const char32_t c1 = cps[i + 1];
      const char32_t c2 = i + 2 < n ? cps[i + 2] : 0;
      size_t length = 0;
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        length = 2;
      } else if ((c1 == 'r' || c1 == 'v') && c2 == 'e') {
        length = 3;
      } else if (c1 == 'l' && c2 == 'l') {
        length = 3;
      }
      if (length > 0) {
        emit(i, i + length);
        i += length;
        continue;
      }
    }
    // " ?X+" for letters, numbers and other symbols: one leading ASCII space joins the run.
    size_t start = i;
    if (cps[i] == ' ' && i + 1 < n && classes[i + 1] != CharClass::space) start = i + 1;
    const CharClass cls = classes[start];
    if (cls != CharClass::space) {
      const size_t end = run_end(start, cls);
      emit(i, end);
      i = end;
      continue;
    }
    // Whitespace: "\s+(?!\S)" keeps the last space of a run for the next word; a lone
    // whitespace character before a non-space falls through to "\s+".
    const size_t end = run_end(i, CharClass::space);
    if (end == n || end - i == 1) {
      emit(i, end);
      i = end;
    } else {
      emit(i, end - 1);
      i = end - 1;
    }
  }
  return pieces;
}

// -----------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  struct Added {
    int32_t id;
    std::string content;
    bool special = true;
    bool single_word = false, lstrip = false, rstrip = false, normalized = false;
  };
  struct Merge {
    int32_t rank;
    int32_t id;
  };

  std::vector<std::string> vocab;  // id -> token string ("" for unused ids)
  std::unordered_map<std::string, int32_t> ids;
  std::vector<std::pair<int32_t, int32_t>> merges;  // by rank
  std::unordered_map<uint64_t, Merge> merge_of;
  std::vector<Added> added;
  std::vector<char> added_flag;  // per id: 1 added (not byte-level), 2 added and special
  int32_t byte_id[256];
  bool add_prefix_space = false;
  bool ignore_merges = false;

  void set_token(int32_t id, const std::string& token) {
    if (static_cast<size_t>(id) >= vocab.size()) vocab.resize(static_cast<size_t>(id) + 1);
    vocab[static_cast<size_t>(id)] = token;
    ids[token] = id;
  }

  // Derived tables after vocab, merges and added tokens are set.
  void finish(const std::string& origin) {
    merge_of.clear();
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const auto [a, b] = merges[rank];
      const std::string joined = vocab[static_cast<size_t>(a)] + vocab[static_cast<size_t>(b)];
      const auto it = ids.find(joined);
      require(it != ids.end(), origin, ": merge ", rank, " ('", vocab[static_cast<size_t>(a)],
              "' + '", vocab[static_cast<size_t>(b)], "') produces '", joined,
              "', which is not in the vocabulary");
      merge_of.emplace(pair_key(a, b), Merge{static_cast<int32_t>(rank), it->second});
    }
    for (int b = 0; b < 256; ++b) {
      const auto it = ids.find(byte_map().to_utf8[b]);
      byte_id[b] = it == ids.end() ? -1 : it->second;
    }
    added_flag.assign(vocab.size(), 0);
    for (const Added& token : added)
      added_flag[static_cast<size_t>(token.id)] = token.special ? 2 : 1;
    // Longest first, so that "<|a|>b" wins over a shorter "<|a|>" at the same position.
    std::stable_sort(added.begin(), added.end(), [](const Added& x, const Added& y) {
      return x.content.size() > y.content.size();
    });
  }

  // BPE on one pre-tokenized piece: start from byte symbols and apply the best-ranked merge
  // (lowest rank, leftmost on ties) until none applies. Symbols form a linked list; a min-heap
  // holds candidate merges, and stale entries are skipped when popped.
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
    if (piece.empty()) return;
    if (ignore_merges) {
      const auto it = ids.find(to_byte_level(piece));
      if (it != ids.end()) {
        out.push_back(it->second);
        return;
      }
    }
    const size_t n = piece.size();
    std::vector<int32_t> symbol(n);
    std::vector<int32_t> prev(n), next(n);
    for (size_t i = 0; i < n; ++i) {
      const auto b = static_cast<unsigned char>(piece[i]);
      require(byte_id[b] >= 0, "tokenizer: byte 0x", std::hex, static_cast<int>(b),
              " has no token in the vocabulary (a byte-level vocabulary needs all 256)");
      symbol[i] = byte_id[b];
      prev[i] = static_cast<int32_t>(i) - 1;
      next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
    }
    if (n == 1 || merges.empty()) {
      out.insert(out.end(), symbol.begin(), symbol.end());
      return;
    }
    struct Candidate {
      int32_t rank, pos, id;
      bool operator>(const Candidate& o) const {
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
    const auto consider = [&](int32_t pos) {
      if (pos < 0 || next[pos] < 0) return;
      const auto it = merge_of.find(pair_key(symbol[pos], symbol[next[pos]]));
      if (it != merge_of.end()) heap.push({it->second.rank, pos, it->second.id});
    };
    for (size_t i = 0; i + 1 < n; ++i) consider(static_cast<int32_t>(i));
    std::vector<char> alive(n, 1);
    while (!heap.empty()) {
      const Candidate top = heap.top();
      heap.pop();
      if (!alive[top.pos] || next[top.pos] < 0) continue;
      const int32_t right = next[top.pos];
      const auto it = merge_of.find(pair_key(symbol[top.pos], symbol[right]));
      if (it == merge_of.end() || it->second.id != top.id || it->second.rank != top.rank) continue;
      symbol[top.pos] = top.id;
      alive[right] = 0;
      next[top.pos] = next[right];
      if (next[right] >= 0) prev[next[right]] = top.pos;
      consider(prev[top.pos]);
      consider(top.pos);
    }
    for (int32_t i = 0; i >= 0; i = next[i]) out.push_back(symbol[i]);
  }

  void encode_text(std::string_view text, std::vector<int32_t>& out) const {
    std::string prefixed;
    if (add_prefix_space && !text.empty() && text.front() != ' ') {
      prefixed = " " + std::string(text);
      text = prefixed;
    }
    for (std::string_view piece : Tokenizer::pre_tokenize(text)) encode_piece(piece, out);
  }
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {
  for (int b = 0; b < 256; ++b) impl_->set_token(b, byte_map().to_utf8[b]);
  impl_->finish("tokenizer");
}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(const Tokenizer& other) : impl_(std::make_unique<Impl>(*other.impl_)) {}
Tokenizer& Tokenizer::operator=(const Tokenizer& other) {
  if (this != &other) impl_ = std::make_unique<Impl>(*other.impl_);
  return *this;
}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

void Tokenizer::encode_append(std::string_view text, std::vector<int32_t>& out,
                              bool allow_special) const {
  const Impl& impl = *impl_;
  if (!allow_special || impl.added.empty()) {
    impl.encode_text(text, out);
    return;
  }
  // Split on added tokens (earliest occurrence, longest at the same position), encode the text
  // between them.
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = std::string_view::npos;
    const Impl::Added* hit = nullptr;
    for (const Impl::Added& token : impl.added) {
      if (token.content.empty()) continue;
      const size_t at = text.find(token.content, pos);
      if (at < best) best = at, hit = &token;
    }
    if (hit == nullptr) break;
    impl.encode_text(text.substr(pos, best - pos), out);
    out.push_back(hit->id);
    pos = best + hit->content.size();
  }
  if (pos < text.size()) impl.encode_text(text.substr(pos), out);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool allow_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  encode_append(text, out, allow_special);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  const Impl& impl = *impl_;
  std::string out;
  for (int32_t id : ids) {
    require(id >= 0 && static_cast<size_t>(id) < impl.vocab.size(), "token id ", id,
            " is outside the vocabulary [0, ", impl.vocab.size(), ")");
    const std::string& token = impl.vocab[static_cast<size_t>(id)];
    if (impl.added_flag[static_cast<size_t>(id)]) {
      out += token;
      continue;
    }
    // Map byte-level characters back to bytes; anything else (a foreign vocabulary) verbatim.
    for (size_t i = 0; i < token.size();) {
      char32_t cp;
      const int length = decode_utf8(token, i, cp);
      const int byte = cp == kInvalid ? -1 : byte_map().to_byte(cp);
      if (byte >= 0) {
        out += static_cast<char>(byte);
      } else {
        out.append(token, i, static_cast<size_t>(length));
      }
      i += static_cast<size_t>(length);
    }
  }
  return out;
}

int Tokenizer::vocab_size() const {
  return static_cast<int>(impl_->vocab.size());
}
int Tokenizer::num_merges() const {
  return static_cast<int>(impl_->merges.size());
}

std::string Tokenizer::id_to_token(int32_t id) const {
  require(id >= 0 && static_cast<size_t>(id) < impl_->vocab.size(), "token id ", id,
          " is outside the vocabulary [0, ", impl_->vocab.size(), ")");
  return impl_->vocab[static_cast<size_t>(id)];
}

int32_t Tokenizer::token_to_id(std::string_view token) const {
  const auto it = impl_->ids.find(std::string(token));
  return it == impl_->ids.end() ? -1 : it->second;
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->added_flag.size() &&
         impl_->added_flag[static_cast<size_t>(id)] == 2;
}

int32_t Tokenizer::eos_id() const {
  for (const char* name : {"<|endoftext|>", "</s>", "<eos>", "<|eos|>"}) {
    const int32_t id = token_to_id(name);
    if (id >= 0) return id;
  }
  return -1;
}

int32_t Tokenizer::pad_id() const {
  for (const char* name : {"<pad>", "<|pad|>", "[PAD]"}) {
    const int32_t id = token_to_id(name);
    if (id >= 0) return id;
  }
  return -1;
}

int32_t Tokenizer::mask_id() const {
  for (const char* name : {"<mask>", "[MASK]", "<|mask|>"}) {
    const int32_t id = token_to_id(name);
    if (id >= 0) return id;
  }
  return -1;
}

// -----------------------------------------------------------------------------------------------
// Training

Tokenizer Tokenizer::train(std::span<const std::string> documents, const BpeTrainOptions& options) {
  const auto num_special = static_cast<int>(options.special_tokens.size());
  require(options.vocab_size >= 256 + num_special, "BPE vocab_size (", options.vocab_size,
          ") must be at least 256 byte symbols + ", num_special, " special tokens");
  for (size_t i = 0; i < options.special_tokens.size(); ++i) {
    require(!options.special_tokens[i].empty(), "special token ", i, " is empty");
    for (size_t j = 0; j < i; ++j)
      require(options.special_tokens[i] != options.special_tokens[j], "special token '",
              options.special_tokens[i], "' is listed twice");
  }
  const auto start_time = std::chrono::steady_clock::now();

  Tokenizer result;
  Impl& impl = *result.impl_;
  impl = Impl{};
  for (int i = 0; i < num_special; ++i) {
    impl.set_token(i, options.special_tokens[static_cast<size_t>(i)]);
    impl.added.push_back({i, options.special_tokens[static_cast<size_t>(i)]});
  }
  for (int b = 0; b < 256; ++b) impl.set_token(num_special + b, byte_map().to_utf8[b]);
  impl.finish("tokenizer");  // specials are now split out of the training text

  // 1. Word counts. Special tokens separate text and are never learned.
  std::unordered_map<std::string_view, int64_t> word_count;
  for (const std::string& document : documents) {
    std::string_view text = document;
    size_t pos = 0;
    while (pos <= text.size()) {
      size_t best = std::string_view::npos, length = 0;
      for (const auto& token : options.special_tokens) {
        const size_t at = text.find(token, pos);
        if (at < best) best = at, length = token.size();
      }
      const size_t end = best == std::string_view::npos ? text.size() : best;
      for (std::string_view piece : pre_tokenize(text.substr(pos, end - pos))) ++word_count[piece];
      if (best == std::string_view::npos) break;
      pos = best + length;
    }
  }
  // Words in a fixed order (by text) so that ids and tie-breaks never depend on hashing.
  std::vector<std::pair<std::string_view, int64_t>> sorted_words(word_count.begin(),
                                                                 word_count.end());
  std::sort(sorted_words.begin(), sorted_words.end());
  const size_t num_words = sorted_words.size();
  std::vector<std::vector<int32_t>> words(num_words);
  std::vector<int64_t> counts(num_words);
  for (size_t w = 0; w < num_words; ++w) {
    counts[w] = sorted_words[w].second;
    for (unsigned char b : sorted_words[w].first) words[w].push_back(num_special + b);
  }

  // 2. Pair counts and where each pair occurs (word lists may hold duplicates; a stamp per word
  // makes each word visited once per merge).
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> pair_words;
  for (size_t w = 0; w < num_words; ++w) {
    const auto& word = words[w];
    for (size_t i = 0; i + 1 < word.size(); ++i) {
      const uint64_t key = pair_key(word[i], word[i + 1]);
      pair_count[key] += counts[w];
      auto& list = pair_words[key];
      if (list.empty() || list.back() != static_cast<int32_t>(w))
        list.push_back(static_cast<int32_t>(w));
    }
  }
  // Max-heap on (count, then smaller pair). Entries go stale when counts change; a popped entry
  // is used only if its count is still current.
  struct Entry {
    int64_t count;
    uint64_t key;
    bool operator<(const Entry& o) const {
      return count != o.count ? count < o.count : key > o.key;
    }
  };
  std::priority_queue<Entry> heap;
  for (const auto& [key, count] : pair_count) heap.push({count, key});

  std::vector<uint32_t> stamp(num_words, 0);
  std::vector<std::pair<uint64_t, int64_t>> delta;
  const int target_merges = options.vocab_size - 256 - num_special;
  uint32_t merge = 0;
  while (impl.vocab.size() < static_cast<size_t>(options.vocab_size) && !heap.empty()) {
    const Entry top = heap.top();
    heap.pop();
    const auto current = pair_count.find(top.key);
    if (current == pair_count.end() || current->second != top.count) continue;
    if (top.count < options.min_frequency) break;
    const auto a = static_cast<int32_t>(top.key >> 32);
    const auto b = static_cast<int32_t>(top.key & 0xFFFFFFFFu);
    // Two different pairs can spell the same string ("a"+"bc", "ab"+"c" in different words);
    // the second merge then maps to the existing token instead of adding one.
    const std::string joined =
        impl.vocab[static_cast<size_t>(a)] + impl.vocab[static_cast<size_t>(b)];
    const auto existing = impl.ids.find(joined);
    const int32_t new_id =
        existing != impl.ids.end() ? existing->second : static_cast<int32_t>(impl.vocab.size());
    if (existing == impl.ids.end()) impl.set_token(new_id, joined);
    impl.merges.emplace_back(a, b);
    ++merge;

    // Rewrite every word holding (a, b), collecting the pair-count changes.
    const std::vector<int32_t> holders = std::move(pair_words[top.key]);
    pair_words.erase(top.key);
    delta.clear();
    for (int32_t w : holders) {
      if (stamp[static_cast<size_t>(w)] == merge) continue;
      stamp[static_cast<size_t>(w)] = merge;
      auto& word = words[static_cast<size_t>(w)];
      const int64_t c = counts[static_cast<size_t>(w)];
      bool changed = false;
      std::vector<int32_t> merged;
      merged.reserve(word.size());
      for (size_t i = 0; i < word.size(); ++i) {
        if (i + 1 < word.size() && word[i] == a && word[i + 1] == b) {
          merged.push_back(new_id);
          ++i;
          changed = true;
        } else {
          merged.push_back(word[i]);
        }
      }
      if (!changed) continue;
      for (size_t i = 0; i + 1 < word.size(); ++i)
        delta.emplace_back(pair_key(word[i], word[i + 1]), -c);
      for (size_t i = 0; i + 1 < merged.size(); ++i) {
        const uint64_t key = pair_key(merged[i], merged[i + 1]);
        delta.emplace_back(key, c);
        if (merged[i] == new_id || merged[i + 1] == new_id) {
          auto& list = pair_words[key];
          if (list.empty() || list.back() != w) list.push_back(w);
        }
      }
      word = std::move(merged);
    }
    // Net change per pair; unchanged pairs keep their heap entries valid.
    std::sort(delta.begin(), delta.end());
    for (size_t i = 0; i < delta.size();) {
      const uint64_t key = delta[i].first;
      int64_t net = 0;
      for (; i < delta.size() && delta[i].first == key; ++i) net += delta[i].second;
      if (net == 0) continue;
      int64_t& count = pair_count[key];
      count += net;
      if (count <= 0) {
        pair_count.erase(key);
      } else {
        heap.push({count, key});
      }
    }
    if (options.verbose && merge % 1000 == 0) {
      std::fprintf(stderr, "bpe: %u / %d merges, last '%s' (%lld)\n", merge, target_merges,
                   joined.c_str(), static_cast<long long>(top.count));
    }
  }
  impl.finish("tokenizer");
  if (options.verbose) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
    std::fprintf(stderr, "bpe: vocab %d (%zu merges) from %zu distinct words in %.2f s\n",
                 result.vocab_size(), impl.merges.size(), num_words, seconds);
  }
  return result;
}

// -----------------------------------------------------------------------------------------------
// tokenizer.json

Tokenizer Tokenizer::from_json(const std::string& json_text, const std::string& origin) {
  using nlohmann::json;
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {
    throw Error(detail::concat(origin, ": not valid JSON (", e.what(), ")"));
  }
  require(root.is_object(), origin, ": the top level must be an object");
  require(root.contains("model") && root["model"].is_object(), origin,
          ": missing the 'model' object");
  const json& model = root["model"];
  const std::string type = model.value("type", std::string("BPE"));
  require(type == "BPE", origin, ": model.type '", type, "' is not supported (only BPE)");
  const auto null_or = [&](const json& parent, const char* key, const char* rule) {
    require(!parent.contains(key) || parent[key].is_null() ||
                (parent[key].is_string() && parent[key].get<std::string>().empty()),
            origin, ": model.", key, " must be null (", rule, ")");
  };
  null_or(model, "continuing_subword_prefix", "byte-level BPE has no subword prefix");
  null_or(model, "end_of_word_suffix", "byte-level BPE has no word suffix");
  require(!model.contains("byte_fallback") || !model["byte_fallback"].is_boolean() ||
              !model["byte_fallback"].get<bool>(),
          origin, ": model.byte_fallback true is not supported (byte-level BPE needs none)");
  require(!model.contains("dropout") || model["dropout"].is_null() ||
              (model["dropout"].is_number() && model["dropout"].get<double>() == 0.0),
          origin, ": model.dropout must be null (BPE dropout is a training-time option)");

  require(!root.contains("normalizer") || root["normalizer"].is_null(), origin, ": normalizer ",
          root.value("normalizer", json()).dump(), " is not supported (only null)");

  Tokenizer result;
  Impl& impl = *result.impl_;
  impl = Impl{};
  const auto read_byte_level = [&](const char* key) {
    if (!root.contains(key) || root[key].is_null()) return;
    const json& part = root[key];
    require(part.is_object() && part.value("type", std::string()) == "ByteLevel", origin, ": ", key,
            " ", part.dump(), " is not supported (only ByteLevel or null)");
    if (std::string(key) == "pre_tokenizer") {
      impl.add_prefix_space = part.value("add_prefix_space", false);
      require(part.value("use_regex", true), origin,
              ": pre_tokenizer.use_regex false is not supported");
    }
  };
  read_byte_level("pre_tokenizer");
  read_byte_level("decoder");
  impl.ignore_merges = model.value("ignore_merges", false);

  require(model.contains("vocab") && model["vocab"].is_object(), origin,
          ": model.vocab must be an object of token -> id");
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    require(it.value().is_number_integer() && it.value().get<int64_t>() >= 0 &&
                it.value().get<int64_t>() < (int64_t{1} << 31),
            origin, ": model.vocab['", it.key(), "'] = ", it.value().dump(),
            " must be a non-negative integer id");
    const auto id = it.value().get<int32_t>();
    require(
        static_cast<size_t>(id) >= impl.vocab.size() || impl.vocab[static_cast<size_t>(id)].empty(),
        origin, ": model.vocab id ", id, " is used by both '", it.key(), "' and '",
        static_cast<size_t>(id) < impl.vocab.size() ? impl.vocab[static_cast<size_t>(id)] : "",
        "'");
    impl.set_token(id, it.key());
  }
  if (root.contains("added_tokens") && !root["added_tokens"].is_null()) {
    require(root["added_tokens"].is_array(), origin, ": added_tokens must be an array");
    for (const json& token : root["added_tokens"]) {
      require(token.is_object() && token.contains("id") && token["id"].is_number_integer() &&
                  token.contains("content") && token["content"].is_string(),
              origin, ": added token ", token.dump(), " needs an integer id and string content");
      Impl::Added added;
      added.id = token["id"].get<int32_t>();
      added.content = token["content"].get<std::string>();
      require(added.id >= 0, origin, ": added token '", added.content, "' has negative id ",
              added.id);
      require(!added.content.empty(), origin, ": added token ", added.id, " has empty content");
      added.special = token.value("special", true);
      added.single_word = token.value("single_word", false);
      added.lstrip = token.value("lstrip", false);
      added.rstrip = token.value("rstrip", false);
      added.normalized = token.value("normalized", false);
      const auto existing = impl.ids.find(added.content);
      require(existing == impl.ids.end() || existing->second == added.id, origin, ": added token '",
              added.content, "' has id ", added.id, " but the vocab says ",
              existing == impl.ids.end() ? -1 : existing->second);
      impl.set_token(added.id, added.content);
      impl.added.push_back(added);
    }
  }
  require(model.contains("merges") && model["merges"].is_array(), origin,
          ": model.merges must be an array");
  const json& merges = model["merges"];
  impl.merges.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& merge = merges[rank];
    std::string left, right;
    if (merge.is_string()) {
      // "a b": byte-level tokens never contain a plain space, so the first space splits.
      const std::string text = merge.get<std::string>();
      const size_t space = text.find(' ');
      require(space != std::string::npos && space > 0 && space + 1 < text.size() &&
                  text.find(' ', space + 1) == std::string::npos,
              origin, ": merge ", rank, " '", text, "' must be two tokens separated by a space");
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else {
      require(merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string(),
              origin, ": merge ", rank, " ", merge.dump(), " must be \"a b\" or [\"a\", \"b\"]");
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    }
    const auto l = impl.ids.find(left), r = impl.ids.find(right);
    require(l != impl.ids.end(), origin, ": merge ", rank, " uses '", left,
            "', which is not in the vocabulary");
    require(r != impl.ids.end(), origin, ": merge ", rank, " uses '", right,
            "', which is not in the vocabulary");
    impl.merges.emplace_back(l->second, r->second);
  }
  impl.finish(origin);
  return result;
}

Tokenizer Tokenizer::load(const std::string& path) {
  return from_json(read_file(path), path);
}

std::string Tokenizer::to_json() const {
  using nlohmann::ordered_json;
  const Impl& impl = *impl_;
  ordered_json root;
  root["version"] = "1.0";
  root["truncation"] = nullptr;
  root["padding"] = nullptr;
  std::vector<Impl::Added> added = impl.added;
  std::sort(added.begin(), added.end(),
            [](const Impl::Added& x, const Impl::Added& y) { return x.id < y.id; });
  ordered_json added_json = ordered_json::array();
  for (const Impl::Added& token : added) {
    added_json.push_back({{"id", token.id},
                          {"content", token.content},
                          {"single_word", token.single_word},
                          {"lstrip", token.lstrip},
                          {"rstrip", token.rstrip},
                          {"normalized", token.normalized},
                          {"special", token.special}});
  }
  root["added_tokens"] = added_json;
  root["normalizer"] = nullptr;
  root["pre_tokenizer"] = {{"type", "ByteLevel"},
                           {"add_prefix_space", impl.add_prefix_space},
                           {"trim_offsets", true},
                           {"use_regex", true}};
  root["post_processor"] = nullptr;
  root["decoder"] = {{"type", "ByteLevel"},
                     {"add_prefix_space", true},
                     {"trim_offsets", true},
                     {"use_regex", true}};
  ordered_json model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = nullptr;
  model["continuing_subword_prefix"] = nullptr;
  model["end_of_word_suffix"] = nullptr;
  model["fuse_unk"] = false;
  model["byte_fallback"] = false;
  model["ignore_merges"] = impl.ignore_merges;
  ordered_json vocab = ordered_json::object();
  for (size_t id = 0; id < impl.vocab.size(); ++id)
    if (!impl.vocab[id].empty()) vocab[impl.vocab[id]] = id;
  model["vocab"] = vocab;
  ordered_json merges = ordered_json::array();
  for (const auto& [a, b] : impl.merges)
    merges.push_back(impl.vocab[static_cast<size_t>(a)] + " " + impl.vocab[static_cast<size_t>(b)]);
  model["merges"] = merges;
  root["model"] = model;
  return root.dump(2);
}

void Tokenizer::save(const std::string& path) const {
  write_file_atomic(path, to_json() + "\n");
}

}  // namespace sqa
