#include <cstdio>

#include "sqa/commands.hpp"

namespace sqa::cli {
namespace {
int not_yet(const char* name) {
  std::fprintf(stderr, "sqa %s: not implemented yet\n", name);
  return 1;
}
}  // namespace
int cmd_train(const std::vector<std::string>&) {
  return not_yet("train");
}
int cmd_eval(const std::vector<std::string>&) {
  return not_yet("eval");
}
int cmd_generate(const std::vector<std::string>&) {
  return not_yet("generate");
}
}  // namespace sqa::cli
