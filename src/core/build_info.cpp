#include "core/build_info.hpp"

#include "sqa_commit.h"  // generated at every build by commit.cmake: SQA_GIT_COMMIT

#ifndef SQA_VERSION
#define SQA_VERSION "unknown"
#endif
#ifndef SQA_BUILD_TYPE
#define SQA_BUILD_TYPE "unknown"
#endif

namespace sqa {

namespace {
std::string compiler_name() {
#if defined(__clang__)
  return std::string("Clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("GCC ") + __VERSION__;
#else
  return "unknown";
#endif
}

constexpr bool kSanitizers =
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_UNDEFINED__)
    true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    true;
#else
    false;
#endif
#else
    false;
#endif
}  // namespace

const BuildInfo& build_info() {
  static const BuildInfo info = [] {
    BuildInfo b;
    b.version = SQA_VERSION;
    b.compiler = compiler_name();
    b.build_type = SQA_BUILD_TYPE;
    b.commit = SQA_GIT_COMMIT;
    b.sanitizers = kSanitizers;
#ifdef _OPENMP
    b.openmp = true;
#endif
#ifdef SQA_WITH_CUDA
    b.cuda = true;
#endif
    return b;
  }();
  return info;
}

}  // namespace sqa
