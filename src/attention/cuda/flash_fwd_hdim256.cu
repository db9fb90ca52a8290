// Forward kernels for head_dim 256 (bf16 and fp16; prefill and decode tiles).
#include "flash_fwd_launch.cuh"

namespace sqa::cuda::detail {

void run_flash_fwd_hdim256(const FwdKernelParams& p, bool fp16, bool decode, void* stream) {
  run_flash_fwd<256>(p, fp16, decode, stream);
}

}  // namespace sqa::cuda::detail
