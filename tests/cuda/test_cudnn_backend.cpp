// The cuDNN backend (src/attention/cuda/cudnn_backend.cpp) against the float64 reference through
// the op-level harness (fresh inputs, outputs NaN-poisoned first), forward and backward, every
// layout cuDNN takes (H_q a multiple of H_kv), masks, d = 64 and 128; plus the routing rules of
// the automatic choice and the errors of an explicit one. GPU tests skip cleanly without a GPU.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "attention_harness.hpp"
#include "cuda/cuda_via_host.hpp"
#include "sqa/attention.hpp"
#include "sqa/error.hpp"

namespace sqa {
namespace {

using testing::cuda_host::cuda_backward_via_host;
using testing::cuda_host::cuda_forward_via_host;

#define SKIP_WITHOUT_GPU() \
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device present"

// Sets an environment variable for one scope (the tests also set the params field directly).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { setenv(name, value, 1); }
  ~ScopedEnv() { unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

class ScopedBackendEnv : public ScopedEnv {
 public:
  explicit ScopedBackendEnv(const char* value) : ScopedEnv("SQA_CUDA_BACKEND", value) {}
};

void forward_on(CudaBackend backend, const AttentionParams& host) {
  AttentionParams p = host;
  p.cuda_backend = backend;
  cuda_forward_via_host(p);
}

void backward_on(CudaBackend backend, const AttentionBackwardParams& host) {
  AttentionBackwardParams g = host;
  g.forward.cuda_backend = backend;
  cuda_backward_via_host(g);
}

// Layouts cuDNN serves: H_q a multiple of H_kv (MHA, GQA, MQA and the SQA family but rSQA).
std::vector<Variant> cudnn_variants() {
  std::vector<Variant> out;
  for (Variant v : all_variants()) {
    if (v != Variant::rsqa) out.push_back(v);
  }
  return out;
}

testing::HarnessCase make_case(Variant v, int d, const Window& w, int64_t nq, int64_t nk,
                               uint64_t seed) {
  testing::HarnessCase c;
  c.spec = make_spec(v, 8, d, w);
  c.dtype = (seed % 2) ? DType::bf16 : DType::f16;
  c.batch = 2;
  c.seqlen_q = nq;
  c.seqlen_k = nk;
  c.q_gain = (seed % 4 == 0) ? 4.0 : 1.0;
  c.seed = seed;
  return c;
}

const std::vector<Window>& windows() {
  static const std::vector<Window> w = {Window::none(), Window::causal(), Window::sliding(100)};
  return w;
}

// Both forward graphs (SQA_CUDNN_FWD_GRAPH): the composite one for every mask, the unified SDPA
// operation (auto's choice without a mask on cuDNN >= 9.13.1) for unmasked attention.
TEST(CudnnForward, EveryLayoutMaskAndHeadDim) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 31;
  const int64_t n = testing::small_scale() ? 160 : 300;
  for (const char* graph : {"composite", "auto", "unified"}) {
    ScopedEnv env("SQA_CUDNN_FWD_GRAPH", graph);
    const bool unified_only = std::string(graph) == "unified";
    for (Variant v : cudnn_variants()) {
      for (int d : {64, 128}) {
        for (const Window& w : windows()) {
          if (unified_only && !w.is_none()) continue;
          // N_k >= N_q: masks are bottom-right aligned, no row is left without keys.
          const testing::HarnessCase c = make_case(v, d, w, n, n + (seed % 3) * 37, seed);
          ++seed;
          const testing::CheckResult r = testing::check_forward(
              c, [](const AttentionParams& p) { forward_on(CudaBackend::cudnn, p); });
          EXPECT_TRUE(r.ok) << "graph " << graph << ", " << variant_name(v) << ", d " << d
                            << ", window (" << w.left << ", " << w.right << "): " << r.message;
        }
      }
    }
  }
}

// The unified graph's stats are the lse both backwards read: cuDNN's forward, then cuDNN's and
// our backward from its O and lse.
TEST(CudnnForward, UnifiedLseFeedsEitherBackward) {
  SKIP_WITHOUT_GPU();
  ScopedEnv env("SQA_CUDNN_FWD_GRAPH", "unified");
  uint64_t seed = 700;
  for (Variant v : {Variant::mha, Variant::sqa, Variant::mqa}) {
    for (int d : {64, 128}) {
      for (CudaBackend bwd : {CudaBackend::cudnn, CudaBackend::own}) {
        const testing::HarnessCase c = make_case(v, d, Window::none(), 200, 256, seed++);
        const testing::CheckResult r =
            testing::check_backward(c, [bwd](const AttentionBackwardParams& g) {
              // The harness passes the reference O and lse; replace them by cuDNN's.
              forward_on(CudaBackend::cudnn, g.forward);
              backward_on(bwd, g);
            });
        EXPECT_TRUE(r.ok) << variant_name(v) << ", d " << d << ", backward "
                          << (bwd == CudaBackend::cudnn ? "cudnn" : "own") << ": " << r.message;
      }
    }
  }
}

// Strided views, and without an lse buffer (the inference graphs, with the stats kept inside):
// the output is still right and the harness's lse stays poisoned. Masked (composite graph) and
// unmasked (unified graph under auto).
TEST(CudnnForward, StridedViewsAndNullLse) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 41;
  for (const Window& w : {Window::causal(), Window::none()}) {
    testing::HarnessCase c = make_case(Variant::sqa, 64, w, 200, 256, seed++);
    c.padding = 8;  // heads of a fused buffer: row and head strides stay multiples of 8
    testing::CheckResult r = testing::check_forward(
        c, [](const AttentionParams& p) { forward_on(CudaBackend::cudnn, p); });
    EXPECT_TRUE(r.ok) << r.message;
    c.padding = 0;
    r = testing::check_forward(c, [](const AttentionParams& host) {
      AttentionParams p = host;
      p.lse = nullptr;
      forward_on(CudaBackend::cudnn, p);
    });
    EXPECT_NE(r.message.find("lse"), std::string::npos) << r.message;
    EXPECT_EQ(r.message.find("out:"), std::string::npos) << r.message;
  }
}

TEST(CudnnBackward, EveryLayoutMaskAndHeadDim) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 71;
  // N_k a multiple of 128: cuDNN before 9.16 needs it for the backward (see cudnn_backend.cpp).
  const int64_t nk = testing::small_scale() ? 128 : 256;
  for (Variant v : cudnn_variants()) {
    for (int d : {64, 128}) {
      for (const Window& w : windows()) {
        const int64_t nq = (seed % 2) ? nk : nk - 56;
        const testing::HarnessCase c = make_case(v, d, w, nq, nk, seed);
        ++seed;
        const testing::CheckResult r = testing::check_backward(
            c, [](const AttentionBackwardParams& g) { backward_on(CudaBackend::cudnn, g); });
        EXPECT_TRUE(r.ok) << r.message;
      }
    }
  }
}

