// Files: whole-file reads with errors that name the path and the reason, and atomic writes.
//
// Every checkpoint, export and shard goes through write_file_atomic / AtomicFile: the bytes go to
// a temporary file in the same folder, which is fsync'ed, renamed over the target and followed
// by an fsync of the folder. A crash or a full disk at any moment leaves either the old file or
// the new one on disk, never a torn mix, and never loses what was there before.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sqa {

// The whole file as bytes. Throws sqa::Error "cannot read '<path>': <reason>" (missing file,
// a folder, permission, I/O error).
std::string read_file(const std::string& path);

// Writes `bytes` to `path` atomically (see above). Throws sqa::Error naming the path and the
// reason; on failure the target is untouched and the temporary file is removed.
void write_file_atomic(const std::string& path, std::string_view bytes);

// Streaming form of write_file_atomic for outputs built piece by piece (large shards). Nothing
// is visible at `path` until commit(); destroying an uncommitted AtomicFile removes the
// temporary file and leaves the target as it was.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);  // creates the temporary file
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t size);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // fsync, rename over the target, fsync the folder. Call once.
  void commit();
  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  std::string path_, temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

// True when `path` names an existing regular file.
bool is_regular_file(const std::string& path);

}  // namespace sqa
