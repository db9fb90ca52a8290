// Kernels of the MoE FFN in the CUDA model (model_cuda.cu). Each mirrors a loop of moe_forward /
// moe_backward in src/model/model.cpp (named in its comment). Shapes: BT token rows, E experts,
// K = top_k, N = BT * K routed rows. A "slot" is t * K + j (token t's j-th choice); a "row" is a
// position in the expert-sorted order, where expert e owns rows [offsets[e], offsets[e + 1]).
// row_slot maps row -> slot and slot_row slot -> row.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "model/cuda/kernels.cuh"

namespace sqa::cuda_model {

// Tokens per block of the counting sort: one thread per token.
inline constexpr int kMoeChunk = 256;

// moe_forward's routing loop, one thread per token: softmax over the E router logits in place
// (probs, fp32), top-k by descending probability with ties to the lower expert index (strict >
// in ascending order, as the CPU), gate weights renormalised over the chosen k. chosen[t] keeps
// S_t = sum of the chosen probabilities for the backward and the paper aux loss.
__global__ void moe_route(float* probs, int32_t* sel, float* gate_w, float* chosen, int64_t rows,
                          int E, int K) {
  SQA_GRID_STRIDE(t, rows) {
    float* p = probs + t * E;
    float m = p[0];
    for (int e = 1; e < E; ++e) m = fmaxf(m, p[e]);
    float sum = 0;
    for (int e = 0; e < E; ++e) sum += (p[e] = expf(p[e] - m));
    const float inv = 1.0f / sum;
    for (int e = 0; e < E; ++e) p[e] *= inv;
    int32_t* s = sel + t * K;
    float total = 0;
    for (int j = 0; j < K; ++j) {
      int best = -1;
      for (int e = 0; e < E; ++e) {
        bool taken = false;
        for (int i = 0; i < j; ++i) taken = taken || s[i] == e;
        if (!taken && (best < 0 || p[e] > p[best])) best = e;
      }
      s[j] = best;
      total += p[best];
    }
    for (int j = 0; j < K; ++j) gate_w[t * K + j] = p[s[j]] / total;
    chosen[t] = total;
  }
}

// Counting sort, pass 1: per chunk of kMoeChunk tokens, how many of its slots chose each expert.
// counts (chunks, E). Shared-memory atomics: a count does not depend on their order.
__global__ void moe_count(const int32_t* sel, int64_t rows, int E, int K, int32_t* counts) {
  extern __shared__ int32_t hist[];
  for (int e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const int64_t t = blockIdx.x * static_cast<int64_t>(kMoeChunk) + threadIdx.x;
  if (threadIdx.x < kMoeChunk && t < rows) {
    for (int j = 0; j < K; ++j) atomicAdd(hist + sel[t * K + j], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    counts[blockIdx.x * static_cast<int64_t>(E) + e] = hist[e];
}

// Counting sort, pass 2 (one block): offsets (E + 1) = exclusive scan of the expert totals, and
// base (chunks, E) = the first row of each chunk's slots within its expert.
__global__ void moe_offsets(const int32_t* counts, int64_t chunks, int E, int32_t* base,
                            int32_t* offsets) {
  extern __shared__ int32_t totals[];
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int32_t run = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      base[c * E + e] = run;
      run += counts[c * E + e];
    }
    totals[e] = run;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t run = 0;
    for (int e = 0; e < E; ++e) {
      offsets[e] = run;
      run += totals[e];
      totals[e] = offsets[e];
    }
    offsets[E] = run;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    for (int64_t c = 0; c < chunks; ++c) base[c * E + e] += totals[e];
  }
}

// Counting sort, pass 3: each slot's row. Within an expert rows follow token order (the CPU's
// order, so per-expert matmuls see the same rows in the same order): a slot's rank is the
// number of earlier tokens of its chunk that chose the same expert (a token picks an expert at
// most once). The scan over the chunk is kMoeChunk * K compares per thread, cheap next to the
// expert matmuls and free of atomics, so the order is deterministic.
__global__ void moe_scatter(const int32_t* sel, int64_t rows, int K, int E, const int32_t* base,
                            int32_t* row_slot, int32_t* slot_row) {
  extern __shared__ int32_t chunk_sel[];  // (kMoeChunk, K)
  const int64_t t0 = blockIdx.x * static_cast<int64_t>(kMoeChunk);
  for (int i = threadIdx.x; i < kMoeChunk * K; i += blockDim.x) {
    chunk_sel[i] = t0 * K + i < rows * K ? sel[t0 * K + i] : -1;
  }
  __syncthreads();
  const int local = threadIdx.x;
  const int64_t t = t0 + local;
  if (local >= kMoeChunk || t >= rows) return;
  for (int j = 0; j < K; ++j) {
    const int32_t e = chunk_sel[local * K + j];
    int32_t rank = 0;
    for (int i = 0; i < local * K; ++i) rank += chunk_sel[i] == e ? 1 : 0;
    const int32_t row = base[blockIdx.x * static_cast<int64_t>(E) + e] + rank;
    row_slot[row] = static_cast<int32_t>(t * K + j);
    slot_row[t * K + j] = row;
  }
}

// The gather of moe_forward: xin (N, d) row r = xn (BT, d) row of token row_slot[r] / K.
__global__ void moe_gather(const bfloat* xn, const int32_t* row_slot, bfloat* xin, int64_t n_rows,
                           int d, int K) {
  SQA_GRID_STRIDE(i, n_rows * d) {
    const int64_t r = i / d;
    xin[i] = xn[static_cast<int64_t>(row_slot[r] / K) * d + (i - r * d)];
  }
}

// fc2 bias of one expert on its fp32 output rows (the CPU's ex.y includes it: dgate needs it).
__global__ void bias_add_f32(float* y, const float* b, int64_t rows, int cols) {
  SQA_GRID_STRIDE(i, rows * cols) y[i] += b[i % cols];
}

// moe_forward's combine: out (BT, d) = sum_j gate_w[t, j] * y[row of slot (t, j)].
__global__ void moe_combine(const float* y, const float* gate_w, const int32_t* slot_row,
                            float* out, int64_t rows, int d, int K) {
  SQA_GRID_STRIDE(i, rows * d) {
    const int64_t t = i / d;
    const int64_t c = i - t * d;
    float acc = 0;
    for (int j = 0; j < K; ++j) {
      acc += gate_w[t * K + j] * y[static_cast<int64_t>(slot_row[t * K + j]) * d + c];
    }
    out[i] = acc;
  }
}

// moe_backward's first loop, one warp per slot: dgate[slot] = dout[t] . y[row] and the routed
// output gradient dy[row] = gate_w[slot] * dout[t], fp32 (bias gradient) and bf16 (matmuls).
// dout is the bf16 FFN-output gradient the norm backward above emits (as for a dense fc2).
__global__ void moe_dispatch_grad(const bfloat* dout, const float* y, const float* gate_w,
                                  const int32_t* slot_row, float* dgate, float* dy, bfloat* dy_bf,
                                  int64_t slots, int d, int K) {
  const int64_t slot = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (slot >= slots) return;
  const int64_t t = slot / K;
  const int64_t row = slot_row[slot];
  const float w = gate_w[slot];
  const bfloat* g = dout + t * d;
  float dot = 0;
  for (int i = lane; i < d; i += 32) {
    const float gi = __bfloat162float(g[i]);
    dot += gi * y[row * d + i];
    const float v = w * gi;
    dy[row * d + i] = v;
    dy_bf[row * d + i] = __float2bfloat16(v);
  }
  dot = warp_sum(dot);
  if (lane == 0) dgate[slot] = dot;
}

// The scatter-add of moe_backward: dxn (BT, d) = sum_j din[row of slot (t, j)].
__global__ void moe_combine_grad(const float* din, const int32_t* slot_row, float* dxn,
                                 int64_t rows, int d, int K) {
  SQA_GRID_STRIDE(i, rows * d) {
    const int64_t t = i / d;
    const int64_t c = i - t * d;
    float acc = 0;
    for (int j = 0; j < K; ++j) acc += din[static_cast<int64_t>(slot_row[t * K + j]) * d + c];
    dxn[i] = acc;
  }
}

// moe_backward's router loop, one thread per token: through the renormalisation w_j = p_j / S
// (dp_j = (dw_j - sum_i w_i dw_i) / S on the chosen experts), plus the aux loss
// (paper: aux_g on each chosen p; switch: aux_g * f_e on every p, f_e = count_e / BT; the counts
// are constants of the routing), then the softmax: dlogit_e = p_e (dp_e - sum_e' p_e' dp_e').
// dp is recomputed per expert instead of stored, so E needs no compile-time bound.
// aux_kind: 0 none, 1 paper, 2 switch.
__global__ void moe_router_backward(const float* probs, const int32_t* sel, const float* gate_w,
                                    const float* chosen, const float* dgate, const int32_t* offsets,
                                    bfloat* dlogit, int64_t rows, int E, int K, int aux_kind,
                                    float aux_g) {
  SQA_GRID_STRIDE(t, rows) {
    const float* p = probs + t * E;
    const int32_t* s = sel + t * K;
    const float* dw = dgate + t * K;
    const float S = chosen[t];
    float wdw = 0;
    for (int j = 0; j < K; ++j) wdw += gate_w[t * K + j] * dw[j];
    auto dp = [&](int e) {
      float v = 0;
      for (int j = 0; j < K; ++j) {
        if (s[j] == e) v = (dw[j] - wdw) / S + (aux_kind == 1 ? aux_g : 0.0f);
      }
      if (aux_kind == 2) {
        v += aux_g * static_cast<float>(offsets[e + 1] - offsets[e]) / static_cast<float>(rows);
      }
      return v;
    };
    float pdp = 0;
    for (int e = 0; e < E; ++e) pdp += p[e] * dp(e);
    for (int e = 0; e < E; ++e) dlogit[t * E + e] = __float2bfloat16(p[e] * (dp(e) - pdp));
  }
}

}  // namespace sqa::cuda_model
