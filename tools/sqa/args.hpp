// Minimal `--key value` / `--flag` parser shared by every subcommand. Unknown options and
// malformed values are errors that name the option and the rule.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace sqa::cli {

class Args {
 public:
  // argv after the subcommand words. `flags` are options that take no value.
  Args(const std::vector<std::string>& argv, const std::set<std::string>& flags = {});

  bool has(const std::string& key) const;
  std::string get(const std::string& key, const std::string& fallback) const;
  std::string require(const std::string& key) const;
  long long get_int(const std::string& key, long long fallback) const;
  double get_double(const std::string& key, double fallback) const;
  bool flag(const std::string& key) const { return has(key); }
  // Comma-separated list, e.g. --seq 1024,4096.
  std::vector<std::string> get_list(const std::string& key,
                                    const std::vector<std::string>& fallback) const;
  std::vector<long long> get_int_list(const std::string& key,
                                      const std::vector<long long>& fallback) const;
  // Throws if any option given was not in `known`, then if any option lacks its value.
  void reject_unknown(const std::set<std::string>& known) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  void check_value(const std::string& key) const;  // throws when --key was given no value

  std::map<std::string, std::string> values_;
  std::set<std::string> missing_value_;
  std::vector<std::string> positional_;
};

}  // namespace sqa::cli
