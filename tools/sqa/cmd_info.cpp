#include <cstdio>

#include "sqa/commands.hpp"

namespace sqa::cli {
int cmd_info(const std::vector<std::string>&) {
  std::fprintf(stderr, "sqa info: not implemented yet\n");
  return 1;
}
}  // namespace sqa::cli
