// Datasets: HTML to text, document loaders, token shards (round trip and corruption), the
// contiguous split, packing and pad-to-length batches with their loss masks, and exact resume.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <set>

#include "data/data_test_util.hpp"
#include "sqa/data.hpp"
#include "sqa/error.hpp"
#include "sqa/io.hpp"
#include "test_util.hpp"

namespace sqa {
namespace {

using test::error_of;
using test::ScratchDir;

// Random documents of random lengths (some empty), ids in [2, vocab).
TokenCorpus random_corpus(std::mt19937_64& rng, int docs, int max_len, int vocab) {
  TokenCorpus corpus;
  corpus.vocab_size = vocab;
  for (int d = 0; d < docs; ++d) {
    std::vector<int32_t> ids(rng() % static_cast<uint64_t>(max_len + 1));
    for (int32_t& id : ids) id = 2 + static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab - 2));
    corpus.add_doc(ids);
  }
  return corpus;
}

bool same_batch(const Batch& a, const Batch& b) {
  return a.batch_size == b.batch_size && a.inputs == b.inputs && a.targets == b.targets &&
         a.loss_mask == b.loss_mask;
}

TEST(Html, StripsMarkupAndDecodesEntities) {
  const std::string html = R"(<!DOCTYPE html><html><head><title>T</title>
<style>p { color: red }</style><script>if (a < b) { x = "<p>"; }</script></head>
<body><nav>Menu Home</nav><div class="body" role="main">
<h1>Title<a class="headerlink" href="#t">¶</a></h1>
<p>Fish &amp; chips&nbsp;cost &#163;5 &#x2014; don&#8217;t   <b>panic</b>.</p>
<!-- a comment <p>hidden</p> -->
<pre>  indented
    code &lt;x&gt;</pre>
<ul><li>one</li><li>two</li></ul>
</div><div class="footer">Copyright</div></body></html>)";
  const std::string text = html_to_text(html);
  EXPECT_EQ(text,
            "Title\n\nFish & chips cost £5 — don’t panic.\n\n  indented\n    code <x>\n\n"
            "one\ntwo\n");
  // Without a main landmark the whole body is kept (minus navigation).
  EXPECT_EQ(html_to_text("<p>a &lt; b &unknown; &#0;</p><nav>x</nav><p>c</p>"),
            "a < b &unknown; &#0;\n\nc\n");
  EXPECT_EQ(html_to_text(""), "");
}

TEST(Html, RealDocumentationPage) {
  const std::string page = read_file(test::python_docs_dir() + "/tutorial/controlflow.html");
  const std::string text = html_to_text(page);
  EXPECT_NE(text.find("4. More Control Flow Tools"), std::string::npos);
  EXPECT_NE(text.find(">>> for w in words:\n...     print(w, len(w))"), std::string::npos)
      << "pre layout lost";
  EXPECT_EQ(text.find('<' + std::string("div")), std::string::npos);
  EXPECT_EQ(text.find("&amp;"), std::string::npos);
  EXPECT_EQ(text.find("¶"), std::string::npos);
  EXPECT_EQ(text.find("Navigation"), std::string::npos);
  EXPECT_GT(text.size(), 20000u);
  EXPECT_LT(text.size(), page.size() / 2);
}

