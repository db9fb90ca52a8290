// CudaModel in a build without CUDA (SQA_CUDA=OFF): every entry point reports that the GPU
// model is not built, so `--device cuda` fails with a clear message instead of a link error.
#include "sqa/error.hpp"
#include "sqa/model_cuda.hpp"

namespace sqa {

struct CudaModel::State {};

bool CudaModel::available() {
  return false;
}

CudaModel::CudaModel(const ModelConfig& config) : config_(config) {
  throw Error(
      "--device cuda: this sqa was built without CUDA (SQA_CUDA=OFF or no nvcc found); "
      "rebuild with cmake -DSQA_CUDA=ON on a machine with the CUDA toolkit, or use --device cpu");
}
CudaModel::~CudaModel() = default;
void CudaModel::set_weights(const float*) {}
void CudaModel::get_weights(float*) const {}
void CudaModel::get_grads(float*) const {}
void CudaModel::set_optimizer_state(const float*, const float*, int64_t) {}
void CudaModel::get_optimizer_state(float*, float*) const {}
int64_t CudaModel::optimizer_steps() const {
  return 0;
}
void CudaModel::zero_grad() {}
LossStats CudaModel::forward(const int32_t*, const int32_t*, const float*, int64_t, int64_t, bool,
                             uint64_t, double) {
  return {};
}
void CudaModel::backward() {}
std::vector<float> CudaModel::logits() const {
  return {};
}
double CudaModel::optimizer_step(const CudaAdamW&) {
  return 0;
}
void CudaModel::synchronize() const {}
void CudaModel::decode_reset(int64_t, int64_t) {}
const float* CudaModel::decode_step(const int32_t*, int64_t) {
  return nullptr;
}
int64_t CudaModel::decode_length() const {
  return 0;
}

}  // namespace sqa
