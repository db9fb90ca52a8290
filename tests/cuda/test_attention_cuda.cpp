// The CUDA attention backend against the float64 reference through the op-level harness
// (tests/attention_harness.hpp): host buffers are copied to the device, the kernels run on a
// non-default stream, and the results (outputs poisoned with NaN first) are copied back.
// Every test that needs a GPU skips cleanly without one (CI compiles and links this, but has no
// GPU); the validation-rule tests that reject before touching the device run everywhere.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "attention/cuda/flash_fwd.hpp"
#include "attention_harness.hpp"
#include "cuda/cuda_via_host.hpp"
#include "sqa/attention.hpp"
#include "sqa/error.hpp"

namespace sqa {
namespace {

// These tests are about this project's kernels: keep the automatic routing from sending d >= 64
// to cuDNN (test_cudnn_backend covers that path). An explicit SQA_CUDA_BACKEND still wins.
[[maybe_unused]] const int kOwnKernels = [] { return setenv("SQA_CUDA_BACKEND", "own", 0); }();

// Host-to-device harness callables (shared with test_cudnn_backend.cpp).
using testing::cuda_host::cuda_backward_via_host;
using testing::cuda_host::cuda_forward_via_host;
using testing::cuda_host::extent;

bool gpu_present() {
  return cuda::available();
}

#define SKIP_WITHOUT_GPU() \
  if (!gpu_present()) GTEST_SKIP() << "no CUDA device present"

testing::CaseLimits cuda_limits() {
  testing::CaseLimits limits;
  limits.head_dims = {16, 32, 64, 128, 256};
  limits.dtypes = {DType::bf16, DType::f16};
  limits.allow_padding = false;  // the harness pads by 1..5 elements; the kernels need 16 B rows
  return limits;
}

int sweep_size() {
  return testing::small_scale() ? 24 : 240;
}

void expect_forward_ok(const testing::HarnessCase& c) {
  const testing::CheckResult r = testing::check_forward(c, cuda_forward_via_host);
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(CudaForward, RandomSweepMatchesReference) {
  SKIP_WITHOUT_GPU();
  const auto cases = testing::generate_cases(cuda_limits(), sweep_size(), 3003);
  ASSERT_EQ(static_cast<int>(cases.size()), sweep_size());
  for (const auto& c : cases) expect_forward_ok(c);
}

// Strided views (e.g. heads of a fused QKV buffer): padding of 8 elements keeps rows 16-byte
// aligned, as the kernels require.
TEST(CudaForward, StridedViewsMatchReference) {
  SKIP_WITHOUT_GPU();
  auto cases = testing::generate_cases(cuda_limits(), testing::small_scale() ? 8 : 40, 4004);
  for (auto& c : cases) {
    c.padding = 8;
    expect_forward_ok(c);
  }
}

// Every paper layout at the given head dims, the three mask kinds, at a length with many key
// blocks. small_scale_max_d: above it, SQA_TEST_SCALE=small skips the head dim.
void check_every_layout_and_mask(const std::vector<int>& head_dims, int small_scale_max_d,
                                 const char* label) {
  const std::vector<Window> windows = {Window::none(), Window::causal(), Window::sliding(100),
                                       Window{37, 5}};
  uint64_t seed = 11;
  for (Variant v : all_variants()) {
    for (int d : head_dims) {
      // Long enough for several query and key blocks; shorter at large d to keep the float64
      // reference quick.
      const int64_t n = testing::small_scale() ? 200 : (d <= 32 ? 700 : 300);
      for (const Window& w : windows) {
        testing::HarnessCase c;
        c.spec = make_spec(v, 4, d, w);
        c.dtype = (seed % 2) ? DType::bf16 : DType::f16;
        c.batch = 2;
        c.seqlen_q = n;
        c.seqlen_k = n + (seed % 3) * 37;  // N_q != N_k too: bottom-right aligned masks
        c.q_gain = (seed % 4 == 0) ? 4.0 : 1.0;
        c.seed = seed++;
        if (testing::small_scale() && d > small_scale_max_d) continue;
        const testing::CheckResult r = testing::check_forward(c, cuda_forward_via_host);
        EXPECT_TRUE(r.ok) << label << r.message;
      }
    }
  }
}

TEST(CudaForward, EveryLayoutHeadDimAndMask) {
  SKIP_WITHOUT_GPU();
  check_every_layout_and_mask({16, 32, 64, 128, 256}, 64, "");
}

// Decode: a few query rows against a long cache takes the packed-heads, split-KV path.
TEST(CudaForward, DecodeSplitKvMatchesReference) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 500;
  for (Variant v : {Variant::mha, Variant::sqa, Variant::gqa, Variant::mqa, Variant::rsqa}) {
    for (int d : {64, 128}) {
      for (int64_t nq : {1, 3}) {
        for (const Window& w : {Window::none(), Window::causal(), Window::sliding(1500)}) {
          testing::HarnessCase c;
          c.spec = make_spec(v, 8, d, w);
          c.dtype = DType::bf16;
          c.batch = 2;
          c.seqlen_q = nq;
          c.seqlen_k = testing::small_scale() ? 3000 : 9001;
          c.seed = seed++;
          expect_forward_ok(c);
        }
      }
    }
  }
}

// A long causal sequence: many skipped blocks and many rescalings of the running max.
TEST(CudaForward, LongCausalPeakySoftmax) {
  SKIP_WITHOUT_GPU();
  testing::HarnessCase c;
  c.spec = make_spec(Variant::xsqa, 16, 16, Window::causal());
  c.dtype = DType::bf16;
  c.seqlen_q = c.seqlen_k = testing::small_scale() ? 1024 : 4100;
  c.q_gain = 6.0;
  c.seed = 9;
  expect_forward_ok(c);
}

// Every prefill kernel variant (SQA_CUDA_FWD, flash_fwd_launch.cuh), not only the default one.
TEST(CudaForward, EveryKernelVariantMatchesReference) {
  SKIP_WITHOUT_GPU();
  testing::CaseLimits limits = cuda_limits();
  limits.head_dims = {16, 32, 64};
  // wgmma / wgmmapp run flash_fwd_wgmma.cuh at 64 (in step / ping-pong) and the default at 16
  // and 32; their full coverage is in WgmmaMatchesReference below.
  for (const char* variant :
       {"base", "ilp", "occ", "pipe", "sum2", "sum2occ", "sum2occq", "wgmma", "wgmmapp"}) {
    setenv("SQA_CUDA_FWD", variant, 1);
    for (const auto& c : testing::generate_cases(limits, testing::small_scale() ? 6 : 30, 9009)) {
      const testing::CheckResult r = testing::check_forward(c, cuda_forward_via_host);
      EXPECT_TRUE(r.ok) << "SQA_CUDA_FWD=" << variant << ": " << r.message;
    }
    // Peaky scores over many unmasked blocks: the lazy rescale's overflow check must send
    // every growing max to the full rescale, in fp16 too (P must stay finite there).
    for (DType dtype : {DType::bf16, DType::f16}) {
      testing::HarnessCase c;
      c.spec = make_spec(Variant::sqa, 16, 16, Window::none());
      c.dtype = dtype;
      c.seqlen_q = c.seqlen_k = testing::small_scale() ? 300 : 1000;
      c.q_gain = 6.0;
      c.seed = 19;
      const testing::CheckResult r = testing::check_forward(c, cuda_forward_via_host);
      EXPECT_TRUE(r.ok) << "SQA_CUDA_FWD=" << variant << " (peaky): " << r.message;
    }
  }
  unsetenv("SQA_CUDA_FWD");
}

// The Hopper warpgroup-MMA kernels (SQA_CUDA_FWD=wgmma) at the given head dims: the random sweep
// (layouts incl. rSQA and explicit GQA ratios, masks, varlen with empty sequences, N_q != N_k,
// custom scales, bf16 and f16), every layout with every mask kind, query rows that see no key at
// all (lse -inf, O = 0), and peaky scores over many unmasked blocks (many rescalings of the
// running max, lazy or not; P must stay finite in f16).
void check_wgmma_kernel(const std::vector<int>& head_dims, uint64_t sweep_seed,
                        const char* variant = "wgmma") {
  setenv("SQA_CUDA_FWD", variant, 1);
  const std::string label = std::string("SQA_CUDA_FWD=") + variant;
  testing::CaseLimits limits = cuda_limits();
  limits.head_dims = head_dims;
  for (const auto& c :
       testing::generate_cases(limits, testing::small_scale() ? 8 : 40, sweep_seed)) {
    const testing::CheckResult r = testing::check_forward(c, cuda_forward_via_host);
    EXPECT_TRUE(r.ok) << label << ": " << r.message;
  }
  check_every_layout_and_mask(head_dims, 128, (label + ": ").c_str());
  uint64_t seed = 300;
  for (int d : head_dims) {
    // (N_q, N_k): more queries than keys (causal: the first N_q - N_k rows see nothing), fewer,
    // and a row block of 129 rows against one key.
    const std::pair<int64_t, int64_t> lengths[] = {{300, 100}, {100, 300}, {129, 1}};
    for (const auto& [nq, nk] : lengths) {
      for (const Window& w : {Window::causal(), Window{20, 0}, Window{-1, 3}}) {
        testing::HarnessCase c;
        c.spec = make_spec(Variant::gqa, 8, d, w);
        c.dtype = (seed % 2) ? DType::bf16 : DType::f16;
        c.seqlen_q = nq;
        c.seqlen_k = nk;
        c.seed = seed++;
        const testing::CheckResult r = testing::check_forward(c, cuda_forward_via_host);
        EXPECT_TRUE(r.ok) << label << " (cross lengths): " << r.message;
      }
    }
    for (DType dtype : {DType::bf16, DType::f16}) {
      testing::HarnessCase c;
      c.spec = make_spec(Variant::sqa, 8, d, Window::none());
      c.dtype = dtype;
      c.seqlen_q = c.seqlen_k = testing::small_scale() ? 300 : 1000;
      c.q_gain = 6.0;
      c.seed = 19;
      const testing::CheckResult r = testing::check_forward(c, cuda_forward_via_host);
      EXPECT_TRUE(r.ok) << label << " (peaky): " << r.message;
    }
  }
  unsetenv("SQA_CUDA_FWD");
}

// D = 64 and 128: flash_fwd_wgmma.cuh, with one __syncthreads per key block (wgmma) and with
// the warpgroups' ping-pong over named barriers and three K / V buffers (wgmmapp, the default).
TEST(CudaForward, WgmmaMatchesReference) {
  SKIP_WITHOUT_GPU();
  for (const char* variant : {"wgmma", "wgmmapp"}) {
    check_wgmma_kernel({64, 128}, 9119, variant);
  }
}

// D = 64 and 128: the ping-pong kernel with a TMA producer warpgroup (wgmmatma, opt-in; dense
// batches; varlen cases of the sweep run the ping-pong kernel): padded rows, batch 2 (the tensor
// maps' batch coordinate), N_q != N_k, every head layout incl. rSQA (KV head != query head in
// the K / V boxes) and mask, bf16 and fp16. Rows past the sequence come from the TMA unit's zero
// fill. Small scale only; WgmmaTmaMatchesPingPongAtScale below runs the long key loops.
TEST(CudaForward, WgmmaTmaMatchesReference) {
  SKIP_WITHOUT_GPU();
  check_wgmma_kernel({64, 128}, 9229, "wgmmatma");
}

// D = 64: the TMA form with three consumer warpgroups in a round robin (wgmmatma3, opt-in;
// 192-row tiles; dense batches, varlen cases of the sweep take the default). The same coverage
// as above: every layout incl. GQA and rSQA with every mask (causal, sliding windows, N_q !=
// N_k) in batch 2 at 200 rows (one full and one partial 192-row tile); then query counts that
// are not a multiple of 192 with 8 key blocks (the stages wrap around twice, a partial last
// tile whose TMA rows past the sequence arrive as zeros).
TEST(CudaForward, WgmmaTma3MatchesReference) {
  SKIP_WITHOUT_GPU();
  check_wgmma_kernel({64}, 9339, "wgmmatma3");
  setenv("SQA_CUDA_FWD", "wgmmatma3", 1);
  uint64_t seed = 400;
  for (Variant v : {Variant::mha, Variant::gqa, Variant::rsqa}) {
    for (const Window& w : {Window::none(), Window::causal(), Window{100, 0}}) {
      testing::HarnessCase c;
      c.spec = make_spec(v, 4, 64, w);
      c.dtype = (seed % 2) ? DType::bf16 : DType::f16;
      c.batch = 2;
      c.seqlen_q = 500;  // 2 full tiles of 192 rows and one of 116
      c.seqlen_k = 1000;
      c.seed = seed++;
      const testing::CheckResult r = testing::check_forward(c, cuda_forward_via_host);
      EXPECT_TRUE(r.ok) << "SQA_CUDA_FWD=wgmmatma3 (500 x 1000): " << r.message;
    }
  }
  unsetenv("SQA_CUDA_FWD");
}

// Small cases for compute-sanitizer (memcheck, racecheck): every head dim, masks, varlen, and
// the split-KV decode path, each with only a few CTAs so the checkers finish quickly.
TEST(CudaForward, SanitizerSmoke) {
  SKIP_WITHOUT_GPU();
  testing::CaseLimits limits = cuda_limits();
  limits.max_seqlen = 160;
  limits.max_work = 2e5;
  for (const auto& c : testing::generate_cases(limits, 10, 6006)) expect_forward_ok(c);
  testing::HarnessCase c;
  c.spec = make_spec(Variant::sqa, 8, 64, Window::none());
  c.dtype = DType::bf16;
  c.seqlen_q = 1;
  c.seqlen_k = 2000;
  c.seed = 12;
  expect_forward_ok(c);
  // The two-stage buffer hand-over (one barrier per key block) of the default (sum2occ / sum2,
  // 2 m-tiles per warp) runs above; pipe (1 m-tile per warp) hands over the same buffers with other
  // timing, so it runs under racecheck too.
  limits.head_dims = {16, 32};
  for (const char* variant : {"pipe"}) {
    setenv("SQA_CUDA_FWD", variant, 1);
    for (const auto& vc : testing::generate_cases(limits, 3, 6116)) expect_forward_ok(vc);
    testing::HarnessCase long_case;
    long_case.spec = make_spec(Variant::xsqa, 4, 16, Window::causal());
    long_case.dtype = DType::bf16;
    long_case.seqlen_q = long_case.seqlen_k = 400;
    long_case.seed = 13;
    expect_forward_ok(long_case);
  }
  // The TMA producer form of the wgmma forward (wgmmatma; mbarriers, TMA writes, setmaxnreg):
  // 5 key blocks, so every K / V stage is refilled; batch 2; rSQA at D = 128. wgmmatma3 (three
  // consumer warpgroups, round robin of turns) at D = 64: the same GQA causal case (200 rows:
  // one full 192-row tile and one of 8 rows) and an rSQA one without a mask.
  struct TmaRun {
    const char* variant;
    int d;
    bool rsqa;  // rSQA without a mask, else GQA causal
  };
  for (const TmaRun& run : {TmaRun{"wgmmatma", 64, false}, TmaRun{"wgmmatma", 128, true},
                            TmaRun{"wgmmatma3", 64, false}, TmaRun{"wgmmatma3", 64, true}}) {
    setenv("SQA_CUDA_FWD", run.variant, 1);
    testing::HarnessCase tc;
    tc.spec = make_spec(run.rsqa ? Variant::rsqa : Variant::gqa, 4, run.d,
                        run.rsqa ? Window::none() : Window::causal());
    tc.dtype = DType::bf16;
    tc.batch = 2;
    tc.seqlen_q = 200;
    tc.seqlen_k = 600;
    tc.seed = 14 + run.d;
    expect_forward_ok(tc);
  }
  unsetenv("SQA_CUDA_FWD");
}

TEST(CudaForward, NullLseIsAllowed) {
  SKIP_WITHOUT_GPU();
  testing::HarnessCase c;
  c.spec = make_spec(Variant::sqa, 8, 32, Window::causal());
  c.dtype = DType::bf16;
  c.seqlen_q = c.seqlen_k = 300;
  c.seed = 5;
  const testing::CheckResult r = testing::check_forward(c, [](const AttentionParams& host) {
    AttentionParams p = host;
    p.lse = nullptr;
    cuda_forward_via_host(p);
  });
  // The out check still applies; the lse buffer stays poisoned, which the harness reports.
  EXPECT_NE(r.message.find("lse"), std::string::npos) << r.message;
  EXPECT_EQ(r.message.find("out:"), std::string::npos) << r.message;
}

// ---- backward ------------------------------------------------------------------------------

testing::CaseLimits cuda_backward_limits() {
  testing::CaseLimits limits = cuda_limits();
  limits.head_dims = {16, 32, 64, 128};
  return limits;
}

void expect_backward_ok(const testing::HarnessCase& c) {
  const testing::CheckResult r = testing::check_backward(c, cuda_backward_via_host);
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(CudaBackward, RandomSweepMatchesReference) {
  SKIP_WITHOUT_GPU();
  const auto cases = testing::generate_cases(cuda_backward_limits(), sweep_size() / 2, 7007);
  for (const auto& c : cases) expect_backward_ok(c);
}

TEST(CudaBackward, EveryLayoutHeadDimAndMask) {
  SKIP_WITHOUT_GPU();
  const std::vector<Window> windows = {Window::none(), Window::causal(), Window{37, 5}};
  uint64_t seed = 71;
  for (Variant v : all_variants()) {
    for (int d : {16, 32, 64, 128}) {
      const int64_t n = testing::small_scale() ? 150 : (d <= 32 ? 400 : 200);
      for (const Window& w : windows) {
        testing::HarnessCase c;
        c.spec = make_spec(v, 4, d, w);
        c.dtype = (seed % 2) ? DType::bf16 : DType::f16;
        c.batch = 2;
        c.seqlen_q = n;
        c.seqlen_k = n + (seed % 3) * 29;
        c.padding = (seed % 5 == 0) ? 8 : 0;
        c.seed = seed++;
        if (testing::small_scale() && d > 64) continue;
        expect_backward_ok(c);
      }
    }
  }
}

// dK/dV head splits (flash_params.hpp): the small cases above take the most splits the group
// allows; here also none (direct dK/dV writes) and 3 (uneven head ranges: 16 / 3, 8 / 3), on
// grouped layouts, every head dim, causal / window / none, with padding between batches.
TEST(CudaBackward, DkDvHeadSplitsMatchReference) {
  SKIP_WITHOUT_GPU();
  const std::vector<Window> windows = {Window::none(), Window::causal(), Window{37, 5}};
  for (const char* cap : {"1", "3", "2"}) {
    setenv("SQA_CUDA_BWD_SPLITS", cap, 1);
    uint64_t seed = 171;
    for (Variant v : {Variant::mqa, Variant::gqa, Variant::xsmqa, Variant::sqa}) {
      for (int d : {16, 32, 64, 128}) {
        if (testing::small_scale() && d > 32) continue;
        const Window& w = windows[seed % windows.size()];
        testing::HarnessCase c;
        c.spec = make_spec(v, 16, d, w);
        c.dtype = (seed % 2) ? DType::bf16 : DType::f16;
        c.batch = 2;
        c.seqlen_q = 190;
        c.seqlen_k = 190 + (seed % 3) * 29;
        c.padding = (seed % 2 == 0) ? 8 : 0;
        c.seed = seed++;
        const testing::CheckResult r = testing::check_backward(c, cuda_backward_via_host);
        EXPECT_TRUE(r.ok) << "SQA_CUDA_BWD_SPLITS=" << cap << ": " << r.message;
      }
    }
  }
  setenv("SQA_CUDA_BWD_SPLITS", "zero", 1);
  testing::HarnessCase c;
  c.spec = make_spec(Variant::mqa, 16, 16, Window::causal());
  c.dtype = DType::bf16;  // the CUDA backward's own dtype rule must not fire first
  c.seqlen_q = c.seqlen_k = 64;
  try {
    testing::check_backward(c, cuda_backward_via_host);
    ADD_FAILURE() << "SQA_CUDA_BWD_SPLITS=zero was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("SQA_CUDA_BWD_SPLITS (zero) must be a positive integer"),
              std::string::npos)
        << e.what();
  }
  unsetenv("SQA_CUDA_BWD_SPLITS");
}

// The deterministic scheme on a dense case: runs the backward twice, each time on outputs
// poisoned as the harness poisons them (so a run that skipped an element cannot inherit the
// other run's value); `repeats` says whether dQ, dK and dV came out bit-identical.
// A two-sequence dense case with N_k = N_q + (seed % 3) * nk_step keys and the dtype alternating
// with the seed (the shape several backward tests sweep).
testing::HarnessCase two_sequence_case(Variant v, int heads, int d, const Window& w, uint64_t seed,
                                       int64_t nq, int64_t nk_step) {
  testing::HarnessCase c;
  c.spec = make_spec(v, heads, d, w);
  c.dtype = (seed % 2) ? DType::bf16 : DType::f16;
  c.batch = 2;
  c.seqlen_q = nq;
  c.seqlen_k = nq + static_cast<int64_t>(seed % 3) * nk_step;
  c.seed = seed;
  return c;
}

testing::CheckResult check_deterministic_backward(const testing::HarnessCase& c, bool& repeats) {
  return testing::check_backward(c, [&](const AttentionBackwardParams& host) {
    AttentionBackwardParams g = host;
    g.deterministic = true;
    const AttentionParams& f = g.forward;
    const HeadLayout& heads = f.spec.heads;
    const int64_t d = f.spec.head_dim, esize = dtype_size(f.dtype);
    void* const outs[3] = {g.dq, g.dk, g.dv};
    const int64_t bytes[3] = {
        extent(g.dq_strides, f.batch, f.seqlen_q, heads.num_query_heads, d) * esize,
        extent(g.dk_strides, f.batch, f.seqlen_k, heads.num_kv_heads, d) * esize,
        extent(g.dv_strides, f.batch, f.seqlen_k, heads.num_kv_heads, d) * esize};
    auto snapshot = [&](int i) {
      const auto* p = static_cast<const unsigned char*>(outs[i]);
      return std::vector<unsigned char>(p, p + bytes[i]);
    };
    std::vector<unsigned char> poisoned[3], first[3];
    for (int i = 0; i < 3; ++i) poisoned[i] = snapshot(i);
    cuda_backward_via_host(g);
    for (int i = 0; i < 3; ++i) {
      first[i] = snapshot(i);
      std::copy(poisoned[i].begin(), poisoned[i].end(), static_cast<unsigned char*>(outs[i]));
    }
    cuda_backward_via_host(g);
    repeats = true;
    for (int i = 0; i < 3; ++i) repeats = repeats && snapshot(i) == first[i];
  });
}

// The default scheme (above) adds dQ with atomics; the deterministic one runs dK/dV without dQ
// (at D = 64 and 128 the wgmma kernel, flash_bwd_wgmma.cuh with kDq = false; elsewhere the
// mma.sync one) and then a separate dQ kernel. It must match the reference on every kind of
// layout (the grouped ones with dK/dV head splits, summed in order) and repeat bit for bit.
TEST(CudaBackward, DeterministicSchemeMatchesReferenceAndRepeatsExactly) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 91;
  for (Variant v : {Variant::mha, Variant::gqa, Variant::xsmqa, Variant::rsqa}) {
    for (int d : {16, 64, 128}) {
      for (const Window& w : {Window::none(), Window::causal()}) {
        const testing::HarnessCase c =
            two_sequence_case(v, 4, d, w, seed++, testing::small_scale() ? 130 : 260, 29);
        bool repeats = false;
        const testing::CheckResult r = check_deterministic_backward(c, repeats);
        EXPECT_TRUE(r.ok) << r.message;
        EXPECT_TRUE(repeats) << "deterministic backward differs between two runs, d = " << d;
      }
    }
  }
}

// SQA_CUDA_BWD picks the dK/dV kernel's register cap (CTAs per SM, spills under the tighter
// caps); the default (occ) runs in the tests above. Each must match the reference, with atomic
// and deterministic dQ, every mask, padding.
TEST(CudaBackward, RegisterCapVariantsMatchReference) {
  SKIP_WITHOUT_GPU();
  for (const char* variant : {"base", "occ2"}) {
    setenv("SQA_CUDA_BWD", variant, 1);
    uint64_t seed = 131;
    for (Variant v : {Variant::mha, Variant::mqa, Variant::sqa, Variant::rsqa}) {
      for (int d : {16, 32}) {
        for (const Window& w : {Window::none(), Window::causal(), Window{37, 5}}) {
          for (bool deterministic : {false, true}) {
            testing::HarnessCase c;
            c.spec = make_spec(v, 8, d, w);
            c.dtype = (seed % 2) ? DType::bf16 : DType::f16;
            c.batch = 2;
            c.seqlen_q = testing::small_scale() ? 130 : 300;
            c.seqlen_k = c.seqlen_q + (seed % 3) * 29;
            c.padding = (seed % 2 == 0) ? 8 : 0;
            c.seed = seed++;
            const testing::CheckResult r =
                testing::check_backward(c, [&](const AttentionBackwardParams& host) {
                  AttentionBackwardParams g = host;
                  g.deterministic = deterministic;
                  cuda_backward_via_host(g);
                });
            EXPECT_TRUE(r.ok) << "SQA_CUDA_BWD=" << variant << ", deterministic " << deterministic
                              << ": " << r.message;
          }
        }
      }
    }
  }
  unsetenv("SQA_CUDA_BWD");
}

// SQA_CUDA_BWD=wgmma (the default at D = 64 and 128): the Hopper warpgroup-MMA dK/dV kernel
// (flash_bwd_wgmma.cuh): 128-key CTAs of two warpgroups, 64-row query blocks, dQ by both
// warpgroups from a shared dS^T tile, added by bulk reduce-adds. Lengths that are not multiples
// of either tile, every layout (incl. rSQA and MQA) with every mask kind, both dtypes, padding,
// varlen (the random sweep, with empty sequences), N_q != N_k both ways (rows that see no key),
// one key, the head splits (none, uneven, the automatic choice), and the deterministic scheme
// (the kernel without dQ, then the dQ kernel): layouts, masks, padding and splits, each run
// twice and compared bit for bit.
void check_wgmma_backward(const char* variant, const std::vector<int>& head_dims) {
  setenv("SQA_CUDA_BWD", variant, 1);
  const std::string label = std::string("SQA_CUDA_BWD=") + variant;
  testing::CaseLimits limits = cuda_backward_limits();
  limits.head_dims = head_dims;
  for (const auto& c : testing::generate_cases(limits, testing::small_scale() ? 8 : 40, 9339)) {
    const testing::CheckResult r = testing::check_backward(c, cuda_backward_via_host);
    EXPECT_TRUE(r.ok) << label << " (sweep): " << r.message;
  }
  uint64_t seed = 930;
  for (Variant v : all_variants()) {
    for (int d : head_dims) {
      for (const Window& w :
           {Window::none(), Window::causal(), Window{37, 5}, Window::sliding(100)}) {
        testing::HarnessCase c;
        c.spec = make_spec(v, 8, d, w);
        c.dtype = ((seed + seed / 4) % 2) ? DType::bf16 : DType::f16;
        c.batch = 2;
        c.seqlen_q = testing::small_scale() ? 150 : 300;
        c.seqlen_k = c.seqlen_q + (seed % 3) * 29;
        c.padding = (seed % 5 == 0) ? 8 : 0;
        c.q_gain = (seed % 4 == 1) ? 4.0 : 1.0;
        c.seed = seed++;
        const testing::CheckResult r = testing::check_backward(c, cuda_backward_via_host);
        EXPECT_TRUE(r.ok) << label << " (layouts): " << r.message;
      }
    }
  }
  for (int d : head_dims) {
    const std::pair<int64_t, int64_t> lengths[] = {{300, 100}, {100, 300}, {129, 1}, {1, 200}};
    for (const auto& [nq, nk] : lengths) {
      for (const Window& w : {Window::none(), Window::causal(), Window{20, 0}, Window{-1, 3}}) {
        for (Variant v : {Variant::gqa, Variant::rsqa}) {
          testing::HarnessCase c;
          c.spec = make_spec(v, 8, d, w);
          c.dtype = (seed % 2) ? DType::bf16 : DType::f16;
          c.seqlen_q = nq;
          c.seqlen_k = nk;
          c.seed = seed++;
          const testing::CheckResult r = testing::check_backward(c, cuda_backward_via_host);
          EXPECT_TRUE(r.ok) << label << " (cross lengths): " << r.message;
        }
      }
    }
  }
  for (const char* cap : {"1", "3", "2", ""}) {
    setenv("SQA_CUDA_BWD_SPLITS", cap, 1);  // "": the automatic choice
    for (Variant v : {Variant::mqa, Variant::gqa, Variant::xsmqa, Variant::sqa}) {
      for (int d : head_dims) {
        testing::HarnessCase c;
        c.spec = make_spec(v, 16, d, seed % 2 ? Window::causal() : Window{37, 5});
        c.dtype = (seed % 2) ? DType::bf16 : DType::f16;
        c.batch = 2;
        c.seqlen_q = 190;
        c.seqlen_k = 190 + (seed % 3) * 29;
        c.padding = (seed % 2 == 0) ? 8 : 0;
        c.seed = seed++;
        const testing::CheckResult r = testing::check_backward(c, cuda_backward_via_host);
        EXPECT_TRUE(r.ok) << label << ", SQA_CUDA_BWD_SPLITS=" << cap << ": " << r.message;
      }
    }
  }
  for (const char* cap : {"1", "3", ""}) {
    setenv("SQA_CUDA_BWD_SPLITS", cap, 1);
    for (Variant v : {Variant::mqa, Variant::gqa, Variant::sqa, Variant::rsqa}) {
      for (int d : head_dims) {
        const Window windows[] = {Window::none(), Window::causal(), Window{37, 5}};
        testing::HarnessCase c;
        c.spec = make_spec(v, 16, d, windows[seed % 3]);
        c.dtype = (seed % 2) ? DType::bf16 : DType::f16;
        c.batch = 2;
        c.seqlen_q = testing::small_scale() ? 150 : 200;
        c.seqlen_k = c.seqlen_q + (seed % 3) * 29;
        c.padding = (seed % 2 == 0) ? 8 : 0;
        c.seed = seed++;
        bool repeats = false;
        const testing::CheckResult r = check_deterministic_backward(c, repeats);
        EXPECT_TRUE(r.ok) << label << ", deterministic, SQA_CUDA_BWD_SPLITS=" << cap << ": "
                          << r.message;
        EXPECT_TRUE(repeats) << label << ", deterministic, SQA_CUDA_BWD_SPLITS=" << cap
                             << ": differs between two runs, d = " << d;
      }
    }
  }
  unsetenv("SQA_CUDA_BWD_SPLITS");
  unsetenv("SQA_CUDA_BWD");
}

TEST(CudaBackward, WgmmaMatchesReference) {
  SKIP_WITHOUT_GPU();
  check_wgmma_backward("wgmma", {64, 128});
}

// The wgmma dK/dV kernel at D = 32 (SQA_CUDA_BWD=wgmma only; the default there is the mma.sync
// kernel): 64-byte swizzled K / V / Q / dO tiles, m64n32 dV / dK, m64n16 dQ per warpgroup, in
// both schemes, over the same sweep, layouts, lengths and head splits.
TEST(CudaBackward, WgmmaMatchesReferenceD32) {
  SKIP_WITHOUT_GPU();
  check_wgmma_backward("wgmma", {32});
}

// SQA_CUDA_BWD=wgmmatma (the default on dense atomic-dQ batches): the same kernel with a TMA
// producer warpgroup (Q and dO by tensor-map boxes, lse and D by the producer's cp.async, full /
// empty mbarriers per stage) on dense batches: the sweep and the layout, cross-length and
// head-split cases above (padded rows and batch 2 exercise the map's strides; rows past the
// sequence come from the TMA unit's zero fill). The deterministic head-split cases run its kDq =
// false form (only when SQA_CUDA_BWD=wgmmatma names it; WgmmaTmaDeterministicMatchesReference
// below has more); varlen batches, also covered, run the wgmma kernel. Its first H200 run was
// wrong at N >= 8192, which this small-scale sweep did not catch: WgmmaTmaMatchesWgmmaAtScale is
// the one that does.
TEST(CudaBackward, WgmmaTmaMatchesReference) {
  SKIP_WITHOUT_GPU();
  check_wgmma_backward("wgmmatma", {64, 128});
}

// The deterministic scheme with SQA_CUDA_BWD=wgmmatma: the TMA producer form without dQ
// (flash_bwd_dkdv_wgmma_tma_kernel<T, D, false>), then the dQ kernel, on dense batches. Every
// layout with no mask, causal and a window, both head dims, batch 2, lengths that are not
// multiples of the tiles, N_q != N_k, padded rows; against the float64 reference, each run twice
// and compared bit for bit.
TEST(CudaBackward, WgmmaTmaDeterministicMatchesReference) {
  SKIP_WITHOUT_GPU();
  setenv("SQA_CUDA_BWD", "wgmmatma", 1);
  uint64_t seed = 7301;
  for (Variant v : all_variants()) {
    for (int d : {64, 128}) {
      for (const Window& w : {Window::none(), Window::causal(), Window{37, 5}}) {
        testing::HarnessCase c;
        c.spec = make_spec(v, 8, d, w);
        c.dtype = (seed % 2) ? DType::bf16 : DType::f16;
        c.batch = 2;
        c.seqlen_q = testing::small_scale() ? 150 : 300;
        c.seqlen_k = c.seqlen_q + static_cast<int64_t>(seed % 3) * 29 - (seed % 5 == 1 ? 80 : 0);
        c.padding = (seed % 2 == 0) ? 8 : 0;
        c.q_gain = (seed % 4 == 1) ? 4.0 : 1.0;
        c.seed = seed++;
        bool repeats = false;
        const testing::CheckResult r = check_deterministic_backward(c, repeats);
        EXPECT_TRUE(r.ok) << "SQA_CUDA_BWD=wgmmatma, deterministic: " << r.message;
        EXPECT_TRUE(repeats)
            << "SQA_CUDA_BWD=wgmmatma, deterministic: differs between two runs, d = " << d;
      }
    }
  }
  unsetenv("SQA_CUDA_BWD");
}

// wgmmatma against wgmma at the sizes where the first H200 run (2026-11-29) found wrong
// gradients (MHA d64 8k: 2.3e-2 relative error vs FA2, d128 8k: NaN) while the small-scale
// reference test passed: long query loops per CTA (128 steps at 8k) and several waves of CTAs
// per SM. Dense batch 1, bf16; the same inputs through both dK/dV kernels, outputs NaN-poisoned
// before each backward; dq / dk / dv must agree to a relative Frobenius error below 5e-3 each
// (the two differ only in dQ's summation order and rounding). Deterministic scheme: bit for bit,
// since neither adds dQ (the dQ kernel is the same) and both issue the same dV / dK wgmmas in the
// same order on the same bytes (kDvEarly at D = 128, 3 against 2, only moves where a k-step is
// committed, not the order in which the accumulators take the k-steps).
struct DeviceScaleCase {
  int hq, hkv, d;
  int64_t n;
  bool causal;
};

double relative_frobenius(const std::vector<bf16>& got, const std::vector<bf16>& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double a = bf16_to_float(got[i]), b = bf16_to_float(ref[i]);
    num += (a - b) * (a - b);  // NaN propagates: an unwritten or NaN element fails
    den += b * b;
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Deterministic pseudo-random N(0, 1)-like bf16 values (sum of uniforms, xorshift state).
std::vector<bf16> random_bf16(uint64_t& state, int64_t count) {
  auto next = [&]() {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return static_cast<double>(state >> 11) * 0x1.0p-53;
  };
  std::vector<bf16> t(static_cast<size_t>(count));
  for (auto& x : t) x = float_to_bf16(static_cast<float>((next() + next() + next() - 1.5) * 2.0));
  return t;
}

// The at-scale cases of the TMA kernels' checks (forward and backward, both backward schemes):
// 8k tokens (long loops per CTA, several waves per SM) at d64 and d128, causal or not, and one
// SQA case.
constexpr DeviceScaleCase kTmaScaleCases[] = {{16, 16, 64, 8192, false},
                                              {16, 16, 64, 8192, true},
                                              {16, 16, 128, 8192, false},
                                              {16, 16, 128, 8192, true},
                                              {16, 8, 128, 4096, true}};

// The spec of an at-scale case: its head layout and head dim, causal or no mask.
AttentionSpec scale_case_spec(const DeviceScaleCase& c) {
  AttentionSpec spec;
  spec.heads = HeadLayout{c.hq, c.hkv};
  spec.head_dim = c.d;
  spec.window = c.causal ? Window::causal() : Window::none();
  spec.validate();
  return spec;
}

// Forward parameters of a dense bf16 batch on the device (self-attention, N_q = N_k = n).
AttentionParams dense_bf16_params(const AttentionSpec& spec, int64_t batch, int64_t n,
                                  const void* q, const void* k, const void* v, void* out,
                                  void* lse) {
  AttentionParams f;
  f.spec = spec;
  f.dtype = DType::bf16;
  f.device = Device::cuda;
  f.batch = batch;
  f.seqlen_q = f.seqlen_k = n;
  f.q = q;
  f.k = k;
  f.v = v;
  f.out = out;
  f.lse = static_cast<float*>(lse);
  f.set_contiguous_strides();
  return f;
}

void check_wgmmatma_against_wgmma(const DeviceScaleCase& c, uint64_t seed,
                                  bool deterministic = false) {
  using testing::cuda_host::cuda_ok;
  using testing::cuda_host::DeviceBuffer;
  const AttentionSpec spec = scale_case_spec(c);
  const int ha = spec.heads.num_attention_heads();
  const int64_t n = c.n, d = c.d;
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  auto random_tensor = [&](int64_t count) { return random_bf16(state, count); };
  const std::vector<bf16> hq_ = random_tensor(n * c.hq * d), hk = random_tensor(n * c.hkv * d),
                          hv = random_tensor(n * c.hkv * d), hdo = random_tensor(n * ha * d);
  DeviceBuffer q(hq_.data(), n * c.hq * d * 2), k(hk.data(), n * c.hkv * d * 2),
      v(hv.data(), n * c.hkv * d * 2), dout(hdo.data(), n * ha * d * 2);
  DeviceBuffer out(nullptr, n * ha * d * 2), lse(nullptr, ha * n * 4);
  DeviceBuffer dq(nullptr, n * c.hq * d * 2), dk(nullptr, n * c.hkv * d * 2),
      dv(nullptr, n * c.hkv * d * 2);

  AttentionBackwardParams g;
  AttentionParams& f = g.forward;
  f = dense_bf16_params(spec, 1, n, q.get(), k.get(), v.get(), out.get(), lse.get());
  g.dout = dout.get();
  g.dq = dq.get();
  g.dk = dk.get();
  g.dv = dv.get();
  g.set_contiguous_strides();
  g.deterministic = deterministic;
  cuda::attention_forward(f);
  cuda_ok(cudaDeviceSynchronize(), "forward");

  auto backward = [&](const char* variant) {
    setenv("SQA_CUDA_BWD", variant, 1);
    for (DeviceBuffer* x : {&dq, &dk, &dv}) {  // 0xFFFF: bf16 NaN
      cuda_ok(
          cudaMemset(x->get(), 0xFF, static_cast<size_t>((x == &dq ? c.hq : c.hkv) * n * d * 2)),
          "poison");
    }
    cuda::attention_backward(g);
    cuda_ok(cudaDeviceSynchronize(), variant);
    std::vector<std::vector<bf16>> r;
    for (DeviceBuffer* x : {&dq, &dk, &dv}) {
      std::vector<bf16> h(static_cast<size_t>((x == &dq ? c.hq : c.hkv) * n * d));
      cuda_ok(cudaMemcpy(h.data(), x->get(), h.size() * 2, cudaMemcpyDeviceToHost), "D2H");
      r.push_back(std::move(h));
    }
    return r;
  };
  const auto ref = backward("wgmma");
  const auto got = backward("wgmmatma");
  unsetenv("SQA_CUDA_BWD");
  const char* names[] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i) {
    const double err = relative_frobenius(got[i], ref[i]);
    EXPECT_LT(err, 5e-3) << names[i] << ": H_q " << c.hq << " H_kv " << c.hkv << " d " << c.d
                         << " N " << c.n << (c.causal ? " causal" : "")
                         << (deterministic ? " deterministic" : "") << ": relative error " << err;
    if (deterministic) {
      EXPECT_TRUE(std::memcmp(got[i].data(), ref[i].data(), got[i].size() * sizeof(bf16)) == 0)
          << names[i] << ": H_q " << c.hq << " H_kv " << c.hkv << " d " << c.d << " N " << c.n
          << (c.causal ? " causal" : "")
          << ": deterministic wgmmatma and wgmma differ (relative error " << err << ")";
    }
  }
}

TEST(CudaBackward, WgmmaTmaMatchesWgmmaAtScale) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 4242;
  for (const DeviceScaleCase& c : kTmaScaleCases) check_wgmmatma_against_wgmma(c, seed++);
}