TEST(Documents, TextSplitsJsonlAndFolders) {
  ScratchDir dir;
  write_file_atomic(dir.file("a.txt"),
                    "first doc\n<|endoftext|>\nsecond\n\nstill second<|endoftext|>  \n");
  TextOptions options;
  EXPECT_EQ(load_documents(dir.file("a.txt"), options),
            (std::vector<std::string>{"first doc\n", "\nsecond\n\nstill second"}));
  options.split = TextSplit::paragraph;
  write_file_atomic(dir.file("p.txt"), "p one\nline two\n\n \np two\n\n\n");
  EXPECT_EQ(load_documents(dir.file("p.txt"), options),
            (std::vector<std::string>{"p one\nline two\n", "p two\n"}));
  options.split = TextSplit::line;
  EXPECT_EQ(load_documents(dir.file("p.txt"), options),
            (std::vector<std::string>{"p one", "line two", "p two"}));
  options.split = TextSplit::file;
  EXPECT_EQ(load_documents(dir.file("p.txt"), options).size(), 1u);

  write_file_atomic(dir.file("d.jsonl"),
                    "{\"text\": \"héllo\\nworld\"}\n\n{\"text\": \"two\", \"id\": 3}\n");
  EXPECT_EQ(load_documents(dir.file("d.jsonl")), (std::vector<std::string>{"héllo\nworld", "two"}));
  write_file_atomic(dir.file("bad.jsonl"), "{\"text\": \"ok\"}\n{\"body\": \"x\"}\n");
  const std::string message = error_of([&] { load_documents(dir.file("bad.jsonl")); });
  EXPECT_NE(message.find("bad.jsonl:2"), std::string::npos) << message;
  EXPECT_NE(message.find("'text'"), std::string::npos) << message;
  write_file_atomic(dir.file("worse.jsonl"), "{\"text\": \n");
  EXPECT_NE(error_of([&] { load_documents(dir.file("worse.jsonl")); }).find("worse.jsonl:1"),
            std::string::npos);

  // Folders: recursive, sorted, hidden files and non-text files skipped, HTML stripped.
  std::filesystem::create_directories(dir.path() / "tree/sub");
  std::filesystem::create_directories(dir.path() / "tree/.git");
  write_file_atomic(dir.file("tree/b.txt"), "bee");
  write_file_atomic(dir.file("tree/a.md"), "ay");
  write_file_atomic(dir.file("tree/sub/c.html"), "<p>see &amp; do</p>");
  write_file_atomic(dir.file("tree/.git/x.txt"), "hidden");
  write_file_atomic(dir.file("tree/image.png"), "\x89PNG");
  EXPECT_EQ(load_documents(dir.file("tree")),
            (std::vector<std::string>{"ay", "bee", "see & do\n"}));
  EXPECT_NE(error_of([&] { load_documents(dir.file("missing")); }).find("missing"),
            std::string::npos);
}

TEST(Shards, RoundTripBothWidths) {
  ScratchDir dir;
  std::mt19937_64 rng(41);
  for (int vocab : {5000, 70000}) {
    const TokenCorpus corpus = random_corpus(rng, 30, 50, vocab);
    const std::string path = dir.file("c" + std::to_string(vocab) + ".tok");
    write_token_shard(path, corpus);
    EXPECT_TRUE(is_token_shard(path));
    const TokenCorpus back = read_token_shard(path);
    EXPECT_EQ(back.tokens, corpus.tokens);
    EXPECT_EQ(back.doc_offsets, corpus.doc_offsets);
    EXPECT_EQ(back.vocab_size, vocab);
    EXPECT_EQ(back.fingerprint(), corpus.fingerprint());
    const size_t width = vocab < 65536 ? 2 : 4;
    EXPECT_EQ(read_file(path).size(),
              40 + 8 * (corpus.doc_offsets.size()) + width * corpus.tokens.size());
  }
}

TEST(Shards, TruncatedOrCorruptFilesAreErrors) {
  ScratchDir dir;
  std::mt19937_64 rng(42);
  const TokenCorpus corpus = random_corpus(rng, 5, 8, 300);
  const std::string path = dir.file("c.tok");
  write_token_shard(path, corpus);
  const std::string bytes = read_file(path);
  for (size_t length = 0; length < bytes.size(); ++length) {
    // Plain writes: the fsyncs of write_file_atomic would make this loop slow.
    std::ofstream(dir.file("cut.tok"), std::ios::binary | std::ios::trunc)
        << bytes.substr(0, length);
    const std::string message = error_of([&] { read_token_shard(dir.file("cut.tok")); });
    ASSERT_FALSE(message.empty()) << "prefix of " << length << " bytes accepted";
    EXPECT_NE(message.find("cut.tok"), std::string::npos) << message;
  }
  const auto corrupt = [&](size_t offset, char value) {
    std::string bad = bytes;
    bad[offset] = value;
    write_file_atomic(dir.file("bad.tok"), bad);
    return error_of([&] { read_token_shard(dir.file("bad.tok")); });
  };
  EXPECT_NE(corrupt(0, 'X').find("magic"), std::string::npos);
  EXPECT_NE(corrupt(8, 9).find("version 9"), std::string::npos);
  EXPECT_NE(corrupt(12, 3).find("width 3"), std::string::npos);
  EXPECT_NE(corrupt(48, 100).find("offset"), std::string::npos);
  // A token id beyond the recorded vocabulary.
  std::string bad = bytes;
  const size_t data = 40 + 8 * corpus.doc_offsets.size();
  bad[data] = static_cast<char>(0xff), bad[data + 1] = static_cast<char>(0xff);
  write_file_atomic(dir.file("id.tok"), bad);
  EXPECT_NE(error_of([&] { read_token_shard(dir.file("id.tok")); }).find("65535"),
            std::string::npos);
}

