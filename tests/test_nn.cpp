// Per-layer forward/backward checks of src/nn in double precision against central finite
// differences, and float against double. Each check uses the scalar loss L = sum(out * R) with
// a fixed random R, so dL/dout = R.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "sqa/nn.hpp"

namespace {

using Vec = std::vector<double>;

Vec random_vec(std::mt19937_64& rng, size_t n, double scale = 1.0) {
  std::normal_distribution<double> dist(0.0, scale);
  Vec v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Relative error ||analytic - numeric|| / ||numeric|| of dL/dx over every element of x, where
// loss() re-runs the forward.
double fd_error(Vec& x, const Vec& analytic, const std::function<double()>& loss) {
  const double eps = 1e-6;
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + eps;
    const double lp = loss();
    x[i] = keep - eps;
    const double lm = loss();
    x[i] = keep;
    const double g = (lp - lm) / (2 * eps);
    num += (analytic[i] - g) * (analytic[i] - g);
    den += g * g;
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

constexpr double kTol = 1e-7;

TEST(NnGrad, Linear) {
  std::mt19937_64 rng(1);
  for (auto [rows, in, out] : {std::tuple{3, 5, 4}, std::tuple{7, 2, 9}, std::tuple{1, 16, 3}}) {
    Vec x = random_vec(rng, rows * in), w = random_vec(rng, out * in), b = random_vec(rng, out);
    const Vec R = random_vec(rng, rows * out);
    Vec y(rows * out, NAN);
    auto loss = [&] {
      sqa::nn::linear_forward(y.data(), x.data(), w.data(), b.data(), rows, in, out);
      return dot(y, R);
    };
    loss();
    Vec dx(rows * in, NAN), dw(out * in, 0.0), db(out, 0.0);
    sqa::nn::linear_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), rows,
                             in, out, false);
    EXPECT_LT(fd_error(x, dx, loss), kTol);
    EXPECT_LT(fd_error(w, dw, loss), kTol);
    EXPECT_LT(fd_error(b, db, loss), kTol);
  }
}

TEST(NnGrad, RmsNorm) {
  std::mt19937_64 rng(2);
  for (auto [rows, dim] : {std::pair{4, 7}, std::pair{2, 32}}) {
    Vec x = random_vec(rng, rows * dim), w = random_vec(rng, dim);
    const Vec R = random_vec(rng, rows * dim);
    Vec y(rows * dim, NAN), rstd(rows, NAN);
    auto loss = [&] {
      sqa::nn::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), rows, dim, 1e-6);
      return dot(y, R);
    };
    loss();
    Vec dx(rows * dim, 0.0), dw(dim, 0.0);
    sqa::nn::rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), rows,
                              dim);
    EXPECT_LT(fd_error(x, dx, loss), kTol);
    EXPECT_LT(fd_error(w, dw, loss), kTol);
  }
}

TEST(NnGrad, RopeIsARotationAndItsInverseIsTheBackward) {
  std::mt19937_64 rng(3);
  const int B = 2, T = 5, H = 3, D = 8;
  Vec x = random_vec(rng, B * T * H * D);
  const Vec R = random_vec(rng, x.size());
  Vec y;
  auto loss = [&] {
    y = x;
    sqa::nn::rope_apply(y.data(), B, T, H, D, 10000.0, 3, false);
    return dot(y, R);
  };
  loss();
  // Norm preserved per pair.
  EXPECT_NEAR(dot(y, y), dot(x, x), 1e-9 * dot(x, x));
  Vec dx = R;
  sqa::nn::rope_apply(dx.data(), B, T, H, D, 10000.0, 3, true);
  EXPECT_LT(fd_error(x, dx, loss), kTol);
  // Position 0 is the identity; position 1, pair 0 rotates by exactly 1 radian.
  Vec one(2 * D, 0.0);
  for (int i = 0; i < 2 * D; ++i) one[i] = i + 1.0;
  Vec r = one;
  sqa::nn::rope_apply(r.data(), 1, 2, 1, D, 10000.0, 0, false);
  for (int i = 0; i < D; ++i) EXPECT_DOUBLE_EQ(r[i], one[i]);
  EXPECT_NEAR(r[D], one[D] * std::cos(1.0) - one[D + 1] * std::sin(1.0), 1e-12);
  EXPECT_NEAR(r[D + 1], one[D] * std::sin(1.0) + one[D + 1] * std::cos(1.0), 1e-12);
}

