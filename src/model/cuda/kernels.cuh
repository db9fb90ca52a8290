// Elementwise, row and column kernels of the CUDA model (model_cuda.cu). Each mirrors one
// function of src/nn/layers.cpp (named in its comment); bf16 tensors are activations and
// matmul operands, fp32 the residual stream, norms' statistics, biases and gradients.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace sqa::cuda_model {

using bfloat = __nv_bfloat16;  // not sqa::bf16 (dtype.hpp), the host storage type

// nn::mix64 (splitmix64 finaliser), bit for bit.
__host__ __device__ inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// nn::dropout_keep: the same hash and the same top-53-bit uniform in double, so masks match.
__device__ inline bool dropout_keep(uint64_t seed, uint64_t index, double p) {
  const uint64_t r = mix64(seed ^ mix64(index));
  return static_cast<double>(r >> 11) * 0x1.0p-53 >= p;
}

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

inline unsigned blocks_for(int64_t n, int threads = 256) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 65536 * 16 ? b : 65536 * 16);
}

#define SQA_GRID_STRIDE(i, n)                                                            \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

__global__ void cast_to_bf16(const float* in, bfloat* out, int64_t n) {
  SQA_GRID_STRIDE(i, n) out[i] = __float2bfloat16(in[i]);
}

// Embedding lookup from the fp32 master table: x (rows, d) fp32.
__global__ void embed_forward(const int32_t* tokens, const float* table, float* x, int64_t rows,
                              int d) {
  SQA_GRID_STRIDE(i, rows * d) {
    const int64_t r = i / d;
    x[i] = table[static_cast<int64_t>(tokens[r]) * d + (i - r * d)];
  }
}

// Embedding backward: scatter-add rows (fp32 atomics: order not fixed).
__global__ void embed_backward(const int32_t* tokens, const float* dx, float* dtable, int64_t rows,
                               int d) {
  SQA_GRID_STRIDE(i, rows * d) {
    const int64_t r = i / d;
    atomicAdd(dtable + static_cast<int64_t>(tokens[r]) * d + (i - r * d), dx[i]);
  }
}

// nn::rmsnorm_forward, one warp per row: out (bf16) = x * rstd * w.
__global__ void rmsnorm_forward(const float* x, const float* w, bfloat* out, float* rstd,
                                int64_t rows, int d, float eps) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float* xr = x + r * d;
  float ss = 0;
  for (int i = lane; i < d; i += 32) ss += xr[i] * xr[i];
  ss = warp_sum(ss);
  const float s = rsqrtf(ss / static_cast<float>(d) + eps);
  if (lane == 0) rstd[r] = s;
  for (int i = lane; i < d; i += 32) out[r * d + i] = __float2bfloat16(xr[i] * s * w[i]);
}

// nn::rmsnorm_backward's input part, one warp per row: dx += s w dy - s^3 x (sum w dy x) / D.
__global__ void rmsnorm_backward(const float* dy, const float* x, const float* w, const float* rstd,
                                 float* dx, int64_t rows, int d) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float* xr = x + r * d;
  const float* gr = dy + r * d;
  float dot = 0;
  for (int i = lane; i < d; i += 32) dot += w[i] * gr[i] * xr[i];
  dot = warp_sum(dot);
  const float s = rstd[r];
  const float c = s * s * s * dot / static_cast<float>(d);
  for (int i = lane; i < d; i += 32) dx[r * d + i] += s * w[i] * gr[i] - c * xr[i];
}

// nn::rope_apply on `heads` heads of head_dim channels starting at `base` in rows of
// row_stride elements; row r has position r % seqlen. cs holds (cos, sin) per (t, i) from the
// host (angles in double, as the CPU). inverse rotates by the negative angle (the backward).
__global__ void rope(bfloat* base, int64_t rows, int64_t row_stride, int heads, int head_dim,
                     int64_t seqlen, const float2* cs, bool inverse) {
  const int half = head_dim / 2;
  SQA_GRID_STRIDE(i, rows * heads * half) {
    const int64_t r = i / (heads * half);
    const int rem = static_cast<int>(i - r * heads * half);
    const int h = rem / half, p = rem % half;
    const float2 c = cs[(r % seqlen) * half + p];
    const float sn = inverse ? -c.y : c.y;
    bfloat* v = base + r * row_stride + h * head_dim + 2 * p;
    const float x0 = __bfloat162float(v[0]), x1 = __bfloat162float(v[1]);
    v[0] = __float2bfloat16(x0 * c.x - x1 * sn);
    v[1] = __float2bfloat16(x0 * sn + x1 * c.x);
  }
}