TEST(Corpus, LoadCorpusFromShardsAndText) {
  ScratchDir dir;
  std::mt19937_64 rng(43);
  const TokenCorpus a = random_corpus(rng, 4, 10, 258), b = random_corpus(rng, 3, 10, 258);
  std::filesystem::create_directories(dir.path() / "shards");
  write_token_shard(dir.file("shards/00.tok"), a);
  write_token_shard(dir.file("shards/01.tok"), b);
  const Tokenizer bytes_only;
  const TokenCorpus both = load_corpus(dir.file("shards"), bytes_only);
  EXPECT_EQ(both.num_docs(), a.num_docs() + b.num_docs());
  std::vector<int32_t> expected = a.tokens;
  expected.insert(expected.end(), b.tokens.begin(), b.tokens.end());
  EXPECT_EQ(both.tokens, expected);
  EXPECT_EQ(load_corpus(dir.file("shards/01.tok"), bytes_only).tokens, b.tokens);
  write_file_atomic(dir.file("t.txt"), "ab<|endoftext|>cde");
  const TokenCorpus text = load_corpus(dir.file("t.txt"), bytes_only);
  EXPECT_EQ(text.num_docs(), 2);
  EXPECT_EQ(text.tokens, (std::vector<int32_t>{'a', 'b', 'c', 'd', 'e'}));
}

TEST(Corpus, ContiguousSplit) {
  std::mt19937_64 rng(44);
  const TokenCorpus corpus = random_corpus(rng, 400, 60, 1000);
  const CorpusSplit split = split_corpus(corpus, 0.45, 0.05);  // paper: 45% / 5%
  const double total = static_cast<double>(corpus.num_tokens());
  EXPECT_NEAR(split.train.num_tokens() / total, 0.45, 0.011);
  EXPECT_NEAR(split.validation.num_tokens() / total, 0.05, 0.011);
  // Train is a prefix and validation follows it directly.
  std::vector<int32_t> joined = split.train.tokens;
  joined.insert(joined.end(), split.validation.tokens.begin(), split.validation.tokens.end());
  EXPECT_TRUE(std::equal(joined.begin(), joined.end(), corpus.tokens.begin()));
  // Cuts fall on document boundaries when there are many documents.
  std::set<int64_t> boundaries(corpus.doc_offsets.begin(), corpus.doc_offsets.end());
  EXPECT_TRUE(boundaries.count(split.train.num_tokens()));
  EXPECT_TRUE(boundaries.count(split.train.num_tokens() + split.validation.num_tokens()));
  // One long document is cut inside.
  TokenCorpus single;
  single.add_doc(corpus.tokens);
  const CorpusSplit inside = split_corpus(single, 0.9, 0.1);
  EXPECT_NEAR(inside.train.num_tokens() / total, 0.9, 0.001);
  EXPECT_EQ(inside.train.num_tokens() + inside.validation.num_tokens(), single.num_tokens());
  EXPECT_EQ(inside.validation.num_docs(), 1);
  EXPECT_NE(error_of([&] { split_corpus(corpus, 0.9, 0.2); }).find("at most 1"), std::string::npos);
  EXPECT_NE(error_of([&] { split_corpus(corpus, 0.0, 0.2); }).find("train_fraction"),
            std::string::npos);
}