// The same at-scale cases in the deterministic scheme: wgmmatma's kDq = false form against the
// wgmma kernel's, bit for bit (see check_wgmmatma_against_wgmma).
TEST(CudaBackward, WgmmaTmaDeterministicMatchesWgmmaAtScale) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 5353;
  for (const DeviceScaleCase& c : kTmaScaleCases) check_wgmmatma_against_wgmma(c, seed++, true);
}

// One forward variant against another (default: wgmmatma, the TMA producer warpgroup, against
// wgmmapp, the same kernel with cp.async loads: the same wgmmas and softmax, so the outputs
// should agree bit for bit; also wgmmatma3 against wgmmatma) at the sizes where
// the backward's TMA form first went wrong while its small-scale tests passed (8k tokens: 64 key
// blocks per CTA, the stages reused ~21 times, several waves of CTAs per SM), dense bf16; batch
// 2 in one case (the maps' batch coordinate). Outputs and lse NaN-poisoned before each run; O
// must agree to a relative Frobenius error below 1e-3 and lse to 1e-3 absolute.
void check_fwd_variant_against(const DeviceScaleCase& c, int batch, uint64_t seed,
                               const char* ref_variant = "wgmmapp",
                               const char* variant = "wgmmatma") {
  using testing::cuda_host::cuda_ok;
  using testing::cuda_host::DeviceBuffer;
  const AttentionSpec spec = scale_case_spec(c);
  const int ha = spec.heads.num_attention_heads();
  const int64_t n = c.n, d = c.d, b = batch;
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  const std::vector<bf16> hq_ = random_bf16(state, b * n * c.hq * d),
                          hk = random_bf16(state, b * n * c.hkv * d),
                          hv = random_bf16(state, b * n * c.hkv * d);
  DeviceBuffer q(hq_.data(), b * n * c.hq * d * 2), k(hk.data(), b * n * c.hkv * d * 2),
      v(hv.data(), b * n * c.hkv * d * 2);
  DeviceBuffer out(nullptr, b * n * ha * d * 2), lse(nullptr, b * ha * n * 4);
  AttentionParams f =
      dense_bf16_params(spec, batch, n, q.get(), k.get(), v.get(), out.get(), lse.get());
  auto forward = [&](const char* variant) {
    setenv("SQA_CUDA_FWD", variant, 1);
    // 0xFF bytes: NaN in bf16 and in fp32
    cuda_ok(cudaMemset(out.get(), 0xFF, static_cast<size_t>(b * n * ha * d * 2)), "poison");
    cuda_ok(cudaMemset(lse.get(), 0xFF, static_cast<size_t>(b * ha * n * 4)), "poison");
    cuda::attention_forward(f);
    cuda_ok(cudaDeviceSynchronize(), variant);
    std::vector<bf16> o(static_cast<size_t>(b * n * ha * d));
    std::vector<float> l(static_cast<size_t>(b * ha * n));
    cuda_ok(cudaMemcpy(o.data(), out.get(), o.size() * 2, cudaMemcpyDeviceToHost), "D2H");
    cuda_ok(cudaMemcpy(l.data(), lse.get(), l.size() * 4, cudaMemcpyDeviceToHost), "D2H");
    return std::make_pair(o, l);
  };
  const auto ref = forward(ref_variant);
  const auto got = forward(variant);
  unsetenv("SQA_CUDA_FWD");
  const std::string label = std::string(variant) + " vs " + ref_variant + ": H_q " +
                            std::to_string(c.hq) + " H_kv " + std::to_string(c.hkv) + " d " +
                            std::to_string(c.d) + " N " + std::to_string(c.n) + " batch " +
                            std::to_string(batch) + (c.causal ? " causal" : "");
  const double err = relative_frobenius(got.first, ref.first);
  EXPECT_LT(err, 1e-3) << "O: " << label << ": relative error " << err;
  double lse_err = 0.0;
  // A NaN (an unwritten entry) sticks and fails; every row sees a key here, so no -inf.
  for (size_t i = 0; i < ref.second.size() && !std::isnan(lse_err); ++i) {
    const double e = std::fabs(static_cast<double>(got.second[i]) - ref.second[i]);
    if (std::isnan(e) || e > lse_err) lse_err = e;
  }
  EXPECT_LT(lse_err, 1e-3) << "lse: " << label << ": max abs error " << lse_err;
}

