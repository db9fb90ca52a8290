// Kernels of the CUDA model's KV-cache decoding (CudaModel::decode_step in model_cuda.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "model/cuda/kernels.cuh"

namespace sqa::cuda_model {

// Copies the K and V of `rows` = B * n new tokens, already rotated by RoPE, from the fused qkv
// output (B, n, row_stride), K at column k_col and V right after it, into the caches
// (B, max_len, kv_width) at rows [pos, pos + n) of each sequence, as the CPU's decode_step
// writes its cache rows. One 16-byte vector per thread: the CUDA model keeps head_dim, and so
// kv_width = H_kv * head_dim, row_stride and k_col, multiples of 8.
__global__ void kv_cache_append(const bfloat* qkv, int64_t rows, int n, int64_t row_stride,
                                int64_t k_col, int kv_width, bfloat* k_cache, bfloat* v_cache,
                                int64_t max_len, int64_t pos) {
  const int per_half = kv_width / 8;  // vectors of K (and of V) per token
  SQA_GRID_STRIDE(i, rows * 2 * per_half) {
    int rem = 0, t = 0;
    const int64_t r = div_mod(i, 2 * per_half, rem);
    const int64_t b = div_mod(r, n, t);
    const bool is_v = rem >= per_half;
    const int col = (is_v ? rem - per_half : rem) * 8;
    const bfloat* src = qkv + r * row_stride + k_col + (is_v ? kv_width : 0) + col;
    bfloat* dst = (is_v ? v_cache : k_cache) + (b * max_len + pos + t) * kv_width + col;
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
  }
}

}  // namespace sqa::cuda_model
