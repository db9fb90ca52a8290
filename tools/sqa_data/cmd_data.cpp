// `sqa-data`: the data and file-format tools. Kept apart from `sqa` so it builds without the
// model; cmd_data() has the subcommand signature of tools/sqa/commands.hpp so it can become
// `sqa data ...` unchanged.
//
//   corpus     --html DIR --out FILE [--separator S] [--exclude A,B]
//                                      HTML pages -> text documents joined by S; folders A, B
//                                      (relative to DIR) are left out
//   tokenizer  --data PATH --vocab N --out FILE [--special a,b] [--min-frequency K]
//   tokenize   --tokenizer FILE --data PATH --out FILE.tok [--split separator|file|paragraph|line]
//   encode     --tokenizer FILE --text FILE      ids of the file's text, as a JSON array
//   decode     --tokenizer FILE --ids FILE       text of a JSON array of ids, to stdout
//   st-info    FILE                              tensor names, dtypes, shapes (JSON)
//   st-copy    IN OUT [--dtype F32|BF16|F16]     read and rewrite a safetensors file
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sqa/args.hpp"
#include "sqa/data.hpp"
#include "sqa/error.hpp"
#include "sqa/io.hpp"
#include "sqa/safetensors.hpp"
#include "sqa/tokenizer.hpp"

namespace sqa::cli {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

TextSplit parse_split(const std::string& name) {
  if (name == "separator") return TextSplit::separator;
  if (name == "file") return TextSplit::file;
  if (name == "paragraph") return TextSplit::paragraph;
  if (name == "line") return TextSplit::line;
  throw Error("--split '" + name + "' must be separator, file, paragraph or line");
}

int corpus(const Args& args) {
  args.reject_unknown({"html", "out", "separator", "exclude"});
  const std::string folder = args.require("html");
  // e.g. the kernel documentation's translations/ (not English) for an English corpus.
  const std::vector<std::string> excluded = args.get_list("exclude", {});
  for (const std::string& name : excluded) {
    require(std::filesystem::is_directory(std::filesystem::path(folder) / name), "--exclude '",
            name, "' is not a folder inside --html '", folder, "'");
  }
  const std::string out = args.require("out");
  const std::string separator = args.get("separator", "\n<|endoftext|>\n");
  const auto start = std::chrono::steady_clock::now();
  // Only the rendered pages: folders starting with '_' (_sources holds the same text again as
  // reStructuredText, _static scripts) and the index and search pages (lists of links) are left
  // out. Sorted paths keep the corpus identical on every machine.
  namespace fs = std::filesystem;
  std::vector<fs::path> pages;
  for (const auto& entry : fs::recursive_directory_iterator(folder)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".html") continue;
    const fs::path relative = fs::relative(entry.path(), folder);
    bool skip = false;
    for (const fs::path& part : relative) {
      const std::string name = part.string();
      skip = skip || name.starts_with("_") || name.starts_with(".");
    }
    for (const std::string& prefix : excluded) {
      const fs::path first = *relative.begin();
      skip = skip || first == fs::path(prefix);
    }
    const std::string file = relative.filename().string();
    skip =
        skip || file.starts_with("genindex") || file == "py-modindex.html" || file == "search.html";
    if (!skip) pages.push_back(entry.path());
  }
  std::sort(pages.begin(), pages.end());
  std::vector<std::string> documents;
  for (const fs::path& page : pages) {
    std::string body = html_to_text(read_file(page.string()));
    if (!body.empty()) documents.push_back(std::move(body));
  }
  std::string text;
  for (size_t i = 0; i < documents.size(); ++i) {
    if (i) text += separator;
    text += documents[i];
  }
  text += '\n';
  write_file_atomic(out, text);
  std::printf("corpus: %zu documents, %.2f MB of text -> %s (%.1f s)\n", documents.size(),
              static_cast<double>(text.size()) / 1e6, out.c_str(), seconds_since(start));
  return 0;
}

int tokenizer(const Args& args) {
  args.reject_unknown({"data", "vocab", "out", "special", "min-frequency", "split"});
  TextOptions text;
  text.split = parse_split(args.get("split", "separator"));
  const auto start = std::chrono::steady_clock::now();
  const std::vector<std::string> documents = load_documents(args.require("data"), text);
  BpeTrainOptions options;
  options.vocab_size = static_cast<int>(args.get_int("vocab", 5000));
  options.special_tokens = args.get_list("special", options.special_tokens);
  options.min_frequency = static_cast<int>(args.get_int("min-frequency", 2));
  options.verbose = true;
  const Tokenizer trained = Tokenizer::train(documents, options);
  trained.save(args.require("out"));
  std::printf("tokenizer: vocab %d (%d merges) from %zu documents in %.1f s -> %s\n",
              trained.vocab_size(), trained.num_merges(), documents.size(), seconds_since(start),
              args.require("out").c_str());
  return 0;
}