TEST(CudaForward, WgmmaTmaMatchesPingPongAtScale) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 5252;
  for (const DeviceScaleCase& c : kTmaScaleCases) check_fwd_variant_against(c, 1, seed++);
  check_fwd_variant_against({8, 8, 128, 4096, false}, 2, seed++);
}

// wgmmatma3 (three consumer warpgroups, 192-row tiles) against wgmmatma at 8k tokens, D = 64
// MHA with and without the causal mask (64 key blocks per CTA, the stages reused ~21 times;
// 8192 = 42 x 192 + 128, so the last tile is partial). The row split differs (192 vs 128 rows
// per CTA) but every row's key blocks, their order and the arithmetic per row are the same, so
// the outputs should agree bit for bit; the tolerance is that of the test above.
TEST(CudaForward, WgmmaTma3MatchesTmaAtScale) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 5454;
  for (const bool causal : {false, true}) {
    check_fwd_variant_against({16, 16, 64, 8192, causal}, 1, seed++, "wgmmatma", "wgmmatma3");
  }
  check_fwd_variant_against({8, 8, 64, 4096, true}, 2, seed++, "wgmmatma", "wgmmatma3");
}

// SQA_CUDA_BWD picks the dK/dV kernel here too (device session: wgmma, wgmmatma). Besides the
// random cases, one GQA causal case per head dim in both schemes, so every kernel the variable
// names (the wgmma one at D = 32 too; with wgmmatma the deterministic TMA form) runs under the
// sanitizers whatever the draw.
TEST(CudaBackward, SanitizerSmoke) {
  SKIP_WITHOUT_GPU();
  testing::CaseLimits limits = cuda_backward_limits();
  limits.max_seqlen = 160;
  limits.max_work = 2e5;
  for (const auto& c : testing::generate_cases(limits, 8, 8008)) expect_backward_ok(c);
  uint64_t seed = 8100;
  for (int d : limits.head_dims) {
    testing::HarnessCase c;
    c.spec = make_spec(Variant::gqa, 8, d, Window::causal());
    c.dtype = DType::bf16;
    c.seqlen_q = 130;
    c.seqlen_k = 150;
    c.seed = seed++;
    expect_backward_ok(c);
    bool repeats = false;
    const testing::CheckResult r = check_deterministic_backward(c, repeats);
    EXPECT_TRUE(r.ok) << "deterministic: " << r.message;
    EXPECT_TRUE(repeats) << "deterministic: differs between two runs, d = " << d;
  }
}

