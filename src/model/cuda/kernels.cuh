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

// The elementwise kernels are memory-bound: they move 16 bytes per access (8 bf16) where the
// width allows it, W = 1 being the scalar variant for widths that are not multiples of 8.
template <int W>
__device__ inline void load_bf16(const bfloat* p, float (&v)[W]) {
  if constexpr (W == 8) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __bfloat1622float2(h[j]);
      v[2 * j] = f.x;
      v[2 * j + 1] = f.y;
    }
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j) v[j] = __bfloat162float(p[j]);
  }
}

template <int W>
__device__ inline void store_bf16(bfloat* p, const float (&v)[W]) {
  if constexpr (W == 8) {
    uint4 raw;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
    for (int j = 0; j < 4; ++j) h[j] = __floats2bfloat162_rn(v[2 * j], v[2 * j + 1]);
    *reinterpret_cast<uint4*>(p) = raw;
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j) p[j] = __float2bfloat16(v[j]);
  }
}

// fp32 rows as 16-byte accesses: 8 floats at p (32-byte aligned: a row start of a (rows, d)
// buffer with d a multiple of 8, plus a multiple of 8).
__device__ inline void load_f32x8(const float* p, float (&v)[8]) {
  const float4 lo = reinterpret_cast<const float4*>(p)[0],
               hi = reinterpret_cast<const float4*>(p)[1];
  v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z,
  v[7] = hi.w;
}
__device__ inline void store_f32x8(float* p, const float (&v)[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// The value a bf16 tensor stores for x.
__device__ inline float round_bf16(float x) {
  return __bfloat162float(__float2bfloat16(x));
}

// i / n (returned) and i % n (rem), in 32 bits when i fits: 64-bit division is a long
// software sequence that would dominate these kernels.
__device__ inline int64_t div_mod(int64_t i, int n, int& rem) {
  if (i <= 0xffffffffLL) {
    const uint32_t u = static_cast<uint32_t>(i), q = u / static_cast<uint32_t>(n);
    rem = static_cast<int>(u - q * static_cast<uint32_t>(n));
    return q;
  }
  const int64_t q = i / n;
  rem = static_cast<int>(i - q * n);
  return q;
}

// The residual add and the norm after it, one warp per row, so the norm reads the row from
// cache instead of DRAM: out = x + dropout(y + b) (nn::dropout_apply's mask at flat index
// r d + c when drop), then xn (bf16) = out * rstd * w as nn::rmsnorm_forward. Without w (no
// norm follows: the last layer of a model without final_norm) xn = out in bf16, no rstd.
// b may be null (a branch without a bias).
__global__ void residual_rmsnorm(const float* x, const float* y, const float* b, float* out,
                                 const float* w, bfloat* xn, float* rstd, int64_t rows, int d,
                                 float eps, double p, uint64_t seed, bool drop) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  const int64_t o = r * d;
  float ss = 0;
  for (int c = lane; c < d; c += 32) {
    float v = b != nullptr ? y[o + c] + b[c] : y[o + c];
    if (drop) v = dropout_keep(seed, static_cast<uint64_t>(o + c), p) ? v * scale : 0.0f;
    v += x[o + c];
    out[o + c] = v;
    if (w == nullptr) xn[o + c] = __float2bfloat16(v);
    ss += v * v;
  }
  if (w == nullptr) return;
  ss = warp_sum(ss);
  const float s = rsqrtf(ss / static_cast<float>(d) + eps);
  if (lane == 0) rstd[r] = s;
  for (int c = lane; c < d; c += 32) xn[o + c] = __float2bfloat16(out[o + c] * s * w[c]);
}

// residual_rmsnorm for d a multiple of 8 and at most kVecs * 256, lane l owning the columns
// 8 (l + 32 k) .. + 7: 16-byte accesses, the row held in registers between the sum of squares
// and the normalisation (the scalar kernel reads `out` back), and b and w loaded once per
// warp into registers rather than once per row (8 scalar loads 32 bytes apart per lane cost
// as many L1 wavefronts as the row itself). Warps stride over the rows of a fixed grid.
template <int kVecs>
__global__ void __launch_bounds__(256)
    residual_rmsnorm_vec(const float* x, const float* y, const float* b, float* out, const float* w,
                         bfloat* xn, float* rstd, int64_t rows, int d, float eps, double p,
                         uint64_t seed, bool drop) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  float bv[kVecs][8], wv[kVecs][8];
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int c = 8 * (lane + 32 * k);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      bv[k][j] = b != nullptr && c < d ? b[c + j] : 0.0f;
      wv[k][j] = w != nullptr && c < d ? w[c + j] : 0.0f;
    }
  }
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; r < rows;
       r += warps) {
    const int64_t o = r * d;
    float v[kVecs][8];
    float ss = 0;
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int c = 8 * (lane + 32 * k);
      if (c >= d) continue;
      float xv[8];
      load_f32x8(y + o + c, v[k]);
      load_f32x8(x + o + c, xv);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float t = b != nullptr ? v[k][j] + bv[k][j] : v[k][j];
        if (drop) t = dropout_keep(seed, static_cast<uint64_t>(o + c + j), p) ? t * scale : 0.0f;
        v[k][j] = t + xv[j];
        ss += v[k][j] * v[k][j];
      }
      store_f32x8(out + o + c, v[k]);
      if (w == nullptr) store_bf16<8>(xn + o + c, v[k]);
    }
    if (w == nullptr) continue;
    ss = warp_sum(ss);
    const float s = rsqrtf(ss / static_cast<float>(d) + eps);
    if (lane == 0) rstd[r] = s;
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int c = 8 * (lane + 32 * k);
      if (c >= d) continue;
      float n[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) n[j] = v[k][j] * s * wv[k][j];
      store_bf16<8>(xn + o + c, n);
    }
  }
}

