// Placeholder until the CUDA kernels land: every entry point reports that CUDA is unavailable.
#include "sqa/attention.hpp"
#include "sqa/error.hpp"

namespace sqa::cuda {

bool available() {
  return false;
}

void attention_forward(const AttentionParams&) {
  throw Error("the CUDA backend is not built into this copy of sqa");
}

void attention_backward(const AttentionBackwardParams&) {
  throw Error("the CUDA backend is not built into this copy of sqa");
}

const char* chosen_backend(const AttentionParams&, bool) {
  return "none";
}

}  // namespace sqa::cuda