// ---- validation: the message names the value and the rule --------------------------------

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

AttentionParams dummy_params(int head_dim, DType dtype) {
  static std::vector<unsigned char> buffer(1 << 16);
  AttentionParams p;
  p.spec = make_spec(Variant::sqa, 8, head_dim);
  p.dtype = dtype;
  p.device = Device::cuda;
  p.batch = 1;
  p.seqlen_q = p.seqlen_k = 4;
  p.q = p.k = p.v = p.out = buffer.data();
  p.set_contiguous_strides();
  return p;
}

TEST(CudaValidation, RejectsUnsupportedHeadDim) {
  expect_error([] { cuda::attention_forward(dummy_params(48, DType::bf16)); },
               {"head_dim (48)", "16, 32, 64, 128 or 256"});
}

TEST(CudaValidation, RejectsUnsupportedDtype) {
  expect_error([] { cuda::attention_forward(dummy_params(64, DType::f32)); },
               {"f32", "bf16 or f16"});
}

TEST(CudaValidation, RejectsMisalignedStrides) {
  AttentionParams p = dummy_params(64, DType::bf16);
  p.q_strides.row = 68;
  expect_error([&] { cuda::attention_forward(p); }, {"q strides", "68", "multiples of 8"});
}

TEST(CudaValidation, RejectsHostPointers) {
  SKIP_WITHOUT_GPU();
  expect_error([] { cuda::attention_forward(dummy_params(64, DType::bf16)); },
               {"q must point to CUDA device memory"});
}

