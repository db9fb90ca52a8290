// Host side of the TMA loads (Hopper tensor memory accelerator): CUtensorMap descriptors for the
// wgmmatma kernels: Q / dO of the backward's dK/dV kernel, Q / K / V of the forward. The driver's
// encoder comes through the runtime (cudaGetDriverEntryPointByVersion), so the library does not
// link libcuda.
#pragma once

#include <cuda.h>

#include <cstdint>

namespace sqa::cuda::detail {

// A (B, N, H, head_dim) tensor of 16-bit elements with strides in elements (rows of
// head_dim contiguous) as a 4-D tensor map (head_dim, heads, seqlen, batch), innermost first, with
// boxes of 64 columns x 1 head x box_rows rows x 1 batch entry and the 128-byte swizzle: a box
// lands in shared memory as box_rows 128-byte rows, 16-byte chunk c of row r at chunk c ^ (r % 8)
// (the layout of sw128_offset, wgmma_sm90.cuh). Coordinates past the extent read as zeros. Throws
// std::runtime_error naming the value and the rule (base 16-byte aligned, strides multiples of 8
// elements) or the encoder's error.
void encode_qdo_tensor_map(CUtensorMap* map, const void* base, bool fp16, int head_dim, int heads,
                           int seqlen, int batch, int64_t head_stride, int64_t row_stride,
                           int64_t batch_stride, int box_rows);

}  // namespace sqa::cuda::detail
