// HTML to plain text for building corpora from documentation pages (see data.hpp).
#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>

#include "data/utf8.hpp"
#include "sqa/data.hpp"

namespace sqa {
namespace {

struct Tag {
  std::string name;  // lower case; "" for comments, doctype and malformed input
  bool closing = false;
  bool self_closing = false;
  std::string cls, role;
  size_t end = 0;  // index after '>'
};

std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool is_name_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == ':';
}

// Parses the tag starting at html[i] == '<'. Attribute values may be quoted and contain '>'.
Tag parse_tag(std::string_view html, size_t i) {
  Tag tag;
  size_t p = i + 1;
  if (p < html.size() && html[p] == '/') {
    tag.closing = true;
    ++p;
  }
  const size_t name_begin = p;
  while (p < html.size() && is_name_char(html[p])) ++p;
  tag.name = lower(html.substr(name_begin, p - name_begin));
  while (p < html.size() && html[p] != '>') {
    if (html[p] == '/' && p + 1 < html.size() && html[p + 1] == '>') {
      tag.self_closing = true;
      ++p;
      continue;
    }
    if (!is_name_char(html[p])) {
      ++p;
      continue;
    }
    const size_t attr_begin = p;
    while (p < html.size() && is_name_char(html[p])) ++p;
    const std::string attr = lower(html.substr(attr_begin, p - attr_begin));
    while (p < html.size() && std::isspace(static_cast<unsigned char>(html[p]))) ++p;
    if (p >= html.size() || html[p] != '=') continue;
    ++p;
    while (p < html.size() && std::isspace(static_cast<unsigned char>(html[p]))) ++p;
    std::string value;
    if (p < html.size() && (html[p] == '"' || html[p] == '\'')) {
      const char quote = html[p++];
      const size_t close = html.find(quote, p);
      const size_t stop = close == std::string_view::npos ? html.size() : close;
      value = std::string(html.substr(p, stop - p));
      p = stop == html.size() ? stop : stop + 1;
    } else {
      const size_t value_begin = p;
      while (p < html.size() && !std::isspace(static_cast<unsigned char>(html[p])) &&
             html[p] != '>')
        ++p;
      value = std::string(html.substr(value_begin, p - value_begin));
    }
    if (attr == "class") tag.cls = value;
    if (attr == "role") tag.role = value;
  }
  tag.end = p < html.size() ? p + 1 : html.size();
  return tag;
}

// Index of "</name" (any case) at or after `from`, or html.size().
size_t find_closing(std::string_view html, size_t from, const std::string& name) {
  for (size_t p = html.find("</", from); p != std::string_view::npos; p = html.find("</", p + 2)) {
    if (p + 2 + name.size() <= html.size() && lower(html.substr(p + 2, name.size())) == name)
      return p;
  }
  return html.size();
}

bool is_void(const std::string& name) {
  static const char* const kVoid[] = {"br",   "hr",  "img",   "input",  "meta",  "link", "area",
                                      "base", "col", "embed", "source", "track", "wbr",  "param"};
  return std::any_of(std::begin(kVoid), std::end(kVoid), [&](const char* v) { return name == v; });
}

bool has_class(const std::string& classes, std::string_view wanted) {
  size_t p = 0;
  while (p < classes.size()) {
    while (p < classes.size() && classes[p] == ' ') ++p;
    size_t q = p;
    while (q < classes.size() && classes[q] != ' ') ++q;
    if (std::string_view(classes).substr(p, q - p) == wanted) return true;
    p = q;
  }
  return false;
}

// Elements whose whole content is not prose: code, navigation chrome, permalink marks.
bool skipped(const Tag& tag) {
  static const char* const kNames[] = {"script", "style",    "head",     "nav",    "svg",
                                       "form",   "noscript", "template", "button", "select"};
  if (std::any_of(std::begin(kNames), std::end(kNames),
                  [&](const char* n) { return tag.name == n; }))
    return true;
  if (tag.role == "navigation" || tag.role == "search") return true;
  for (const char* cls : {"headerlink", "sphinxsidebar", "footer", "related", "copybutton"})
    if (has_class(tag.cls, cls)) return true;
  return false;
}

int newlines_for(const std::string& name) {
  static const char* const kParagraph[] = {
      "p",    "div",    "h1",    "h2",     "h3",    "h4",      "h5",      "h6",
      "pre",  "ul",     "ol",    "dl",     "table", "section", "article", "blockquote",
      "main", "header", "aside", "figure", "hr",    "body"};
  static const char* const kLine[] = {"br", "li", "tr", "dt", "dd", "caption", "figcaption"};
  const auto match = [&](const char* n) { return name == n; };
  if (std::any_of(std::begin(kParagraph), std::end(kParagraph), match)) return 2;
  if (std::any_of(std::begin(kLine), std::end(kLine), match)) return 1;
  return 0;
}

// Decodes the entity at html[i] == '&' into out; returns the index after it, or i + 1 (and
// appends '&') when it is not a recognised entity.
size_t decode_entity(std::string_view html, size_t i, std::string& out) {
  static const struct {
    const char* name;
    uint32_t cp;
  } kNamed[] = {{"amp", '&'},      {"lt", '<'},        {"gt", '>'},       {"quot", '"'},
                {"apos", '\''},    {"nbsp", ' '},      {"copy", 0xA9},    {"reg", 0xAE},
                {"trade", 0x2122}, {"mdash", 0x2014},  {"ndash", 0x2013}, {"hellip", 0x2026},
                {"lsquo", 0x2018}, {"rsquo", 0x2019},  {"ldquo", 0x201C}, {"rdquo", 0x201D},
                {"laquo", 0xAB},   {"raquo", 0xBB},    {"middot", 0xB7},  {"bull", 0x2022},
                {"deg", 0xB0},     {"plusmn", 0xB1},   {"times", 0xD7},   {"divide", 0xF7},
                {"sect", 0xA7},    {"para", 0xB6},     {"larr", 0x2190},  {"rarr", 0x2192},
                {"uarr", 0x2191},  {"darr", 0x2193},   {"harr", 0x2194},  {"le", 0x2264},
                {"ge", 0x2265},    {"ne", 0x2260},     {"euro", 0x20AC},  {"pound", 0xA3},
                {"cent", 0xA2},    {"yen", 0xA5},      {"shy", 0xAD},     {"zwj", 0x200D},
                {"zwnj", 0x200C},  {"thinsp", 0x2009}, {"ensp", 0x2002},  {"emsp", 0x2003}};
  const size_t semi = html.find(';', i + 1);
  if (semi == std::string_view::npos || semi - i > 12) {
    out += '&';
    return i + 1;
  }
  const std::string_view body = html.substr(i + 1, semi - i - 1);
  if (!body.empty() && body[0] == '#') {
    uint32_t cp = 0;
    bool ok = body.size() > 1;
    const bool hex = body.size() > 1 && (body[1] == 'x' || body[1] == 'X');
    for (size_t k = hex ? 2 : 1; k < body.size() && ok; ++k) {
      const char c = body[k];
      int digit;
      if (c >= '0' && c <= '9') {
        digit = c - '0';
      } else if (hex && std::isxdigit(static_cast<unsigned char>(c))) {
        digit = std::tolower(static_cast<unsigned char>(c)) - 'a' + 10;
      } else {
        ok = false;
        break;
      }
      cp = cp * (hex ? 16 : 10) + static_cast<uint32_t>(digit);
      if (cp > 0x10FFFF) ok = false;
    }
    if (hex && body.size() == 2) ok = false;
    if (ok && cp != 0 && !(cp >= 0xD800 && cp <= 0xDFFF)) {
      utf8::append(out, cp == 0xA0 ? ' ' : cp);
      return semi + 1;
    }
  } else {
    for (const auto& entity : kNamed) {
      if (body == entity.name) {
        utf8::append(out, entity.cp);
        return semi + 1;
      }
    }
  }
  out += '&';
  return i + 1;
}

// Streams visible text into `out`, collapsing whitespace outside <pre>.
class TextSink {
 public:
  explicit TextSink(std::string& out) : out_(out) {}
  void block(int newlines) { pending_newlines_ = std::max(pending_newlines_, newlines); }
  void text(std::string_view piece, bool preformatted) {
    for (char c : piece) {
      const bool space = c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
      if (preformatted) {
        flush();
        out_ += c == '\r' ? '\n' : c;
        continue;
      }
      if (space) {
        pending_space_ = true;
        continue;
      }
      flush();
      out_ += c;
    }
  }
  void finish() {
    while (!out_.empty() && (out_.back() == ' ' || out_.back() == '\n')) out_.pop_back();
    if (!out_.empty()) out_ += '\n';
  }