// SQA_CUDA_FWD picks a prefill kernel for A/B runs; a name it does not know is an error that
// names the value and the choices (host code only: no GPU needed).
TEST(CudaValidation, ForwardVariantFromTheEnvironment) {
  setenv("SQA_CUDA_FWD", "sum2occ", 1);
  EXPECT_EQ(cuda::detail::fwd_variant(), cuda::detail::FwdVariant::sum2occ);
  setenv("SQA_CUDA_FWD", "fastest", 1);
  expect_error([] { cuda::detail::fwd_variant(); },
               {"SQA_CUDA_FWD (fastest)",
                "base, ilp, occ, pipe, sum2, sum2occ, sum2occq, wgmma, wgmmapp, wgmmatma or "
                "wgmmatma3"});
  setenv("SQA_CUDA_FWD", "wgmma", 1);
  EXPECT_EQ(cuda::detail::fwd_variant(), cuda::detail::FwdVariant::wgmma);
  setenv("SQA_CUDA_FWD", "wgmmapp", 1);
  EXPECT_EQ(cuda::detail::fwd_variant(), cuda::detail::FwdVariant::wgmmapp);
  setenv("SQA_CUDA_FWD", "wgmmatma", 1);
  EXPECT_EQ(cuda::detail::fwd_variant(), cuda::detail::FwdVariant::wgmmatma);
  setenv("SQA_CUDA_FWD", "wgmmatma3", 1);
  EXPECT_EQ(cuda::detail::fwd_variant(), cuda::detail::FwdVariant::wgmmatma3);
  unsetenv("SQA_CUDA_FWD");
  EXPECT_EQ(cuda::detail::fwd_variant(), cuda::detail::FwdVariant::automatic);
}

