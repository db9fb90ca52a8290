// CPU layer kernels (see include/sqa/nn.hpp). Matmuls go to OpenBLAS; the elementwise parts
// are OpenMP loops over rows.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "sqa/nn.hpp"

namespace sqa::nn {

uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

namespace {

void blas_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(M), static_cast<blasint>(N), static_cast<blasint>(K), alpha, A,
              static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
              static_cast<blasint>(ldc));
}
void blas_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
               int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(M), static_cast<blasint>(N), static_cast<blasint>(K), alpha, A,
              static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
              static_cast<blasint>(ldc));
}

// OpenBLAS (pthreads build) and OpenMP each keep their own worker threads; mixed, OpenMP's
// workers spin while OpenBLAS's run and the two fight over the cores (80% of the time went to
// libgomp spinning on a 2-core machine). So the model runs OpenBLAS single-threaded and splits
// each product over the OpenMP threads itself: every thread owns a block of rows (or columns)
// of C. The split depends only on the thread count, so results are reproducible.
void single_threaded_blas() {
  // Checked on every product (a cheap getter) so that a caller may raise the count for its own
  // measurement (e.g. the trainer's closing sgemm ceiling) in between.
  if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
}

}  // namespace

template <typename Real>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, Real alpha, const Real* A,
          const Real* B, Real beta, Real* C) {
  if (M == 0 || N == 0) return;
  single_threaded_blas();
  const int64_t lda = ta ? M : K, ldb = tb ? K : N;
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  // Small products are not worth a parallel region.
  if (threads == 1 || static_cast<double>(M) * N * K < 3.0e5) {
    blas_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, N);
    return;
  }
  const bool split_rows = M >= N || M >= 64 * threads;
  const int64_t extent = split_rows ? M : N;
  // Blocks in multiples of 16 rows/columns keep the BLAS micro-kernels on full tiles.
  const int64_t unit = 16;
  const int64_t units = (extent + unit - 1) / unit;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t b0 = std::min(extent, units * t / nt * unit);
    const int64_t b1 = std::min(extent, units * (t + 1) / nt * unit);
    if (b1 > b0) {
      if (split_rows) {
        const Real* a = ta ? A + b0 : A + b0 * K;
        blas_gemm(ta, tb, b1 - b0, N, K, alpha, a, lda, B, ldb, beta, C + b0 * N, N);
      } else {
        const Real* b = tb ? B + b0 * K : B + b0;
        blas_gemm(ta, tb, M, b1 - b0, K, alpha, A, lda, b, ldb, beta, C + b0, N);
      }
    }
  }
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, const float*,
                          float, float*);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*,
                           const double*, double, double*);

// out[c] += sum_r a[r, c] (* b[r, c] * scale[r] when b is given): the bias and norm-weight
// gradients. Threads own blocks of columns and walk the rows in order, so the summation order
// is fixed (reproducible) and the reads are contiguous.
template <typename Real>
void column_sums_add(Real* out, const Real* a, const Real* b, const Real* scale, int64_t rows,
                     int64_t cols) {
  constexpr int64_t kBlock = 64;
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * kBlock, c1 = std::min(cols, c0 + kBlock);
    Real acc[kBlock] = {};
    for (int64_t r = 0; r < rows; ++r) {
      const Real* ar = a + r * cols;
      if (b) {
        const Real* br = b + r * cols;
        const Real sr = scale[r];
        for (int64_t c = c0; c < c1; ++c) acc[c - c0] += ar[c] * br[c] * sr;
      } else {
        for (int64_t c = c0; c < c1; ++c) acc[c - c0] += ar[c];
      }
    }
    for (int64_t c = c0; c < c1; ++c) out[c] += acc[c - c0];
  }
}

template <typename Real>
void linear_forward(Real* out, const Real* in, const Real* weight, const Real* bias, int64_t rows,
                    int64_t in_dim, int64_t out_dim) {
  if (rows == 0) return;
  if (bias) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) std::copy(bias, bias + out_dim, out + r * out_dim);
  }
  gemm<Real>(false, true, rows, out_dim, in_dim, Real(1), in, weight, bias ? Real(1) : Real(0),
             out);
}

template <typename Real>
void linear_backward(Real* din, Real* dweight, Real* dbias, const Real* dout, const Real* in,
                     const Real* weight, int64_t rows, int64_t in_dim, int64_t out_dim,
                     bool accumulate_din) {
  if (rows == 0) return;
  // dW (out, in) += dout^T (out, rows) . in (rows, in)
  gemm<Real>(true, false, out_dim, in_dim, rows, Real(1), dout, in, Real(1), dweight);
  if (dbias) column_sums_add<Real>(dbias, dout, nullptr, nullptr, rows, out_dim);
  // din (rows, in) = dout (rows, out) . W (out, in)
  if (din) {
    gemm<Real>(false, false, rows, in_dim, out_dim, Real(1), dout, weight,
               accumulate_din ? Real(1) : Real(0), din);
  }
}

