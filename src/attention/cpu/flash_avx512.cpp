// The fast path's tile kernels built for the avx512 path; this file alone is compiled with the
// path's -m flags (src/attention/cpu/CMakeLists.txt). Register tile: 32 zmm registers: 6 x 4
// accumulators + 4 B vectors + 1 broadcast.
#define SQA_SIMD_WIDTH 16
#define SQA_SIMD_MR 6
#define SQA_SIMD_NV 4
#include "flash_kernels.hpp"

namespace sqa::cpu::flash {

const Kernels& avx512_kernels() {
  static constexpr Kernels kernels = {"avx512", W, &forward_item, &decode_item, &backward_item};
  return kernels;
}

}  // namespace sqa::cpu::flash
