// The fast path's tile kernels built for the avx2 path; this file alone is compiled with the
// path's -m flags (src/attention/cpu/CMakeLists.txt). Register tile: 16 ymm registers: 6 x 2
// accumulators + 2 B vectors + 1 broadcast.
#define SQA_SIMD_WIDTH 8
#define SQA_SIMD_MR 6
#define SQA_SIMD_NV 2
#include "flash_kernels.hpp"

namespace sqa::cpu::flash {

const Kernels& avx2_kernels() {
  static constexpr Kernels kernels = {"avx2", W, &forward_item, &decode_item, &backward_item};
  return kernels;
}

}  // namespace sqa::cpu::flash
