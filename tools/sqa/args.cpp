#include "sqa/args.hpp"

#include <cerrno>
#include <cstdlib>

#include "sqa/error.hpp"

namespace sqa::cli {

Args::Args(const std::vector<std::string>& argv, const std::set<std::string>& flags) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a.rfind("--", 0) != 0) {
      positional_.push_back(a);
      continue;
    }
    std::string key = a.substr(2);
    const auto eq = key.find('=');
    if (eq != std::string::npos) {
      values_[key.substr(0, eq)] = key.substr(eq + 1);
    } else if (flags.count(key)) {
      values_[key] = "1";
    } else if (i + 1 < argv.size() && argv[i + 1].rfind("--", 0) != 0) {
      values_[key] = argv[++i];
    } else {
      // Reported when the option is read or checked, so that an unknown option is named as
      // unknown rather than as lacking a value.
      missing_value_.insert(key);
    }
  }
}

void Args::check_value(const std::string& key) const {
  sqa::require(missing_value_.count(key) == 0, "option --", key, " needs a value");
}

bool Args::has(const std::string& key) const {
  check_value(key);
  return values_.count(key) != 0;
}

std::string Args::get(const std::string& key, const std::string& fallback) const {
  check_value(key);
  auto it = values_.find(key);
  return it == values_.end() ? fallback : it->second;
}

std::string Args::require(const std::string& key) const {
  check_value(key);
  auto it = values_.find(key);
  sqa::require(it != values_.end(), "missing required option --", key);
  return it->second;
}

static long long parse_int(const std::string& key, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  sqa::require(!text.empty() && end && *end == '\0' && errno != ERANGE, "option --", key, " (",
               text, ") must be an integer");
  return v;
}

long long Args::get_int(const std::string& key, long long fallback) const {
  return has(key) ? parse_int(key, get(key, "")) : fallback;
}

double Args::get_double(const std::string& key, double fallback) const {
  if (!has(key)) return fallback;
  const std::string text = get(key, "");
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  sqa::require(!text.empty() && end && *end == '\0', "option --", key, " (", text,
               ") must be a number");
  return v;
}

std::vector<std::string> Args::get_list(const std::string& key,
                                        const std::vector<std::string>& fallback) const {
  if (!has(key)) return fallback;
  std::vector<std::string> out;
  std::string text = get(key, ""), item;
  for (char c : text) {
    if (c == ',') {
      if (!item.empty()) out.push_back(item);
      item.clear();
    } else {
      item += c;
    }
  }
  if (!item.empty()) out.push_back(item);
  return out;
}

std::vector<long long> Args::get_int_list(const std::string& key,
                                          const std::vector<long long>& fallback) const {
  if (!has(key)) return fallback;
  std::vector<long long> out;
  for (const auto& s : get_list(key, {})) out.push_back(parse_int(key, s));
  return out;
}

void Args::reject_unknown(const std::set<std::string>& known) const {
  for (const auto& [key, value] : values_) {
    sqa::require(known.count(key) != 0, "unknown option --", key);
  }
  for (const auto& key : missing_value_) {
    sqa::require(known.count(key) != 0, "unknown option --", key);
  }
  for (const auto& key : missing_value_) check_value(key);
}

}  // namespace sqa::cli
