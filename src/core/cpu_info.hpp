// What the host CPU offers: model name, the vector ISA extensions the kernels and the BLAS care
// about, and the number of logical CPUs. Read once from CPUID (x86) so `sqa info`, the OpenBLAS
// core-type choice and the benchmarks agree on what the machine can do.
#pragma once

#include <string>

namespace sqa {

struct CpuInfo {
  std::string vendor;  // "GenuineIntel", "AuthenticAMD", ... or "unknown"
  std::string model;   // brand string, e.g. "AMD EPYC 9654 96-Core Processor"
  int logical_cpus = 0;
  // Each flag is true only when the CPU has the instructions AND the OS saves their register
  // state (XGETBV), i.e. when using them cannot fault.
  bool fma = false;
  bool avx2 = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512dq = false;
  bool avx512vl = false;
  bool avx512_bf16 = false;

  // The AVX-512 subset OpenBLAS's SkylakeX kernels (and our avx512 path) rely on.
  bool has_avx512_core() const { return avx512f && avx512bw && avx512dq && avx512vl; }
  bool has_avx2_fma() const { return avx2 && fma; }
  // "fma avx2 avx512f ..." for printing.
  std::string feature_string() const;
};

// Cached after the first call.
const CpuInfo& cpu_info();

}  // namespace sqa
