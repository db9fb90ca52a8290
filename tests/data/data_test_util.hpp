// Helpers for the data and file-format tests: scratch folders, scale, random bytes, real text.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace sqa::test {

// SQA_TEST_SCALE=small (the sanitizer build in CI) shrinks sweeps and corpora.
inline bool small_scale() {
  const char* s = std::getenv("SQA_TEST_SCALE");
  return s != nullptr && std::string(s) == "small";
}

// A fresh folder per test, removed afterwards.
class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string("sqa-") + (info ? info->test_suite_name() : "x") + "-" +
                       (info ? info->name() : "y") + "-" + std::to_string(::getpid());
    for (char& c : name)
      if (c == '/') c = '_';
    path_ = std::filesystem::temp_directory_path() / name;
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }
  // Entries in the folder (to check that no temporary files are left behind).
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path_))
      out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::filesystem::path path_;
};

inline std::string random_bytes(std::mt19937_64& rng, size_t n) {
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng() & 0xff);
  return out;
}

// Folder of the Python documentation HTML (Debian package python3.11-doc, installed by
// scripts/setup.sh); SQA_TEXT_DIR overrides it.
inline std::string python_docs_dir() {
  const char* override_dir = std::getenv("SQA_TEXT_DIR");
  return override_dir ? override_dir : "/usr/share/doc/python3.11/html";
}

}  // namespace sqa::test
