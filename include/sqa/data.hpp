// Datasets: documents from text, HTML, JSONL or pre-tokenized shards; a token corpus with
// document boundaries; contiguous train/validation splits; and batches of (batch, context)
// next-token windows in packing or pad-to-length mode, with a loss mask and an exactly
// resumable shuffled order.
//
// Token shard file format (".tok", little-endian), written atomically:
//   offset 0   8 bytes   magic "SQATOKS\0"
//          8   u32       version (1)
//         12   u32       token width in bytes: 2 (uint16 ids) or 4 (uint32 ids)
//         16   u64       num_tokens
//         24   u64       num_docs
//         32   u32       vocab_size (0 = unknown)
//         36   u32       reserved (0)
//         40   u64[num_docs + 1]  document start offsets in tokens (0 first, num_tokens last)
//         ..   num_tokens ids of the given width
// The file size must match exactly; offsets must be non-decreasing.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "sqa/tokenizer.hpp"

namespace sqa {

// ---------------------------------------------------------------------------------------------
// Documents

// Plain text from HTML: drops <script>, <style> and <head> content, comments and tags; block
// tags (p, div, h1-h6, li, pre, tr, br, ...) become line breaks; entities (&amp; &#8217;
// &#x2014; and the common named ones) are decoded to UTF-8; runs of spaces collapse to one and
// runs of blank lines to one blank line (text inside <pre> keeps its layout).
std::string html_to_text(std::string_view html);

enum class TextSplit {
  separator,  // documents separated by TextOptions::separator (a file without it: 1 document)
  file,       // each file is one document
  paragraph,  // blank-line separated paragraphs
  line,       // each non-empty line
};

struct TextOptions {
  TextSplit split = TextSplit::separator;
  std::string separator = "<|endoftext|>";
  std::string jsonl_field = "text";  // JSONL: the string field holding each document
};

// Documents from a file or a folder (recursively, files in sorted path order). By extension:
// .jsonl one JSON object per line (field jsonl_field); .html/.htm through html_to_text, one
// document per file; anything else as UTF-8 text split per options. Hidden files are skipped.
// Empty documents are dropped. Throws sqa::Error naming the file and line on bad JSONL.
std::vector<std::string> load_documents(const std::string& path, const TextOptions& options = {});

// ---------------------------------------------------------------------------------------------
// Token corpus

struct TokenCorpus {
  std::vector<int32_t> tokens;       // all documents back to back (no EOS inserted)
  std::vector<int64_t> doc_offsets;  // num_docs + 1 entries, doc i = [offsets[i], offsets[i+1])
  int32_t vocab_size = 0;            // 0 = unknown

