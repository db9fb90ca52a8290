// Kernel lab for the CPU fast path (not a test): times the fast forward/backward, the decode
// split-KV path, OpenBLAS sgemm and a multi-threaded memcpy in the same run, and prints each
// kernel as GFLOP/s, % of sgemm, speed-up over MHA and the decode bandwidth fraction. Times are
// the best of several repetitions because the 2-core machine is shared.
//   attention_lab [--seq N] [--heads H] [--head-dim D] [--repeats R] [--decode-keys NK]
//                 [--causal] [--bf16] [--skip-backward]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/ceilings.hpp"
#include "sqa/attention.hpp"
#include "sqa/dtype.hpp"
#include "sqa/spec.hpp"

namespace {

struct Options {
  int64_t seq = 4096;
  int heads = 16;
  int head_dim = 64;
  int repeats = 3;  // rounds
  int64_t decode_keys = 32768;
  bool causal = false;
  bool bf16 = false;
  bool backward = true;
};

// Random tensors for one problem, in the chosen dtype.
struct Problem {
  sqa::AttentionBackwardParams g;
  std::vector<uint16_t> q16, k16, v16, o16, do16, dq16, dk16, dv16;
  std::vector<float> q, k, v, o, dout, dq, dk, dv, lse;

  Problem(const sqa::AttentionSpec& spec, int64_t nq, int64_t nk, bool bf16) {
    sqa::AttentionParams& p = g.forward;
    p.spec = spec;
    p.dtype = bf16 ? sqa::DType::bf16 : sqa::DType::f32;
    p.batch = 1;
    p.seqlen_q = nq;
    p.seqlen_k = nk;
    const int d = spec.head_dim;
    const int64_t nqe = nq * spec.heads.num_query_heads * d;
    const int64_t nke = nk * spec.heads.num_kv_heads * d;
    const int64_t noe = nq * spec.heads.num_attention_heads() * d;
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto fill = [&](std::vector<float>& f, std::vector<uint16_t>& h, int64_t n, bool random) {
      f.resize(static_cast<size_t>(n));
      if (random)
        for (float& x : f) x = normal(rng);
      if (bf16) {
        h.resize(static_cast<size_t>(n));
        for (size_t i = 0; i < h.size(); ++i) h[i] = sqa::float_to_bf16(f[i]).bits;
      }
    };
    fill(q, q16, nqe, true);
    fill(k, k16, nke, true);
    fill(v, v16, nke, true);
    fill(dout, do16, noe, true);
    fill(o, o16, noe, false);
    fill(dq, dq16, nqe, false);
    fill(dk, dk16, nke, false);
    fill(dv, dv16, nke, false);
    lse.resize(static_cast<size_t>(nq * spec.heads.num_attention_heads()));
    auto ptr = [&](std::vector<float>& f, std::vector<uint16_t>& h) -> void* {
      return bf16 ? static_cast<void*>(h.data()) : static_cast<void*>(f.data());
    };
    p.q = ptr(q, q16);
    p.k = ptr(k, k16);
    p.v = ptr(v, v16);
    p.out = ptr(o, o16);
    p.lse = lse.data();
    g.dout = ptr(dout, do16);
    g.dq = ptr(dq, dq16);
    g.dk = ptr(dk, dk16);
    g.dv = ptr(dv, dv16);
    g.set_contiguous_strides();
  }
};

}  // namespace

