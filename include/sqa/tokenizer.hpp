// Byte-level BPE tokenizer (GPT-2 style), compatible with Hugging Face `tokenizer.json`.
//
// Encoding: special (added) tokens are matched literally first; the remaining text is split by
// the GPT-2 pre-tokenization rule (contractions 's 't 're 've 'm 'll 'd, optional space +
// letters, optional space + digits, optional space + other symbols, whitespace runs that leave
// their last space to the next word), written by hand with Unicode letter/number tables; every
// piece's bytes are mapped to printable characters (GPT-2 bytes_to_unicode) and merged by
// merge rank. Any byte string round-trips exactly: decode(encode(s)) == s, including invalid
// UTF-8 (an invalid byte is a symbol of its own).
//
// Training counts words after pre-tokenization and merges the most frequent adjacent pair until
// the vocabulary reaches the target size, updating pair counts incrementally (only the words
// containing the merged pair are touched). Ties break on the smaller (left id, right id), so
// training is deterministic. Vocabulary layout: special tokens, then the 256 byte symbols in
// byte order, then one token per merge.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace sqa {

struct BpeTrainOptions {
  int vocab_size = 5000;  // including the special tokens and the 256 byte symbols
  // A tokenizer for an encoder (masked-LM training) adds "<mask>"; the default leaves it out so
  // that a decoder's vocabulary keeps its layout.
  std::vector<std::string> special_tokens = {"<|endoftext|>", "<pad>"};
  int min_frequency = 2;  // stop early when the best pair occurs fewer times
  bool verbose = false;   // progress on stderr
};

class Tokenizer {
 public:
  Tokenizer();  // empty: the 256 byte symbols only, no merges, no special tokens
  ~Tokenizer();
  Tokenizer(const Tokenizer&);
  Tokenizer& operator=(const Tokenizer&);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Trains on documents (each pre-tokenized separately; special tokens inside them are not
  // learned as text). Throws when vocab_size < 256 + number of special tokens.
  static Tokenizer train(std::span<const std::string> documents, const BpeTrainOptions& options);

  // Hugging Face tokenizer.json: model.type "BPE" with vocab, merges ("a b" strings or [a, b]
  // pairs), added_tokens; pre_tokenizer and decoder ByteLevel. Throws sqa::Error naming the
  // origin, the field and the rule (unsupported normalizer, unknown merge token, ...).
  static Tokenizer from_json(const std::string& json_text, const std::string& origin = "tokenizer");
  static Tokenizer load(const std::string& path);
  std::string to_json() const;
  void save(const std::string& path) const;  // atomic

  // Thread-safe (const, no shared cache).
  std::vector<int32_t> encode(std::string_view text, bool allow_special = true) const;
  void encode_append(std::string_view text, std::vector<int32_t>& out,
                     bool allow_special = true) const;
  // Throws sqa::Error for ids outside [0, vocab_size).
  std::string decode(std::span<const int32_t> ids) const;

  int vocab_size() const;  // highest id + 1
  int num_merges() const;
  std::string id_to_token(int32_t id) const;          // the vocab string (byte-level characters)
  int32_t token_to_id(std::string_view token) const;  // -1 when absent
  bool is_special(int32_t id) const;
  // Conventional specials, -1 when absent: eos "<|endoftext|>" | "</s>" | "<eos>";
  // pad "<pad>" | "<|pad|>" | "[PAD]"; mask (masked-LM) "<mask>" | "[MASK]" | "<|mask|>".
  int32_t eos_id() const;
  int32_t pad_id() const;
  int32_t mask_id() const;

  // The GPT-2 pre-tokenization of `text` (pieces as byte ranges); exposed for tests.
  static std::vector<std::string_view> pre_tokenize(std::string_view text);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sqa