// Backward through one RMSNorm into the residual stream, with the column sums that follow it
// folded in (each was a separate pass over a (rows, d) fp32 tensor). Per row (one warp):
//   dx (+)= s w dy - s^3 x (sum w dy x) / D        (nn::rmsnorm_backward's input part)
//   dw_partial[chunk] += dy x s                      (the norm weight's gradient)
// and optionally e = dropout(dx) (identity when !drop; the FFN output's dropout backward at
// flat index r d + c) as the next matmul's bf16 operand, with e_partial[chunk] += e (the bias
// gradient of the o_proj, or of the fc2 below). dy = nullptr skips the norm (dx is only read).
struct NormBackward {
  const float* dy = nullptr;    // (rows, d) gradient at the norm's output
  const float* x = nullptr;     // (rows, d) the norm's input
  const float* w = nullptr;     // (d)
  const float* rstd = nullptr;  // (rows)
  float* dx = nullptr;          // (rows, d)
  bool dx_zero = false;         // dx holds nothing yet: assign instead of accumulate
  float* dw_partial = nullptr;  // (chunks, d)
  bfloat* e = nullptr;          // (rows, d) or null
  float* e_partial = nullptr;   // (chunks, d), with e
  double p = 0;
  uint64_t seed = 0;
  bool drop = false;
  int64_t rows = 0, rows_per_chunk = 0;
  int d = 0;
};

