// The in-run ceilings and machine description used by `sqa bench` and the trainer's MFU:
// OpenBLAS core-type choice, sgemm correctness and timing, memcpy bandwidth, timing helper.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "core/build_info.hpp"
#include "core/ceilings.hpp"
#include "core/cpu_info.hpp"
#include "sqa/error.hpp"
#include "test_util.hpp"

namespace sqa {
namespace {

using test::expect_error;

TEST(Ceilings, CoreTypeFollowsCpuFeatures) {
  CpuInfo cpu;
  EXPECT_EQ(preferred_openblas_coretype(cpu), nullptr);  // no AVX2: leave OpenBLAS alone
  cpu.avx2 = true;
  EXPECT_EQ(preferred_openblas_coretype(cpu), nullptr);  // Haswell kernels need FMA too
  cpu.fma = true;
  EXPECT_STREQ(preferred_openblas_coretype(cpu), "Haswell");
  cpu.avx512f = true;  // F alone is not the SkylakeX set (BW, DQ, VL)
  EXPECT_STREQ(preferred_openblas_coretype(cpu), "Haswell");
  cpu.avx512bw = cpu.avx512dq = cpu.avx512vl = true;
  EXPECT_STREQ(preferred_openblas_coretype(cpu), "SkylakeX");
}

TEST(Ceilings, CpuInfoIsConsistent) {
  const CpuInfo& cpu = cpu_info();
  EXPECT_GE(cpu.logical_cpus, 1);
  EXPECT_FALSE(cpu.model.empty());
  EXPECT_FALSE(cpu.feature_string().empty());
  // AVX-512 register state implies the AVX state, so these imply AVX2-level support on x86.
  if (cpu.has_avx512_core()) {
    EXPECT_TRUE(cpu.avx2);
  }
  if (cpu.avx512_bf16) {
    EXPECT_TRUE(cpu.avx512f);
  }
}

TEST(Ceilings, SgemmIsCorrectWithTheCoreInUse) {
  EXPECT_LT(sgemm_self_check(), 1e-5) << "OpenBLAS core " << blas_info().corename;
}

TEST(Ceilings, SgemmCeilingIsMeasuredAndChecked) {
  const SgemmCeiling s = measure_sgemm(192, 2);
  EXPECT_EQ(s.size, 192);
  EXPECT_GT(s.gflops, 0.0);
  EXPECT_TRUE(std::isfinite(s.gflops));
  EXPECT_GE(s.gflops, s.gflops_median);  // best is never slower than the median
  EXPECT_LT(s.max_rel_error, 1e-5);
  EXPECT_EQ(s.corename, blas_info().corename);
  EXPECT_GE(s.threads, 1);
  expect_error([] { measure_sgemm(8, 1); }, {"sgemm size (8)", "at least 16"});
}

TEST(Ceilings, MemcpyCeilingCountsReadAndWrite) {
  const MemcpyCeiling m = measure_memcpy(size_t{4} << 20, 2);
  EXPECT_EQ(m.buffer_bytes, size_t{4} << 20);
  EXPECT_GT(m.gbps, 0.0);
  EXPECT_GE(m.gbps, m.gbps_median);
  EXPECT_GE(m.threads, 1);
  expect_error([] { measure_memcpy(1000, 1); }, {"memcpy buffer (1000 bytes)", "at least 1 MiB"});
  CacheFlusher flusher(size_t{2} << 20);
  flusher.flush();  // must not fault; its effect is only visible in timings
}

TEST(Ceilings, TimeRunsCountsWarmupAndRepeats) {
  int calls = 0, befores = 0;
  const Timing t = time_runs([&] { ++calls; }, 2, 5, [&] { ++befores; });
  EXPECT_EQ(calls, 7);
  EXPECT_EQ(befores, 7);
  EXPECT_EQ(t.repeats, 5);
  EXPECT_LE(t.best, t.median);
  EXPECT_GE(t.best, 0.0);
  expect_error([] { time_runs([] {}, 0, 0); }, {"repeats (0)", "at least 1"});
  expect_error([] { time_runs([] {}, -1, 1); }, {"warm-up runs (-1)", "not be negative"});
}

TEST(Ceilings, BuildInfoIsFilledIn) {
  const BuildInfo& b = build_info();
  EXPECT_FALSE(b.version.empty());
  EXPECT_NE(b.version, "unknown");
  EXPECT_FALSE(b.compiler.empty());
  EXPECT_FALSE(b.commit.empty());
  EXPECT_TRUE(b.openmp);
}

}  // namespace
}  // namespace sqa
