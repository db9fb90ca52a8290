// The fast path's tile kernels built for the portable path; this file alone is compiled with the
// path's -m flags (src/attention/cpu/CMakeLists.txt). Register tile: baseline x86-64 SSE2 (16 xmm
// registers) or any target GCC vectorises.
#define SQA_SIMD_WIDTH 4
#define SQA_SIMD_MR 4
#define SQA_SIMD_NV 2
#include "flash_kernels.hpp"

namespace sqa::cpu::flash {

const Kernels& portable_kernels() {
  static constexpr Kernels kernels = {"portable", W, &forward_item, &decode_item, &backward_item};
  return kernels;
}

}  // namespace sqa::cpu::flash