// One block per chunk of rows; each warp keeps its column sums in shared memory (a lane owns
// the columns c = lane + 32 k, so no two threads touch one slot) and the warps are added in
// order at the end, so the result does not depend on scheduling.
__global__ void rmsnorm_backward(const NormBackward a) {
  extern __shared__ float acc[];  // [2][warps][d]: norm weight, then e
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int d = a.d;
  float* acc_w = acc + static_cast<int64_t>(warp) * d;
  float* acc_e = acc + static_cast<int64_t>(warps + warp) * d;
  for (int c = lane; c < d; c += 32) acc_w[c] = acc_e[c] = 0.0f;
  const bool norm = a.dy != nullptr;
  const float scale = static_cast<float>(1.0 / (1.0 - a.p));
  const int64_t r0 = blockIdx.x * a.rows_per_chunk;
  const int64_t r1 = r0 + a.rows_per_chunk < a.rows ? r0 + a.rows_per_chunk : a.rows;
  for (int64_t r = r0 + warp; r < r1; r += warps) {
    const int64_t o = r * d;
    float s = 0, k = 0;
    if (norm) {
      float dot = 0;
      for (int c = lane; c < d; c += 32) dot += a.w[c] * a.dy[o + c] * a.x[o + c];
      dot = warp_sum(dot);
      s = a.rstd[r];
      k = s * s * s * dot / static_cast<float>(d);
    }
    for (int c = lane; c < d; c += 32) {
      float v = a.dx_zero ? 0.0f : a.dx[o + c];
      if (norm) {
        const float g = a.dy[o + c], xv = a.x[o + c];
        v += s * a.w[c] * g - k * xv;
        a.dx[o + c] = v;
        acc_w[c] += g * xv * s;
      }
      if (a.e != nullptr) {
        float e = v;
        if (a.drop) e = dropout_keep(a.seed, static_cast<uint64_t>(o + c), a.p) ? v * scale : 0.0f;
        a.e[o + c] = __float2bfloat16(e);
        acc_e[c] += e;
      }
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float sw = 0, se = 0;
    for (int w = 0; w < warps; ++w) {
      sw += acc[static_cast<int64_t>(w) * d + c];
      se += acc[static_cast<int64_t>(warps + w) * d + c];
    }
    if (norm) a.dw_partial[blockIdx.x * static_cast<int64_t>(d) + c] = sw;
    if (a.e != nullptr) a.e_partial[blockIdx.x * static_cast<int64_t>(d) + c] = se;
  }
}

// rmsnorm_backward for d a multiple of 8 and at most kVecs * 256: lane l owns the columns
// 8 (l + 32 k) .. + 7, k < kVecs, so each row is read once with 16-byte accesses and stays in
// registers from the dot product to the update (the scalar kernel reads dy and x twice), and
// the column sums stay in registers over all the rows a warp takes. Only then do the 8 warps
// meet in shared memory, added in warp order: the result depends on the shape alone.
// d <= 256: 4 blocks of 256 threads per SM (at most 64 registers, the norm weight in shared
// memory to stay there) keep about 100 KB of loads in flight.
template <int kVecs>
__global__ void __launch_bounds__(256, 4 / kVecs) rmsnorm_backward_vec(const NormBackward a) {
  constexpr int kWarps = 8;
  __shared__ float s_acc[kWarps][kVecs * 256];
  __shared__ __align__(16) float s_w[kVecs * 256];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, d = a.d;
  const bool norm = a.dy != nullptr, emit = a.e != nullptr;
  const float scale = static_cast<float>(1.0 / (1.0 - a.p));
  float acc_w[kVecs][8] = {}, acc_e[kVecs][8] = {};
  for (int c = threadIdx.x; c < kVecs * 256; c += blockDim.x)
    s_w[c] = norm && c < d ? a.w[c] : 0.0f;
  __syncthreads();
  const int64_t r0 = blockIdx.x * a.rows_per_chunk;
  const int64_t r1 = r0 + a.rows_per_chunk < a.rows ? r0 + a.rows_per_chunk : a.rows;
  for (int64_t r = r0 + warp; r < r1; r += kWarps) {
    const int64_t o = r * d;
    float g[kVecs][8], x[kVecs][8], v[kVecs][8];
    float dot = 0;
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int c = 8 * (lane + 32 * k);
      if (c >= d) continue;
      if (a.dx_zero) {
#pragma unroll
        for (int j = 0; j < 8; ++j) v[k][j] = 0.0f;
      } else {
        load_f32x8(a.dx + o + c, v[k]);
      }
      if (!norm) continue;
      load_f32x8(a.dy + o + c, g[k]);
      load_f32x8(a.x + o + c, x[k]);
      float w[8];
      load_f32x8(s_w + c, w);
#pragma unroll
      for (int j = 0; j < 8; ++j) dot += w[j] * g[k][j] * x[k][j];
    }
    float s = 0, kd = 0;
    if (norm) {
      dot = warp_sum(dot);
      s = a.rstd[r];
      kd = s * s * s * dot / static_cast<float>(d);
    }
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int c = 8 * (lane + 32 * k);
      if (c >= d) continue;
      if (norm) {
        float w[8];
        load_f32x8(s_w + c, w);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          v[k][j] += s * w[j] * g[k][j] - kd * x[k][j];
          acc_w[k][j] += g[k][j] * x[k][j] * s;
        }
        store_f32x8(a.dx + o + c, v[k]);
      }
      if (!emit) continue;
      float e[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        e[j] = v[k][j];
        if (a.drop) {
          e[j] = dropout_keep(a.seed, static_cast<uint64_t>(o + c + j), a.p) ? e[j] * scale : 0.0f;
        }
        acc_e[k][j] += e[j];
      }
      store_bf16<8>(a.e + o + c, e);
    }
  }
  // The two column sums in turn through the same shared array.
  for (int pass = 0; pass < 2; ++pass) {
    float* out = pass == 0 ? a.dw_partial : a.e_partial;
    if (pass == 0 ? !norm : !emit) continue;  // uniform over the block
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        s_acc[warp][8 * (lane + 32 * k) + j] = pass == 0 ? acc_w[k][j] : acc_e[k][j];
      }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
      float sum = 0;
      for (int wi = 0; wi < kWarps; ++wi) sum += s_acc[wi][c];
      out[blockIdx.x * static_cast<int64_t>(d) + c] = sum;
    }
  }
}

