// `sqa bench attention`: times the CPU fast attention for each variant of one baseline head
// count H over a range of sequence lengths, and compares it with ceilings measured in the same
// run: OpenBLAS sgemm GFLOP/s (compute-bound passes) and multi-threaded memcpy GB/s (decode).
//
// Reported time = best (minimum) of --repeat timed runs after --warmup untimed runs; the median
// is kept in the JSON too. --rounds R runs the whole set of rows R times in turn and keeps each
// row's best over the rounds: on a shared machine a slow spell then hits one round of every
// variant rather than all the runs of one. The sgemm ceiling is likewise the best of its runs, so
// the two sides of "% of sgemm" are measured the same way. FLOPs come from sqa::attention_*_flops
// (the single home of FLOP counting), never re-derived here.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <limits>
#include <memory>
#include <new>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/build_info.hpp"
#include "core/ceilings.hpp"
#include "core/cpu_info.hpp"
#include "sqa/args.hpp"
#include "sqa/attention.hpp"
#include "sqa/commands.hpp"
#include "sqa/error.hpp"

namespace sqa::cli {

namespace {

// ---- Options --------------------------------------------------------------------------------

struct BenchOptions {
  int heads = 16;
  int head_dim = 64;
  std::vector<int64_t> seqlens{1024, 4096};
  std::vector<Variant> variants;
  int batch = 1;
  bool causal = false;
  int window = 0;  // causal sliding window of this many tokens; 0 = none
  DType dtype = DType::f32;
  bool backward = false;
  bool decode_only = false;             // --decode: decode rows against each --seq value
  std::vector<int64_t> decode_seqlens;  // N_k of the decode rows
  int repeat = 3;
  int rounds = 1;
  int warmup = 1;
  int sgemm_size = 4096;
  int memcpy_mib = 256;
  std::string json_path;

