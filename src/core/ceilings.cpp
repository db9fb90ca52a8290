#include "core/ceilings.hpp"

#include <cblas.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>

#include "sqa/error.hpp"

// OpenBLAS extensions (also in OpenBLAS's cblas.h; declared here so a netlib cblas.h works too).
extern "C" {
char* openblas_get_corename(void);
char* openblas_get_config(void);
int openblas_get_num_threads(void);
}

namespace sqa {

namespace {
constexpr const char* kReexecGuard = "SQA_OPENBLAS_REEXEC";

std::vector<float> random_matrix(size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> out(count);
  for (auto& x : out) x = dist(rng);
  return out;
}
}  // namespace

BlasInfo blas_info() {
  BlasInfo info;
  const char* core = openblas_get_corename();
  const char* config = openblas_get_config();
  info.corename = core ? core : "unknown";
  info.config = config ? config : "unknown";
  // openblas_get_config() ends with a space in some builds.
  while (!info.config.empty() && info.config.back() == ' ') info.config.pop_back();
  info.num_threads = openblas_get_num_threads();
  return info;
}

const char* preferred_openblas_coretype(const CpuInfo& cpu) {
  if (cpu.has_avx512_core()) return "SkylakeX";
  if (cpu.has_avx2_fma()) return "Haswell";
  return nullptr;
}

void reexec_with_fast_openblas_core(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || std::getenv(kReexecGuard) != nullptr) return;
  const char* want = preferred_openblas_coretype(cpu_info());
  if (want == nullptr) return;
  const std::string detected = blas_info().corename;
  // Already on the chosen kernels: no second process. (Detection varies between VMs of the same
  // kind, so the choice is made by the CPU's features, not by trusting the detection.)
  if (detected == want) return;
  setenv(kReexecGuard, detected.c_str(), 1);
  setenv("OPENBLAS_CORETYPE", want, 1);
  execv("/proc/self/exe", argv);
  // exec failed (no /proc?): carry on with the detected core and say so truthfully.
  unsetenv("OPENBLAS_CORETYPE");
  setenv(kReexecGuard, "", 1);
}

std::string openblas_detected_core() {
  const char* detected = std::getenv(kReexecGuard);
  return detected ? detected : "";
}

bool openblas_core_set_by_sqa() {
  const char* detected = std::getenv(kReexecGuard);
  const char* set = std::getenv("OPENBLAS_CORETYPE");
  return detected != nullptr && detected[0] != '\0' && set != nullptr &&
         blas_info().corename == set;
}

double now_seconds() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

Timing time_runs(const std::function<void()>& fn, int warmup, int repeats,
                 const std::function<void()>& before_each) {
  require(repeats >= 1, "repeats (", repeats, ") must be at least 1");
  require(warmup >= 0, "warm-up runs (", warmup, ") must not be negative");
  for (int i = 0; i < warmup; ++i) {
    if (before_each) before_each();
    fn();
  }
  std::vector<double> seconds;
  for (int i = 0; i < repeats; ++i) {
    if (before_each) before_each();
    const double start = now_seconds();
    fn();
    seconds.push_back(now_seconds() - start);
  }
  std::sort(seconds.begin(), seconds.end());
  Timing t;
  t.repeats = repeats;
  t.best = seconds.front();
  const size_t mid = seconds.size() / 2;
  t.median = seconds.size() % 2 ? seconds[mid] : 0.5 * (seconds[mid - 1] + seconds[mid]);
  return t;
}

SgemmCeiling measure_sgemm(int size, int repeats) {
  require(size >= 16, "sgemm size (", size, ") must be at least 16");
  const size_t n = static_cast<size_t>(size);
  const std::vector<float> a = random_matrix(n * n, 11), b = random_matrix(n * n, 12);
  std::vector<float> c(n * n, std::nanf(""));
  auto run = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, size, size, size, 1.0f, a.data(), size,
                b.data(), size, 0.0f, c.data(), size);
  };
  const Timing t = time_runs(run, 1, repeats);

  // Check the product that was timed: a wrong kernel choice must not pass as a fast ceiling.
  SgemmCeiling out;
  std::mt19937 rng(13);
  std::uniform_int_distribution<size_t> pick(0, n - 1);
  for (int s = 0; s < 64; ++s) {
    const size_t i = pick(rng), j = pick(rng);
    double ref = 0.0, mag = 0.0;
    for (size_t p = 0; p < n; ++p) {
      ref += static_cast<double>(a[i * n + p]) * b[p * n + j];
      mag += std::fabs(static_cast<double>(a[i * n + p]) * b[p * n + j]);
    }
    const double err = std::fabs(c[i * n + j] - ref) / std::max(mag, 1e-30);
    out.max_rel_error = std::isfinite(err) ? std::max(out.max_rel_error, err) : INFINITY;
  }
  const BlasInfo blas = blas_info();
  require(out.max_rel_error < 1e-5, "sgemm with OpenBLAS core ", blas.corename,
          " gives wrong results (relative error ", out.max_rel_error,
          " must be below 1e-5); set OPENBLAS_CORETYPE to another core type");
  const double flops =
      2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
  out.size = size;
  out.threads = blas.num_threads;
  out.corename = blas.corename;
  out.gflops = flops / t.best * 1e-9;
  out.gflops_median = flops / t.median * 1e-9;
  return out;
}