TEST(CudnnBackward, StridedViews) {
  SKIP_WITHOUT_GPU();
  testing::HarnessCase c = make_case(Variant::gqa, 128, Window::none(), 128, 256, 91);
  c.padding = 8;
  const testing::CheckResult r = testing::check_backward(
      c, [](const AttentionBackwardParams& g) { backward_on(CudaBackend::cudnn, g); });
  EXPECT_TRUE(r.ok) << r.message;
}

// ---- routing ------------------------------------------------------------------------------

AttentionParams routing_params(Variant v, int d, int64_t nq, int64_t nk, const Window& w) {
  AttentionParams p;
  p.spec = make_spec(v, 16, d, w);
  p.dtype = DType::bf16;
  p.device = Device::cuda;
  p.batch = 1;
  p.seqlen_q = nq;
  p.seqlen_k = nk;
  p.set_contiguous_strides();
  // Host memory: enough for validate(); the rules under test reject before any device access.
  static std::vector<unsigned char> buffer(1 << 16);
  p.q = p.k = p.v = p.out = buffer.data();
  return p;
}

TEST(CudnnRouting, AutoTakesCudnnWhereItIsFaster) {
  SKIP_WITHOUT_GPU();
  const Window causal = Window::causal();
  const Window none = Window::none();
  for (int d : {64, 128}) {
    // Forward with many query tiles and no mask (8 heads x 256 tiles of 128 rows): cuDNN.
    EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::sqa, d, 32768, 32768, none), false),
                 "cudnn");
    // The backward at these head dims: cuDNN at any size.
    EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::mha, d, 4096, 4096, causal), true),
                 "cudnn");
    EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::xsqa, d, 1024, 1024, causal), true),
                 "cudnn");
    // Forward with few query tiles (8 heads x 32 tiles, causal; 4 x 8 without a mask): ours.
    EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::sqa, d, 4096, 4096, causal), false),
                 "own");
    EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::xsqa, d, 1024, 1024, none), false),
                 "own");
  }
  // The tile limits per head dim and mask (cudnn_backend.cpp, run 36 and 2026-11-30): none with
  // a mask (ours was never slower there); 128 / 512 without, at d = 64 / 128; batch counts.
  EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::mha, 64, 8192, 8192, causal), false),
               "own");  // 16 x 64 = 1024
  EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::mha, 64, 32768, 32768, causal), false),
               "own");  // 16 x 256 = 4096, d64 masked: any size
  EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::mha, 128, 32768, 32768, causal), false),
               "own");  // 16 x 256 = 4096, d128 masked: any size
  EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::xsqa, 64, 4096, 4096, none), false),
               "own");  // 4 x 32 = 128
  EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::sqa, 64, 4096, 4096, none), false),
               "cudnn");  // 8 x 32 = 256
  EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::sqa, 128, 8192, 8192, none), false),
               "own");  // 8 x 64 = 512
  AttentionParams batched = routing_params(Variant::sqa, 128, 8192, 8192, none);
  batched.batch = 2;
  EXPECT_STREQ(cuda::chosen_backend(batched, false), "cudnn");  // 2 x 8 x 64 = 1024
  // head_dim 256 has no wgmma forward of ours: cuDNN even for a small grid.
  EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::xsqa, 256, 1024, 1024, causal), false),
               "cudnn");
  // Ours: small head dims, rSQA, decode, masks cuDNN does not take.
  EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::sqa, 16, 4096, 4096, causal), false),
               "own");
  EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::rsqa, 64, 4096, 4096, causal), false),
               "own");
  EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::sqa, 64, 1, 8192, causal), false),
               "own");
  EXPECT_STREQ(
      cuda::chosen_backend(routing_params(Variant::sqa, 64, 4096, 4096, Window{37, 5}), false),
      "own");
  {
    ScopedBackendEnv env("own");
    EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::sqa, 128, 4096, 4096, causal), false),
                 "own");
  }
  {
    ScopedBackendEnv env("cudnn");
    EXPECT_STREQ(cuda::chosen_backend(routing_params(Variant::sqa, 16, 4096, 4096, causal), false),
                 "cudnn");
  }
}

