#include "attention/cuda/tma_host.hpp"

#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>

namespace sqa::cuda::detail {

namespace {

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static std::once_flag once;
  static PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
  static cudaError_t status = cudaSuccess;
  static cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSuccess;
  std::call_once(once, [] {
    void* fn = nullptr;
    status = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                              cudaEnableDefault, &found);
    encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  });
  if (status != cudaSuccess || found != cudaDriverEntryPointSuccess || encode == nullptr) {
    throw std::runtime_error(std::string("cudaGetDriverEntryPointByVersion(cuTensorMapEncodeTiled, "
                                         "12000): ") +
                             (status != cudaSuccess ? cudaGetErrorString(status)
                                                    : "the driver has no such entry point"));
  }
  return encode;
}

void require_stride(const char* name, int64_t stride) {
  if (stride <= 0 || stride % 8 != 0) {
    throw std::runtime_error(std::string("TMA tensor map: ") + name + " (" +
                             std::to_string(stride) +
                             " elements) must be a positive multiple of 8 (16 bytes)");
  }
}

}  // namespace

void encode_qdo_tensor_map(CUtensorMap* map, const void* base, bool fp16, int head_dim, int heads,
                           int seqlen, int batch, int64_t head_stride, int64_t row_stride,
                           int64_t batch_stride, int box_rows) {
  if (reinterpret_cast<uintptr_t>(base) % 16 != 0) {
    throw std::runtime_error("TMA tensor map: the base address must be 16-byte aligned");
  }
  // A single head never steps along the head dimension; any valid stride describes it.
  if (heads == 1 && (head_stride <= 0 || head_stride % 8 != 0)) head_stride = head_dim;
  require_stride("head stride", head_stride);
  require_stride("row stride", row_stride);
  // A batch of one never steps along the batch dimension; any valid stride describes it.
  if (batch == 1 && (batch_stride <= 0 || batch_stride % 8 != 0)) {
    batch_stride = row_stride * seqlen;
  }
  require_stride("batch stride", batch_stride);
  constexpr int64_t kElem = 2;  // bf16 / fp16
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(seqlen), static_cast<cuuint64_t>(batch)};
  // Byte strides of dimensions 1 .. 3 (dimension 0 is contiguous).
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(head_stride * kElem),
                                 static_cast<cuuint64_t>(row_stride * kElem),
                                 static_cast<cuuint64_t>(batch_stride * kElem)};
  // 64 columns = 128 bytes, the widest inner box the 128-byte swizzle takes.
  const cuuint32_t box[4] = {64, 1, static_cast<cuuint32_t>(box_rows), 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUresult r = tensor_map_encoder()(
      map, fp16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4,
      const_cast<void*>(base), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    throw std::runtime_error(
        "cuTensorMapEncodeTiled (Q / dO of the wgmmatma backward, Q / K / V of the wgmmatma "
        "forward) failed: "
        "CUresult " +
        std::to_string(static_cast<int>(r)));
  }
}

}  // namespace sqa::cuda::detail
