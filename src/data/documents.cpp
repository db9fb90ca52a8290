// Documents from text, HTML and JSONL files or folders (see data.hpp).
#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "sqa/data.hpp"
#include "sqa/error.hpp"
#include "sqa/io.hpp"

namespace sqa {
namespace {

namespace fs = std::filesystem;

std::string extension_of(const fs::path& path) {
  std::string ext = path.extension().string();
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext;
}

bool is_blank(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  });
}

void keep(std::vector<std::string>& out, std::string_view text) {
  if (!is_blank(text)) out.emplace_back(text);
}

void split_text(const std::string& text, const TextOptions& options,
                std::vector<std::string>& out) {
  switch (options.split) {
    case TextSplit::file:
      keep(out, text);
      return;
    case TextSplit::separator: {
      require(!options.separator.empty(), "TextOptions::separator must not be empty");
      size_t pos = 0;
      for (;;) {
        const size_t at = text.find(options.separator, pos);
        if (at == std::string::npos) {
          keep(out, std::string_view(text).substr(pos));
          return;
        }
        keep(out, std::string_view(text).substr(pos, at - pos));
        pos = at + options.separator.size();
      }
    }
    case TextSplit::line: {
      size_t pos = 0;
      while (pos <= text.size()) {
        size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        keep(out, std::string_view(text).substr(pos, end - pos));
        pos = end + 1;
      }
      return;
    }
    case TextSplit::paragraph: {
      // A paragraph ends at a line that is empty or only whitespace.
      size_t pos = 0, start = 0;
      while (pos <= text.size()) {
        size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        if (is_blank(std::string_view(text).substr(pos, end - pos))) {
          keep(out, std::string_view(text).substr(start, pos - start));
          start = end + 1;
        }
        pos = end + 1;
      }
      if (start < text.size()) keep(out, std::string_view(text).substr(start));
      return;
    }
  }
}

void load_jsonl(const std::string& path, const std::string& text, const TextOptions& options,
                std::vector<std::string>& out) {
  size_t pos = 0;
  int64_t line_number = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    ++line_number;
    const std::string_view line = std::string_view(text).substr(pos, end - pos);
    pos = end + 1;
    if (is_blank(line)) continue;
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw Error(detail::concat(path, ":", line_number, ": not valid JSON (", e.what(), ")"));
    }
    require(record.is_object() && record.contains(options.jsonl_field) &&
                record[options.jsonl_field].is_string(),
            path, ":", line_number, ": each JSONL record must be an object with a string field '",
            options.jsonl_field, "'");
    keep(out, record[options.jsonl_field].get<std::string>());
  }
}

void load_file(const fs::path& path, const TextOptions& options, std::vector<std::string>& out) {
  const std::string name = path.string();
  const std::string text = read_file(name);
  const std::string ext = extension_of(path);
  if (ext == ".jsonl") {
    load_jsonl(name, text, options, out);
  } else if (ext == ".html" || ext == ".htm") {
    keep(out, html_to_text(text));
  } else {
    split_text(text, options, out);
  }
}

bool hidden(const fs::path& relative) {
  for (const fs::path& part : relative) {
    const std::string text = part.string();
    if (!text.empty() && text[0] == '.' && text != "." && text != "..") return true;
  }
  return false;
}

}  // namespace

std::vector<std::string> load_documents(const std::string& path, const TextOptions& options) {
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  require(!error && fs::exists(status), "cannot read '", path, "': no such file or folder");
  std::vector<std::string> documents;
  if (!fs::is_directory(status)) {
    load_file(path, options, documents);
    return documents;
  }
  // Folders: text-like files only, in sorted order so the corpus (and the split) is the same
  // on every machine.
  static const char* const kText[] = {".txt", ".text", ".md", ".rst", ".jsonl", ".html", ".htm"};
  std::vector<fs::path> files;
  for (auto it = fs::recursive_directory_iterator(path, error);
       !error && it != fs::recursive_directory_iterator(); it.increment(error)) {
    if (!it->is_regular_file()) continue;
    const fs::path relative = fs::relative(it->path(), path);
    if (hidden(relative)) continue;
    const std::string ext = extension_of(it->path());
    if (std::any_of(std::begin(kText), std::end(kText), [&](const char* e) { return ext == e; }))
      files.push_back(it->path());
  }
  require(!error, "cannot list folder '", path, "': ", error.message());
  std::sort(files.begin(), files.end());
  for (const fs::path& file : files) load_file(file, options, documents);
  return documents;
}

}  // namespace sqa
