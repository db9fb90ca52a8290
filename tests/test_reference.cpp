// Validates the oracle itself: the float64 reference backward must match central finite
// differences of the float64 reference forward, for every head layout family and mask.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "attention_harness.hpp"
#include "sqa/attention.hpp"

namespace sqa {
namespace {

struct FdCase {
  HeadLayout heads;
  Window window;
  int head_dim;
  int64_t seqlen_q, seqlen_k;
  bool varlen;
};

// L = sum(dO * O) for the reference forward at the current inputs.
double loss(testing::CaseBuffers& cb) {
  cpu::attention_forward_reference(cb.params(true));
  double l = 0;
  for (int64_t i = 0; i < cb.out64.size(); ++i) l += cb.dout64.get(i) * cb.out64.get(i);
  return l;
}

// Checks every element of q, k and v: dL/dx by central differences against the backward.
void check_gradients(const FdCase& f, uint64_t seed) {
  testing::HarnessCase hc;
  hc.spec.heads = f.heads;
  hc.spec.head_dim = f.head_dim;
  hc.spec.window = f.window;
  hc.dtype = DType::f64;
  hc.seed = seed;
  hc.q_gain = 2.0;
  if (f.varlen) {
    hc.varlen = true;
    hc.batch = 2;
    hc.lengths_q = {static_cast<int32_t>(f.seqlen_q), static_cast<int32_t>(f.seqlen_q - 1)};
    hc.lengths_k = {static_cast<int32_t>(f.seqlen_k), static_cast<int32_t>(f.seqlen_k + 1)};
    hc.seqlen_q = f.seqlen_q;
    hc.seqlen_k = f.seqlen_k + 1;
  } else {
    hc.batch = 2;
    hc.seqlen_q = f.seqlen_q;
    hc.seqlen_k = f.seqlen_k;
  }
  testing::CaseBuffers cb(hc);
  cpu::attention_forward_reference(cb.params(true));
  cpu::attention_backward_reference(cb.backward_params(true));
  const double eps = 1e-5;
  struct Pair {
    const char* name;
    testing::HostTensor* x;
    testing::HostTensor* grad;
  };
  for (Pair p :
       {Pair{"q", &cb.q64, &cb.dq64}, Pair{"k", &cb.k64, &cb.dk64}, Pair{"v", &cb.v64, &cb.dv64}}) {
    double max_err = 0, max_grad = 0;
    for (int64_t i = 0; i < p.x->size(); ++i) {
      const double x0 = p.x->get(i);
      p.x->set(i, x0 + eps);
      const double up = loss(cb);
      p.x->set(i, x0 - eps);
      const double down = loss(cb);
      p.x->set(i, x0);
      const double fd = (up - down) / (2 * eps);
      // Padding elements are not part of the tensor: their fd is 0 and the backward leaves the
      // buffer as allocated (zero), so they compare equal too.
      max_err = std::max(max_err, std::abs(fd - p.grad->get(i)));
      max_grad = std::max(max_grad, std::abs(fd));
    }
    EXPECT_GT(max_grad, 1e-3) << p.name << ": gradient vanished, the check would be vacuous";
    EXPECT_LT(max_err, 1e-6 * std::max(1.0, max_grad))
        << p.name << " " << hc.describe() << ": max |fd - backward| = " << max_err;
  }
}

TEST(ReferenceGradients, MatchFiniteDifferences) {
  const std::vector<FdCase> cases = {
      {{2, 2}, Window::none(), 4, 5, 5, false},      // MHA
      {{4, 2}, Window::causal(), 3, 6, 4, false},    // GQA, N_q > N_k: rows without keys
      {{2, 1}, Window::sliding(2), 5, 4, 7, false},  // MQA, window, N_q < N_k
      {{1, 3}, Window::none(), 4, 3, 5, false},      // rSQA: dQ reduced over the repeats
      {{2, 4}, Window{1, 2}, 3, 5, 5, true},         // rSQA, (left, right), varlen
      {{3, 1}, Window{-1, 1}, 2, 1, 6, true},        // decode row, varlen
  };
  uint64_t seed = 17;
  for (const FdCase& f : cases) check_gradients(f, seed++);
}

// The reference forward against a direct softmax of one tiny case computed here by hand, so a
// shared mistake between reference forward and backward (e.g. the head mapping) cannot hide.
TEST(ReferenceForward, MatchesDirectSoftmaxWithHeadPairs) {
  testing::HarnessCase hc;
  hc.spec.heads = {2, 4};  // rSQA: attention head h reads query head h % 2 and KV head h
  hc.spec.head_dim = 3;
  hc.spec.window = Window::causal();
  hc.dtype = DType::f64;
  hc.batch = 1;
  hc.seqlen_q = 3;
  hc.seqlen_k = 4;
  hc.seed = 5;
  testing::CaseBuffers cb(hc);
  cpu::attention_forward_reference(cb.params(true));
  const double scale = hc.spec.scale();  // the spec holds the scale in fp32
  for (int h = 0; h < 4; ++h) {
    const int qh = h % 2, kh = h;
    for (int i = 0; i < 3; ++i) {
      const int last = i + 1;  // bottom-right causal: row i sees keys 0..i+1
      std::vector<double> w;
      double mx = -1e300;
      for (int j = 0; j <= last; ++j) {
        double s = 0;
        for (int c = 0; c < 3; ++c)
          s += cb.q64.get(i * cb.q_st.row + qh * cb.q_st.head + c) *
               cb.k64.get(j * cb.kv_st.row + kh * cb.kv_st.head + c);
        w.push_back(s * scale);
        mx = std::max(mx, w.back());
      }
      double sum = 0;
      for (double& x : w) sum += (x = std::exp(x - mx));
      for (int c = 0; c < 3; ++c) {
        double o = 0;
        for (int j = 0; j <= last; ++j)
          o += w[static_cast<size_t>(j)] / sum *
               cb.v64.get(j * cb.kv_st.row + kh * cb.kv_st.head + c);
        EXPECT_NEAR(cb.out64.get(i * cb.out_st.row + h * cb.out_st.head + c), o, 1e-12)
            << "head " << h << " row " << i;
      }
      EXPECT_NEAR(cb.lse_ref[static_cast<size_t>(h * 3 + i)], mx + std::log(sum), 1e-5);
    }
  }
}

}  // namespace
}  // namespace sqa
