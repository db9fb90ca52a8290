// The CPU fast path against the float64 reference through the op-level harness, on every SIMD
// path this CPU can run; finite-difference checks of the fast backward; the validation rules.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attention_harness.hpp"
#include "sqa/attention.hpp"
#include "sqa/error.hpp"

namespace sqa {
namespace {

// Forces a SIMD path for the scope of one test; restores the previous setting.
class ScopedSimd {
 public:
  explicit ScopedSimd(const char* path) {
    const char* old = std::getenv("SQA_CPU_SIMD");
    had_ = old != nullptr;
    if (had_) old_ = old;
    if (path) {
      setenv("SQA_CPU_SIMD", path, 1);
    } else {
      unsetenv("SQA_CPU_SIMD");
    }
  }
  ~ScopedSimd() {
    if (had_) {
      setenv("SQA_CPU_SIMD", old_.c_str(), 1);
    } else {
      unsetenv("SQA_CPU_SIMD");
    }
  }

 private:
  bool had_ = false;
  std::string old_;
};

bool cpu_has(const std::string& path) {
  if (path == "portable") return true;
  __builtin_cpu_init();
  if (path == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

class FastPath : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!cpu_has(GetParam())) GTEST_SKIP() << "this CPU cannot run " << GetParam();
  }
};

int sweep_size() {
  return testing::small_scale() ? 14 : 70;
}

TEST_P(FastPath, SelectedByEnvironment) {
  ScopedSimd simd(GetParam().c_str());
  EXPECT_EQ(std::string(cpu::simd_path()), GetParam());
}

TEST_P(FastPath, ForwardSweepMatchesReference) {
  ScopedSimd simd(GetParam().c_str());
  ASSERT_EQ(std::string(cpu::simd_path()), GetParam());
  const auto cases = testing::generate_cases({}, sweep_size(), 1001);
  ASSERT_EQ(static_cast<int>(cases.size()), sweep_size());
  for (const auto& c : cases) {
    const testing::CheckResult r =
        testing::check_forward(c, [](const AttentionParams& p) { cpu::attention_forward(p); });
    EXPECT_TRUE(r.ok) << r.message;
  }
}

TEST_P(FastPath, BackwardSweepMatchesReference) {
  ScopedSimd simd(GetParam().c_str());
  const auto cases = testing::generate_cases({}, sweep_size(), 2002);
  for (const auto& c : cases) {
    const testing::CheckResult r = testing::check_backward(
        c, [](const AttentionBackwardParams& g) { cpu::attention_backward(g); });
    EXPECT_TRUE(r.ok) << r.message;
  }
}

// Decode against a long cache takes the split-KV path (many key chunks combined by
// log-sum-exp); the random sweep's budget keeps N_k short, so cover it here explicitly.
TEST_P(FastPath, DecodeLongCacheSplitKv) {
  ScopedSimd simd(GetParam().c_str());
  for (Variant v : {Variant::mha, Variant::gqa, Variant::rsqa}) {
    for (DType t : {DType::f32, DType::bf16}) {
      testing::HarnessCase c;
      c.spec = make_spec(v, 4, 64, v == Variant::gqa ? Window::sliding(3000) : Window::none());
      c.dtype = t;
      c.batch = 1;
      c.seqlen_q = 1;
      c.seqlen_k = testing::small_scale() ? 4100 : 16411;
      c.seed = 77;
      const testing::CheckResult r =
          testing::check_forward(c, [](const AttentionParams& p) { cpu::attention_forward(p); });
      EXPECT_TRUE(r.ok) << r.message;
    }
  }
}

// Varlen decode: one or two query rows per sequence (and an empty one), windows, strided views.
TEST_P(FastPath, DecodeVarlenRowsAndWindows) {
  ScopedSimd simd(GetParam().c_str());
  for (Window w : {Window::causal(), Window{40, 1}, Window::none()}) {
    testing::HarnessCase c;
    c.spec = make_spec(Variant::sqa, 8, 40, w);
    c.dtype = w.is_none() ? DType::bf16 : DType::f32;
    c.varlen = true;
    c.batch = 4;
    c.lengths_q = {1, 2, 0, 2};
    c.lengths_k = {1500, 700, 9, 1};
    c.seqlen_q = 2;
    c.seqlen_k = 1500;
    c.padding = 3;
    c.seed = 12;
    const testing::CheckResult r =
        testing::check_forward(c, [](const AttentionParams& p) { cpu::attention_forward(p); });
    EXPECT_TRUE(r.ok) << r.message;
  }
}

// Decode with a large query-head group stacks the group's heads into one item's score columns
// (flash_plan.hpp, kStackMinGroup). Sweep G = 1..16 on both sides of that threshold, rSQA, a
// group wider than one score tile (cut into head chunks), both dtypes, windows, one and two
// query rows, and varlen.
TEST_P(FastPath, DecodeStackedGroups) {
  ScopedSimd simd(GetParam().c_str());
  const int64_t nk = testing::small_scale() ? 1500 : 5000;
  struct Layout {
    int hq, hkv;
  };
  const std::vector<Layout> layouts = {{1, 1},  {2, 1},  {3, 1},  {4, 1}, {8, 1}, {16, 1},
                                       {16, 2}, {24, 3}, {12, 1}, {2, 4}, {48, 1}};
  uint64_t seed = 300;
  for (const Layout& l : layouts) {
    for (int rows : {1, 2}) {
      testing::HarnessCase c;
      c.spec = make_spec(
          Variant::mha, l.hq, 32,
          rows == 2 ? Window::causal() : (l.hq % 3 == 0 ? Window{700, 0} : Window::none()));
      c.spec.heads = {l.hq, l.hkv};
      c.spec.num_baseline_heads = std::max(l.hq, l.hkv);
      c.dtype = (l.hq + rows) % 2 ? DType::bf16 : DType::f32;
      c.seqlen_q = rows;
      c.seqlen_k = nk;
      c.batch = 2;
      c.seed = ++seed;
      const testing::CheckResult r =
          testing::check_forward(c, [](const AttentionParams& p) { cpu::attention_forward(p); });
      EXPECT_TRUE(r.ok) << r.message;
    }
  }
  testing::HarnessCase c;
  c.spec = make_spec(Variant::mqa, 16, 64, Window{300, 0});
  c.varlen = true;
  c.batch = 3;
  c.lengths_q = {2, 1, 2};
  c.lengths_k = {900, 1, 40};
  c.seqlen_q = 2;
  c.seqlen_k = 900;
  c.padding = 5;
  c.seed = 31;
  const testing::CheckResult r =
      testing::check_forward(c, [](const AttentionParams& p) { cpu::attention_forward(p); });
  EXPECT_TRUE(r.ok) << r.message;
}

// Stacked decode against a long cache prefetches the next key tile while computing one and
// touches the pages of a tile further on (flash_kernels.hpp, forward_item): cover slices long
// enough for both, odd cache lengths (a partial last tile), one and several KV heads (strided K
// rows), misaligned rows (head_dim 40 in bf16, padded strides), a peaky softmax, and a cache
// shorter than one tile.
TEST_P(FastPath, DecodeStackedLongCachePrefetch) {
  ScopedSimd simd(GetParam().c_str());
  struct Case {
    int hq, hkv, d;
    DType dtype;
    int padding;
    int64_t nk;
  };
  const int64_t nk = testing::small_scale() ? 3001 : 12289;
  const std::vector<Case> cases = {
      {16, 1, 64, DType::f32, 0, nk},  {16, 1, 64, DType::bf16, 0, nk + 2},
      {16, 2, 40, DType::bf16, 3, nk}, {8, 1, 128, DType::f32, 1, nk + 1},
      {12, 1, 32, DType::f32, 0, 37},  {16, 1, 64, DType::bf16, 2, 63},
  };
  uint64_t seed = 900;
  for (const Case& k : cases) {
    testing::HarnessCase c;
    c.spec = make_spec(Variant::mha, k.hq, k.d, Window::none());
    c.spec.heads = {k.hq, k.hkv};
    c.spec.num_baseline_heads = k.hq;
    c.dtype = k.dtype;
    c.seqlen_q = 1;
    c.seqlen_k = k.nk;
    c.batch = 1;
    c.padding = k.padding;
    c.q_gain = seed % 2 ? 4.0 : 1.0;
    c.seed = ++seed;
    const testing::CheckResult r =
        testing::check_forward(c, [](const AttentionParams& p) { cpu::attention_forward(p); });
    EXPECT_TRUE(r.ok) << r.message;
  }
}

// The backward must be bit-identical run to run (exact resume of training depends on it): dQ
// is summed from per-thread accumulators, so the work split must not depend on timing.
TEST_P(FastPath, BackwardIsDeterministic) {
  ScopedSimd simd(GetParam().c_str());
  for (Variant v : {Variant::sqa, Variant::rsqa}) {
    testing::HarnessCase c;
    c.spec = make_spec(v, 8, 32, Window::causal());
    c.seqlen_q = c.seqlen_k = testing::small_scale() ? 700 : 1500;
    c.seed = 5;
    testing::CaseBuffers cb(c);
    cpu::attention_forward(cb.params(false));
    std::vector<std::vector<unsigned char>> first;
    for (int run = 0; run < 3; ++run) {
      cpu::attention_backward(cb.backward_params(false));
      const std::vector<std::vector<unsigned char>> grads = {cb.dq.bytes, cb.dk.bytes, cb.dv.bytes};
      if (run == 0) {
        first = grads;
      } else {
        EXPECT_TRUE(grads == first) << variant_name(v) << ": run " << run << " differs";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Simd, FastPath, ::testing::Values("portable", "avx2", "avx512"),
                         [](const auto& info) { return info.param; });

TEST(FastPathDispatch, RejectsUnknownSimdName) {
  ScopedSimd simd("sse9");
  try {
    cpu::simd_path();
    FAIL() << "expected sqa::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("SQA_CPU_SIMD"), std::string::npos) << msg;
    EXPECT_NE(msg.find("sse9"), std::string::npos) << msg;
  }
}

TEST(FastPathDispatch, DefaultIsTheBestTheCpuHas) {
  ScopedSimd simd(nullptr);
  const std::string best = cpu_has("avx512") ? "avx512" : cpu_has("avx2") ? "avx2" : "portable";
  EXPECT_EQ(std::string(cpu::simd_path()), best);
}

// The harness itself must catch broken backends: an unwritten head, a wrong element, a missing
// lse, a missing gradient and a write into the padding of a strided output.
TEST(Harness, CatchesBrokenBackends) {
  testing::HarnessCase c;
  c.spec = make_spec(Variant::gqa, 8, 16, Window::causal());
  c.dtype = DType::f32;
  c.batch = 2;
  c.seqlen_q = 9;
  c.seqlen_k = 13;
  c.padding = 2;
  c.seed = 4;
  auto fast = [](const AttentionParams& p) { cpu::attention_forward(p); };
  ASSERT_TRUE(testing::check_forward(c, fast).ok);
  const int last_head = c.spec.heads.num_attention_heads() - 1;
  auto element = [](const AttentionParams& p, int64_t b, int64_t r, int h) {
    return static_cast<float*>(p.out) + b * p.out_strides.batch + r * p.out_strides.row +
           h * p.out_strides.head;
  };
  EXPECT_FALSE(testing::check_forward(c,
                                      [&](const AttentionParams& p) {
                                        cpu::attention_forward(p);
                                        element(p, 1, 8, last_head)[0] =
                                            std::numeric_limits<float>::quiet_NaN();
                                      })
                   .ok)
      << "an unwritten (still NaN) element";
  EXPECT_FALSE(testing::check_forward(c,
                                      [&](const AttentionParams& p) {
                                        cpu::attention_forward(p);
                                        element(p, 0, 3, 1)[5] *= 1.01f;
                                      })
                   .ok)
      << "one element 1% off";
  EXPECT_FALSE(testing::check_forward(c,
                                      [&](const AttentionParams& p) {
                                        AttentionParams q = p;
                                        q.lse = nullptr;
                                        cpu::attention_forward(q);
                                      })
                   .ok)
      << "lse never written";
  EXPECT_FALSE(testing::check_forward(c,
                                      [&](const AttentionParams& p) {
                                        cpu::attention_forward(p);
                                        element(p, 0, 2, 0)[c.spec.head_dim] =
                                            0.0f;  // padding after head 0
                                      })
                   .ok)
      << "write into the padding";
  auto fast_bwd = [](const AttentionBackwardParams& g) { cpu::attention_backward(g); };
  ASSERT_TRUE(testing::check_backward(c, fast_bwd).ok);
  EXPECT_FALSE(testing::check_backward(
                   c,
                   [&](const AttentionBackwardParams& g) {
                     AttentionBackwardParams h = g;
                     std::vector<float> scratch(static_cast<size_t>(1) << 16);
                     h.dk = scratch.data();  // dK goes elsewhere: the real dk stays poisoned
                     h.dk_strides.batch = 0;
                     h.dk_strides.row = g.dk_strides.head;
                     h.dk_strides.head = g.dk_strides.head;
                     cpu::attention_backward(h);
                   })
                   .ok)
      << "dk never written";
}

// Directional finite differences of the fast fp32 forward against the fast backward:
// (L(x + e u) - L(x - e u)) / 2e = <dL/dx, u> with L = sum(dO * O), for a random direction u.
TEST(FastPathGradients, MatchFiniteDifferencesOfFastForward) {
  struct G {
    HeadLayout heads;
    Window window;
    int d;
    int64_t nq, nk;
  };
  for (const G& g :
       {G{{4, 2}, Window::causal(), 16, 37, 37}, G{{2, 4}, Window{5, 3}, 24, 20, 41},
        G{{3, 1}, Window::none(), 40, 1, 150}, G{{2, 2}, Window::sliding(9), 8, 70, 66}}) {
    testing::HarnessCase hc;
    hc.spec.heads = g.heads;
    hc.spec.head_dim = g.d;
    hc.spec.window = g.window;
    hc.dtype = DType::f32;
    hc.batch = 2;
    hc.seqlen_q = g.nq;
    hc.seqlen_k = g.nk;
    hc.seed = 99;
    testing::CaseBuffers cb(hc);
    auto loss = [&]() {
      cpu::attention_forward(cb.params(false));
      double l = 0;
      for (int64_t i = 0; i < cb.out.size(); ++i) l += cb.dout.get(i) * cb.out.get(i);
      return l;
    };
    loss();
    cpu::attention_backward(cb.backward_params(false));
    std::mt19937_64 rng(3);
    std::normal_distribution<double> normal(0.0, 1.0);
    struct Pair {
      const char* name;
      testing::HostTensor* x;
      testing::HostTensor* grad;
    };
    for (Pair p : {Pair{"q", &cb.q, &cb.dq}, Pair{"k", &cb.k, &cb.dk}, Pair{"v", &cb.v, &cb.dv}}) {
      const testing::HostTensor x0 = *p.x;
      std::vector<double> u(static_cast<size_t>(x0.size()));
      double predicted = 0;
      for (size_t i = 0; i < u.size(); ++i) {
        u[i] = normal(rng);
        predicted += u[i] * p.grad->get(static_cast<int64_t>(i));
      }
      const double e = 1e-2;
      for (size_t i = 0; i < u.size(); ++i) p.x->set(static_cast<int64_t>(i), x0.get(i) + e * u[i]);
      const double up = loss();
      for (size_t i = 0; i < u.size(); ++i) p.x->set(static_cast<int64_t>(i), x0.get(i) - e * u[i]);
      const double down = loss();
      *p.x = x0;
      const double fd = (up - down) / (2 * e);
      EXPECT_NEAR(fd, predicted, 2e-3 * std::max(1.0, std::abs(predicted)))
          << p.name << " " << hc.describe();
    }
  }
}

// ---- validation rules: each message names the value and the rule ----------------------------

template <typename Fn>
void expect_error(Fn fn, std::initializer_list<std::string> fragments) {
  try {
    fn();
    FAIL() << "expected sqa::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << msg;
  }
}

struct ValidCase {
  testing::CaseBuffers cb;
  ValidCase() : cb(make()) {}
  static testing::HarnessCase make() {
    testing::HarnessCase c;
    c.spec = make_spec(Variant::sqa, 8, 16);
    c.batch = 2;
    c.seqlen_q = 5;
    c.seqlen_k = 7;
    c.seed = 1;
    return c;
  }
};

TEST(Validation, AcceptsTheValidCase) {
  ValidCase v;
  EXPECT_NO_THROW(cpu::attention_forward(v.cb.params(false)));
  EXPECT_NO_THROW(v.cb.params(false).validate());
}

TEST(Validation, NullPointers) {
  ValidCase v;
  for (int which = 0; which < 4; ++which) {
    AttentionParams p = v.cb.params(false);
    if (which == 0) p.q = nullptr;
    if (which == 1) p.k = nullptr;
    if (which == 2) p.v = nullptr;
    if (which == 3) p.out = nullptr;
    expect_error([&] { cpu::attention_forward(p); }, {"q, k, v and out must all be non-null"});
  }
  AttentionBackwardParams g = v.cb.backward_params(false);
  g.forward.lse = nullptr;
  expect_error([&] { cpu::attention_backward(g); }, {"lse", "null"});
  g = v.cb.backward_params(false);
  g.dk = nullptr;
  expect_error([&] { cpu::attention_backward(g); }, {"dout, dq, dk and dv must all be non-null"});
}

TEST(Validation, BadStrides) {
  ValidCase v;
  AttentionParams p = v.cb.params(false);
  p.k_strides.head = 15;  // head_dim is 16
  expect_error([&] { cpu::attention_forward(p); },
               {"k strides", "(row ", "head 15", "head_dim (16)"});
  AttentionBackwardParams g = v.cb.backward_params(false);
  g.dq_strides.row = 3;
  expect_error([&] { cpu::attention_backward(g); }, {"dq strides", "row 3", "head_dim (16)"});
}

TEST(Validation, BadShapes) {
  ValidCase v;
  AttentionParams p = v.cb.params(false);
  p.batch = 0;
  expect_error([&] { cpu::attention_forward(p); }, {"batch (0)", "at least 1"});
  p = v.cb.params(false);
  p.seqlen_k = 0;
  expect_error([&] { cpu::attention_forward(p); }, {"seqlen_k (0)", "at least 1"});
  p = v.cb.params(false);
  p.spec.heads = {6, 4};
  expect_error([&] { cpu::attention_forward(p); },
               {"num_query_heads (6)", "multiple of num_kv_heads (4)"});
}

TEST(Validation, BadCuSeqlens) {
  ValidCase v;
  std::vector<int32_t> cu_q = {0, 3, 5}, cu_k = {0, 4, 7};
  auto params = [&] {
    AttentionParams p = v.cb.params(false);
    p.cu_seqlens_q = cu_q.data();
    p.cu_seqlens_k = cu_k.data();
    return p;
  };
  EXPECT_NO_THROW(params().validate());
  cu_q = {1, 3, 5};
  expect_error([&] { cpu::attention_forward(params()); }, {"cu_seqlens_q[0] (1) must be 0"});
  cu_q = {0, 3, 5};
  cu_k = {0, 4, 2};
  expect_error(
      [&] { cpu::attention_forward(params()); },
      {"cu_seqlens_k must be non-decreasing", "cu_seqlens_k[2] (2)", "cu_seqlens_k[1] (4)"});
  cu_k = {0, 4, 12};  // second sequence 8 > max_seqlen_k 7
  expect_error([&] { cpu::attention_forward(params()); },
               {"sequence 1 has length 8", "cu_seqlens_k", "max_seqlen (7)"});
  AttentionParams p = v.cb.params(false);
  cu_k = {0, 4, 7};
  p.cu_seqlens_q = cu_q.data();
  expect_error([&] { cpu::attention_forward(p); },
               {"cu_seqlens_q and cu_seqlens_k must be given together"});
}

TEST(Validation, FastPathRejectsF16) {
  ValidCase v;
  AttentionParams p = v.cb.params(false);
  p.dtype = DType::f16;
  expect_error([&] { cpu::attention_forward(p); }, {"f16"});
}

}  // namespace
}  // namespace sqa
