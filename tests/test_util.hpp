// Helpers shared by the GoogleTest files: checking that bad input is rejected with a message
// that names the value and the rule.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <initializer_list>
#include <string>

#include "sqa/error.hpp"

namespace sqa::test {

// The message of the sqa::Error that `action` throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Expects `action` to throw sqa::Error whose message contains every fragment.
inline void expect_error(const std::function<void()>& action,
                         std::initializer_list<std::string> fragments) {
  const std::string message = error_of(action);
  ASSERT_FALSE(message.empty()) << "no sqa::Error thrown; expected one mentioning '"
                                << *fragments.begin() << "'";
  for (const std::string& f : fragments)
    EXPECT_NE(message.find(f), std::string::npos) << "'" << f << "' not in: " << message;
}

}  // namespace sqa::test
