// Token corpus: tokenization, shard files, loading and the train/validation split (data.hpp).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include "sqa/data.hpp"
#include "sqa/error.hpp"
#include "sqa/io.hpp"

namespace sqa {
namespace {

namespace fs = std::filesystem;

constexpr char kShardMagic[8] = {'S', 'Q', 'A', 'T', 'O', 'K', 'S', '\0'};
constexpr uint32_t kShardVersion = 1;
constexpr size_t kShardHeader = 40;

template <typename T>
void put(std::string& out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}

template <typename T>
T get(const std::string& bytes, size_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

// FNV-1a over 64-bit words: cheap, order-sensitive, stable across platforms.
struct Fnv {
  uint64_t state = 0xcbf29ce484222325ull;
  void add(uint64_t word) {
    for (int k = 0; k < 8; ++k) {
      state ^= (word >> (8 * k)) & 0xffu;
      state *= 0x100000001b3ull;
    }
  }
};

// Tokens [begin, end) of `corpus` as a corpus; documents crossing an end are cut there.
TokenCorpus slice(const TokenCorpus& corpus, int64_t begin, int64_t end) {
  TokenCorpus out;
  out.vocab_size = corpus.vocab_size;
  out.tokens.assign(corpus.tokens.begin() + begin, corpus.tokens.begin() + end);
  for (int64_t d = 0; d < corpus.num_docs(); ++d) {
    const int64_t lo = std::max(begin, corpus.doc_offsets[static_cast<size_t>(d)]);
    const int64_t hi = std::min(end, corpus.doc_offsets[static_cast<size_t>(d) + 1]);
    if (lo < hi) out.doc_offsets.push_back(hi - begin);
  }
  return out;
}

}  // namespace

std::span<const int32_t> TokenCorpus::doc(int64_t i) const {
  require(i >= 0 && i < num_docs(), "document ", i, " is outside [0, ", num_docs(), ")");
  const auto begin = static_cast<size_t>(doc_offsets[static_cast<size_t>(i)]);
  const auto end = static_cast<size_t>(doc_offsets[static_cast<size_t>(i) + 1]);
  return std::span<const int32_t>(tokens).subspan(begin, end - begin);
}

void TokenCorpus::add_doc(std::span<const int32_t> ids) {
  tokens.insert(tokens.end(), ids.begin(), ids.end());
  doc_offsets.push_back(static_cast<int64_t>(tokens.size()));
}

uint64_t TokenCorpus::fingerprint() const {
  Fnv hash;
  hash.add(tokens.size());
  for (int32_t id : tokens) hash.add(static_cast<uint32_t>(id));
  hash.add(doc_offsets.size());
  for (int64_t offset : doc_offsets) hash.add(static_cast<uint64_t>(offset));
  return hash.state;
}

TokenCorpus tokenize_documents(const Tokenizer& tokenizer, std::span<const std::string> documents) {
  const auto count = static_cast<int64_t>(documents.size());
  std::vector<std::vector<int32_t>> encoded(documents.size());
  // Documents are independent and Tokenizer::encode is const: one per thread at a time.
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t d = 0; d < count; ++d)
    encoded[static_cast<size_t>(d)] = tokenizer.encode(documents[static_cast<size_t>(d)]);
  TokenCorpus corpus;
  corpus.vocab_size = tokenizer.vocab_size();
  size_t total = 0;
  for (const auto& ids : encoded) total += ids.size();
  corpus.tokens.reserve(total);
  for (const auto& ids : encoded) corpus.add_doc(ids);
  return corpus;
}

void write_token_shard(const std::string& path, const TokenCorpus& corpus) {
  require(!corpus.doc_offsets.empty() && corpus.doc_offsets.front() == 0 &&
              corpus.doc_offsets.back() == corpus.num_tokens(),
          "token corpus for '", path, "' has inconsistent document offsets");
  int32_t max_id = 0;
  for (int32_t id : corpus.tokens) {
    require(id >= 0, "token shard '", path, "': token id ", id, " is negative");
    max_id = std::max(max_id, id);
  }
  const uint32_t width = max_id < 65536 ? 2 : 4;
  std::string header;
  header.append(kShardMagic, 8);
  put<uint32_t>(header, kShardVersion);
  put<uint32_t>(header, width);
  put<uint64_t>(header, static_cast<uint64_t>(corpus.num_tokens()));
  put<uint64_t>(header, static_cast<uint64_t>(corpus.num_docs()));
  put<uint32_t>(header, static_cast<uint32_t>(std::max(0, corpus.vocab_size)));
  put<uint32_t>(header, 0);
  for (int64_t offset : corpus.doc_offsets) put<uint64_t>(header, static_cast<uint64_t>(offset));
  AtomicFile file(path);
  file.write(header);
  std::string block;
  constexpr size_t kChunk = 1 << 20;
  for (size_t i = 0; i < corpus.tokens.size(); i += kChunk) {
    block.clear();
    const size_t end = std::min(corpus.tokens.size(), i + kChunk);
    for (size_t k = i; k < end; ++k) {
      if (width == 2) {
        put<uint16_t>(block, static_cast<uint16_t>(corpus.tokens[k]));
      } else {
        put<uint32_t>(block, static_cast<uint32_t>(corpus.tokens[k]));
      }
    }
    file.write(block);
  }
  file.commit();
}

bool is_token_shard(const std::string& path) {
  if (!is_regular_file(path)) return false;
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return false;
  char magic[8] = {};
  const size_t got = std::fread(magic, 1, 8, file);
  std::fclose(file);
  return got == 8 && std::memcmp(magic, kShardMagic, 8) == 0;
}

TokenCorpus read_token_shard(const std::string& path) {
  const std::string bytes = read_file(path);
  const std::string where = "token shard '" + path + "'";
  require(bytes.size() >= kShardHeader, where, ": ", bytes.size(), " bytes is shorter than the ",
          kShardHeader, "-byte header (truncated file?)");
  require(std::memcmp(bytes.data(), kShardMagic, 8) == 0, where,
          ": bad magic (not an sqa token shard)");
  const auto version = get<uint32_t>(bytes, 8);
  require(version == kShardVersion, where, ": version ", version, " is not supported (expected ",
          kShardVersion, ")");
  const auto width = get<uint32_t>(bytes, 12);
  require(width == 2 || width == 4, where, ": token width ", width, " must be 2 or 4 bytes");
  const auto num_tokens = get<uint64_t>(bytes, 16);
  const auto num_docs = get<uint64_t>(bytes, 24);
  const auto vocab_size = get<uint32_t>(bytes, 32);
  const uint64_t limit = bytes.size();
  require(num_docs < limit / 8 && num_tokens <= limit / width, where, ": num_docs ", num_docs,
          " / num_tokens ", num_tokens, " do not fit in a file of ", limit,
          " bytes (corrupt or truncated file?)");
  const uint64_t expected = kShardHeader + 8 * (num_docs + 1) + width * num_tokens;
  require(expected == limit, where, ": size ", limit, " bytes, but the header (", num_docs,
          " documents, ", num_tokens, " tokens of ", width, " bytes) needs ", expected,
          " (truncated or corrupt file?)");
  TokenCorpus corpus;
  corpus.vocab_size = static_cast<int32_t>(vocab_size);
  corpus.doc_offsets.resize(num_docs + 1);
  uint64_t previous = 0;
  for (uint64_t d = 0; d <= num_docs; ++d) {
    const auto offset = get<uint64_t>(bytes, kShardHeader + 8 * d);
    require(offset >= previous && offset <= num_tokens, where, ": document offset ", d, " = ",
            offset, " must be non-decreasing and <= num_tokens (", num_tokens, ")");
    require(d > 0 || offset == 0, where, ": the first document offset must be 0, got ", offset);
    corpus.doc_offsets[d] = static_cast<int64_t>(offset);
    previous = offset;
  }
  require(previous == num_tokens, where, ": the last document offset ", previous,
          " must equal num_tokens (", num_tokens, ")");
  corpus.tokens.resize(num_tokens);
  const size_t data = kShardHeader + 8 * (num_docs + 1);
  for (uint64_t i = 0; i < num_tokens; ++i) {
    const uint32_t id =
        width == 2 ? get<uint16_t>(bytes, data + 2 * i) : get<uint32_t>(bytes, data + 4 * i);
    require(id <= static_cast<uint32_t>(std::numeric_limits<int32_t>::max()) &&
                (vocab_size == 0 || id < vocab_size),
            where, ": token ", i, " has id ", id, ", outside the vocabulary of ", vocab_size);
    corpus.tokens[i] = static_cast<int32_t>(id);
  }
  return corpus;
}

TokenCorpus load_corpus(const std::string& path, const Tokenizer& tokenizer,
                        const TextOptions& options) {
  if (is_token_shard(path)) return read_token_shard(path);
  std::error_code error;
  if (fs::is_directory(path, error)) {
    std::vector<std::string> files;
    for (const auto& entry : fs::directory_iterator(path, error)) {
      const std::string name = entry.path().filename().string();
      if (entry.is_regular_file() && !name.empty() && name[0] != '.')
        files.push_back(entry.path().string());
    }
    std::sort(files.begin(), files.end());
    const bool all_shards =
        !files.empty() && std::all_of(files.begin(), files.end(), is_token_shard);
    if (all_shards) {
      TokenCorpus corpus;
      for (const std::string& file : files) {
        const TokenCorpus part = read_token_shard(file);
        corpus.vocab_size = std::max(corpus.vocab_size, part.vocab_size);
        for (int64_t d = 0; d < part.num_docs(); ++d) corpus.add_doc(part.doc(d));
      }
      return corpus;
    }
  }
  const std::vector<std::string> documents = load_documents(path, options);
  require(!documents.empty(), "'", path, "' holds no text documents");
  return tokenize_documents(tokenizer, documents);
}

CorpusSplit split_corpus(const TokenCorpus& corpus, double train_fraction, double val_fraction) {
  require(train_fraction > 0 && train_fraction <= 1, "train_fraction (", train_fraction,
          ") must be in (0, 1]");
  require(val_fraction > 0 && val_fraction <= 1, "val_fraction (", val_fraction,
          ") must be in (0, 1]");
  require(train_fraction + val_fraction <= 1 + 1e-9, "train_fraction + val_fraction (",
          train_fraction + val_fraction, ") must be at most 1");
  const int64_t total = corpus.num_tokens();
  const auto& offsets = corpus.doc_offsets;
  // Cut at the nearest document boundary when one lies within 1% of the corpus, else inside
  // the document (a corpus of a few long documents).
  const auto cut_at = [&](double fraction) {
    const auto raw = static_cast<int64_t>(std::llround(fraction * static_cast<double>(total)));
    const auto it = std::lower_bound(offsets.begin(), offsets.end(), raw);
    int64_t best = it == offsets.end() ? offsets.back() : *it;
    if (it != offsets.begin() && raw - *(it - 1) < best - raw) best = *(it - 1);
    const int64_t tolerance = std::max<int64_t>(0, total / 100);
    return std::abs(best - raw) <= tolerance ? best : raw;
  };
  int64_t train_end = cut_at(train_fraction);
  int64_t val_end = cut_at(train_fraction + val_fraction);
  // Never let snapping empty a side that the raw fractions would fill.
  if (train_end <= 0)
    train_end =
        std::min<int64_t>(total, std::max<int64_t>(1, std::llround(train_fraction * total)));
  if (val_end <= train_end)
    val_end = std::min(total, train_end + std::max<int64_t>(1, std::llround(val_fraction * total)));
  require(train_end > 0 && val_end > train_end, "split of a corpus of ", total,
          " tokens with train_fraction ", train_fraction, " and val_fraction ", val_fraction,
          " leaves an empty side");
  return {slice(corpus, 0, train_end), slice(corpus, train_end, val_end)};
}

}  // namespace sqa