TEST(Batches, PackingCoversStreamOncePerEpoch) {
  std::mt19937_64 rng(45);
  const TokenCorpus corpus = random_corpus(rng, 60, 40, 500);
  BatchOptions options;
  options.batch_size = 3;
  options.context = 16;
  options.eos_id = 1;
  options.seed = 7;
  BatchLoader loader(corpus, options);
  std::vector<int32_t> stream;
  for (int64_t d = 0; d < corpus.num_docs(); ++d) {
    const auto ids = corpus.doc(d);
    stream.insert(stream.end(), ids.begin(), ids.end());
    stream.push_back(1);
  }
  const int64_t windows = (static_cast<int64_t>(stream.size()) - 1) / 16;
  ASSERT_EQ(loader.num_windows(), windows);
  // Over whole epochs each window comes exactly once per epoch, in a shuffled order.
  std::multiset<int64_t> seen;
  std::vector<int64_t> order;
  const int64_t rows = windows * 2;
  Batch batch;
  for (int64_t r = 0; r < rows; r += 3) {
    loader.next(batch);
    for (int row = 0; row < batch.batch_size && r + row < rows; ++row) {
      const int32_t* in = batch.inputs.data() + row * 16;
      const int32_t* tg = batch.targets.data() + row * 16;
      int64_t found = -1;
      for (int64_t w = 0; w < windows && found < 0; ++w)
        if (std::equal(in, in + 16, stream.begin() + w * 16) &&
            std::equal(tg, tg + 16, stream.begin() + w * 16 + 1))
          found = w;
      ASSERT_GE(found, 0) << "row is not a window of the stream";
      seen.insert(found);
      order.push_back(found);
    }
    for (float m : batch.loss_mask) ASSERT_EQ(m, 1.0f);
  }
  for (int64_t w = 0; w < windows; ++w) EXPECT_EQ(seen.count(w), 2u) << "window " << w;
  std::vector<int64_t> first(order.begin(), order.begin() + windows);
  std::vector<int64_t> sorted = first;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_NE(first, sorted) << "not shuffled";
  EXPECT_NE(first, std::vector<int64_t>(order.begin() + windows, order.end()))
      << "same order each epoch";
  // Eval batches are the windows in order.
  for (int64_t i = 0; i < loader.num_eval_batches(); ++i) {
    const Batch eval = loader.eval_batch(i);
    for (int row = 0; row < eval.batch_size; ++row)
      ASSERT_TRUE(std::equal(eval.inputs.begin() + row * 16, eval.inputs.begin() + row * 16 + 16,
                             stream.begin() + (i * 3 + row) * 16));
  }
  EXPECT_EQ(loader.eval_batch(loader.num_eval_batches() - 1).batch_size,
            static_cast<int>((windows - 1) % 3 + 1));
}

TEST(Batches, PadModeMasksPadding) {
  TokenCorpus corpus;
  corpus.add_doc(std::vector<int32_t>{10, 11, 12});
  corpus.add_doc(std::vector<int32_t>{});
  std::vector<int32_t> long_doc(30);
  for (int i = 0; i < 30; ++i) long_doc[static_cast<size_t>(i)] = 100 + i;
  corpus.add_doc(long_doc);
  BatchOptions options;
  options.mode = BatchMode::pad;
  options.batch_size = 2;
  options.context = 8;
  options.eos_id = 0;
  options.pad_id = 1;
  options.shuffle = false;
  BatchLoader loader(corpus, options);
  EXPECT_EQ(loader.num_windows(), 2);  // the empty document makes no window
  const Batch batch = loader.next();
  // Row 0: 10 11 12 EOS PAD... ; targets 11 12 EOS PAD ...; mask 1 1 1 0 ...
  EXPECT_EQ(std::vector<int32_t>(batch.inputs.begin(), batch.inputs.begin() + 8),
            (std::vector<int32_t>{10, 11, 12, 0, 1, 1, 1, 1}));
  EXPECT_EQ(std::vector<int32_t>(batch.targets.begin(), batch.targets.begin() + 8),
            (std::vector<int32_t>{11, 12, 0, 1, 1, 1, 1, 1}));
  EXPECT_EQ(std::vector<float>(batch.loss_mask.begin(), batch.loss_mask.begin() + 8),
            (std::vector<float>{1, 1, 1, 0, 0, 0, 0, 0}));
  // Row 1: truncated to context + 1 tokens, no padding, all counted.
  for (int t = 0; t < 8; ++t) {
    EXPECT_EQ(batch.inputs[static_cast<size_t>(8 + t)], 100 + t);
    EXPECT_EQ(batch.targets[static_cast<size_t>(8 + t)], 101 + t);
    EXPECT_EQ(batch.loss_mask[static_cast<size_t>(8 + t)], 1.0f);
  }
  EXPECT_EQ(batch.counted_tokens(), 11.0);
  // Paper-faithful: pad targets count.
  options.count_pad_in_loss = true;
  BatchLoader faithful(corpus, options);
  EXPECT_EQ(faithful.next().counted_tokens(), 16.0);
  // Pad id equal to EOS: masking goes by position, so the EOS target still counts.
  options.count_pad_in_loss = false;
  options.pad_id = 0;
  EXPECT_EQ(BatchLoader(corpus, options).next().counted_tokens(), 11.0);
  options.pad_id = -1;
  EXPECT_NE(error_of([&] { BatchLoader(corpus, options); }).find("pad"), std::string::npos);
}

