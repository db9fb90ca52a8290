// How this binary was built, for `sqa info` and for the records the benchmarks write.
#pragma once

#include <string>

namespace sqa {

struct BuildInfo {
  std::string version;      // project version from CMake
  std::string compiler;     // e.g. "GCC 12.2.0"
  std::string build_type;   // CMAKE_BUILD_TYPE
  std::string commit;       // git commit at build time ("-dirty" with local changes), or "unknown"
  bool sanitizers = false;  // built with AddressSanitizer / UndefinedBehaviorSanitizer
  bool openmp = false;
  bool cuda = false;  // CUDA backend compiled in (a device may still be absent)
};

const BuildInfo& build_info();

}  // namespace sqa
