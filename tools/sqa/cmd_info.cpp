// `sqa info`: what this binary was built with and what it runs on, so that a benchmark or a
// bug report can be tied to a build, a CPU, a SIMD path and a BLAS kernel family.
#include <omp.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/build_info.hpp"
#include "core/ceilings.hpp"
#include "core/cpu_info.hpp"
#include "sqa/args.hpp"
#include "sqa/attention.hpp"
#include "sqa/commands.hpp"
#include "sqa/error.hpp"

namespace sqa::cli {

namespace {

const char* on_off(bool on) {
  return on ? "on" : "off";
}

void print_config_summary(const std::string& path) {
  // Hook for the model configs: the parameter count comes from the model library once it lands.
  std::printf("config:     %s: model configs not built yet\n", path.c_str());
}

}  // namespace

int cmd_info(const std::vector<std::string>& argv) {
  const Args args(argv);
  args.reject_unknown({"config"});
  require(args.positional().empty(), "sqa info takes no positional arguments (got '",
          args.positional().empty() ? "" : args.positional().front(), "')");

  const BuildInfo& build = build_info();
  std::printf("sqa %s\n", build.version.c_str());
  std::printf("build:      %s, %s, commit %s\n", build.build_type.c_str(), build.compiler.c_str(),
              build.commit.c_str());
  std::printf("            sanitizers %s, OpenMP %s, CUDA %s\n", on_off(build.sanitizers),
              on_off(build.openmp), build.cuda ? "compiled in" : "not compiled in");

  const CpuInfo& cpu = cpu_info();
  std::printf("cpu:        %s (%s), %d logical CPUs\n", cpu.model.c_str(), cpu.vendor.c_str(),
              cpu.logical_cpus);
  std::printf("features:   %s\n", cpu.feature_string().c_str());
  std::printf("threads:    %d (OpenMP max threads, used by the CPU kernels)\n",
              omp_get_max_threads());
  std::printf("attention:  cpu SIMD path %s\n", cpu::simd_path());

  const BlasInfo blas = blas_info();
  std::string origin = "as detected by OpenBLAS";
  if (openblas_core_set_by_sqa()) {
    origin = "set by sqa for this CPU; OpenBLAS detected " + openblas_detected_core();
  } else if (const char* env = std::getenv("OPENBLAS_CORETYPE"); env != nullptr) {
    origin = std::string("from OPENBLAS_CORETYPE=") + env;
  }
  std::printf("blas:       OpenBLAS core %s (%s), %d threads\n", blas.corename.c_str(),
              origin.c_str(), blas.num_threads);
  std::printf("            %s\n", blas.config.c_str());
  const double sgemm_error = sgemm_self_check();
  std::printf("            sgemm self-check vs float64: max relative error %.2e (%s)\n",
              sgemm_error, sgemm_error < 1e-5 ? "ok" : "WRONG RESULTS");

  const bool cuda_ok = cuda::available();
  std::printf("cuda:       %s\n", cuda_ok      ? "available"
                                  : build.cuda ? "compiled in, no usable device"
                                               : "not compiled in");

  if (args.has("config")) print_config_summary(args.get("config", ""));
  return sgemm_error < 1e-5 ? 0 : 1;
}

}  // namespace sqa::cli