  Window mask() const {
    if (window > 0) return Window::sliding(window);
    return causal ? Window::causal() : Window::none();
  }
};

constexpr const char* kUsage =
    "usage: sqa bench attention [options]\n"
    "  --heads H          baseline heads (default 16)\n"
    "  --head-dim d       head dimension (default 64)\n"
    "  --seq N[,N...]     sequence lengths (default 1024,4096)\n"
    "  --variants LIST    default mha,gqa,mqa,sqa,ssqa,xsqa,xsmqa,lsqa,rsqa\n"
    "  --batch B          default 1\n"
    "  --causal           causal mask\n"
    "  --window W         causal sliding window of W tokens\n"
    "  --dtype f32|bf16   input/output type (fp32 accumulation), default f32\n"
    "  --backward         also time the backward pass (rows with pass bwd)\n"
    "  --decode           only decode rows: N_q = 1 against N_k = each --seq value\n"
    "  --decode-seq N,..  add decode rows at these N_k after the fwd/bwd rows\n"
    "  --repeat R         timed runs per row, the best is reported (default 3)\n"
    "  --rounds R         run every row R times in turn, best over the rounds (default 1)\n"
    "  --warmup W         untimed runs before timing (default 1)\n"
    "  --sgemm-size S     square size of the sgemm ceiling (default 4096)\n"
    "  --memcpy-mib M     buffer of the memcpy ceiling in MiB (default 256)\n"
    "  --json FILE        write the rows as a JSON array\n";

int int_option(const Args& args, const std::string& key, long long fallback, long long min,
               long long max, const char* rule) {
  const long long v = args.get_int(key, fallback);
  require(v >= min && v <= max, "option --", key, " (", v, ") must be ", rule);
  return static_cast<int>(v);
}

std::vector<int64_t> seq_option(const Args& args, const std::string& key,
                                const std::vector<int64_t>& fallback) {
  std::vector<long long> raw(fallback.begin(), fallback.end());
  raw = args.get_int_list(key, raw);
  require(!raw.empty(), "option --", key, " needs at least one sequence length");
  std::vector<int64_t> out;
  for (long long n : raw) {
    require(n >= 1 && n <= (int64_t{1} << 24), "option --", key, ": sequence length (", n,
            ") must be in [1, 16777216]");
    out.push_back(n);
  }
  return out;
}

BenchOptions parse_options(const Args& args) {
  args.reject_unknown({"heads", "head-dim", "seq", "variants", "batch", "causal", "window", "dtype",
                       "backward", "decode", "decode-seq", "repeat", "rounds", "warmup",
                       "sgemm-size", "memcpy-mib", "json", "help"});
  BenchOptions o;
  o.heads = int_option(args, "heads", o.heads, 1, 4096, "in [1, 4096]");
  o.head_dim = int_option(args, "head-dim", o.head_dim, kMinHeadDim, kMaxHeadDim,
                          "in [1, 256] (the supported head_dim range)");
  o.seqlens = seq_option(args, "seq", o.seqlens);
  for (const std::string& name : args.get_list(
           "variants", {"mha", "gqa", "mqa", "sqa", "ssqa", "xsqa", "xsmqa", "lsqa", "rsqa"})) {
    const Variant v = parse_variant(name);
    require(std::find(o.variants.begin(), o.variants.end(), v) == o.variants.end(),
            "option --variants lists '", name, "' twice");
    o.variants.push_back(v);
  }
  require(!o.variants.empty(), "option --variants needs at least one variant");
  // MHA first: every other row's speed-up is relative to it, and rows print as they finish.
  std::stable_partition(o.variants.begin(), o.variants.end(),
                        [](Variant v) { return v == Variant::mha; });
  o.batch = int_option(args, "batch", o.batch, 1, 1 << 20, "at least 1");
  o.causal = args.flag("causal");
  if (args.has("window")) {
    o.window = int_option(args, "window", 0, 1, std::numeric_limits<int>::max(),
                          "at least 1 (a causal sliding window of W tokens)");
  }
  const std::string dtype_name_text = args.get("dtype", "f32");
  o.dtype = parse_dtype(dtype_name_text);
  require(o.dtype == DType::f32 || o.dtype == DType::bf16, "option --dtype (", dtype_name_text,
          ") must be f32 or bf16 for the CPU kernels");
  o.backward = args.flag("backward");
  o.decode_only = args.flag("decode");
  if (o.decode_only) {
    require(!args.has("decode-seq"), "--decode uses the --seq values as N_k; drop --decode-seq");
    require(!o.backward, "--decode times the forward only; drop --backward");
    o.decode_seqlens = o.seqlens;
  } else if (args.has("decode-seq")) {
    o.decode_seqlens = seq_option(args, "decode-seq", {});
  }
  o.repeat = int_option(args, "repeat", o.repeat, 1, 100000, "at least 1");
  o.rounds = int_option(args, "rounds", o.rounds, 1, 1000, "in [1, 1000]");
  o.warmup = int_option(args, "warmup", o.warmup, 0, 100000, "at least 0");
  o.sgemm_size = int_option(args, "sgemm-size", o.sgemm_size, 64, 16384, "in [64, 16384]");
  o.memcpy_mib = int_option(args, "memcpy-mib", o.memcpy_mib, 8, 1 << 16,
                            "in [8, 65536] (well above the last-level cache)");
  o.json_path = args.get("json", "");
  if (args.has("json")) require(!o.json_path.empty(), "option --json needs a file name");

  // Check every spec before any time is spent measuring: errors name H and the rule.
  for (Variant v : o.variants) make_spec(v, o.heads, o.head_dim, o.mask()).validate();
  return o;
}

// ---- Tensors --------------------------------------------------------------------------------

// Contiguous buffer of `count` elements of `dtype`, 64-byte aligned for the SIMD kernels.
class Tensor {
 public:
  Tensor(DType dtype, size_t count)
      : dtype_(dtype),
        count_(count),
        data_(static_cast<std::byte*>(
            ::operator new[](std::max<size_t>(bytes(), 64), std::align_val_t{64}))) {}

  void* data() { return data_.get(); }
  size_t bytes() const { return count_ * static_cast<size_t>(dtype_size(dtype_)); }

  // Fresh N(0, 1) values: random inputs exercise the softmax the way real activations do
  // (zeros would make every row uniform).
  void fill_random(std::mt19937_64& rng) {
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (size_t i = 0; i < count_; ++i) store(i, dist(rng));
  }
  // NaN everywhere, so an element the kernel never writes shows up in the finite check.
  void poison() {
    for (size_t i = 0; i < count_; ++i) store(i, std::numeric_limits<float>::quiet_NaN());
  }
  bool all_finite() const {
    for (size_t i = 0; i < count_; ++i) {
      if (!std::isfinite(load(i))) return false;
    }
    return true;
  }

