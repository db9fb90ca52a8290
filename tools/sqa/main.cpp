// sqa: command-line front end. `sqa <command> [options]`; `sqa help` lists the commands.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "core/ceilings.hpp"
#include "sqa/commands.hpp"

namespace {

struct Command {
  const char* name;
  int (*run)(const std::vector<std::string>&);
  const char* help;
};

const Command kCommands[] = {
    {"info", sqa::cli::cmd_info, "build, CPU features, threads, backends; --config FILE: params"},
    {"bench", sqa::cli::cmd_bench, "benchmarks: `sqa bench attention [--heads H ...]`"},
    {"train", sqa::cli::cmd_train, "train a model: --config FILE --data PATH --out DIR"},
    {"eval", sqa::cli::cmd_eval, "evaluate a checkpoint: loss, perplexity, accuracy"},
    {"generate", sqa::cli::cmd_generate, "sample text from a checkpoint with a KV cache"},
    {"dump", sqa::cli::cmd_dump, "logits and gradients at given weights (PyTorch comparison)"},
};

void usage() {
  std::printf("usage: sqa <command> [options]\n\ncommands:\n");
  for (const auto& c : kCommands) std::printf("  %-9s %s\n", c.name, c.help);
}

}  // namespace

int main(int argc, char** argv) {
  // OpenBLAS picks its kernels when it is loaded and mis-detects some VMs (e.g. as "Prescott",
  // ~6x slower sgemm). Every subcommand's matmuls and the benchmark ceilings must run on the
  // real kernels, so fix the core type first; this may restart the process once.
  sqa::reexec_with_fast_openblas_core(argv);

  if (argc < 2 || std::string(argv[1]) == "help" || std::string(argv[1]) == "--help") {
    usage();
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  for (const auto& c : kCommands) {
    if (name != c.name) continue;
    try {
      return c.run(args);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "sqa %s: error: %s\n", c.name, e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "sqa: unknown command '%s'\n", name.c_str());
  usage();
  return 2;
}
