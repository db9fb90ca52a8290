// Error type for every user-facing rule in sqa. Messages name the offending value and the rule
// it broke, e.g. "num_query_heads (6) must be a multiple of num_kv_heads (4), or the reverse
// for rSQA".
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace sqa {

class Error : public std::invalid_argument {
 public:
  explicit Error(const std::string& message) : std::invalid_argument(message) {}
};

namespace detail {
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}
}  // namespace detail

// Throws sqa::Error with the streamed message when `condition` is false.
template <typename... Parts>
void require(bool condition, const Parts&... parts) {
  if (!condition) throw Error(detail::concat(parts...));
}

}  // namespace sqa