template <typename Real>
void rmsnorm_forward(Real* out, Real* rstd, const Real* in, const Real* weight, int64_t rows,
                     int64_t dim, double eps) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const Real* x = in + r * dim;
    Real* y = out + r * dim;
    Real ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += x[i] * x[i];
    const Real s = Real(1) / std::sqrt(ss / static_cast<Real>(dim) + static_cast<Real>(eps));
    rstd[r] = s;
    for (int64_t i = 0; i < dim; ++i) y[i] = x[i] * s * weight[i];
  }
}

template <typename Real>
void rmsnorm_backward(Real* din, Real* dweight, const Real* dout, const Real* in,
                      const Real* weight, const Real* rstd, int64_t rows, int64_t dim) {
  // y_i = w_i x_i s, s = (mean x^2 + eps)^(-1/2):
  //   dx_i = s g_i - s^3 x_i (sum_j g_j x_j) / D, with g = w * dy.
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const Real* x = in + r * dim;
    const Real* dy = dout + r * dim;
    Real* dx = din + r * dim;
    const Real s = rstd[r];
    Real dot = 0;
    for (int64_t i = 0; i < dim; ++i) dot += weight[i] * dy[i] * x[i];
    const Real c = s * s * s * dot / static_cast<Real>(dim);
    for (int64_t i = 0; i < dim; ++i) dx[i] += s * weight[i] * dy[i] - c * x[i];
  }
  column_sums_add(dweight, dout, in, rstd, rows, dim);
}

template <typename Real>
void rope_apply(Real* x, int64_t batch, int64_t seqlen, int64_t heads, int64_t head_dim,
                double theta, int64_t position_offset, bool inverse) {
  const int64_t half = head_dim / 2;
  // Angles in double: positions up to ~1e5 times frequencies lose float precision otherwise.
  std::vector<Real> cos_t(static_cast<size_t>(seqlen * half)), sin_t(cos_t.size());
  for (int64_t t = 0; t < seqlen; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const double freq = std::pow(theta, -2.0 * static_cast<double>(i) / head_dim);
      const double a = static_cast<double>(position_offset + t) * freq;
      cos_t[static_cast<size_t>(t * half + i)] = static_cast<Real>(std::cos(a));
      sin_t[static_cast<size_t>(t * half + i)] =
          static_cast<Real>(inverse ? -std::sin(a) : std::sin(a));
    }
  }
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < batch * seqlen; ++bt) {
    const int64_t t = bt % seqlen;
    const Real* c = cos_t.data() + t * half;
    const Real* s = sin_t.data() + t * half;
    for (int64_t h = 0; h < heads; ++h) {
      Real* v = x + (bt * heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const Real x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = x0 * c[i] - x1 * s[i];
        v[2 * i + 1] = x0 * s[i] + x1 * c[i];
      }
    }
  }
}

template <typename Real>
void swiglu_forward(Real* out, const Real* h, int64_t rows, int64_t ff) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const Real* value = h + r * 2 * ff;
    const Real* gate = value + ff;
    Real* y = out + r * ff;
    for (int64_t i = 0; i < ff; ++i) {
      const Real g = gate[i];
      y[i] = value[i] * g / (Real(1) + std::exp(-g));
    }
  }
}

template <typename Real>
void swiglu_backward(Real* dh, const Real* dout, const Real* h, int64_t rows, int64_t ff) {
  // SiLU'(g) = sigma(g) (1 + g (1 - sigma(g))).
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const Real* value = h + r * 2 * ff;
    const Real* gate = value + ff;
    const Real* dy = dout + r * ff;
    Real* dvalue = dh + r * 2 * ff;
    Real* dgate = dvalue + ff;
    for (int64_t i = 0; i < ff; ++i) {
      const Real g = gate[i];
      const Real sig = Real(1) / (Real(1) + std::exp(-g));
      dvalue[i] = dy[i] * g * sig;
      dgate[i] = dy[i] * value[i] * sig * (Real(1) + g * (Real(1) - sig));
    }
  }
}

template <typename Real>
void gelu_forward(Real* out, const Real* in, int64_t n) {
  const Real inv_sqrt2 = static_cast<Real>(0.70710678118654752440);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    out[i] = Real(0.5) * in[i] * (Real(1) + std::erf(in[i] * inv_sqrt2));
  }
}

