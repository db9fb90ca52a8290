// Subcommands of the `sqa` program. Each returns the process exit code; `args` holds the words
// after the subcommand name.
#pragma once

#include <string>
#include <vector>

namespace sqa::cli {

int cmd_info(const std::vector<std::string>& args);      // cmd_info.cpp
int cmd_bench(const std::vector<std::string>& args);     // cmd_bench.cpp
int cmd_train(const std::vector<std::string>& args);     // cmd_model.cpp
int cmd_eval(const std::vector<std::string>& args);      // cmd_model.cpp
int cmd_generate(const std::vector<std::string>& args);  // cmd_model.cpp
int cmd_dump(const std::vector<std::string>& args);      // cmd_dump.cpp

class Args;
int bench_model(const Args& args);  // cmd_bench_model.cpp: `sqa bench model`

}  // namespace sqa::cli
