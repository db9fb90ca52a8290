// Backward kernels for head_dim 16 (bf16 and fp16).
#include "flash_bwd_launch.cuh"

namespace sqa::cuda::detail {

void run_flash_bwd_hdim16(const BwdKernelParams& g, bool fp16, void* stream) {
  run_flash_bwd<16>(g, fp16, stream);
}

}  // namespace sqa::cuda::detail