 private:
  void flush() {
    if (pending_newlines_ > 0) {
      while (!out_.empty() && out_.back() == ' ') out_.pop_back();
      if (!out_.empty()) {
        int have = 0;
        for (size_t k = out_.size(); k > 0 && out_[k - 1] == '\n' && have < 2; --k) ++have;
        for (int k = have; k < pending_newlines_; ++k) out_ += '\n';
      }
    } else if (pending_space_ && !out_.empty() && out_.back() != '\n' && out_.back() != ' ') {
      out_ += ' ';
    }
    pending_newlines_ = 0;
    pending_space_ = false;
  }
  std::string& out_;
  int pending_newlines_ = 0;
  bool pending_space_ = false;
};

}  // namespace

std::string html_to_text(std::string_view html) {
  // Pages with a main-content landmark (role="main" or <main>) keep only that element; this
  // drops headers, sidebars and footers that repeat on every page of a site.
  size_t begin = 0;
  std::string root;  // tag name of the main element, "" = whole page
  for (size_t i = html.find('<'); i != std::string_view::npos; i = html.find('<', i + 1)) {
    const Tag tag = parse_tag(html, i);
    if (!tag.closing && (tag.role == "main" || tag.name == "main")) {
      begin = tag.end;
      root = tag.name;
      break;
    }
  }

  std::string out;
  out.reserve(html.size() / 3);
  TextSink sink(out);
  int root_depth = 1;
  int pre_depth = 0;
  std::string skip_name;  // inside a skipped element: its name and nesting depth
  int skip_depth = 0;
  std::string pending_text;
  size_t i = begin;
  while (i < html.size()) {
    if (html[i] == '&') {
      if (skip_depth == 0) {
        std::string decoded;
        i = decode_entity(html, i, decoded);
        sink.text(decoded, pre_depth > 0);
      } else {
        ++i;
      }
      continue;
    }
    if (html[i] != '<') {
      size_t j = i;
      while (j < html.size() && html[j] != '<' && html[j] != '&') ++j;
      if (skip_depth == 0) sink.text(html.substr(i, j - i), pre_depth > 0);
      i = j;
      continue;
    }
    if (html.compare(i, 4, "<!--") == 0) {
      const size_t close = html.find("-->", i + 4);
      i = close == std::string_view::npos ? html.size() : close + 3;
      continue;
    }
    if (i + 1 < html.size() && (html[i + 1] == '!' || html[i + 1] == '?')) {
      const size_t close = html.find('>', i);
      i = close == std::string_view::npos ? html.size() : close + 1;
      continue;
    }
    const Tag tag = parse_tag(html, i);
    if (tag.name.empty()) {  // a literal '<' in text
      if (skip_depth == 0) sink.text("<", pre_depth > 0);
      ++i;
      continue;
    }
    i = tag.end;
    const bool opens = !tag.closing && !tag.self_closing && !is_void(tag.name);
    if (tag.name == "script" || tag.name == "style") {
      // Raw text elements: their content may hold '<' and never holds tags.
      if (!tag.closing && !tag.self_closing) {
        i = find_closing(html, i, tag.name);
      }
      continue;
    }
    if (skip_depth > 0) {
      if (tag.name == skip_name) skip_depth += opens ? 1 : (tag.closing ? -1 : 0);
      if (skip_depth == 0) skip_name.clear();
      continue;
    }
    if (!root.empty() && tag.name == root) {
      root_depth += opens ? 1 : (tag.closing ? -1 : 0);
      if (root_depth == 0) break;
    }
    if (opens && skipped(tag)) {
      skip_name = tag.name;
      skip_depth = 1;
      continue;
    }
    if (tag.name == "pre") pre_depth = std::max(0, pre_depth + (tag.closing ? -1 : opens ? 1 : 0));
    if (tag.name == "td" || tag.name == "th") sink.text(" ", false);
    if (const int newlines = newlines_for(tag.name)) sink.block(newlines);
  }
  sink.finish();
  return out;
}

}  // namespace sqa