// nn::rope_apply on `heads` heads of head_dim channels starting at `base` in rows of
// row_stride elements; row r has position r % seqlen. cs holds (cos, sin) per (t, i) from the
// host (angles in double, as the CPU). inverse rotates by the negative angle (the backward).
// Each thread rotates 4 pairs with one 16-byte access (the CUDA model requires head_dim and
// row_stride to be multiples of 8).
__global__ void rope(bfloat* base, int64_t rows, int64_t row_stride, int heads, int head_dim,
                     int seqlen, const float2* cs, bool inverse) {
  const int half = head_dim / 2, per_head = head_dim / 8, per_row = heads * per_head;
  SQA_GRID_STRIDE(i, rows * per_row) {
    int rem = 0, t = 0;
    const int64_t r = div_mod(i, per_row, rem);
    (void)div_mod(r, seqlen, t);
    const int h = rem / per_head, q = rem - h * per_head;
    bfloat* p = base + r * row_stride + h * head_dim + q * 8;
    float v[8], out[8];
    load_bf16<8>(p, v);
    // (cos, sin) of the 4 pairs: 32 aligned bytes, since half is a multiple of 4.
    const float4* csv =
        reinterpret_cast<const float4*>(cs + static_cast<int64_t>(t) * half + q * 4);
    const float4 lo = csv[0], hi = csv[1];
    const float cosv[4] = {lo.x, lo.z, hi.x, hi.z}, sinv[4] = {lo.y, lo.w, hi.y, hi.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float sn = inverse ? -sinv[j] : sinv[j];
      const float x0 = v[2 * j], x1 = v[2 * j + 1];
      out[2 * j] = x0 * cosv[j] - x1 * sn;
      out[2 * j + 1] = x0 * sn + x1 * cosv[j];
    }
    store_bf16<8>(p, out);
  }
}

// fc1 bias, then the activation: SwiGLU (nn::swiglu_forward) a = value * SiLU(gate) over h
// rows [value (ff) | gate (ff)], or GELU (nn::gelu_forward, erf form) over h rows of ff.
// h keeps no bias: the backward adds it again with the same bf16 rounding, which saves
// writing back the widest activation of the model.
// Block (32, 8) as act_backward: threadIdx.x takes W columns of a 32 W wide tile (blockIdx.x)
// and keeps their biases in registers while the 8 row lanes stride over the rows; loading the
// bias per element (8 scalars 32 bytes apart per lane, twice for SwiGLU) cost more L1
// wavefronts than the activations themselves.
template <bool kSwiglu, int W>
__global__ void __launch_bounds__(256)
    bias_act(const bfloat* h, const float* b, bfloat* a, int64_t rows, int ff) {
  const int64_t h_row = kSwiglu ? 2 * static_cast<int64_t>(ff) : ff;
  const int c = (blockIdx.x * 32 + threadIdx.x) * W;
  if (c >= ff) return;
  float bv[W], bg[W];
#pragma unroll
  for (int j = 0; j < W; ++j) {
    bv[j] = b[c + j];
    bg[j] = kSwiglu ? b[ff + c + j] : 0.0f;
  }
  const int64_t stride = static_cast<int64_t>(gridDim.y) * 8;
  for (int64_t r = blockIdx.y * 8 + threadIdx.y; r < rows; r += stride) {
    float v[W], out[W];
    load_bf16<W>(h + r * h_row + c, v);
    if constexpr (kSwiglu) {
      float g[W];
      load_bf16<W>(h + r * h_row + ff + c, g);
#pragma unroll
      for (int j = 0; j < W; ++j) {
        const float vr = round_bf16(v[j] + bv[j]), gr = round_bf16(g[j] + bg[j]);
        out[j] = vr * gr / (1.0f + __expf(-gr));
      }
    } else {
#pragma unroll
      for (int j = 0; j < W; ++j) {
        const float x = round_bf16(v[j] + bv[j]);
        out[j] = 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
      }
    }
    store_bf16<W>(a + r * ff + c, out);
  }
}