double sgemm_self_check() {
  struct Case {
    int m, n, k;
    bool trans_a, trans_b;
  };
  // Odd sizes hit the edge kernels; 256x320x288 is past the small-matrix path, so the blocked
  // kernels and the threading that the ceiling uses are checked too.
  const Case cases[] = {{67, 53, 45, false, false},
                        {256, 320, 288, true, false},
                        {1, 700, 500, false, true},
                        {129, 1, 257, true, true}};
  double worst = 0.0;
  uint32_t seed = 100;
  for (const Case& cs : cases) {
    const std::vector<float> a = random_matrix(static_cast<size_t>(cs.m) * cs.k, seed++);
    const std::vector<float> b = random_matrix(static_cast<size_t>(cs.k) * cs.n, seed++);
    std::vector<float> c(static_cast<size_t>(cs.m) * cs.n, std::nanf(""));
    // Row-major storage: A is m x k (stored k x m when transposed), B is k x n (or n x k).
    const int lda = cs.trans_a ? cs.m : cs.k, ldb = cs.trans_b ? cs.k : cs.n;
    cblas_sgemm(CblasRowMajor, cs.trans_a ? CblasTrans : CblasNoTrans,
                cs.trans_b ? CblasTrans : CblasNoTrans, cs.m, cs.n, cs.k, 1.0f, a.data(), lda,
                b.data(), ldb, 0.0f, c.data(), cs.n);
    for (int i = 0; i < cs.m; ++i) {
      for (int j = 0; j < cs.n; ++j) {
        double ref = 0.0, mag = 0.0;
        for (int p = 0; p < cs.k; ++p) {
          const double x = cs.trans_a ? a[static_cast<size_t>(p) * lda + i]
                                      : a[static_cast<size_t>(i) * lda + p];
          const double y = cs.trans_b ? b[static_cast<size_t>(j) * ldb + p]
                                      : b[static_cast<size_t>(p) * ldb + j];
          ref += x * y;
          mag += std::fabs(x * y);
        }
        const double err =
            std::fabs(c[static_cast<size_t>(i) * cs.n + j] - ref) / std::max(mag, 1e-30);
        worst = std::isfinite(err) ? std::max(worst, err) : INFINITY;
      }
    }
  }
  return worst;
}

MemcpyCeiling measure_memcpy(size_t buffer_bytes, int repeats) {
  require(buffer_bytes >= (size_t{1} << 20), "memcpy buffer (", buffer_bytes,
          " bytes) must be at least 1 MiB");
  const size_t count = buffer_bytes / sizeof(float);
  std::vector<float> src(count), dst(count);
  const int threads = omp_get_max_threads();
  // Each thread copies one contiguous slice; the slices are first touched by the thread that
  // copies them (matters on NUMA hosts).
  auto slice = [&](int t, size_t& begin, size_t& end) {
    begin = count * static_cast<size_t>(t) / static_cast<size_t>(threads);
    end = count * static_cast<size_t>(t + 1) / static_cast<size_t>(threads);
  };
#pragma omp parallel num_threads(threads)
  {
    size_t begin = 0, end = 0;
    slice(omp_get_thread_num(), begin, end);
    for (size_t i = begin; i < end; ++i) src[i] = static_cast<float>(i & 1023);
    std::memset(dst.data() + begin, 0, (end - begin) * sizeof(float));
  }
  auto run = [&] {
#pragma omp parallel num_threads(threads)
    {
      size_t begin = 0, end = 0;
      slice(omp_get_thread_num(), begin, end);
      std::memcpy(dst.data() + begin, src.data() + begin, (end - begin) * sizeof(float));
    }
  };
  const Timing t = time_runs(run, 1, repeats);
  require(dst[count - 1] == src[count - 1] && dst[count / 2] == src[count / 2],
          "memcpy ceiling: the copy did not complete");
  MemcpyCeiling out;
  out.buffer_bytes = count * sizeof(float);
  out.threads = threads;
  const double moved = 2.0 * static_cast<double>(out.buffer_bytes);
  out.gbps = moved / t.best * 1e-9;
  out.gbps_median = moved / t.median * 1e-9;
  return out;
}

CacheFlusher::CacheFlusher(size_t bytes) : buffer_(bytes / sizeof(float), 1.0f) {}

void CacheFlusher::flush() {
  const long long count = static_cast<long long>(buffer_.size());
  const float* data = buffer_.data();
  float sum = 0.0f;
  // One float per 64-byte line is enough to pull every line in.
#pragma omp parallel for reduction(+ : sum) schedule(static)
  for (long long i = 0; i < count; i += 16) sum += data[i];
  sink_ = sum;
}

}  // namespace sqa
