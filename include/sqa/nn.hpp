// CPU layer kernels of the transformer, forward and backward, in precision Real (float for
// training, double for gradient checks). Row-major tensors; shapes in the comments use
// rows = tokens. Backward functions ACCUMULATE into parameter gradients (dweight, dbias) and,
// where noted, into input gradients, so residual branches and gradient accumulation compose.
// The layer code knows nothing about devices or the training loop: a GPU port replaces these
// functions one by one.
#pragma once

#include <cstdint>

namespace sqa::nn {

// Matrix product through BLAS (sgemm/dgemm), row-major:
//   C (M, N) = alpha * op(A) op(B) + beta * C, op = transpose when trans_* is true.
template <typename Real>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, Real alpha, const Real* A,
          const Real* B, Real beta, Real* C);

// Linear layer in PyTorch layout: out (rows, out_dim) = in (rows, in_dim) W^T + b,
// W (out_dim, in_dim), b (out_dim) or null.
template <typename Real>
void linear_forward(Real* out, const Real* in, const Real* weight, const Real* bias, int64_t rows,
                    int64_t in_dim, int64_t out_dim);
// din (rows, in_dim): overwritten when accumulate_din is false, else added to; may be null.
// dweight += dout^T in; dbias += column sums of dout (dbias may be null).
template <typename Real>
void linear_backward(Real* din, Real* dweight, Real* dbias, const Real* dout, const Real* in,
                     const Real* weight, int64_t rows, int64_t in_dim, int64_t out_dim,
                     bool accumulate_din);

// RMSNorm with weight only: out = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps).
template <typename Real>
void rmsnorm_forward(Real* out, Real* rstd, const Real* in, const Real* weight, int64_t rows,
                     int64_t dim, double eps);
// din += d/dx, dweight += d/dw.
template <typename Real>
void rmsnorm_backward(Real* din, Real* dweight, const Real* dout, const Real* in,
                      const Real* weight, const Real* rstd, int64_t rows, int64_t dim);

// RoPE on x (batch, seqlen, heads, head_dim), in place. Adjacent channel pairs (2i, 2i+1)
// rotate by angle pos * theta^(-2i / head_dim), pos = position_offset + t.
// `inverse` rotates by the negative angle, which is the backward (a rotation is orthogonal).
template <typename Real>
void rope_apply(Real* x, int64_t batch, int64_t seqlen, int64_t heads, int64_t head_dim,
                double theta, int64_t position_offset, bool inverse);

// SwiGLU: h (rows, 2 ff) = [value | gate], out (rows, ff) = value * SiLU(gate).
template <typename Real>
void swiglu_forward(Real* out, const Real* h, int64_t rows, int64_t ff);
// dh (rows, 2 ff) overwritten.
template <typename Real>
void swiglu_backward(Real* dh, const Real* dout, const Real* h, int64_t rows, int64_t ff);

// GELU (exact, erf form as PyTorch's default), elementwise over n values.
template <typename Real>
void gelu_forward(Real* out, const Real* in, int64_t n);
template <typename Real>
void gelu_backward(Real* din, const Real* dout, const Real* in, int64_t n);  // din overwritten

// Inverted dropout: x[i] *= keep(i) / (1 - p). The keep decision is a pure function of
// (seed, i), a counter-based hash, so masks need no storage and no RNG state, are identical
// for forward and backward, and are independent of threading.
bool dropout_keep(uint64_t seed, uint64_t index, double p);
template <typename Real>
void dropout_apply(Real* x, int64_t n, double p, uint64_t seed);  // forward and backward

// Softmax cross-entropy over rows of logits (rows, vocab), weighted by mask (null = 1).
// Returns the sum of weight * -log p(target), the sum of weights and of weighted top-1 hits.
// When dlogits is non-null it receives grad_scale * weight * (softmax - onehot) per row.
struct CrossEntropyResult {
  double loss_sum = 0, weight_sum = 0, correct = 0;
};
template <typename Real>
CrossEntropyResult cross_entropy(Real* dlogits, const Real* logits, const int32_t* targets,
                                 const float* mask, int64_t rows, int64_t vocab, double grad_scale);

// 64-bit mixing hash (splitmix64 finaliser), used for counter-based randomness.
uint64_t mix64(uint64_t x);

}  // namespace sqa::nn
