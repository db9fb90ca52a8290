#include <cstdio>

#include "sqa/commands.hpp"

namespace sqa::cli {
int cmd_bench(const std::vector<std::string>&) {
  std::fprintf(stderr, "sqa bench: not implemented yet\n");
  return 1;
}
}  // namespace sqa::cli