int main(int argc, char** argv) {
  sqa::reexec_with_fast_openblas_core(argv);
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() { return i + 1 < argc ? std::atoll(argv[++i]) : 0LL; };
    if (a == "--seq")
      opt.seq = next();
    else if (a == "--heads")
      opt.heads = static_cast<int>(next());
    else if (a == "--head-dim")
      opt.head_dim = static_cast<int>(next());
    else if (a == "--repeats")
      opt.repeats = static_cast<int>(next());
    else if (a == "--decode-keys")
      opt.decode_keys = next();
    else if (a == "--causal")
      opt.causal = true;
    else if (a == "--bf16")
      opt.bf16 = true;
    else if (a == "--skip-backward")
      opt.backward = false;
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  std::printf("simd path %s, dtype %s, %d rounds (best of each kernel over rounds)\n",
              sqa::cpu::simd_path(), opt.bf16 ? "bf16" : "f32", opt.repeats);
  // Rounds interleave every kernel and the sgemm peer, and each keeps its best time, so a burst
  // of load from other processes on the shared machine does not land on one kernel only.
  const sqa::Window window = opt.causal ? sqa::Window::causal() : sqa::Window::none();
  const std::vector<sqa::Variant> variants = {
      sqa::Variant::mha,  sqa::Variant::gqa,  sqa::Variant::mqa, sqa::Variant::sqa,
      sqa::Variant::ssqa, sqa::Variant::xsqa, sqa::Variant::rsqa};
  std::vector<double> fwd(variants.size(), 1e30), bwd(variants.size(), 1e30);
  double sgemm = 0, copy = 0;
  std::string core;
  for (int round = 0; round < opt.repeats; ++round) {
    const sqa::SgemmCeiling sg = sqa::measure_sgemm(4096, 1);
    sgemm = std::max(sgemm, sg.gflops);
    core = sg.corename;
    copy = std::max(copy, sqa::measure_memcpy(size_t{256} << 20, 2).gbps);
    for (size_t vi = 0; vi < variants.size(); ++vi) {
      const sqa::AttentionSpec spec = sqa::make_spec(variants[vi], opt.heads, opt.head_dim, window);
      Problem pr(spec, opt.seq, opt.seq, opt.bf16);
      fwd[vi] = std::min(
          fwd[vi], sqa::time_runs([&] { sqa::cpu::attention_forward(pr.g.forward); }, 0, 1).best);
      if (opt.backward)
        bwd[vi] = std::min(bwd[vi],
                           sqa::time_runs([&] { sqa::cpu::attention_backward(pr.g); }, 0, 1).best);
    }
  }
  std::printf("sgemm %.1f GFLOP/s (core %s); memcpy %.1f GB/s (read+write)\n", sgemm, core.c_str(),
              copy);
  std::printf("%-6s %4s %4s %10s %9s %7s %8s %10s %9s %7s %8s\n", "var", "hq", "hkv", "fwd s",
              "GFLOP/s", "%sgemm", "speedup", "bwd s", "GFLOP/s", "%sgemm", "speedup");
  for (size_t vi = 0; vi < variants.size(); ++vi) {
    const sqa::AttentionSpec spec = sqa::make_spec(variants[vi], opt.heads, opt.head_dim, window);
    const double ff = sqa::attention_forward_flops(spec, 1, opt.seq, opt.seq) / fwd[vi] / 1e9;
    const double bf = opt.backward
                          ? sqa::attention_backward_flops(spec, 1, opt.seq, opt.seq) / bwd[vi] / 1e9
                          : 0.0;
    std::printf("%-6s %4d %4d %10.4f %9.1f %6.1f%% %7.2fx %10.4f %9.1f %6.1f%% %7.2fx\n",
                std::string(sqa::variant_name(variants[vi])).c_str(), spec.heads.num_query_heads,
                spec.heads.num_kv_heads, fwd[vi], ff, 100 * ff / sgemm, fwd[0] / fwd[vi],
                opt.backward ? bwd[vi] : 0.0, bf, 100 * bf / sgemm,
                opt.backward ? bwd[0] / bwd[vi] : 0.0);
  }

  // Decode: one query row against a long cache; memory bound on the K and V bytes, except with a
  // large query group (mqa, G = 16), where the scores and P V are compute-shaped.
  for (sqa::Variant v : {sqa::Variant::mha, sqa::Variant::gqa, sqa::Variant::mqa,
                         sqa::Variant::xsqa, sqa::Variant::xsmqa}) {
    const sqa::AttentionSpec spec = sqa::make_spec(v, opt.heads, opt.head_dim);
    Problem pr(spec, 1, opt.decode_keys, opt.bf16);
    sqa::CacheFlusher flusher;
    const sqa::Timing t = sqa::time_runs([&] { sqa::cpu::attention_forward(pr.g.forward); }, 1,
                                         opt.repeats + 2, [&] { flusher.flush(); });
    const double bytes = 2.0 * static_cast<double>(opt.decode_keys) * spec.heads.num_kv_heads *
                         spec.head_dim * (opt.bf16 ? 2 : 4);
    const double gbps = bytes / t.best / 1e9;
    std::printf("decode %-5s N_k=%lld: %.3f ms, K+V %.1f GB/s = %.0f%% of memcpy\n",
                std::string(sqa::variant_name(v)).c_str(), static_cast<long long>(opt.decode_keys),
                1e3 * t.best, gbps, 100 * gbps / copy);
  }
  return 0;
}