TEST(CudaValidation, BackwardVariantFromTheEnvironment) {
  setenv("SQA_CUDA_BWD", "occ", 1);
  EXPECT_EQ(cuda::detail::bwd_variant(), cuda::detail::BwdVariant::occ);
  setenv("SQA_CUDA_BWD", "fast", 1);
  expect_error([] { cuda::detail::bwd_variant(); },
               {"SQA_CUDA_BWD (fast)", "base, occ, occ2, wgmma or wgmmatma"});
  // The removed variant names are errors now.
  for (const char* gone : {"wgmmak", "wgmma2", "wgmmab"}) {
    setenv("SQA_CUDA_BWD", gone, 1);
    expect_error([] { cuda::detail::bwd_variant(); }, {std::string("SQA_CUDA_BWD (") + gone + ")",
                                                       "base, occ, occ2, wgmma or wgmmatma"});
  }
  // wgmma / wgmmatma name the wgmma kernel at D = 32 too (cp.async-only form there), not at 16.
  setenv("SQA_CUDA_BWD", "wgmma", 1);
  EXPECT_EQ(cuda::detail::bwd_variant(), cuda::detail::BwdVariant::wgmma);
  EXPECT_TRUE(cuda::detail::bwd_dkdv_wgmma(64));
  EXPECT_TRUE(cuda::detail::bwd_dkdv_wgmma(128));
  EXPECT_TRUE(cuda::detail::bwd_dkdv_wgmma(32));
  EXPECT_FALSE(cuda::detail::bwd_dkdv_wgmma(16));
  setenv("SQA_CUDA_BWD", "wgmmatma", 1);  // the same grid and tile (head splits, raster)
  EXPECT_EQ(cuda::detail::bwd_variant(), cuda::detail::BwdVariant::wgmmatma);
  EXPECT_TRUE(cuda::detail::bwd_dkdv_wgmma(64));
  EXPECT_TRUE(cuda::detail::bwd_dkdv_wgmma(128));
  EXPECT_TRUE(cuda::detail::bwd_dkdv_wgmma(32));
  EXPECT_FALSE(cuda::detail::bwd_dkdv_wgmma(16));
  setenv("SQA_CUDA_BWD", "occ", 1);
  EXPECT_FALSE(cuda::detail::bwd_dkdv_wgmma(64));
  EXPECT_FALSE(cuda::detail::bwd_dkdv_wgmma(32));
  unsetenv("SQA_CUDA_BWD");
  EXPECT_EQ(cuda::detail::bwd_variant(), cuda::detail::BwdVariant::automatic);
  EXPECT_TRUE(cuda::detail::bwd_dkdv_wgmma(64));  // the default at D = 64 and 128
  EXPECT_TRUE(cuda::detail::bwd_dkdv_wgmma(128));
  EXPECT_FALSE(cuda::detail::bwd_dkdv_wgmma(32));  // D = 32: the mma.sync kernel (occ)
  EXPECT_FALSE(cuda::detail::bwd_dkdv_wgmma(16));
}