  TokenCorpus() : doc_offsets{0} {}
  int64_t num_docs() const { return static_cast<int64_t>(doc_offsets.size()) - 1; }
  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
  std::span<const int32_t> doc(int64_t i) const;
  void add_doc(std::span<const int32_t> ids);
  // Order-sensitive hash of tokens and boundaries: tells a loader state from another corpus.
  uint64_t fingerprint() const;
};

// Encodes documents in parallel (OpenMP), one corpus document per input document.
TokenCorpus tokenize_documents(const Tokenizer& tokenizer, std::span<const std::string> documents);

// Token shards (format above). The width is 2 when every id < 65536, else 4.
void write_token_shard(const std::string& path, const TokenCorpus& corpus);
TokenCorpus read_token_shard(const std::string& path);
bool is_token_shard(const std::string& path);  // checks the magic

// One entry point for `--data`: a shard file, or a folder whose files are all shards
// (concatenated in sorted order), is read as is; anything else goes through load_documents
// and the tokenizer.
TokenCorpus load_corpus(const std::string& path, const Tokenizer& tokenizer,
                        const TextOptions& options = {});

// Contiguous split (paper: train on the first part, validate on the next): documents
// [0, train_fraction) go to train and [train_fraction, train_fraction + val_fraction) to
// validation. Each cut goes to the document boundary nearest the token fraction when one lies
// within 1% of the corpus, else inside the document (a corpus of few, long documents).
// Fractions in (0, 1], sum <= 1. Throws when either side would be empty.
struct CorpusSplit {
  TokenCorpus train, validation;
};
CorpusSplit split_corpus(const TokenCorpus& corpus, double train_fraction, double val_fraction);

// ---------------------------------------------------------------------------------------------
// Batches

enum class BatchMode {
  pack,  // documents joined with EOS into one stream, cut into windows across documents
  pad,   // paper: each document (+ EOS) truncated / padded with pad_id to context + 1 tokens
};

struct BatchOptions {
  int batch_size = 8;
  int context = 128;  // tokens per row; each window holds context + 1 tokens
  BatchMode mode = BatchMode::pack;
  int32_t eos_id = -1;     // required for pack mode and when append_eos
  int32_t pad_id = -1;     // required for pad mode
  bool append_eos = true;  // EOS after each document
  // Paper-faithful: pad targets count in loss and accuracy (mask 1). Default: mask 0.
  bool count_pad_in_loss = false;
  bool shuffle = true;  // a fresh permutation of the windows each epoch
  uint64_t seed = 0;
};

// One batch in the layout Model::forward takes. Row r predicts targets[r, t] from
// inputs[r, 0..t]; targets are inputs shifted by one inside the same (context + 1) window.
struct Batch {
  int batch_size = 0;  // rows actually filled (eval_batch's last batch may be short)
  int context = 0;
  std::vector<int32_t> inputs;    // (batch_size, context)
  std::vector<int32_t> targets;   // (batch_size, context)
  std::vector<float> loss_mask;   // (batch_size, context), 1 = counted
  double counted_tokens() const;  // sum of loss_mask
};

// Where a BatchLoader stands; restoring it continues the exact same batch sequence.
// The epoch's permutation is a pure function of (seed, epoch), so rng_state is recorded for
// inspection and checked on restore rather than carried forward.
struct LoaderState {
  uint64_t seed = 0;
  uint64_t epoch = 0;
  uint64_t position = 0;            // windows already handed out in this epoch
  uint64_t rng_state = 0;           // the generator seed of this epoch's permutation
  uint64_t num_windows = 0;         // checked on restore
  uint64_t corpus_fingerprint = 0;  // checked on restore
  std::string to_json() const;
  static LoaderState from_json(const std::string& text);  // throws naming the field
};

class BatchLoader {
 public:
  // Throws sqa::Error when the corpus yields no window, or ids are missing for the mode.
  BatchLoader(TokenCorpus corpus, const BatchOptions& options);

  // The next training batch (always batch_size rows; crosses epoch boundaries).
  Batch next();
  void next(Batch& out);  // reuses out's buffers

  // Windows in file order (no shuffle), for evaluation: batch i holds windows
  // [i * batch_size, min((i + 1) * batch_size, num_windows)).
  int64_t num_eval_batches() const;
  Batch eval_batch(int64_t index) const;

  int64_t num_windows() const { return num_windows_; }
  int64_t batches_per_epoch() const;  // num_windows / batch_size, at least 1
  LoaderState state() const;
  // Throws sqa::Error when the state belongs to another corpus, window count or seed.
  void restore(const LoaderState& state);

  const TokenCorpus& corpus() const { return corpus_; }
  const BatchOptions& options() const { return options_; }

 private:
  void fill_window(int64_t window, int row, Batch& out) const;
  void start_epoch(uint64_t epoch);

  TokenCorpus corpus_;
  BatchOptions options_;
  std::vector<int32_t> stream_;         // pack mode: documents joined with EOS
  std::vector<int64_t> doc_of_window_;  // pad mode: non-empty documents
  int64_t num_windows_ = 0;
  uint64_t fingerprint_ = 0;
  uint64_t epoch_ = 0, position_ = 0, rng_state_ = 0;
  std::vector<int64_t> order_;  // this epoch's window permutation
};

}  // namespace sqa