template <typename Real>
void gelu_backward(Real* din, const Real* dout, const Real* in, int64_t n) {
  // d/dx x Phi(x) = Phi(x) + x phi(x).
  const Real inv_sqrt2 = static_cast<Real>(0.70710678118654752440);
  const Real inv_sqrt2pi = static_cast<Real>(0.39894228040143267794);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const Real x = in[i];
    const Real cdf = Real(0.5) * (Real(1) + std::erf(x * inv_sqrt2));
    const Real pdf = inv_sqrt2pi * std::exp(Real(-0.5) * x * x);
    din[i] = dout[i] * (cdf + x * pdf);
  }
}

bool dropout_keep(uint64_t seed, uint64_t index, double p) {
  const uint64_t r = mix64(seed ^ mix64(index));
  // Top 53 bits as a uniform double in [0, 1).
  const double u = static_cast<double>(r >> 11) * 0x1.0p-53;
  return u >= p;
}

template <typename Real>
void dropout_apply(Real* x, int64_t n, double p, uint64_t seed) {
  if (p <= 0) return;
  const Real scale = static_cast<Real>(1.0 / (1.0 - p));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    x[i] = dropout_keep(seed, static_cast<uint64_t>(i), p) ? x[i] * scale : Real(0);
  }
}

template <typename Real>
CrossEntropyResult cross_entropy(Real* dlogits, const Real* logits, const int32_t* targets,
                                 const float* mask, int64_t rows, int64_t vocab,
                                 double grad_scale) {
  // Per-row results summed serially afterwards: an OpenMP reduction combines the threads'
  // partial sums in arrival order, which would make the reported loss non-reproducible.
  std::vector<double> row_loss(static_cast<size_t>(rows), 0.0);
  std::vector<unsigned char> row_hit(static_cast<size_t>(rows), 0);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const Real* z = logits + r * vocab;
    const double w = mask ? static_cast<double>(mask[r]) : 1.0;
    const int32_t target = targets[r];
    Real zmax = -std::numeric_limits<Real>::infinity();
    int64_t argmax = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      if (z[i] > zmax) {
        zmax = z[i];
        argmax = i;
      }
    }
    // One exp per logit, in Real (expf for float): kept in dz when the gradient is wanted and
    // rescaled in place, so the softmax is computed once.
    Real* e = dlogits ? dlogits + r * vocab : nullptr;
    double sum = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      const Real x = std::exp(z[i] - zmax);
      if (e) e[i] = x;
      sum += static_cast<double>(x);
    }
    const double lse = static_cast<double>(zmax) + std::log(sum);
    row_loss[static_cast<size_t>(r)] = lse - static_cast<double>(z[target]);
    row_hit[static_cast<size_t>(r)] = argmax == target ? 1 : 0;
    if (e) {
      const double g = grad_scale * w;
      const Real k = static_cast<Real>(g / sum);
      for (int64_t i = 0; i < vocab; ++i) e[i] *= k;
      e[target] -= static_cast<Real>(g);
    }
  }
  CrossEntropyResult result;
  for (int64_t r = 0; r < rows; ++r) {
    const double w = mask ? static_cast<double>(mask[r]) : 1.0;
    if (w == 0.0) continue;
    result.loss_sum += w * row_loss[static_cast<size_t>(r)];
    result.weight_sum += w;
    if (row_hit[static_cast<size_t>(r)]) result.correct += w;
  }
  return result;
}

#define SQA_NN_INSTANTIATE(Real)                                                                  \
  template void linear_forward<Real>(Real*, const Real*, const Real*, const Real*, int64_t,       \
                                     int64_t, int64_t);                                           \
  template void linear_backward<Real>(Real*, Real*, Real*, const Real*, const Real*, const Real*, \
                                      int64_t, int64_t, int64_t, bool);                           \
  template void rmsnorm_forward<Real>(Real*, Real*, const Real*, const Real*, int64_t, int64_t,   \
                                      double);                                                    \
  template void rmsnorm_backward<Real>(Real*, Real*, const Real*, const Real*, const Real*,       \
                                       const Real*, int64_t, int64_t);                            \
  template void rope_apply<Real>(Real*, int64_t, int64_t, int64_t, int64_t, double, int64_t,      \
                                 bool);                                                           \
  template void swiglu_forward<Real>(Real*, const Real*, int64_t, int64_t);                       \
  template void swiglu_backward<Real>(Real*, const Real*, const Real*, int64_t, int64_t);         \
  template void gelu_forward<Real>(Real*, const Real*, int64_t);                                  \
  template void gelu_backward<Real>(Real*, const Real*, const Real*, int64_t);                    \
  template void dropout_apply<Real>(Real*, int64_t, double, uint64_t);                            \
  template CrossEntropyResult cross_entropy<Real>(Real*, const Real*, const int32_t*,             \
                                                  const float*, int64_t, int64_t, double);

SQA_NN_INSTANTIATE(float)
SQA_NN_INSTANTIATE(double)

}  // namespace sqa::nn
