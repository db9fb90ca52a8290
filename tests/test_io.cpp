// Whole-file reads and atomic writes: contents, error messages, and that nothing on disk is
// lost or left behind when a write fails or is abandoned.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <functional>

#include "data/data_test_util.hpp"
#include "sqa/error.hpp"
#include "sqa/io.hpp"
#include "test_util.hpp"

namespace sqa {
namespace {

using test::error_of;
using test::ScratchDir;

TEST(Io, RoundTripsArbitraryBytes) {
  ScratchDir dir;
  std::mt19937_64 rng(11);
  for (size_t size : {size_t{0}, size_t{1}, size_t{7}, size_t{65536}, size_t{300001}}) {
    const std::string bytes = test::random_bytes(rng, size);
    const std::string path = dir.file("blob.bin");
    write_file_atomic(path, bytes);
    EXPECT_EQ(read_file(path), bytes) << "size " << size;
  }
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"blob.bin"}) << "temporary files left";
}

TEST(Io, OverwriteReplacesWholeFile) {
  ScratchDir dir;
  const std::string path = dir.file("f.txt");
  write_file_atomic(path, std::string(1000, 'a'));
  write_file_atomic(path, "short");
  EXPECT_EQ(read_file(path), "short");
  struct stat info {};
  ASSERT_EQ(::stat(path.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0644u);
}

TEST(Io, ReadErrorsNamePathAndReason) {
  ScratchDir dir;
  const std::string missing = dir.file("missing.json");
  const std::string message = error_of([&] { read_file(missing); });
  EXPECT_NE(message.find(missing), std::string::npos) << message;
  EXPECT_NE(message.find("No such file"), std::string::npos) << message;
  const std::string folder = error_of([&] { read_file(dir.path().string()); });
  EXPECT_NE(folder.find("folder"), std::string::npos) << folder;
}

TEST(Io, FailedWriteLeavesNothing) {
  ScratchDir dir;
  const std::string path = dir.file("no/such/folder/out.bin");
  const std::string message = error_of([&] { write_file_atomic(path, "x"); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_TRUE(dir.entries().empty());
}

TEST(Io, AbandonedAtomicFileKeepsOldContent) {
  ScratchDir dir;
  const std::string path = dir.file("ckpt.bin");
  write_file_atomic(path, "old checkpoint");
  {
    AtomicFile file(path);
    file.write("half of a new check");
    EXPECT_TRUE(is_regular_file(file.temp_path()));
    EXPECT_EQ(read_file(path), "old checkpoint") << "the target changed before commit";
    // Destroyed without commit, as when an exception unwinds a checkpoint writer.
  }
  EXPECT_EQ(read_file(path), "old checkpoint");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"ckpt.bin"});
}

TEST(Io, StreamingWriteAndDoubleCommit) {
  ScratchDir dir;
  const std::string path = dir.file("stream.bin");
  std::mt19937_64 rng(12);
  std::string expected;
  AtomicFile file(path);
  for (int i = 0; i < 20; ++i) {
    const std::string piece = test::random_bytes(rng, static_cast<size_t>(rng() % 5000));
    file.write(piece.data(), piece.size());
    expected += piece;
  }
  file.commit();
  EXPECT_EQ(read_file(path), expected);
  EXPECT_THROW(file.commit(), Error);
  EXPECT_THROW(file.write("more"), Error);
  EXPECT_FALSE(is_regular_file(dir.file("nothing")));
  EXPECT_FALSE(is_regular_file(dir.path().string()));
}

}  // namespace
}  // namespace sqa