// The activation's backward and the fc1 bias gradient in one pass: dh = [dy g sig |
// dy v sig (1 + g (1 - sig))] (nn::swiglu_backward) or dh = dy (Phi(x) + x phi(x))
// (nn::gelu_backward), on h + b rounded as in the forward, and partial[chunk] = the chunk's
// column sums of dh as stored (bf16). Block (32, 8): threadIdx.x takes W columns of a 32 W
// wide tile (both halves for SwiGLU), threadIdx.y every 8th row of the chunk (blockIdx.y);
// the 8 row lanes are added in order at the end.
// Three blocks per SM (at most 85 registers) keep enough 16-byte loads in flight.
template <bool kSwiglu, int W>
__global__ void __launch_bounds__(256, 3)
    act_backward(const bfloat* da, const bfloat* h, const float* b, bfloat* dh, float* partial,
                 int64_t rows, int64_t rows_per_chunk, int ff) {
  constexpr int kHalves = kSwiglu ? 2 : 1;
  __shared__ float s_acc[kHalves][8][32 * W];
  const int64_t h_row = static_cast<int64_t>(kHalves) * ff;
  const int c = (blockIdx.x * 32 + threadIdx.x) * W;
  float acc[kHalves][W] = {};
  if (c < ff) {
    float bv[W], bg[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
      bv[j] = b[c + j];
      bg[j] = kSwiglu ? b[ff + c + j] : 0.0f;
    }
    const int64_t r0 = blockIdx.y * rows_per_chunk;
    const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
      float dy[W], v[W], o0[W];
      load_bf16<W>(da + r * ff + c, dy);
      load_bf16<W>(h + r * h_row + c, v);
      if constexpr (kSwiglu) {
        float g[W], o1[W];
        load_bf16<W>(h + r * h_row + ff + c, g);
#pragma unroll
        for (int j = 0; j < W; ++j) {
          const float vr = round_bf16(v[j] + bv[j]), gr = round_bf16(g[j] + bg[j]);
          const float sig = 1.0f / (1.0f + __expf(-gr));
          o0[j] = round_bf16(dy[j] * gr * sig);
          o1[j] = round_bf16(dy[j] * vr * sig * (1.0f + gr * (1.0f - sig)));
          acc[0][j] += o0[j];
          acc[kHalves - 1][j] += o1[j];
        }
        store_bf16<W>(dh + r * h_row + ff + c, o1);
      } else {
#pragma unroll
        for (int j = 0; j < W; ++j) {
          const float x = round_bf16(v[j] + bv[j]);
          const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
          const float pdf = 0.39894228040143268f * __expf(-0.5f * x * x);
          o0[j] = round_bf16(dy[j] * (cdf + x * pdf));
          acc[0][j] += o0[j];
        }
      }
      store_bf16<W>(dh + r * h_row + c, o0);
    }
  }
#pragma unroll
  for (int half = 0; half < kHalves; ++half) {
#pragma unroll
    for (int j = 0; j < W; ++j) s_acc[half][threadIdx.y][threadIdx.x * W + j] = acc[half][j];
  }
  __syncthreads();
  for (int idx = threadIdx.y * 32 + threadIdx.x; idx < kHalves * 32 * W; idx += 256) {
    const int half = idx / (32 * W), col = idx % (32 * W);
    const int cc = blockIdx.x * 32 * W + col;
    if (cc >= ff) continue;
    float sum = 0;
    for (int y = 0; y < 8; ++y) sum += s_acc[half][y][col];
    partial[blockIdx.y * h_row + half * ff + cc] = sum;
  }
}

__device__ inline bool first_max_wins(float ov, int oi, float v, int i) {
  return ov > v || (ov == v && oi < i);
}

