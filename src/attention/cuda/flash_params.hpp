// Kernel-side parameters of the CUDA attention forward: plain data, filled on the host from
// sqa::AttentionParams (api.cpp) and passed by value to the kernels.
#pragma once

#include <cstdint>

namespace sqa::cuda::detail {

struct FwdKernelParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;  // may be null
  // (batch, row, head) strides in elements; the element stride is 1.
  int64_t q_batch = 0, q_row = 0, q_head = 0;
  int64_t k_batch = 0, k_row = 0, k_head = 0;
  int64_t v_batch = 0, v_row = 0, v_head = 0;
  int64_t o_batch = 0, o_row = 0, o_head = 0;
  const int32_t* cu_seqlens_q = nullptr;  // varlen when non-null (device memory)
  const int32_t* cu_seqlens_k = nullptr;
  int batch = 0;
  int seqlen_q = 0;  // dense length, or max length when varlen
  int seqlen_k = 0;
  int num_query_heads = 0;
  int num_kv_heads = 0;
  int num_attention_heads = 0;
  int group_size = 1;  // G = H_q / H_kv, 1 for rSQA
  int reverse = 0;     // rSQA: attention head h reads query head h % H_q and KV head h
  // Heads packed into the tile's rows (GQA packing for decode): tile row m is query row m / pack
  // of attention head head_group * pack + m % pack, all of which share one KV head. 1 = off.
  int pack = 1;
  int num_head_groups = 0;  // num_attention_heads / pack (grid.y)
  // Grid raster of the wgmma prefill kernel (fwd_tile_coords): the head groups are taken in
  // chunks of raster_heads, each chunk's tiles before the next chunk's, heads fastest inside a
  // chunk. raster_heads = num_head_groups (or 0) interleaves all heads. Fewer heads at a time
  // keep the concurrent CTAs on fewer heads' K/V, which the L2 then serves (api.cpp
  // forward_raster: 2 at D = 128 with many KV heads or much K / V, else all).
  int raster_heads = 0;
  // D = 64 default on dense batches: 192-row tiles with three consumer warpgroups (wgmmatma3)
  // when such tiles fill at least 4 waves of the GPU, else 128-row tiles (api.cpp).
  int three_warpgroups = 0;
  int window_left = -1;
  int window_right = -1;
  float scale_log2 = 0.0f;  // softmax scale * log2(e): the kernels work in base 2
  // Split-KV: each split handles a contiguous run of key blocks and writes fp32 partial outputs
  // and lse to the workspace; a combine kernel merges them.
  int num_splits = 1;
  int64_t accum_rows = 0;      // rows per split in the workspace (= number of lse entries)
  float* out_accum = nullptr;  // (num_splits, accum_rows, head_dim)
  float* lse_accum = nullptr;  // (num_splits, accum_rows)
};

// Backward: the forward's parameters (q, k, v, out, lse, shapes, masks) plus the gradients.
struct BwdKernelParams {
  FwdKernelParams fwd;  // fwd.lse is required; pack = 1, num_splits = 1
  const void* dout = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  int64_t do_batch = 0, do_row = 0, do_head = 0;
  int64_t dq_batch = 0, dq_row = 0, dq_head = 0;
  int64_t dk_batch = 0, dk_row = 0, dk_head = 0;
  int64_t dv_batch = 0, dv_row = 0, dv_head = 0;
  float scale = 0.0f;     // softmax scale (dQ = scale dS K, dK = scale dS^T Q)
  float* dsum = nullptr;  // workspace, lse layout: D_i = dO_i . O_i
  int64_t lse_rows = 0;   // entries of lse / dsum
  // Scheme: deterministic = 1 runs the separate dQ kernel (fixed order, no atomics); 0 adds dQ
  // from the dK/dV kernel into dq_accum (fp32, zeroed, dq_rows x head_dim; see
  // flash_bwd_kernel.cuh's dq_accum_row) and converts it at the end.
  int deterministic = 0;
  float* dq_accum = nullptr;
  int64_t dq_rows = 0;
  // dK/dV head splits (dense batches only): with few KV heads (MQA-like layouts) the grid of one
  // CTA per (64-key block, KV head) does not fill the GPU, so each block's query-head group is
  // cut into dkdv_splits ranges, one CTA each. Every CTA then writes fp32 partial dK | dV rows
  // (2 * head_dim floats) to dkdv_accum[split][b][kv head][key], and a reduce kernel sums the
  // splits in a fixed order (deterministic) into dK and dV. 1: dK/dV written directly.
  int dkdv_splits = 1;
  float* dkdv_accum = nullptr;
  // Grid raster of the dK/dV kernels (dkdv_cta), as FwdKernelParams::raster_heads over the
  // (KV head, split) units: raster_units of them at a time, key blocks in turn; 0 = all units.
  int raster_units = 0;
};

}  // namespace sqa::cuda::detail
