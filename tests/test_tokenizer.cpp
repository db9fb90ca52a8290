// Byte-level BPE: pre-tokenization rule, exact round trips on arbitrary bytes, agreement with
// a naive merge-by-rank oracle, deterministic training, tokenizer.json round trips and errors.
#include <gtest/gtest.h>

#include <functional>
#include <nlohmann/json.hpp>

#include "data/data_test_util.hpp"
#include "sqa/data.hpp"
#include "sqa/error.hpp"
#include "sqa/io.hpp"
#include "sqa/tokenizer.hpp"

namespace sqa {
namespace {

using test::ScratchDir;

// Real English: pages of the Python tutorial (python3.11-doc), as plain text.
const std::vector<std::string>& tutorial_pages() {
  static const std::vector<std::string> pages = [] {
    const std::string folder = test::python_docs_dir() + "/tutorial";
    std::vector<std::string> docs = load_documents(folder);
    if (test::small_scale() && docs.size() > 4) docs.resize(4);
    return docs;
  }();
  return pages;
}

const Tokenizer& trained_tokenizer() {
  static const Tokenizer tok = [] {
    BpeTrainOptions options;
    options.vocab_size = test::small_scale() ? 600 : 2000;
    return Tokenizer::train(tutorial_pages(), options);
  }();
  return tok;
}

std::string random_utf8(std::mt19937_64& rng, size_t count) {
  // Mixed scripts, digits, punctuation, whitespace kinds, apostrophes, emoji.
  static const std::vector<std::string> alphabet = {
      "a",        "b",      "e",      "Z",
      " ",        " ",      "  ",     "\n",
      "\t",       "\r\n",   "'",      "'s",
      "'ll",      "'Re",    "0",      "7",
      "42",       ".",      ",",      "!?",
      "-",        "_",      "(",      ")",
      "é",        "ß",      "Ω",      "ж",
      "中",       "文",     "٣",      "½",
      "Ⅻ",        "\u00a0", "\u2003", "\u3000",
      "😀",        "—",      "“",      "”",
      "\xcc\x81", "<",      ">",      "<|endoftext|>"};
  std::string out;
  for (size_t i = 0; i < count; ++i) out += alphabet[rng() % alphabet.size()];
  return out;
}

std::vector<std::string> pieces(std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view p : Tokenizer::pre_tokenize(text)) out.emplace_back(p);
  return out;
}

TEST(Tokenizer, PreTokenizationFollowsGpt2Rule) {
  using V = std::vector<std::string>;
  EXPECT_EQ(pieces("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(pieces("don't we'll I'M"), (V{"don", "'t", " we", "'ll", " I", "'", "M"}));
  EXPECT_EQ(pieces("a   b"), (V{"a", "  ", " b"}));
  EXPECT_EQ(pieces("x\n\ny"), (V{"x", "\n", "\n", "y"}));
  EXPECT_EQ(pieces("x \ny"), (V{"x", " ", "\n", "y"}));
  EXPECT_EQ(pieces("end.  "), (V{"end", ".", "  "}));
  EXPECT_EQ(pieces("abc123 4.5"), (V{"abc", "123", " 4", ".", "5"}));
  EXPECT_EQ(pieces("f(x) == 'y'"), (V{"f", "(", "x", ")", " ==", " '", "y", "'"}));
  EXPECT_EQ(pieces("café über"), (V{"café", " über"}));
  EXPECT_EQ(pieces("中文 ٣٤"), (V{"中文", " ٣٤"}));
  EXPECT_EQ(pieces(" \u3000x"), (V{" ", "\u3000", "x"}));
  EXPECT_TRUE(pieces("").empty());
}

TEST(Tokenizer, PiecesTileAnyBytes) {
  std::mt19937_64 rng(31);
  const int trials = test::small_scale() ? 200 : 2000;
  for (int t = 0; t < trials; ++t) {
    const std::string text =
        (t % 2) ? test::random_bytes(rng, rng() % 64) : random_utf8(rng, rng() % 40);
    std::string joined;
    for (std::string_view p : Tokenizer::pre_tokenize(text)) {
      ASSERT_FALSE(p.empty());
      joined += p;
    }
    ASSERT_EQ(joined, text);
  }
}

TEST(Tokenizer, RoundTripsArbitraryBytesAndText) {
  const Tokenizer& tok = trained_tokenizer();
  std::mt19937_64 rng(32);
  const int trials = test::small_scale() ? 300 : 3000;
  for (int t = 0; t < trials; ++t) {
    const std::string text =
        (t % 2) ? test::random_bytes(rng, rng() % 200) : random_utf8(rng, rng() % 100);
    const std::vector<int32_t> ids = tok.encode(text);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok.vocab_size());
    ASSERT_EQ(tok.decode(ids), text) << "trial " << t;
    ASSERT_EQ(tok.decode(tok.encode(text, false)), text);
  }
  for (const std::string& page : tutorial_pages()) EXPECT_EQ(tok.decode(tok.encode(page)), page);
  // The untrained tokenizer is the identity on bytes.
  const Tokenizer bytes_only;
  const std::string raw = test::random_bytes(rng, 500);
  const auto ids = bytes_only.encode(raw);
  EXPECT_EQ(ids.size(), raw.size());
  EXPECT_EQ(bytes_only.decode(ids), raw);
}

// Oracle: apply the merges one rank at a time to the whole piece, each merge left to right.
// For a trained vocabulary (every merge's parts exist before it) this equals BPE by rank.
std::vector<int32_t> naive_encode(const Tokenizer& tok, const nlohmann::json& merges,
                                  std::string_view text) {
  std::vector<int32_t> out;
  for (std::string_view piece : Tokenizer::pre_tokenize(text)) {
    std::vector<std::string> symbols;
    for (unsigned char b : piece)
      symbols.push_back(
          tok.id_to_token(tok.encode(std::string(1, static_cast<char>(b)), false)[0]));
    for (const auto& merge : merges) {
      const std::string m = merge.get<std::string>();
      const std::string a = m.substr(0, m.find(' ')), b = m.substr(m.find(' ') + 1);
      std::vector<std::string> next;
      for (size_t i = 0; i < symbols.size(); ++i) {
        if (i + 1 < symbols.size() && symbols[i] == a && symbols[i + 1] == b) {
          next.push_back(a + b);
          ++i;
        } else {
          next.push_back(symbols[i]);
        }
      }
      symbols = std::move(next);
      if (symbols.size() == 1) break;
    }
    for (const std::string& s : symbols) out.push_back(tok.token_to_id(s));
  }
  return out;
}

TEST(Tokenizer, EncodingMatchesNaiveMergeOracle) {
  const Tokenizer& tok = trained_tokenizer();
  const nlohmann::json merges = nlohmann::json::parse(tok.to_json())["model"]["merges"];
  ASSERT_EQ(static_cast<int>(merges.size()), tok.num_merges());
  std::mt19937_64 rng(33);
  const std::string& page = tutorial_pages()[0];
  const int trials = test::small_scale() ? 10 : 60;
  for (int t = 0; t < trials; ++t) {
    const size_t start = rng() % page.size();
    const std::string text = page.substr(start, 300) + random_utf8(rng, 10);
    ASSERT_EQ(tok.encode(text, false), naive_encode(tok, merges, text)) << text;
  }
}

TEST(Tokenizer, TrainingIsDeterministicAndUseful) {
  const Tokenizer& tok = trained_tokenizer();
  const int target = test::small_scale() ? 600 : 2000;
  EXPECT_EQ(tok.vocab_size(), target);
  EXPECT_EQ(tok.token_to_id("<|endoftext|>"), 0);
  EXPECT_EQ(tok.eos_id(), 0);
  EXPECT_EQ(tok.pad_id(), 1);
  EXPECT_TRUE(tok.is_special(0));
  EXPECT_FALSE(tok.is_special(2));
  BpeTrainOptions options;
  options.vocab_size = target;
  const Tokenizer again = Tokenizer::train(tutorial_pages(), options);
  EXPECT_EQ(again.to_json(), tok.to_json());
  // BPE must compress English well beyond one token per byte.
  size_t bytes = 0, tokens = 0;
  for (const std::string& page : tutorial_pages()) {
    bytes += page.size();
    tokens += tok.encode(page).size();
  }
  EXPECT_GT(static_cast<double>(bytes) / static_cast<double>(tokens),
            test::small_scale() ? 2.0 : 2.5);  // vocab 600 vs 2000
  // Special tokens split text and are never learned as merges.
  const std::string text = "a<|endoftext|>b";
  EXPECT_EQ(tok.encode(text)[1], 0);
  EXPECT_EQ(tok.encode(text).size(), 3u);
  EXPECT_GT(tok.encode(text, false).size(), 3u);
  EXPECT_EQ(tok.decode(tok.encode(text)), text);
  // A different corpus gives a different vocabulary.
  std::vector<std::string> other = {std::string(5000, 'q') + " zzz zzz zzz"};
  options.vocab_size = 300;
  EXPECT_NE(Tokenizer::train(other, options).to_json(),
            Tokenizer::train(tutorial_pages(), options).to_json());
}

TEST(Tokenizer, JsonRoundTripAndPairMerges) {
  ScratchDir dir;
  const Tokenizer& tok = trained_tokenizer();
  const std::string path = dir.file("tokenizer.json");
  tok.save(path);
  const Tokenizer loaded = Tokenizer::load(path);
  EXPECT_EQ(loaded.to_json(), tok.to_json());
  std::mt19937_64 rng(34);
  for (int t = 0; t < 50; ++t) {
    const std::string text = random_utf8(rng, 60);
    EXPECT_EQ(loaded.encode(text), tok.encode(text));
  }
  // Newer tokenizers write merges as ["a", "b"] pairs: same tokenizer.
  nlohmann::json j = nlohmann::json::parse(tok.to_json());
  nlohmann::json pairs = nlohmann::json::array();
  for (const auto& m : j["model"]["merges"]) {
    const std::string s = m.get<std::string>();
    pairs.push_back({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)});
  }
  j["model"]["merges"] = pairs;
  const Tokenizer from_pairs = Tokenizer::from_json(j.dump());
  EXPECT_EQ(from_pairs.to_json(), tok.to_json());
}

TEST(Tokenizer, BadJsonGivesClearErrors) {
  const nlohmann::json good = nlohmann::json::parse(trained_tokenizer().to_json());
  const auto error_for = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = good;
    edit(j);
    try {
      Tokenizer::from_json(j.dump(), "tok.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const auto expect_parts = [](const std::string& message, std::vector<std::string> parts) {
    ASSERT_FALSE(message.empty()) << "no error for a case expecting " << parts[0];
    for (const auto& p : parts) EXPECT_NE(message.find(p), std::string::npos) << message;
  };
  expect_parts(error_for([](auto& j) { j["model"]["type"] = "WordPiece"; }),
               {"tok.json", "WordPiece"});
  expect_parts(error_for([](auto& j) { j["model"]["merges"][0] = "nonexistent Ġx"; }),
               {"merge 0", "nonexistent"});
  expect_parts(error_for([](auto& j) { j["model"]["merges"][1] = "abc"; }),
               {"merge 1", "two tokens"});
  expect_parts(error_for([](auto& j) {
                 j["normalizer"] = {{"type", "NFC"}};
               }),
               {"normalizer", "NFC"});
  expect_parts(error_for([](auto& j) {
                 j["pre_tokenizer"] = {{"type", "Whitespace"}};
               }),
               {"pre_tokenizer", "Whitespace"});
  expect_parts(error_for([](auto& j) { j["model"]["vocab"]["Ġzzzz"] = 5; }), {"id 5"});
  expect_parts(error_for([](auto& j) { j.erase("model"); }), {"model"});
  try {
    Tokenizer::from_json("{not json", "broken.json");
    ADD_FAILURE() << "bad JSON accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("broken.json"), std::string::npos);
  }
  const std::vector<int32_t> bad_ids = {1, 99999};
  EXPECT_THROW(trained_tokenizer().decode(bad_ids), Error);
  BpeTrainOptions tiny;
  tiny.vocab_size = 100;
  EXPECT_THROW(Tokenizer::train(tutorial_pages(), tiny), Error);
}

}  // namespace
}  // namespace sqa