// (max, sum of exp(z - max), first argmax) of a set of logits, merged with another set's.
__device__ inline void softmax_merge(float& m, float& s, int& arg, float om, float os, int oi) {
  const float nm = fmaxf(m, om);
  // An empty set (m = -inf, s = 0) adds nothing; exp(-inf - -inf) would be NaN.
  const float a = m == -INFINITY ? 0.0f : s * __expf(m - nm);
  const float b = om == -INFINITY ? 0.0f : os * __expf(om - nm);
  if (first_max_wins(om, oi, m, arg)) arg = oi;
  m = nm;
  s = a + b;
}

// nn::cross_entropy over rows of bf16 logits for vocabularies that are multiples of 8 and at
// most kVecs * 2048: 256 threads and a chunk of rows per block, thread t owning the columns
// 8 (t + 256 k) .. + 7 of every row. Per row: loss and top-1 hit (first maximum, as the CPU);
// in training dlogits = grad_scale * w * (softmax - onehot) in bf16, and with bias_partial
// the chunk's column sums of dlogits (the LM-head bias gradient). The LM-head bias is added
// on the fly as z = bf16(logit + b), the value a separate bias pass would store.
//
// Bandwidth, not arithmetic, bounds it (2 bytes read and 2 written per logit), so:
// - the next row's logits are loaded (raw, 16 bytes per access) while this one is worked on,
//   so each block always has a row of loads in flight;
// - each thread keeps its own max and sum of exp(z - max) (one exp per logit) and the block
//   merges them once per row: one barrier per row, the reduction buffers alternating between
//   rows so that no second barrier guards their reuse;
// - the bias and the bias-gradient sums live in shared memory laid out [k][j][thread], so
//   every access is one conflict-free wavefront (bias reads from global memory, 8 scalars 32
//   bytes apart per lane, took as many L1 wavefronts as the logits themselves);
// - the thread that owns the target column writes the row's loss, from its registers.
// Merges run in a fixed order, so results depend on the shape alone.
template <int kVecs>
__global__ void __launch_bounds__(256)
    cross_entropy_rows(const bfloat* logits, const float* bias, const int32_t* targets,
                       const float* mask, bfloat* dlogits, float* bias_partial, float* row_loss,
                       float* row_hit, int64_t rows, int64_t rows_per_chunk, int vocab,
                       float grad_scale) {
  constexpr int kThreads = 256, kWarps = kThreads / 32;
  // [kVecs * 8][kThreads] bias, then (with bias_partial) as many column sums.
  extern __shared__ float s_dyn[];
  __shared__ float s_max[2][kWarps], s_sum[2][kWarps];
  __shared__ int s_arg[2][kWarps];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  float* s_bias = s_dyn;
  float* s_col = s_dyn + kVecs * 8 * kThreads;
  const bool has_bias = bias != nullptr, sums = bias_partial != nullptr;
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int c0 = (k * kThreads + tid) * 8;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (has_bias) s_bias[(k * 8 + j) * kThreads + tid] = c0 < vocab ? bias[c0 + j] : 0.0f;
      if (sums) s_col[(k * 8 + j) * kThreads + tid] = 0.0f;
    }
  }
  const int64_t r0 = blockIdx.x * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  uint4 next[kVecs] = {};  // lanes past the vocabulary convert zeros they never use
  auto load_row = [&](int64_t r) {
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int c0 = (k * kThreads + tid) * 8;
      if (c0 < vocab) next[k] = *reinterpret_cast<const uint4*>(logits + r * vocab + c0);
    }
  };
  int next_target = 0;
  if (r0 < r1) {
    load_row(r0);
    next_target = targets[r0];
  }
  for (int64_t r = r0; r < r1; ++r) {
    float v[kVecs][8];
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&next[k]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 f = __bfloat1622float2(h[j]);
        v[k][2 * j] = f.x;
        v[k][2 * j + 1] = f.y;
      }
    }
    const int target = next_target;
    if (r + 1 < r1) {
      load_row(r + 1);
      next_target = targets[r + 1];
    }
    float m = -INFINITY, zt = 0;
    int arg = vocab;
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int c0 = (k * kThreads + tid) * 8;
      if (c0 >= vocab) continue;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (has_bias) v[k][j] = round_bf16(v[k][j] + s_bias[(k * 8 + j) * kThreads + tid]);
        if (c0 + j == target) zt = v[k][j];
        if (v[k][j] > m) {
          m = v[k][j];
          arg = c0 + j;
        }
      }
    }
    float sum = 0;
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      if ((k * kThreads + tid) * 8 >= vocab) continue;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        v[k][j] = __expf(v[k][j] - m);
        sum += v[k][j];
      }
    }
    const float m_own = m;
    float bm = m, bs = sum;
    int barg = arg;
    for (int o = 16; o > 0; o >>= 1) {
      const float om = __shfl_xor_sync(0xffffffffu, bm, o);
      const float os = __shfl_xor_sync(0xffffffffu, bs, o);
      const int oi = __shfl_xor_sync(0xffffffffu, barg, o);
      softmax_merge(bm, bs, barg, om, os, oi);
    }
    const int buf = static_cast<int>((r - r0) & 1);
    if (lane == 0) {
      s_max[buf][warp] = bm;
      s_sum[buf][warp] = bs;
      s_arg[buf][warp] = barg;
    }
    __syncthreads();
    float zmax = s_max[buf][0], total = s_sum[buf][0];
    int argmax = s_arg[buf][0];
    for (int w = 1; w < kWarps; ++w) {
      softmax_merge(zmax, total, argmax, s_max[buf][w], s_sum[buf][w], s_arg[buf][w]);
    }
    const int tv = target / 8;
    if (tv % kThreads == tid) {
      row_loss[r] = zmax + logf(total) - zt;
      row_hit[r] = argmax == target ? 1.0f : 0.0f;
    }
    if (dlogits == nullptr) continue;
    const float g = grad_scale * (mask ? mask[r] : 1.0f);
    // exp(z - zmax) / total = exp(z - m_own) * exp(m_own - zmax) / total.
    const float scale = m_own == -INFINITY ? 0.0f : __expf(m_own - zmax) * (g / total);
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int c0 = (k * kThreads + tid) * 8;
      if (c0 >= vocab) continue;
      float out[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float x = v[k][j] * scale;
        if (c0 + j == target) x -= g;
        out[j] = round_bf16(x);
        if (sums) s_col[(k * 8 + j) * kThreads + tid] += out[j];
      }
      store_bf16<8>(dlogits + r * vocab + c0, out);
    }
  }
  if (!sums) return;
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int c0 = (k * kThreads + tid) * 8;
    if (c0 >= vocab) continue;
    float* dst = bias_partial + blockIdx.x * static_cast<int64_t>(vocab) + c0;
    for (int j = 0; j < 8; ++j) dst[j] = s_col[(k * 8 + j) * kThreads + tid];
  }
}