TEST(CudaValidation, BackwardRejectsHeadDim256) {
  AttentionBackwardParams g;
  g.forward = dummy_params(256, DType::bf16);
  static std::vector<unsigned char> buffer(1 << 20);
  g.forward.lse = reinterpret_cast<float*>(buffer.data());
  g.dout = g.dq = g.dk = g.dv = buffer.data();
  g.set_contiguous_strides();
  expect_error([&] { cuda::attention_backward(g); }, {"head_dim (256)", "16, 32, 64 or 128"});
}

// SQA_CUDA_RASTER reorders the CTAs of the wgmma forward and of the dK/dV kernels (heads, or
// (KV head, split) units, taken N at a time); the results must not change: forward and the
// deterministic backward against the reference and bit-exact across repeats, the atomic-dQ
// backward against the reference. Unset: the default (the backward takes 4 of MHA's 16 units
// at a time); 3 divides none of the unit counts and falls back to all of them; a value that is
// not a count is an error naming it.
TEST(CudaBackward, RasterChunksMatchReference) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 4242;
  for (const char* raster : {"", "1", "2", "3"}) {
    if (*raster == '\0') {
      unsetenv("SQA_CUDA_RASTER");
    } else {
      setenv("SQA_CUDA_RASTER", raster, 1);
    }
    for (Variant v : {Variant::mha, Variant::gqa, Variant::xsmqa}) {
      for (int d : {64, 128}) {
        for (const Window& w : {Window::none(), Window::causal()}) {
          const testing::HarnessCase c =
              two_sequence_case(v, 16, d, w, seed++, testing::small_scale() ? 150 : 300, 41);
          const std::string label = std::string("SQA_CUDA_RASTER=") + raster + ", " +
                                    std::string(variant_name(v)) + ", d " + std::to_string(d);
          testing::CheckResult r = testing::check_forward(c, cuda_forward_via_host);
          EXPECT_TRUE(r.ok) << label << " (forward): " << r.message;
          r = testing::check_backward(c, cuda_backward_via_host);
          EXPECT_TRUE(r.ok) << label << " (backward): " << r.message;
          bool repeats = false;
          r = check_deterministic_backward(c, repeats);
          EXPECT_TRUE(r.ok) << label << " (deterministic): " << r.message;
          EXPECT_TRUE(repeats) << label;
        }
      }
    }
  }
  setenv("SQA_CUDA_RASTER", "four", 1);
  testing::HarnessCase c;
  c.spec = make_spec(Variant::mha, 4, 64, Window::causal());
  c.dtype = DType::bf16;
  c.seqlen_q = c.seqlen_k = 64;
  expect_error([&] { testing::check_forward(c, cuda_forward_via_host); },
               {"SQA_CUDA_RASTER (four)", "non-negative integer"});
  unsetenv("SQA_CUDA_RASTER");
}

}  // namespace
}  // namespace sqa
