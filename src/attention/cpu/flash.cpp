// TEMPORARY: forwards to the reference until the tiled SIMD kernels land.
#include "sqa/attention.hpp"

namespace sqa::cpu {
void attention_forward(const AttentionParams& p) { attention_forward_reference(p); }
void attention_backward(const AttentionBackwardParams& g) { attention_backward_reference(g); }
const char* simd_path() { return "portable"; }
}  // namespace sqa::cpu