TEST(NnGrad, SwiGluAndGelu) {
  std::mt19937_64 rng(4);
  const int rows = 3, ff = 6;
  Vec h = random_vec(rng, rows * 2 * ff, 2.0);
  const Vec R = random_vec(rng, rows * ff);
  Vec y(rows * ff, NAN);
  auto loss = [&] {
    sqa::nn::swiglu_forward(y.data(), h.data(), rows, ff);
    return dot(y, R);
  };
  loss();
  // value * silu(gate) with value = h[:, :ff], gate = h[:, ff:] (torch.chunk order).
  EXPECT_NEAR(y[0], h[0] * h[ff] / (1 + std::exp(-h[ff])), 1e-12);
  Vec dh(h.size(), NAN);
  sqa::nn::swiglu_backward(dh.data(), R.data(), h.data(), rows, ff);
  EXPECT_LT(fd_error(h, dh, loss), kTol);

  Vec x = random_vec(rng, 20, 2.0);
  const Vec R2 = random_vec(rng, 20);
  Vec g(20, NAN);
  auto loss2 = [&] {
    sqa::nn::gelu_forward(g.data(), x.data(), 20);
    return dot(g, R2);
  };
  loss2();
  EXPECT_NEAR(g[0], 0.5 * x[0] * (1 + std::erf(x[0] / std::sqrt(2.0))), 1e-12);
  Vec dx(20, NAN);
  sqa::nn::gelu_backward(dx.data(), R2.data(), x.data(), 20);
  EXPECT_LT(fd_error(x, dx, loss2), kTol);
}

TEST(NnGrad, CrossEntropyWithMask) {
  std::mt19937_64 rng(5);
  const int rows = 6, vocab = 9;
  Vec z = random_vec(rng, rows * vocab, 3.0);
  std::vector<int32_t> t(rows);
  for (auto& v : t) v = static_cast<int32_t>(rng() % vocab);
  std::vector<float> mask = {1, 0, 1, 0.5f, 1, 0};
  auto loss = [&] {
    return sqa::nn::cross_entropy<double>(nullptr, z.data(), t.data(), mask.data(), rows, vocab,
                                          0.0)
        .loss_sum;
  };
  Vec dz(z.size(), NAN);
  const auto r =
      sqa::nn::cross_entropy(dz.data(), z.data(), t.data(), mask.data(), rows, vocab, 1.0);
  EXPECT_DOUBLE_EQ(r.weight_sum, 3.5);
  EXPECT_LT(fd_error(z, dz, loss), kTol);
  // Masked rows get exactly zero gradient.
  for (int i = 0; i < vocab; ++i) EXPECT_EQ(dz[1 * vocab + i], 0.0);
}

TEST(NnDropout, KeepRateScaleAndDeterminism) {
  const int n = 200000;
  std::vector<float> x(n, 1.0f), y(n, 1.0f);
  sqa::nn::dropout_apply(x.data(), n, 0.1, 42);
  sqa::nn::dropout_apply(y.data(), n, 0.1, 42);
  EXPECT_EQ(x, y);
  int kept = 0;
  for (float v : x) {
    if (v != 0.0f) {
      ++kept;
      EXPECT_FLOAT_EQ(v, 1.0f / 0.9f);
    }
  }
  EXPECT_NEAR(kept / static_cast<double>(n), 0.9, 0.005);
  std::vector<float> z(n, 1.0f);
  sqa::nn::dropout_apply(z.data(), n, 0.1, 43);
  EXPECT_NE(x, z);
}

TEST(NnFloat, FloatMatchesDouble) {
  std::mt19937_64 rng(6);
  const int rows = 33, in = 40, out = 24;
  Vec x = random_vec(rng, rows * in), w = random_vec(rng, out * in), b = random_vec(rng, out);
  Vec y(rows * out);
  sqa::nn::linear_forward(y.data(), x.data(), w.data(), b.data(), rows, in, out);
  std::vector<float> xf(x.begin(), x.end()), wf(w.begin(), w.end()), bf(b.begin(), b.end());
  std::vector<float> yf(rows * out, NAN);
  sqa::nn::linear_forward(yf.data(), xf.data(), wf.data(), bf.data(), rows, in, out);
  double num = 0, den = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    num += (yf[i] - y[i]) * (yf[i] - y[i]);
    den += y[i] * y[i];
  }
  EXPECT_LT(std::sqrt(num / den), 1e-6);
}

}  // namespace
