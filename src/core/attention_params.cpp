#include "sqa/attention.hpp"
#include "sqa/error.hpp"

namespace sqa {
namespace {

TensorStrides contiguous(bool varlen, int64_t rows, int64_t heads, int64_t head_dim) {
  TensorStrides s;
  s.head = head_dim;
  s.row = heads * head_dim;
  s.batch = varlen ? 0 : rows * heads * head_dim;
  return s;
}

void check_strides(const char* name, const TensorStrides& s, int64_t head_dim) {
  require(s.head >= head_dim && s.row >= head_dim, name, " strides (row ", s.row, ", head ", s.head,
          ") must be at least head_dim (", head_dim,
          "): the elements of one head must be contiguous");
}

void check_cu_seqlens(const char* name, const int32_t* cu, int64_t batch, int64_t max_seqlen) {
  require(cu[0] == 0, name, "[0] (", cu[0], ") must be 0");
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t len = static_cast<int64_t>(cu[b + 1]) - cu[b];
    require(len >= 0, name, " must be non-decreasing, but ", name, "[", b + 1, "] (", cu[b + 1],
            ") < ", name, "[", b, "] (", cu[b], ")");
    require(len <= max_seqlen, "sequence ", b, " has length ", len, " from ", name,
            ", more than the max_seqlen (", max_seqlen, ") given");
  }
}

}  // namespace

void AttentionParams::set_contiguous_strides() {
  const int64_t d = spec.head_dim;
  const bool varlen = is_varlen();
  q_strides = contiguous(varlen, seqlen_q, spec.heads.num_query_heads, d);
  k_strides = contiguous(varlen, seqlen_k, spec.heads.num_kv_heads, d);
  v_strides = k_strides;
  out_strides = contiguous(varlen, seqlen_q, spec.heads.num_attention_heads(), d);
}

void AttentionParams::validate() const {
  spec.validate();
  require(batch >= 1, "batch (", batch, ") must be at least 1");
  require(seqlen_q >= 1, "seqlen_q (", seqlen_q, ") must be at least 1");
  require(seqlen_k >= 1, "seqlen_k (", seqlen_k, ") must be at least 1");
  require(q && k && v && out, "q, k, v and out must all be non-null");
  require((cu_seqlens_q == nullptr) == (cu_seqlens_k == nullptr),
          "cu_seqlens_q and cu_seqlens_k must be given together (varlen) or both omitted");
  check_strides("q", q_strides, spec.head_dim);
  check_strides("k", k_strides, spec.head_dim);
  check_strides("v", v_strides, spec.head_dim);
  check_strides("out", out_strides, spec.head_dim);
  if (is_varlen() && device == Device::cpu) {
    check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, batch, seqlen_q);
    check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, batch, seqlen_k);
  }
}

void AttentionBackwardParams::set_contiguous_strides() {
  forward.set_contiguous_strides();
  dout_strides = forward.out_strides;
  dq_strides = forward.q_strides;
  dk_strides = forward.k_strides;
  dv_strides = forward.v_strides;
}

void AttentionBackwardParams::validate() const {
  forward.validate();
  require(forward.lse != nullptr, "the backward needs the forward's lse (got null)");
  require(dout && dq && dk && dv, "dout, dq, dk and dv must all be non-null");
  const int64_t d = forward.spec.head_dim;
  check_strides("dout", dout_strides, d);
  check_strides("dq", dq_strides, d);
  check_strides("dk", dk_strides, d);
  check_strides("dv", dv_strides, d);
}

void attention_forward(const AttentionParams& params) {
  if (params.device == Device::cuda) {
    cuda::attention_forward(params);
  } else {
    cpu::attention_forward(params);
  }
}

void attention_backward(const AttentionBackwardParams& params) {
  if (params.forward.device == Device::cuda) {
    cuda::attention_backward(params);
  } else {
    cpu::attention_backward(params);
  }
}

}  // namespace sqa