// out = x + y + b (attention residual with the o_proj bias), fp32 (rows, d).
__global__ void residual_bias(const float* x, const float* y, const float* b, float* out,
                              int64_t rows, int d) {
  SQA_GRID_STRIDE(i, rows * d) out[i] = x[i] + y[i] + b[i % d];
}

// FFN output: out = x_mid + dropout(y + b), the dropout of nn::dropout_apply at flat index i.
// b may be null (MoE: the expert biases are in y already).
__global__ void ffn_residual(const float* x_mid, const float* y, const float* b, float* out,
                             int64_t rows, int d, double p, uint64_t seed, bool training) {
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  const bool drop = training && p > 0;
  SQA_GRID_STRIDE(i, rows * d) {
    float v = b != nullptr ? y[i] + b[i % d] : y[i];
    if (drop) v = dropout_keep(seed, static_cast<uint64_t>(i), p) ? v * scale : 0.0f;
    out[i] = x_mid[i] + v;
  }
}

// Backward of the dropout: dy = keep ? dx / (1 - p) : 0, in fp32 (bias gradient) and bf16
// (matmul operand).
__global__ void dropout_backward(const float* dx, float* dy, bfloat* dy_bf, int64_t n, double p,
                                 uint64_t seed, bool training) {
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  const bool drop = training && p > 0;
  SQA_GRID_STRIDE(i, n) {
    float v = dx[i];
    if (drop) v = dropout_keep(seed, static_cast<uint64_t>(i), p) ? v * scale : 0.0f;
    dy[i] = v;
    dy_bf[i] = __float2bfloat16(v);
  }
}

// fc1 bias, then nn::swiglu_forward: h (rows, 2 ff) = [value | gate] gets its bias in place,
// a (rows, ff) = value * SiLU(gate).
__global__ void bias_swiglu(bfloat* h, const float* b, bfloat* a, int64_t rows, int ff) {
  SQA_GRID_STRIDE(i, rows * ff) {
    const int64_t r = i / ff;
    const int c = static_cast<int>(i - r * ff);
    bfloat* hv = h + r * 2 * ff + c;
    const float v = __bfloat162float(hv[0]) + b[c];
    const float g = __bfloat162float(hv[ff]) + b[ff + c];
    const bfloat vb = __float2bfloat16(v), gb = __float2bfloat16(g);
    hv[0] = vb;
    hv[ff] = gb;
    const float vr = __bfloat162float(vb), gr = __bfloat162float(gb);
    a[i] = __float2bfloat16(vr * gr / (1.0f + __expf(-gr)));
  }
}

// nn::swiglu_backward: dh = [dy g sig | dy v sig (1 + g (1 - sig))].
__global__ void swiglu_backward(const bfloat* da, const bfloat* h, bfloat* dh, int64_t rows,
                                int ff) {
  SQA_GRID_STRIDE(i, rows * ff) {
    const int64_t r = i / ff;
    const int c = static_cast<int>(i - r * ff);
    const float v = __bfloat162float(h[r * 2 * ff + c]);
    const float g = __bfloat162float(h[r * 2 * ff + ff + c]);
    const float dy = __bfloat162float(da[i]);
    const float sig = 1.0f / (1.0f + __expf(-g));
    dh[r * 2 * ff + c] = __float2bfloat16(dy * g * sig);
    dh[r * 2 * ff + ff + c] = __float2bfloat16(dy * v * sig * (1.0f + g * (1.0f - sig)));
  }
}

// fc1 bias, then nn::gelu_forward (erf form).
__global__ void bias_gelu(bfloat* h, const float* b, bfloat* a, int64_t rows, int ff) {
  SQA_GRID_STRIDE(i, rows * ff) {
    const int c = static_cast<int>(i % ff);
    const bfloat xb = __float2bfloat16(__bfloat162float(h[i]) + b[c]);
    h[i] = xb;
    const float x = __bfloat162float(xb);
    a[i] = __float2bfloat16(0.5f * x * (1.0f + erff(x * 0.70710678118654752f)));
  }
}

// nn::gelu_backward: d/dx x Phi(x) = Phi(x) + x phi(x).
__global__ void gelu_backward(const bfloat* da, const bfloat* h, bfloat* dh, int64_t n) {
  SQA_GRID_STRIDE(i, n) {
    const float x = __bfloat162float(h[i]);
    const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    const float pdf = 0.39894228040143268f * __expf(-0.5f * x * x);
    dh[i] = __float2bfloat16(__bfloat162float(da[i]) * (cdf + x * pdf));
  }
}

__global__ void bias_add_bf16(bfloat* z, const float* b, int64_t rows, int cols) {
  SQA_GRID_STRIDE(i, rows * cols) {
    z[i] = __float2bfloat16(__bfloat162float(z[i]) + b[i % cols]);
  }
}

