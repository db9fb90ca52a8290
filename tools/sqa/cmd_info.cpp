// `sqa info`: what this binary was built with and what it runs on, so that a benchmark or a
// bug report can be tied to a build, a CPU, a SIMD path and a BLAS kernel family.
#include <omp.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "core/build_info.hpp"
#include "core/ceilings.hpp"
#include "core/cpu_info.hpp"
#include "sqa/args.hpp"
#include "sqa/attention.hpp"
#include "sqa/commands.hpp"
#include "sqa/error.hpp"
#include "sqa/model.hpp"

namespace sqa::cli {

namespace {

const char* on_off(bool on) {
  return on ? "on" : "off";
}

std::string with_commas(int64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// `--config FILE`: the model the config describes and its parameter count, from the model
// library (the same count the trainer and the checkpoints use).
void print_config_summary(const std::string& path, const ModelConfig& c) {
  std::printf("config:     %s%s%s\n", path.c_str(), c.name.empty() ? "" : ": ", c.name.c_str());
  std::printf(
      "            %s, %d layers, d_model %d, H %d, head_dim %d, vocab %d, max_seq_len %d\n",
      c.causal ? "decoder" : "encoder", c.num_layers, c.d_model, c.num_baseline_heads, c.head_dim,
      c.vocab_size, c.max_seq_len);
  for (int i = 0; i < c.num_layers; ++i) {
    const AttentionSpec spec = c.attention_spec(i);
    std::printf("            layer %d attention: %s\n", i, spec.to_string().c_str());
    // Layers usually share one layout; print the first, then only those that differ.
    int same = 0;
    while (i + 1 + same < c.num_layers &&
           c.attention_spec(i + 1 + same).to_string() == spec.to_string()) {
      ++same;
    }
    if (same > 0) std::printf("            layers %d-%d: same\n", i + 1, i + same);
    i += same;
  }
  if (c.is_moe()) {
    std::printf("            MoE: %d experts, top-%d, expert ff %d\n", c.num_experts, c.top_k,
                c.expert_ff_dim);
  } else {
    std::printf("            ffn: %d\n", c.ff_dim);
  }
  std::printf("parameters: %s (active per token: %s)\n", with_commas(count_parameters(c)).c_str(),
              with_commas(count_active_parameters(c)).c_str());
}

}  // namespace

int cmd_info(const std::vector<std::string>& argv) {
  const Args args(argv, {"help"});
  if (args.flag("help")) {
    std::printf(
        "usage: sqa info [--config FILE]\n\n"
        "The build (version, compiler, CUDA), CPU features, threads and attention backends;\n"
        "with --config, the model's shape per layer and its parameter count.\n");
    return 0;
  }
  args.reject_unknown({"config"});
  require(args.positional().empty(), "sqa info takes no positional arguments (got '",
          args.positional().empty() ? "" : args.positional().front(), "')");

  // Load the config first so that a bad file fails before anything is printed.
  std::optional<ModelConfig> config;
  if (args.has("config")) config = load_config(args.get("config", ""));

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

  if (config) print_config_summary(args.get("config", ""), *config);
  return sgemm_error < 1e-5 ? 0 : 1;
}

}  // namespace sqa::cli