// nn::cross_entropy for any vocabulary, one block per row over bf16 logits (+ bias, rounded
// as above, when set): per-row loss and top-1 hit (first maximum, as the CPU), and when
// dlogits is set grad_scale * w * (softmax - onehot) in bf16.
template <int kThreads>
__global__ void cross_entropy(const bfloat* logits, const float* bias, const int32_t* targets,
                              const float* mask, bfloat* dlogits, float* row_loss, float* row_hit,
                              int vocab, float grad_scale) {
  const int64_t r = blockIdx.x;
  const bfloat* z = logits + r * vocab;
  auto logit = [&](int i) {
    const float x = __bfloat162float(z[i]);
    return bias != nullptr ? round_bf16(x + bias[i]) : x;
  };
  __shared__ float s_val[kThreads];
  __shared__ int s_idx[kThreads];
  float best = -INFINITY;
  int arg = vocab;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const float v = logit(i);
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
      if (first_max_wins(ov, oi, s_val[threadIdx.x], s_idx[threadIdx.x])) {
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
  for (int i = threadIdx.x; i < vocab; i += kThreads) sum += __expf(logit(i) - zmax);
  s_val[threadIdx.x] = sum;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) s_val[threadIdx.x] += s_val[threadIdx.x + s];
    __syncthreads();
  }
  const float total = s_val[0];
  const int target = targets[r];
  if (threadIdx.x == 0) {
    row_loss[r] = zmax + logf(total) - logit(target);
    row_hit[r] = argmax == target ? 1.0f : 0.0f;
  }
  if (dlogits != nullptr) {
    const float g = grad_scale * (mask ? mask[r] : 1.0f);
    const float k = g / total;
    bfloat* dz = dlogits + r * vocab;
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      float v = __expf(logit(i) - zmax) * k;
      if (i == target) v -= g;
      dz[i] = __float2bfloat16(v);
    }
  }
}