 private:
  struct AlignedDelete {
    void operator()(std::byte* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };
  void store(size_t i, float x) {
    if (dtype_ == DType::bf16) {
      reinterpret_cast<bf16*>(data_.get())[i] = float_to_bf16(x);
    } else {
      reinterpret_cast<float*>(data_.get())[i] = x;
    }
  }
  float load(size_t i) const {
    if (dtype_ == DType::bf16) return bf16_to_float(reinterpret_cast<const bf16*>(data_.get())[i]);
    return reinterpret_cast<const float*>(data_.get())[i];
  }

  DType dtype_;
  size_t count_;
  std::unique_ptr<std::byte[], AlignedDelete> data_;
};

// ---- Rows -----------------------------------------------------------------------------------

struct Row {
  std::string pass;  // "fwd", "bwd" or "decode"
  Variant variant;
  HeadLayout heads;
  int64_t seqlen_q = 0;
  int64_t seqlen_k = 0;  // the `n` of the row
  Timing timing;
  double flops = 0.0;
  double gflops = 0.0;
  double pct_of_sgemm = 0.0;
  std::optional<double> speedup_vs_mha;
  double kv_bytes = 0.0;  // decode: K and V bytes the step must read
  double gbps = 0.0;      // decode: kv_bytes / seconds
  double pct_of_memcpy = 0.0;
};

struct Ceilings {
  SgemmCeiling sgemm_start, sgemm_end;
  MemcpyCeiling memcpy_start, memcpy_end;  // the end one only when there are decode rows
  double sgemm_gflops() const { return std::max(sgemm_start.gflops, sgemm_end.gflops); }
  double memcpy_gbps() const { return std::max(memcpy_start.gbps, memcpy_end.gbps); }
};

std::mt19937_64 row_rng(const BenchOptions& o, Variant v, int64_t n, const std::string& pass) {
  // Fixed per row, so reruns see the same inputs; different across rows.
  std::seed_seq seq{static_cast<int>(v),
                    static_cast<int>(n),
                    static_cast<int>(pass.size()),
                    o.head_dim,
                    o.heads,
                    o.batch};
  return std::mt19937_64(seq);
}

// Times one (variant, N_q, N_k) case: the forward, and with `backward` the backward too.
std::vector<Row> run_case(const BenchOptions& o, Variant v, int64_t seqlen_q, int64_t seqlen_k,
                          bool backward, CacheFlusher* flusher, const std::string& fwd_pass) {
  AttentionParams p;
  p.spec = make_spec(v, o.heads, o.head_dim, o.mask());
  p.dtype = o.dtype;
  p.device = Device::cpu;
  p.batch = o.batch;
  p.seqlen_q = seqlen_q;
  p.seqlen_k = seqlen_k;
  const HeadLayout heads = p.spec.heads;
  const size_t b = static_cast<size_t>(o.batch), d = static_cast<size_t>(o.head_dim);
  const size_t q_count = b * static_cast<size_t>(seqlen_q) * heads.num_query_heads * d;
  const size_t kv_count = b * static_cast<size_t>(seqlen_k) * heads.num_kv_heads * d;
  const size_t out_count = b * static_cast<size_t>(seqlen_q) * heads.num_attention_heads() * d;
  Tensor q(o.dtype, q_count), k(o.dtype, kv_count), v_(o.dtype, kv_count), out(o.dtype, out_count);
  Tensor lse(DType::f32, b * heads.num_attention_heads() * static_cast<size_t>(seqlen_q));
  std::mt19937_64 rng = row_rng(o, v, seqlen_k, fwd_pass);
  q.fill_random(rng);
  k.fill_random(rng);
  v_.fill_random(rng);
  out.poison();
  lse.poison();
  p.q = q.data();
  p.k = k.data();
  p.v = v_.data();
  p.out = out.data();
  p.lse = static_cast<float*>(lse.data());
  p.set_contiguous_strides();
  p.validate();

  std::vector<Row> rows;
  Row fwd;
  fwd.pass = fwd_pass;
  fwd.variant = v;
  fwd.heads = heads;
  fwd.seqlen_q = seqlen_q;
  fwd.seqlen_k = seqlen_k;
  std::function<void()> before;
  if (flusher) before = [flusher] { flusher->flush(); };
  fwd.timing = time_runs([&] { cpu::attention_forward(p); }, o.warmup, o.repeat, before);
  require(out.all_finite() && lse.all_finite(), "variant ", variant_name(v), " N=", seqlen_k,
          ": the forward left non-finite values in out or lse");
  fwd.flops = attention_forward_flops(p.spec, o.batch, seqlen_q, seqlen_k);
  if (seqlen_q == 1) {
    // The bytes a decode step cannot avoid reading: every visible key and value row once.
    fwd.kv_bytes = 2.0 * static_cast<double>(visible_pairs(p.spec.window, 1, seqlen_k)) *
                   static_cast<double>(o.batch) * heads.num_kv_heads * o.head_dim *
                   dtype_size(o.dtype);
  }
  rows.push_back(fwd);
  if (!backward) return rows;

  AttentionBackwardParams g;
  g.forward = p;
  Tensor dout(o.dtype, out_count), dq(o.dtype, q_count), dk(o.dtype, kv_count),
      dv(o.dtype, kv_count);
  dout.fill_random(rng);
  dq.poison();
  dk.poison();
  dv.poison();
  g.dout = dout.data();
  g.dq = dq.data();
  g.dk = dk.data();
  g.dv = dv.data();
  g.set_contiguous_strides();
  g.validate();
  Row bwd = fwd;
  bwd.pass = "bwd";
  bwd.timing = time_runs([&] { cpu::attention_backward(g); }, o.warmup, o.repeat);
  require(dq.all_finite() && dk.all_finite() && dv.all_finite(), "variant ", variant_name(v),
          " N=", seqlen_k, ": the backward left non-finite values in dq, dk or dv");
  bwd.flops = attention_backward_flops(p.spec, o.batch, seqlen_q, seqlen_k);
  rows.push_back(bwd);
  return rows;
}

void finish_row(Row& r, const Ceilings& c, const std::vector<Row>& done) {
  r.gflops = r.flops / r.timing.best * 1e-9;
  r.pct_of_sgemm = 100.0 * r.gflops / c.sgemm_gflops();
  r.gbps = r.kv_bytes / r.timing.best * 1e-9;
  r.pct_of_memcpy = 100.0 * r.gbps / c.memcpy_gbps();
  for (const Row& m : done) {
    if (m.variant == Variant::mha && m.pass == r.pass && m.seqlen_k == r.seqlen_k) {
      r.speedup_vs_mha = m.timing.best / r.timing.best;
    }
  }
  if (r.variant == Variant::mha) r.speedup_vs_mha = 1.0;
}

void print_header(bool decode) {
  std::printf("%-6s %-6s %4s %4s %7s %11s %9s %8s %7s", "pass", "variant", "H_q", "H_kv", "N",
              "time ms", "GFLOP/s", "% sgemm", "vs MHA");
  if (decode) std::printf(" %8s %9s", "GB/s", "% memcpy");
  std::printf("\n");
}

void print_row(const Row& r) {
  char speedup[32] = "-";
  if (r.speedup_vs_mha) std::snprintf(speedup, sizeof(speedup), "%.2fx", *r.speedup_vs_mha);
  std::printf("%-6s %-6s %4d %4d %7lld %11.3f %9.1f %8.1f %7s", r.pass.c_str(),
              std::string(variant_name(r.variant)).c_str(), r.heads.num_query_heads,
              r.heads.num_kv_heads, static_cast<long long>(r.seqlen_k), r.timing.best * 1e3,
              r.gflops, r.pct_of_sgemm, speedup);
  if (r.pass == "decode") std::printf(" %8.1f %9.1f", r.gbps, r.pct_of_memcpy);
  std::printf("\n");
  std::fflush(stdout);
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

void write_json(const std::string& path, const BenchOptions& o, const Ceilings& c,
                const std::vector<Row>& rows) {
  const BuildInfo& build = build_info();
  const std::string date = utc_now();
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const Row& r : rows) {
    nlohmann::ordered_json j;
    // The required fields first, in the order the issue lists them.
    j["variant"] = std::string(variant_name(r.variant));
    j["hq"] = r.heads.num_query_heads;
    j["hkv"] = r.heads.num_kv_heads;
    j["d"] = o.head_dim;
    j["n"] = r.seqlen_k;
    j["causal"] = o.mask().right == 0;
    j["seconds"] = r.timing.best;
    j["gflops"] = r.gflops;
    j["pct_of_sgemm"] = r.pct_of_sgemm;
    j["speedup_vs_mha"] = r.speedup_vs_mha ? nlohmann::ordered_json(*r.speedup_vs_mha) : nullptr;
    // Context, so that one row stands on its own.
    j["pass"] = r.pass;
    j["seqlen_q"] = r.seqlen_q;
    j["window"] = o.window;
    j["h"] = o.heads;
    j["batch"] = o.batch;
    j["dtype"] = std::string(dtype_name(o.dtype));
    j["flops"] = r.flops;
    j["seconds_median"] = r.timing.median;
    j["repeats"] = r.timing.repeats;
    j["rounds"] = o.rounds;
    j["timing"] = o.rounds > 1 ? "best of repeats over rounds (median: of the rounds' medians)"
                               : "best of repeats after warm-up";
    if (r.pass == "decode") {
      j["kv_bytes"] = r.kv_bytes;
      j["gbps"] = r.gbps;
      j["pct_of_memcpy"] = r.pct_of_memcpy;
    }
    j["sgemm_gflops"] = c.sgemm_gflops();
    j["sgemm_size"] = c.sgemm_start.size;
    j["memcpy_gbps"] = c.memcpy_gbps();
    j["memcpy_counts"] = "bytes read + bytes written";
    j["blas_core"] = c.sgemm_start.corename;
    j["threads"] = omp_get_max_threads();
    j["simd_path"] = cpu::simd_path();
    j["cpu"] = cpu_info().model;
    j["date"] = date;
    j["commit"] = build.commit;
    j["build_type"] = build.build_type;
    out.push_back(j);
  }
  std::ofstream file(path);
  require(file.good(), "cannot open --json file '", path, "' for writing");
  file << out.dump(2) << "\n";
  require(file.good(), "failed writing --json file '", path, "'");
}

// OpenBLAS's worker threads spin for a while after a call; let them go to sleep before the
// OpenMP kernels are timed so the two thread pools do not share the cores.
void settle() {
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
}

int bench_attention(const Args& args) {
  if (args.flag("help")) {
    std::printf("%s", kUsage);
    return 0;
  }
  const BenchOptions o = parse_options(args);

  const CpuInfo& cpu = cpu_info();
  const BlasInfo blas = blas_info();
  std::printf("sqa bench attention: H=%d d=%d batch=%d dtype=%s mask=%s\n", o.heads, o.head_dim,
              o.batch, std::string(dtype_name(o.dtype)).c_str(),
              o.window > 0 ? ("sliding " + std::to_string(o.window)).c_str()
              : o.causal   ? "causal"
                           : "none");
  std::printf("cpu: %s, %d OpenMP threads, attention SIMD path %s, OpenBLAS core %s\n",
              cpu.model.c_str(), omp_get_max_threads(), cpu::simd_path(), blas.corename.c_str());

  Ceilings c;
  c.sgemm_start = measure_sgemm(o.sgemm_size, 3);
  c.memcpy_start = measure_memcpy(static_cast<size_t>(o.memcpy_mib) << 20, 5);
  settle();

  const bool show_decode = !o.decode_seqlens.empty();
  std::printf("time = best of %d after %d warm-up; speed-up = MHA time / time at the same N\n",
              o.repeat, o.warmup);
  std::vector<Row> rows;
  // Round r > 0 times every row again; a row keeps its best time (and the median of its rounds'
  // medians). Rows are printed as each round finishes them.
  std::vector<std::vector<double>> medians;
  size_t slot = 0;
  auto record = [&](Row r, int round) {
    if (round == 0) {
      medians.push_back({r.timing.median});
      finish_row(r, c, rows);  // provisional ceiling; recomputed below with the end one
      rows.push_back(r);
    } else {
      Row& kept = rows[slot];
      medians[slot].push_back(r.timing.median);
      std::vector<double> m = medians[slot];
      std::sort(m.begin(), m.end());
      kept.timing.best = std::min(kept.timing.best, r.timing.best);
      kept.timing.median = m[m.size() / 2];
      kept.timing.repeats += r.timing.repeats;
      finish_row(kept, c, rows);
    }
    print_row(rows[slot]);
    ++slot;
  };
  std::optional<CacheFlusher> flusher;  // decode rows only (128 MiB)
  if (show_decode) flusher.emplace();
  for (int round = 0; round < o.rounds; ++round) {
    slot = 0;
    if (o.rounds > 1) std::printf("round %d of %d\n", round + 1, o.rounds);
    if (!o.decode_only) {
      print_header(false);
      for (int64_t n : o.seqlens) {
        for (Variant v : o.variants) {
          for (Row& r : run_case(o, v, n, n, o.backward, nullptr, "fwd")) record(r, round);
        }
      }
    }
    if (show_decode) {
      // Flush the caches before every decode run so small caches (MQA) are read from memory,
      // as they would be behind other layers.
      std::printf("decode: N_q = 1 against N_k = N; GB/s over the K+V bytes read\n");
      print_header(true);
      for (int64_t n : o.decode_seqlens) {
        for (Variant v : o.variants) {
          for (Row& r : run_case(o, v, 1, n, false, &*flusher, "decode")) record(r, round);
        }
      }
    }
  }
  // finish_row's speed-up looks up the MHA row among the rows before it: recompute all now that
  // every row has its final time.
  for (Row& r : rows) finish_row(r, c, rows);

  // Second measurements after the kernels: each ceiling is the better of its two, so a noisy
  // start cannot flatter the percentages.
  c.sgemm_end = measure_sgemm(o.sgemm_size, 3);
  if (show_decode) {
    settle();
    c.memcpy_end = measure_memcpy(static_cast<size_t>(o.memcpy_mib) << 20, 5);
  }
  for (Row& r : rows) finish_row(r, c, rows);
  char memcpy_end[32] = "not measured";
  if (show_decode) std::snprintf(memcpy_end, sizeof(memcpy_end), "%.1f", c.memcpy_end.gbps);
  std::printf(
      "ceilings: sgemm %d^3 %.1f GFLOP/s (start %.1f, end %.1f; %d OpenBLAS threads, core %s);"
      " memcpy %.1f GB/s (bytes read + written, %zu MiB buffer, %d threads; start %.1f, end "
      "%s)\n",
      o.sgemm_size, c.sgemm_gflops(), c.sgemm_start.gflops, c.sgemm_end.gflops,
      c.sgemm_start.threads, c.sgemm_start.corename.c_str(), c.memcpy_gbps(),
      c.memcpy_start.buffer_bytes >> 20, c.memcpy_start.threads, c.memcpy_start.gbps, memcpy_end);
  if (c.sgemm_end.gflops > c.sgemm_start.gflops * 1.05 ||
      c.memcpy_end.gbps > c.memcpy_start.gbps * 1.05) {
    std::printf("note: an end ceiling was higher; the rows with the final ceilings:\n");
    print_header(show_decode);
    for (const Row& r : rows) print_row(r);
  }
  if (!o.json_path.empty()) {
    write_json(o.json_path, o, c, rows);
    std::printf("wrote %zu rows to %s\n", rows.size(), o.json_path.c_str());
  }
  return 0;
}

}  // namespace

int cmd_bench(const std::vector<std::string>& argv) {
  const Args args(argv, {"causal", "backward", "decode", "help", "train"});
  const auto& words = args.positional();
  if (words.empty() && args.flag("help")) {
    std::printf("usage: sqa bench attention [options]   (sqa bench attention --help)\n");
    return 0;
  }
  require(!words.empty(), "missing benchmark name: expected `sqa bench attention [options]`");
  if (words[0] == "model") return bench_model(args);  // cmd_bench_model.cpp
  require(words[0] == "attention", "unknown benchmark '", words[0],
          "': expected `sqa bench attention [options]` or `sqa bench model [options]`");
  require(words.size() == 1, "unexpected argument '", words.size() > 1 ? words[1] : "",
          "' after `sqa bench attention` (options start with --)");
  return bench_attention(args);
}

}  // namespace sqa::cli
