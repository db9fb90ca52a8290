// Host-to-device plumbing for the CUDA tests: the op-level harness (tests/attention_harness.hpp)
// hands host buffers to a backend callable; these callables copy them to the device, run the
// CUDA entry point on a non-default stream and copy the results (outputs NaN-poisoned first)
// back. Header-only so each CUDA test executable can include it.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "sqa/attention.hpp"

namespace sqa::testing::cuda_host {

inline void cuda_ok(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

// Elements spanned by a (batch, row, head, d) view: the furthest element + 1.
inline int64_t extent(const TensorStrides& s, int64_t batch, int64_t rows, int64_t heads,
                      int64_t d) {
  if (batch == 0 || rows == 0) return 0;
  return (batch - 1) * s.batch + (rows - 1) * s.row + (heads - 1) * s.head + d;
}

// One device copy of a host buffer; copies back on request.
class DeviceBuffer {
 public:
  DeviceBuffer(const void* host, int64_t bytes) : bytes_(std::max<int64_t>(bytes, 16)) {
    cuda_ok(cudaMalloc(&ptr_, static_cast<size_t>(bytes_)), "cudaMalloc");
    if (host != nullptr && bytes > 0) {
      cuda_ok(cudaMemcpy(ptr_, host, static_cast<size_t>(bytes), cudaMemcpyHostToDevice),
              "cudaMemcpy H2D");
    }
    copy_bytes_ = bytes;
  }
  ~DeviceBuffer() { (void)cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }
  void copy_back(void* host) const {
    if (copy_bytes_ > 0) {
      cuda_ok(cudaMemcpy(host, ptr_, static_cast<size_t>(copy_bytes_), cudaMemcpyDeviceToHost),
              "cudaMemcpy D2H");
    }
  }

 private:
  int64_t bytes_;
  int64_t copy_bytes_ = 0;
  void* ptr_ = nullptr;
};

// The harness's backend callable for the CUDA forward: host params in, host results out.
inline void cuda_forward_via_host(const AttentionParams& host) {
  const AttentionSpec& spec = host.spec;
  const int64_t esize = dtype_size(host.dtype);
  const int64_t d = spec.head_dim;
  const bool varlen = host.is_varlen();
  const int64_t batch = varlen ? 1 : host.batch;
  const int64_t rows_q = varlen ? host.cu_seqlens_q[host.batch] : host.seqlen_q;
  const int64_t rows_k = varlen ? host.cu_seqlens_k[host.batch] : host.seqlen_k;
  const int ha = spec.heads.num_attention_heads();
  const int64_t lse_count = varlen ? ha * rows_q : host.batch * ha * host.seqlen_q;

  DeviceBuffer q(host.q,
                 extent(host.q_strides, batch, rows_q, spec.heads.num_query_heads, d) * esize);
  DeviceBuffer k(host.k, extent(host.k_strides, batch, rows_k, spec.heads.num_kv_heads, d) * esize);
  DeviceBuffer v(host.v, extent(host.v_strides, batch, rows_k, spec.heads.num_kv_heads, d) * esize);
  // The output's host copy is NaN-poisoned: sending it down keeps padding poisoned as well.
  DeviceBuffer out(host.out, extent(host.out_strides, batch, rows_q, ha, d) * esize);
  DeviceBuffer lse(host.lse, host.lse ? lse_count * 4 : 0);
  const int64_t cu_bytes = varlen ? (host.batch + 1) * 4 : 0;
  DeviceBuffer cu_q(host.cu_seqlens_q, cu_bytes), cu_k(host.cu_seqlens_k, cu_bytes);

  cudaStream_t stream = nullptr;
  cuda_ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  AttentionParams p = host;
  p.device = Device::cuda;
  p.stream = stream;
  p.q = q.get();
  p.k = k.get();
  p.v = v.get();
  p.out = out.get();
  p.lse = host.lse ? static_cast<float*>(lse.get()) : nullptr;
  if (varlen) {
    p.cu_seqlens_q = static_cast<const int32_t*>(cu_q.get());
    p.cu_seqlens_k = static_cast<const int32_t*>(cu_k.get());
  }
  try {
    cuda::attention_forward(p);
    cuda_ok(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  } catch (...) {
    (void)cudaStreamDestroy(stream);
    throw;
  }
  cuda_ok(cudaStreamDestroy(stream), "cudaStreamDestroy");
  out.copy_back(host.out);
  if (host.lse) lse.copy_back(host.lse);
}

// The harness's backend callable for the CUDA backward.
inline void cuda_backward_via_host(const AttentionBackwardParams& host) {
  const AttentionParams& f = host.forward;
  const AttentionSpec& spec = f.spec;
  const int64_t esize = dtype_size(f.dtype);
  const int64_t d = spec.head_dim;
  const bool varlen = f.is_varlen();
  const int64_t batch = varlen ? 1 : f.batch;
  const int64_t rows_q = varlen ? f.cu_seqlens_q[f.batch] : f.seqlen_q;
  const int64_t rows_k = varlen ? f.cu_seqlens_k[f.batch] : f.seqlen_k;
  const int hq = spec.heads.num_query_heads, hkv = spec.heads.num_kv_heads;
  const int ha = spec.heads.num_attention_heads();
  const int64_t lse_count = varlen ? ha * rows_q : f.batch * ha * f.seqlen_q;

  DeviceBuffer q(f.q, extent(f.q_strides, batch, rows_q, hq, d) * esize);
  DeviceBuffer k(f.k, extent(f.k_strides, batch, rows_k, hkv, d) * esize);
  DeviceBuffer v(f.v, extent(f.v_strides, batch, rows_k, hkv, d) * esize);
  DeviceBuffer out(f.out, extent(f.out_strides, batch, rows_q, ha, d) * esize);
  DeviceBuffer lse(f.lse, lse_count * 4);
  DeviceBuffer dout(host.dout, extent(host.dout_strides, batch, rows_q, ha, d) * esize);
  DeviceBuffer dq(host.dq, extent(host.dq_strides, batch, rows_q, hq, d) * esize);
  DeviceBuffer dk(host.dk, extent(host.dk_strides, batch, rows_k, hkv, d) * esize);
  DeviceBuffer dv(host.dv, extent(host.dv_strides, batch, rows_k, hkv, d) * esize);
  const int64_t cu_bytes = varlen ? (f.batch + 1) * 4 : 0;
  DeviceBuffer cu_q(f.cu_seqlens_q, cu_bytes), cu_k(f.cu_seqlens_k, cu_bytes);

  AttentionBackwardParams g = host;
  g.forward.device = Device::cuda;
  g.forward.stream = nullptr;
  g.forward.q = q.get();
  g.forward.k = k.get();
  g.forward.v = v.get();
  g.forward.out = out.get();
  g.forward.lse = static_cast<float*>(lse.get());
  if (varlen) {
    g.forward.cu_seqlens_q = static_cast<const int32_t*>(cu_q.get());
    g.forward.cu_seqlens_k = static_cast<const int32_t*>(cu_k.get());
  }
  g.dout = dout.get();
  g.dq = dq.get();
  g.dk = dk.get();
  g.dv = dv.get();
  cuda::attention_backward(g);
  cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  dq.copy_back(host.dq);
  dk.copy_back(host.dk);
  dv.copy_back(host.dv);
}

}  // namespace sqa::testing::cuda_host