TEST(Batches, ResumeIsExact) {
  std::mt19937_64 rng(46);
  const TokenCorpus corpus = random_corpus(rng, 50, 30, 300);
  for (BatchMode mode : {BatchMode::pack, BatchMode::pad}) {
    BatchOptions options;
    options.mode = mode;
    options.batch_size = 4;
    options.context = 8;
    options.eos_id = 0;
    options.pad_id = 1;
    options.seed = 1234;
    BatchLoader loader(corpus, options);
    const int64_t before = loader.batches_per_epoch() + 3;  // stop inside the second epoch
    for (int64_t i = 0; i < before; ++i) loader.next();
    const std::string saved = loader.state().to_json();
    std::vector<Batch> expected;
    for (int i = 0; i < 2 * loader.batches_per_epoch(); ++i) expected.push_back(loader.next());

    BatchLoader resumed(corpus, options);
    resumed.restore(LoaderState::from_json(saved));
    for (const Batch& batch : expected) ASSERT_TRUE(same_batch(resumed.next(), batch));
    // A fresh loader without the state diverges (the check above can fail).
    BatchLoader fresh(corpus, options);
    EXPECT_FALSE(same_batch(fresh.next(), expected[0]));

    // States from another seed or another corpus are refused with a reason.
    BatchOptions other_seed = options;
    other_seed.seed = 99;
    BatchLoader wrong_seed(corpus, other_seed);
    EXPECT_NE(error_of([&] { wrong_seed.restore(LoaderState::from_json(saved)); }).find("seed"),
              std::string::npos);
    TokenCorpus changed = corpus;
    changed.tokens[5] ^= 1;
    BatchLoader wrong_data(changed, options);
    EXPECT_NE(
        error_of([&] { wrong_data.restore(LoaderState::from_json(saved)); }).find("fingerprint"),
        std::string::npos);
  }
  EXPECT_NE(error_of([] { LoaderState::from_json(R"({"seed": 1})"); }).find("epoch"),
            std::string::npos);
}

// End to end on real text: documentation pages -> tokenizer -> corpus -> split -> batches.
TEST(Batches, RealTextPipeline) {
  std::vector<std::string> pages = load_documents(test::python_docs_dir() + "/tutorial");
  ASSERT_GE(pages.size(), 10u);
  if (test::small_scale()) pages.resize(5);
  BpeTrainOptions bpe;
  bpe.vocab_size = 512;
  const Tokenizer tok = Tokenizer::train(pages, bpe);
  const TokenCorpus corpus = tokenize_documents(tok, pages);
  EXPECT_EQ(corpus.num_docs(), static_cast<int64_t>(pages.size()));
  for (int64_t d = 0; d < corpus.num_docs(); ++d) {
    const auto ids = corpus.doc(d);
    ASSERT_EQ(tok.decode(std::vector<int32_t>(ids.begin(), ids.end())),
              pages[static_cast<size_t>(d)]);
  }
  const CorpusSplit split = split_corpus(corpus, 0.9, 0.1);
  BatchOptions options;
  options.batch_size = 4;
  options.context = 64;
  options.eos_id = tok.eos_id();
  BatchLoader train(split.train, options);
  const Batch batch = train.next();
  EXPECT_EQ(batch.inputs.size(), 4u * 64u);
  for (int32_t id : batch.inputs) ASSERT_TRUE(id >= 0 && id < tok.vocab_size());
}

}  // namespace
}  // namespace sqa
