// Element access shared by the CPU kernels: load/store any supported dtype through the
// (batch, row, head) strides of AttentionParams, and the per-sequence offsets of dense and
// varlen batches.
#pragma once

#include <cstdint>

#include "sqa/attention.hpp"
#include "sqa/error.hpp"

namespace sqa::cpu::detail {

inline double load(const void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::f32:
      return static_cast<const float*>(base)[index];
    case DType::f64:
      return static_cast<const double*>(base)[index];
    case DType::bf16:
      return bf16_to_float(static_cast<const bf16*>(base)[index]);
    case DType::f16:
      break;
  }
  throw Error("the CPU attention kernels take f32, bf16 or f64 (f16 is CUDA-only)");
}

inline void store(void* base, DType dtype, int64_t index, double value) {
  switch (dtype) {
    case DType::f32:
      static_cast<float*>(base)[index] = static_cast<float>(value);
      return;
    case DType::f64:
      static_cast<double*>(base)[index] = value;
      return;
    case DType::bf16:
      static_cast<bf16*>(base)[index] = float_to_bf16(static_cast<float>(value));
      return;
    case DType::f16:
      break;
  }
  throw Error("the CPU attention kernels take f32, bf16 or f64 (f16 is CUDA-only)");
}

// One sequence of the batch: where its rows start in q/out and k/v, and how many there are.
struct SequenceSpan {
  int64_t q_row0;  // first row, counted in rows of the packed (varlen) tensor; 0 when dense
  int64_t k_row0;
  int64_t seqlen_q;
  int64_t seqlen_k;
  int64_t batch_index;  // for dense batch strides; 0 in varlen mode
};

inline SequenceSpan sequence_span(const AttentionParams& p, int64_t b) {
  if (p.is_varlen()) {
    return {p.cu_seqlens_q[b], p.cu_seqlens_k[b], p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b],
            p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b], 0};
  }
  return {0, 0, p.seqlen_q, p.seqlen_k, b};
}

// Element offset of (sequence s, local row r, head h) for a tensor with strides st.
inline int64_t offset(const TensorStrides& st, const SequenceSpan& s, int64_t row0, int64_t r,
                      int64_t h) {
  return s.batch_index * st.batch + (row0 + r) * st.row + h * st.head;
}

// lse index: dense (B, H_attn, N_q); varlen (H_attn, total_q).
inline int64_t lse_index(const AttentionParams& p, const SequenceSpan& s, int64_t h, int64_t r) {
  const int64_t heads = p.spec.heads.num_attention_heads();
  if (p.is_varlen()) {
    const int64_t total_q = p.cu_seqlens_q[p.batch];
    return h * total_q + s.q_row0 + r;
  }
  return (s.batch_index * heads + h) * p.seqlen_q + r;
}

}  // namespace sqa::cpu::detail