// Column sums of a (rows, cols) bf16 or fp32 matrix, partial[chunk][c] = sum over the chunk's
// rows; for the tensors no producing kernel sums on the way (the generic cross-entropy path,
// the MoE router's aux-loss statistics and the per-expert fc2 bias gradients).
template <typename T>
__global__ void column_partial(const T* a, int64_t rows, int cols, int64_t rows_per_chunk,
                               float* partial) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const int64_t r0 = blockIdx.y * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  float acc = 0;
  for (int64_t r = r0; r < r1; ++r) acc += static_cast<float>(a[r * cols + c]);
  partial[blockIdx.y * static_cast<int64_t>(cols) + c] = acc;
}

// out[c] += sum over chunks of partial[chunk][c]. Block (32, 32): 32 columns; row lane y adds
// the chunks y, y + 32, ... and the 32 lanes are added in a fixed order (deterministic, and
// 32 times shorter dependent chains than one thread per column).
__global__ void __launch_bounds__(1024)
    column_finish(const float* partial, int chunks, int cols, float* out) {
  __shared__ float s[32][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  float acc = 0;
  if (c < cols) {
    for (int k = threadIdx.y; k < chunks; k += 32)
      acc += partial[k * static_cast<int64_t>(cols) + c];
  }
  s[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  float total = 0;
  for (int y = 0; y < 32; ++y) total += s[y][threadIdx.x];
  out[c] += total;
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

// Sums n doubles per lane of a 1024-thread block in a fixed order; thread 0 gets the total.
template <int kN>
__device__ inline void block_sum_1024(double (&v)[kN]) {
  __shared__ double s[kN][1024];
#pragma unroll
  for (int j = 0; j < kN; ++j) s[j][threadIdx.x] = v[j];
  __syncthreads();
  for (int k = 512; k > 0; k >>= 1) {
    if (threadIdx.x < k) {
#pragma unroll
      for (int j = 0; j < kN; ++j) s[j][threadIdx.x] += s[j][threadIdx.x + k];
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < kN; ++j) v[j] = s[j][0];
}

// One block of 1024 threads: the gradient norm from sum_squares' partials into norm[0] and
// clip_grad_norm's factor (train.hpp: max_norm / (norm + 1e-6) above the limit) into clip[0],
// so the AdamW kernel can follow at once without the host reading the norm first.
__global__ void __launch_bounds__(1024)
    grad_norm_clip(const double* partial, int n, double max_norm, double* norm, float* clip) {
  double v[1] = {0.0};
  for (int i = threadIdx.x; i < n; i += 1024) v[0] += partial[i];
  block_sum_1024<1>(v);
  if (threadIdx.x != 0) return;
  const double total = sqrt(v[0]);
  norm[0] = total;
  clip[0] = max_norm > 0 && total > max_norm ? static_cast<float>(max_norm / (total + 1e-6)) : 1.0f;
}

// One block of 1024 threads: the loss-weighted sums of the per-row losses and hits (rows of
// weight 0 skipped, as their loss may not be finite), so forward() copies back three doubles
// instead of two per-row arrays: out = (sum w loss, sum w, sum w hit).
__global__ void __launch_bounds__(1024) loss_sums(const float* row_loss, const float* row_hit,
                                                  const float* mask, int64_t rows, double* out) {
  double v[3] = {0.0, 0.0, 0.0};
  for (int64_t r = threadIdx.x; r < rows; r += 1024) {
    const double w = mask != nullptr ? static_cast<double>(mask[r]) : 1.0;
    if (w == 0.0) continue;
    v[0] += w * row_loss[r];
    v[1] += w;
    v[2] += w * row_hit[r];
  }
  block_sum_1024<3>(v);
  if (threadIdx.x != 0) return;
  for (int j = 0; j < 3; ++j) out[j] = v[j];
}

// sqa::AdamW::step after clip_grad_norm's scaling of g (the factor from grad_norm_clip), plus
// the bf16 copy of the new weights.
__global__ void adamw(float* w, float* g, float* m, float* v, bfloat* w_bf, int64_t n,
                      const float* clip, float b1, float b2, float decay, float step_size,
                      float inv_sqrt_bc2, float eps) {
  const float clip_scale = *clip;
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
