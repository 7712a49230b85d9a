#include "core/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace optiq {

namespace fs = std::filesystem;

namespace {
constexpr size_t kBuffer = size_t{1} << 20;  // small writes gathered into 1 MB ones
std::atomic<int> g_serial{0};                 // several temporaries of one process in one directory

fs::path dir_of(const fs::path& target) { return target.has_parent_path() ? target.parent_path() : fs::path("."); }

// The pid in ".<name>.tmp-<pid>[-...]", or 0 when `entry` is not a temporary of `name`.
long temporary_pid(const std::string& entry, const std::string& name) {
  const std::string prefix = "." + name + ".tmp-";
  if (entry.size() <= prefix.size() || entry.compare(0, prefix.size(), prefix) != 0) return 0;
  const char* b = entry.data() + prefix.size();
  const char* e = entry.data() + entry.size();
  long pid = 0;
  const auto [p, ec] = std::from_chars(b, e, pid);
  if (ec != std::errc() || p == b || pid <= 0 || (p != e && *p != '-')) return 0;
  return pid;
}
}  // namespace

std::string write_failure_reason(int err) {
  switch (err) {
    case ENOSPC: return "the disk is full (No space left on device)";
    case EDQUOT: return "the disk quota is used up (Disk quota exceeded)";
    case EFBIG: return "the file would exceed the largest size allowed (File too large: `ulimit -f` or the file system's limit)";
    default: return std::strerror(err);
  }
}

std::string temporary_name(const std::string& target, const std::string& suffix) {
  const fs::path t(target);
  std::string name(".");  // (not "." + string: GCC 12 warns falsely about that)
  name += t.filename().string();
  name += ".tmp-" + std::to_string(::getpid());
  if (!suffix.empty()) name += "-" + suffix;
  return (dir_of(t) / name).string();
}

int remove_stale_temporaries(const std::string& target) {
  const fs::path t(target);
  const std::string name = t.filename().string();
  if (name.empty()) return 0;
  int removed = 0;
  std::error_code ec;
  for (fs::directory_iterator it(dir_of(t), ec), end; !ec && it != end; it.increment(ec)) {
    const long pid = temporary_pid(it->path().filename().string(), name);
    if (pid == 0 || pid == ::getpid()) continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // alive (or not ours to judge)
    std::error_code rm;
    if (fs::remove_all(it->path(), rm) > 0 && !rm) ++removed;
  }
  return removed;
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  remove_stale_temporaries(path_);
  tmp_ = temporary_name(path_, std::to_string(g_serial++));
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0)
    fail("{}: cannot create a temporary file in {}: {}", path_, dir_of(path_).string(), std::strerror(errno));
  buf_.reserve(kBuffer);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

int write_fully(int fd, const void* p, size_t n) {
  const char* b = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, b, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return errno;
    b += w;
    n -= static_cast<size_t>(w);
  }
  return 0;
}

void AtomicFile::write_failed(int err) {
  // The temporary goes now, not at destruction: a full disk gets its space back at once.
  ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_.c_str());
  fail("{}: write failed: {}", path_, write_failure_reason(err));
}

void AtomicFile::write(const void* p, size_t n) {
  check(fd_ >= 0, "{}: write failed: the file is closed", path_);
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
  if (const int err = write_fully(fd_, b, n)) write_failed(err);  // large blocks go straight to the file
}

void AtomicFile::pad_to(uint64_t align) {
  static const char zeros[64] = {};
  while (pos_ % align) write(zeros, std::min<uint64_t>(align - pos_ % align, sizeof(zeros)));
}

void AtomicFile::flush() {
  const char* b = buf_.data();
  size_t n = buf_.size();
  if (const int err = write_fully(fd_, b, n)) write_failed(err);
  buf_.clear();
}

void AtomicFile::commit() {
  check(fd_ >= 0, "{}: written already", path_);
  flush();
  if (::fsync(fd_) != 0) write_failed(errno);
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) {
    const int e = errno;
    ::unlink(tmp_.c_str());
    fail("{}: write failed: {}", path_, write_failure_reason(e));
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

void commit_directory(const std::string& tmp_dir, const std::string& target) {
  std::error_code ec;
  if (::renameat2(AT_FDCWD, tmp_dir.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0) {
    fs::remove_all(tmp_dir, ec);  // the old directory, swapped out
    return;
  }
  const int e = errno;
  if (e != ENOENT && e != EINVAL && e != ENOSYS && e != EOPNOTSUPP)
    fail("{}: cannot move {} into place: {}", target, tmp_dir, std::strerror(e));
  std::string old;
  if (e != ENOENT) {  // a target the file system cannot exchange: move it aside
    old = temporary_name(target, "old");
    if (::rename(target.c_str(), old.c_str()) != 0)
      fail("{}: cannot move the old output aside: {}", target, std::strerror(errno));
  }
  if (::rename(tmp_dir.c_str(), target.c_str()) != 0)
    fail("{}: cannot move {} into place: {}", target, tmp_dir, std::strerror(errno));
  if (!old.empty()) fs::remove_all(old, ec);
}

}  // namespace optiq