// The automatic path falls back to our kernels for what cuDNN cannot take and stays correct.
TEST(CudnnRouting, AutoFallbackMatchesReference) {
  SKIP_WITHOUT_GPU();
  testing::HarnessCase c = make_case(Variant::rsqa, 64, Window::causal(), 256, 256, 7);
  testing::CheckResult r = testing::check_forward(
      c, [](const AttentionParams& p) { forward_on(CudaBackend::automatic, p); });
  EXPECT_TRUE(r.ok) << r.message;
  c = make_case(Variant::sqa, 64, Window{37, 5}, 256, 256, 8);
  r = testing::check_backward(
      c, [](const AttentionBackwardParams& g) { backward_on(CudaBackend::automatic, g); });
  EXPECT_TRUE(r.ok) << r.message;
}

// Training on the automatic path with a small grid: our forward writes O and the lse, and
// cuDNN's backward reads them, so the two must agree on the lse (natural log of the row sums of
// the scaled scores).
TEST(CudnnRouting, AutoOwnForwardThenCudnnBackwardMatchesReference) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 500;
  for (int d : {64, 128}) {
    for (const Window& w : {Window::causal(), Window::none(), Window::sliding(100)}) {
      const testing::HarnessCase c = make_case(Variant::sqa, d, w, 256, 256, seed++);
      AttentionParams routed = routing_params(Variant::sqa, d, 256, 256, w);
      routed.spec = c.spec;
      routed.batch = c.batch;
      ASSERT_STREQ(cuda::chosen_backend(routed, false), "own");
      ASSERT_STREQ(cuda::chosen_backend(routed, true), "cudnn");
      const testing::CheckResult r =
          testing::check_backward(c, [](const AttentionBackwardParams& g) {
            // The harness passes the reference O and lse; replace them by the forward's own.
            forward_on(CudaBackend::automatic, g.forward);
            backward_on(CudaBackend::automatic, g);
          });
      EXPECT_TRUE(r.ok) << "d " << d << ", window (" << w.left << ", " << w.right
                        << "): " << r.message;
    }
  }
}

template <typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no sqa::Error)";
}

TEST(CudnnRouting, ExplicitCudnnNamesTheRule) {
  // Rejected before any device access, so this runs on the CPU-only CI machine too.
  AttentionParams p = routing_params(Variant::rsqa, 64, 256, 256, Window::causal());
  p.cuda_backend = CudaBackend::cudnn;
  const std::string msg = error_of([&] { cuda::attention_forward(p); });
  const bool named =
      msg.find("rSQA") != std::string::npos && msg.find("multiple of H_kv") != std::string::npos;
  const bool not_built = msg.find("without cuDNN") != std::string::npos;
  EXPECT_TRUE(named || not_built) << msg;
}

TEST(CudnnRouting, RejectsUnknownEnvValue) {
  ScopedBackendEnv env("fast");
  const AttentionParams p = routing_params(Variant::sqa, 64, 256, 256, Window::causal());
  const std::string msg = error_of([&] { cuda::attention_forward(p); });
  EXPECT_NE(msg.find("SQA_CUDA_BACKEND (fast)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("own, cudnn or auto"), std::string::npos) << msg;
}

TEST(CudnnForward, GraphChoiceNamesTheRule) {
  SKIP_WITHOUT_GPU();
  const testing::HarnessCase masked = make_case(Variant::sqa, 64, Window::causal(), 64, 64, 3);
  const auto run = [&] {
    testing::check_forward(masked,
                           [](const AttentionParams& p) { forward_on(CudaBackend::cudnn, p); });
  };
  {
    ScopedEnv env("SQA_CUDNN_FWD_GRAPH", "unified");
    const std::string msg = error_of(run);
    EXPECT_NE(msg.find("SQA_CUDNN_FWD_GRAPH=unified takes unmasked attention only (window left -1, "
                       "right 0)"),
              std::string::npos)
        << msg;
  }
  {
    ScopedEnv env("SQA_CUDNN_FWD_GRAPH", "fused");
    const std::string msg = error_of(run);
    EXPECT_NE(msg.find("SQA_CUDNN_FWD_GRAPH (fused) must be auto, unified or composite"),
              std::string::npos)
        << msg;
  }
}

}  // namespace
}  // namespace sqa