__global__ void f32_to_bf16(const float* in, bfloat* out, int64_t n) {
  SQA_GRID_STRIDE(i, n) out[i] = __float2bfloat16(in[i]);
}

// nn::cross_entropy, one block per row over bf16 logits: per-row loss and top-1 hit (first
// maximum, as the CPU), and when dlogits is set grad_scale * w * (softmax - onehot) in bf16.
template <int kThreads>
__global__ void cross_entropy(const bfloat* logits, const int32_t* targets, const float* mask,
                              bfloat* dlogits, float* row_loss, float* row_hit, int vocab,
                              float grad_scale) {
  const int64_t r = blockIdx.x;
  const bfloat* z = logits + r * vocab;
  __shared__ float s_val[kThreads];
  __shared__ int s_idx[kThreads];
  float best = -INFINITY;
  int arg = vocab;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const float v = __bfloat162float(z[i]);
    if (v > best) {
      best = v;
      arg = i;
    }
  }
  s_val[threadIdx.x] = best;
  s_idx[threadIdx.x] = arg;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      const float ov = s_val[threadIdx.x + s];
      const int oi = s_idx[threadIdx.x + s];
      if (ov > s_val[threadIdx.x] || (ov == s_val[threadIdx.x] && oi < s_idx[threadIdx.x])) {
        s_val[threadIdx.x] = ov;
        s_idx[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  const float zmax = s_val[0];
  const int argmax = s_idx[0];
  __syncthreads();
  float sum = 0;
  for (int i = threadIdx.x; i < vocab; i += kThreads) sum += __expf(__bfloat162float(z[i]) - zmax);
  s_val[threadIdx.x] = sum;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) s_val[threadIdx.x] += s_val[threadIdx.x + s];
    __syncthreads();
  }
  const float total = s_val[0];
  const int target = targets[r];
  if (threadIdx.x == 0) {
    row_loss[r] = zmax + logf(total) - __bfloat162float(z[target]);
    row_hit[r] = argmax == target ? 1.0f : 0.0f;
  }
  if (dlogits != nullptr) {
    const float g = grad_scale * (mask ? mask[r] : 1.0f);
    const float k = g / total;
    bfloat* dz = dlogits + r * vocab;
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      float v = __expf(__bfloat162float(z[i]) - zmax) * k;
      if (i == target) v -= g;
      dz[i] = __float2bfloat16(v);
    }
  }
}

// Column sums in two deterministic passes: partial[chunk][c] = sum over the chunk's rows of
// a[r, c] (* b[r, c] * scale[r] when b is set); then out[c] += sum over chunks in order.
template <typename T>
__global__ void column_partial(const T* a, const float* b, const float* scale, int64_t rows,
                               int cols, int64_t rows_per_chunk, float* partial) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const int64_t r0 = blockIdx.y * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  float acc = 0;
  for (int64_t r = r0; r < r1; ++r) {
    float v = static_cast<float>(a[r * cols + c]);
    if (b != nullptr) v *= b[r * cols + c] * scale[r];
    acc += v;
  }
  partial[blockIdx.y * static_cast<int64_t>(cols) + c] = acc;
}

__global__ void column_finish(const float* partial, int chunks, int cols, float* out) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float acc = 0;
  for (int k = 0; k < chunks; ++k) acc += partial[static_cast<int64_t>(k) * cols + c];
  out[c] += acc;
}

// Sum of squares per block (fixed grid and order): the global gradient norm.
__global__ void sum_squares(const float* g, int64_t n, double* partial) {
  __shared__ double s[256];
  double acc = 0;
  SQA_GRID_STRIDE(i, n) acc += static_cast<double>(g[i]) * g[i];
  s[threadIdx.x] = acc;
  __syncthreads();
  for (int k = 128; k > 0; k >>= 1) {
    if (threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

// sqa::AdamW::step after clip_grad_norm's scaling of g, plus the bf16 copy of the new weights.
__global__ void adamw(float* w, float* g, float* m, float* v, bfloat* w_bf, int64_t n,
                      float clip_scale, float b1, float b2, float decay, float step_size,
                      float inv_sqrt_bc2, float eps) {
  SQA_GRID_STRIDE(i, n) {
    const float gi = g[i] * clip_scale;
    g[i] = gi;
    m[i] = b1 * m[i] + (1.0f - b1) * gi;
    v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
    const float wi = w[i] * decay - step_size * m[i] / (sqrtf(v[i]) * inv_sqrt_bc2 + eps);
    w[i] = wi;
    w_bf[i] = __float2bfloat16(wi);
  }
}

}  // namespace sqa::cuda_model