int tokenize(const Args& args) {
  args.reject_unknown({"tokenizer", "data", "out", "split"});
  TextOptions text;
  text.split = parse_split(args.get("split", "separator"));
  const auto start = std::chrono::steady_clock::now();
  const Tokenizer tok = Tokenizer::load(args.require("tokenizer"));
  const TokenCorpus corpus = load_corpus(args.require("data"), tok, text);
  write_token_shard(args.require("out"), corpus);
  std::printf("tokenize: %lld documents, %lld tokens -> %s (%.1f s)\n",
              static_cast<long long>(corpus.num_docs()),
              static_cast<long long>(corpus.num_tokens()), args.require("out").c_str(),
              seconds_since(start));
  return 0;
}

int encode(const Args& args) {
  args.reject_unknown({"tokenizer", "text"});
  const Tokenizer tok = Tokenizer::load(args.require("tokenizer"));
  const std::vector<int32_t> ids = tok.encode(read_file(args.require("text")));
  std::printf("%s\n", nlohmann::json(ids).dump().c_str());
  return 0;
}

int decode(const Args& args) {
  args.reject_unknown({"tokenizer", "ids"});
  const Tokenizer tok = Tokenizer::load(args.require("tokenizer"));
  const auto ids =
      nlohmann::json::parse(read_file(args.require("ids"))).get<std::vector<int32_t>>();
  const std::string text = tok.decode(ids);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return 0;
}

int st_info(const Args& args) {
  args.reject_unknown({});
  require(args.positional().size() == 1, "st-info takes one file, got ", args.positional().size());
  const SafeTensorsFile file = SafeTensorsFile::load(args.positional()[0]);
  nlohmann::ordered_json out;
  out["metadata"] = file.metadata();
  nlohmann::ordered_json tensors = nlohmann::ordered_json::object();
  for (const TensorView& view : file.tensors()) {
    tensors[view.name] = {{"dtype", std::string(tensor_dtype_name(view.dtype))},
                          {"shape", view.shape},
                          {"nbytes", view.nbytes}};
  }
  out["tensors"] = tensors;
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

int st_copy(const Args& args) {
  args.reject_unknown({"dtype"});
  require(args.positional().size() == 2, "st-copy takes IN and OUT, got ", args.positional().size(),
          " paths");
  const SafeTensorsFile file = SafeTensorsFile::load(args.positional()[0]);
  SafeTensorsWriter writer;
  for (const auto& [key, value] : file.metadata()) writer.set_metadata(key, value);
  const bool convert = args.has("dtype");
  const TensorDType target = parse_tensor_dtype(args.get("dtype", "F32"));
  for (const TensorView& view : file.tensors()) {
    const bool floating = view.dtype == TensorDType::f32 || view.dtype == TensorDType::bf16 ||
                          view.dtype == TensorDType::f16 || view.dtype == TensorDType::f64;
    if (convert && floating) {
      writer.add_f32(view.name, view.shape, view.to_f32(), target);
    } else {
      writer.add(view.name, view.dtype, view.shape, view.data, view.nbytes);
    }
  }
  writer.save(args.positional()[1]);
  return 0;
}

}  // namespace

int cmd_data(const std::vector<std::string>& argv) {
  require(!argv.empty(),
          "usage: sqa-data corpus|tokenizer|tokenize|encode|decode|st-info|st-copy [options]");
  const std::string command = argv[0];
  const Args args(std::vector<std::string>(argv.begin() + 1, argv.end()));
  if (command == "corpus") return corpus(args);
  if (command == "tokenizer") return tokenizer(args);
  if (command == "tokenize") return tokenize(args);
  if (command == "encode") return encode(args);
  if (command == "decode") return decode(args);
  if (command == "st-info") return st_info(args);
  if (command == "st-copy") return st_copy(args);
  throw Error("unknown sqa-data command '" + command +
              "': expected corpus, tokenizer, tokenize, encode, decode, st-info or st-copy");
}

}  // namespace sqa::cli

int main(int argc, char** argv) {
  try {
    return sqa::cli::cmd_data(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sqa-data: error: %s\n", e.what());
    return 1;
  }
}
