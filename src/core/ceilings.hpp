// In-run hardware ceilings and timing helpers shared by the benchmarks (`sqa bench`) and the
// trainer's MFU: what a well-kept BLAS reaches on a large sgemm on this machine right now, and
// what a multi-threaded copy reaches in memory bandwidth. Measuring the peer in the same run
// makes the kernel numbers comparable across noisy, shared machines.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "core/cpu_info.hpp"

namespace sqa {

// ---- OpenBLAS -------------------------------------------------------------------------------

struct BlasInfo {
  std::string corename;  // kernel family OpenBLAS chose, e.g. "SkylakeX" ("Prescott" = slow)
  std::string config;    // openblas_get_config(): version and build options
  int num_threads = 0;
};
BlasInfo blas_info();

// The OpenBLAS core type whose kernels run at full speed on `cpu`: "SkylakeX" with the AVX-512
// core set, "Haswell" with AVX2 + FMA, nullptr when the CPU has neither (leave OpenBLAS alone).
// Both were checked on this project's VMs (AMD EPYC, Debian OpenBLAS 0.3.21) against a naive
// product; Zen was ~20% slower there and Prescott is what OpenBLAS wrongly detects on some VMs.
const char* preferred_openblas_coretype(const CpuInfo& cpu);

// OpenBLAS reads OPENBLAS_CORETYPE only when it is loaded, so fixing a wrong detection needs a
// fresh process. When OPENBLAS_CORETYPE is unset and the CPU supports a better core type, this
// sets it and re-executes /proc/self/exe with the same argv (once: SQA_OPENBLAS_REEXEC guards the
// loop). Returns only when no re-exec happened (or exec failed). A user-set OPENBLAS_CORETYPE is
// always respected.
void reexec_with_fast_openblas_core(char** argv);

// What the loader detected before the re-exec ("" when there was none) and whether the core in
// use was chosen by sqa, for `sqa info`.
std::string openblas_detected_core();
bool openblas_core_set_by_sqa();

// ---- Timing ---------------------------------------------------------------------------------

double now_seconds();  // monotonic

struct Timing {
  double best = 0.0;    // fastest timed run, seconds
  double median = 0.0;  // median timed run, seconds
  int repeats = 0;
};
// Runs `fn` `warmup` times untimed, then `repeats` (>= 1) timed runs. `before_each` (optional)
// runs before every run, untimed (e.g. to flush caches).
Timing time_runs(const std::function<void()>& fn, int warmup, int repeats,
                 const std::function<void()>& before_each = {});

// ---- Ceilings -------------------------------------------------------------------------------

struct SgemmCeiling {
  int size = 0;         // square M = N = K
  int threads = 0;      // OpenBLAS threads
  double gflops = 0.0;  // best of the repeats: 2 * size^3 / best seconds
  double gflops_median = 0.0;
  double max_rel_error = 0.0;  // sampled entries of the timed product vs float64 dot products
  std::string corename;
};
// Times single-precision C = A * B on random size x size matrices with all OpenBLAS threads,
// after one warm-up. Throws sqa::Error when the sampled entries disagree with float64.
SgemmCeiling measure_sgemm(int size = 4096, int repeats = 3);

// Checks cblas/sgemm against a naive float64 product on a few shapes (odd sizes, transposes,
// sizes past OpenBLAS's small-matrix path). Returns the worst error relative to sum |a||b|;
// below ~1e-6 is correct fp32.
double sgemm_self_check();

struct MemcpyCeiling {
  size_t buffer_bytes = 0;  // size of the source (and of the destination)
  int threads = 0;          // OpenMP threads, each copying its own slice
  // Bytes read + bytes written (2 * buffer_bytes) per second, best of the repeats, in GB/s
  // (1e9 bytes).
  double gbps = 0.0;
  double gbps_median = 0.0;
};
// The buffer should be much larger than the last-level cache (default 256 MiB).
MemcpyCeiling measure_memcpy(size_t buffer_bytes = size_t{256} << 20, int repeats = 5);

// Evicts the caches by reading a buffer much larger than the last-level cache (reads only, so
// no dirty lines are left to write back during the next timed run).
class CacheFlusher {
 public:
  explicit CacheFlusher(size_t bytes = size_t{128} << 20);
  void flush();

 private:
  std::vector<float> buffer_;
  volatile float sink_ = 0.0f;
};

}  // namespace sqa
