// Whole-file reads and atomic writes (see include/sqa/io.hpp for the guarantees).
#include "sqa/io.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "sqa/error.hpp"

namespace sqa {
namespace {

std::string errno_text(int code) {
  return std::strerror(code);
}

std::string parent_folder(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

// fsync of the folder makes the rename itself durable (POSIX: the directory entry lives in the
// folder, not in the file).
void sync_folder(const std::string& folder, const std::string& path) {
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    throw Error(detail::concat("cannot write '", path, "': opening folder '", folder,
                               "' for fsync failed: ", errno_text(errno)));
  }
  // Some file systems refuse fsync on folders (EINVAL); the rename is still atomic there.
  if (::fsync(fd) != 0 && errno != EINVAL && errno != EROFS) {
    const int code = errno;
    ::close(fd);
    throw Error(detail::concat("cannot write '", path, "': fsync of folder '", folder,
                               "' failed: ", errno_text(code)));
  }
  ::close(fd);
}

}  // namespace

std::string read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(detail::concat("cannot read '", path, "': ", errno_text(errno)));
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    const int code = errno;
    ::close(fd);
    throw Error(detail::concat("cannot read '", path, "': ", errno_text(code)));
  }
  if (S_ISDIR(info.st_mode)) {
    ::close(fd);
    throw Error(detail::concat("cannot read '", path, "': it is a folder, not a file"));
  }
  std::string bytes;
  if (S_ISREG(info.st_mode)) bytes.reserve(static_cast<size_t>(info.st_size));
  char buffer[1 << 16];
  for (;;) {
    const ssize_t got = ::read(fd, buffer, sizeof(buffer));
    if (got < 0) {
      if (errno == EINTR) continue;
      const int code = errno;
      ::close(fd);
      throw Error(detail::concat("cannot read '", path, "': ", errno_text(code)));
    }
    if (got == 0) break;
    bytes.append(buffer, static_cast<size_t>(got));
  }
  ::close(fd);
  return bytes;
}

bool is_regular_file(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  require(!path.empty(), "cannot write a file with an empty path");
  const std::filesystem::path target(path);
  require(!target.filename().empty(), "cannot write '", path, "': the path names a folder");
  // A random suffix keeps two writers of the same target (or a stale temp file left by a
  // killed run) from colliding; O_EXCL makes sure we never reuse someone's file.
  std::random_device entropy;
  for (int attempt = 0; attempt < 16 && fd_ < 0; ++attempt) {
    char suffix[32];
    std::snprintf(suffix, sizeof(suffix), ".tmp.%d.%08x", static_cast<int>(::getpid()),
                  static_cast<unsigned>(entropy()));
    temp_path_ = (target.parent_path() / ("." + target.filename().string() + suffix)).string();
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0 && errno != EEXIST) {
      throw Error(detail::concat("cannot write '", path, "': creating temporary file '", temp_path_,
                                 "' failed: ", errno_text(errno)));
    }
  }
  require(fd_ >= 0, "cannot write '", path, "': no free temporary file name");
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !temp_path_.empty()) ::unlink(temp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t size) {
  require(fd_ >= 0 && !committed_, "cannot write '", path_, "': the file is already committed");
  const char* bytes = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t put = ::write(fd_, bytes, size);
    if (put < 0) {
      if (errno == EINTR) continue;
      throw Error(detail::concat("cannot write '", path_, "': ", errno_text(errno)));
    }
    bytes += put;
    size -= static_cast<size_t>(put);
  }
}

void AtomicFile::commit() {
  require(fd_ >= 0 && !committed_, "cannot write '", path_, "': the file is already committed");
  if (::fsync(fd_) != 0) {
    throw Error(detail::concat("cannot write '", path_, "': fsync failed: ", errno_text(errno)));
  }
  const int closed = ::close(fd_);
  fd_ = -1;
  if (closed != 0) {
    throw Error(detail::concat("cannot write '", path_, "': close failed: ", errno_text(errno)));
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    throw Error(detail::concat("cannot write '", path_, "': renaming '", temp_path_,
                               "' failed: ", errno_text(errno)));
  }
  committed_ = true;
  sync_folder(parent_folder(path_), path_);
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  AtomicFile file(path);
  file.write(bytes);
  file.commit();
}

}  // namespace sqa
