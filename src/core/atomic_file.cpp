#include "core/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace optiq {

namespace {
constexpr size_t kBuffer = size_t{1} << 20;  // small writes gathered into 1 MB ones
std::atomic<int> g_serial{0};                 // several temporaries of one process in one directory
}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  namespace fs = std::filesystem;
  const fs::path target(path_);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::string name(".");  // (not "." + string: GCC 12 warns falsely about that)
  name += target.filename().string();
  name += ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(g_serial++);
  tmp_ = (dir / name).string();
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("{}: cannot create a temporary file in {}: {}", path_, dir.string(), std::strerror(errno));
  buf_.reserve(kBuffer);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* p, size_t n) {
  const char* b = static_cast<const char*>(p);
  pos_ += n;
  if (buf_.size() + n <= kBuffer) {
    buf_.append(b, n);
    return;
  }
  flush();
  if (n < kBuffer) {
    buf_.append(b, n);
    return;
  }
  while (n > 0) {  // large blocks go straight to the file
    const ssize_t w = ::write(fd_, b, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) fail("{}: cannot write: {}", path_, std::strerror(errno));
    b += w;
    n -= static_cast<size_t>(w);
  }
}

void AtomicFile::pad_to(uint64_t align) {
  static const char zeros[64] = {};
  while (pos_ % align) write(zeros, std::min<uint64_t>(align - pos_ % align, sizeof(zeros)));
}

void AtomicFile::flush() {
  const char* b = buf_.data();
  size_t n = buf_.size();
  while (n > 0) {
    const ssize_t w = ::write(fd_, b, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) fail("{}: cannot write: {}", path_, std::strerror(errno));
    b += w;
    n -= static_cast<size_t>(w);
  }
  buf_.clear();
}

void AtomicFile::commit() {
  check(fd_ >= 0, "{}: written already", path_);
  flush();
  if (::fsync(fd_) != 0) fail("{}: cannot write (fsync): {}", path_, std::strerror(errno));
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) {
    const int e = errno;
    ::unlink(tmp_.c_str());
    fail("{}: cannot write (close): {}", path_, std::strerror(e));
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp_.c_str());
    fail("{}: cannot rename {} into place: {}", path_, tmp_, std::strerror(e));
  }
}

void write_file_atomic(const std::string& path, std::string_view content) {
  AtomicFile f(path);
  f.write(content);
  f.commit();
}

}  // namespace optiq
