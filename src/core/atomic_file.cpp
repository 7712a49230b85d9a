#include "core/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string_view>

#include "core/error.h"

namespace optiq {

namespace fs = std::filesystem;

namespace {
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
  out_ = std::make_unique<FileAppender>(fd_, tmp_, 0);
}

// --- FileAppender ---

namespace {
constexpr size_t kDirectAlign = 4096;

bool direct_io_allowed() {
  const char* e = std::getenv("OPTIQ_DIRECT_IO");
  return !(e && std::string_view(e) == "0");
}

int pwrite_fully(int fd, const uint8_t* p, size_t n, uint64_t off) {
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, std::min<size_t>(n, size_t{1} << 30), static_cast<off_t>(off));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return errno;
    p += w;
    off += static_cast<uint64_t>(w);
    n -= static_cast<size_t>(w);
  }
  return 0;
}

uint8_t* aligned_buffer() {
  void* p = nullptr;
  if (::posix_memalign(&p, kDirectAlign, FileAppender::kBuffer) != 0) throw std::bad_alloc();
  return static_cast<uint8_t*>(p);
}
}  // namespace

void FileAppender::Free::operator()(uint8_t* p) const { std::free(p); }

FileAppender::FileAppender(int fd, std::string path, uint64_t pos)
    : fd_(fd), path_(std::move(path)), base_(pos / kDirectAlign * kDirectAlign), buf_(aligned_buffer()) {
  // The partial block before `pos` is kept in the buffer, so that whole
  // buffers stay aligned to the file's blocks.
  len_ = static_cast<size_t>(pos - base_);
  if (len_ > 0 && ::pread(fd_, buf_.get(), len_, static_cast<off_t>(base_)) != static_cast<ssize_t>(len_)) {
    tried_direct_ = true;  // cannot read it back (a write-only descriptor): plain writes from pos
    base_ = pos;
    len_ = 0;
  }
}

FileAppender::~FileAppender() {
  if (inflight_.valid()) inflight_.wait();
  if (direct_fd_ >= 0) ::close(direct_fd_);
}

int FileAppender::wait() { return inflight_.valid() ? inflight_.get() : 0; }

int FileAppender::write_full_buffer() {
  if (!tried_direct_) {
    tried_direct_ = true;
    if (direct_io_allowed()) direct_fd_ = ::open(path_.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  }
  if (const int err = wait()) return err;
  if (direct_fd_ < 0) {  // plain writes
    if (hash_) hash_->update(buf_.get() + (hashed_ - base_), base_ + len_ - hashed_);
    hashed_ = base_ + len_;
    const int err = pwrite_fully(fd_, buf_.get(), len_, base_);  // (len_ is a whole buffer)
    base_ += len_;
    len_ = 0;
    return err;
  }
  if (!spare_) spare_.reset(aligned_buffer());
  std::swap(buf_, spare_);
  const uint8_t* data = spare_.get();
  const size_t n = len_;
  const uint64_t off = base_;
  const int dfd = direct_fd_, pfd = fd_;
  base_ += n;
  len_ = 0;
  Sha256* hash = hash_;
  const size_t hash_from = static_cast<size_t>(hashed_ - off);
  hashed_ = off + n;
  inflight_ = std::async(std::launch::async, [data, n, off, dfd, pfd, hash, hash_from] {
    if (hash) hash->update(data + hash_from, n - hash_from);
    const int err = pwrite_fully(dfd, data, n, off);
    // A file system that takes the O_DIRECT open but not the write: plainly.
    return err == EINVAL ? pwrite_fully(pfd, data, n, off) : err;
  });
  return 0;
}

int FileAppender::write(const void* p, size_t n) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  while (n > 0) {
    const size_t k = std::min(n, kBuffer - len_);
    std::memcpy(buf_.get() + len_, b, k);
    len_ += k;
    b += k;
    n -= k;
    if (len_ == kBuffer)
      if (const int err = write_full_buffer()) return err;
  }
  return 0;
}

int FileAppender::flush() {
  if (const int err = wait()) return err;
  if (hash_ && base_ + len_ > hashed_) hash_->update(buf_.get() + (hashed_ - base_), base_ + len_ - hashed_);
  hashed_ = base_ + len_;
  if (len_ == 0) return 0;
  const size_t whole = len_ / kDirectAlign * kDirectAlign;
  if (whole > 0) {
    int err = direct_fd_ >= 0 ? pwrite_fully(direct_fd_, buf_.get(), whole, base_) : EINVAL;
    if (err == EINVAL) err = pwrite_fully(fd_, buf_.get(), whole, base_);
    if (err) return err;
  }
  // The tail (less than a block) through the page cache; it stays in the
  // buffer, to be written again whole with the bytes that follow, so that
  // whole buffers stay aligned to the file's blocks.
  if (const int err = pwrite_fully(fd_, buf_.get() + whole, len_ - whole, base_ + whole)) return err;
  if (whole > 0) {
    std::memmove(buf_.get(), buf_.get() + whole, len_ - whole);
    base_ += whole;
    len_ -= whole;
  }
  return 0;
}

AtomicFile::~AtomicFile() {
  out_.reset();
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
  out_.reset();
  ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_.c_str());
  fail("{}: write failed: {}", path_, write_failure_reason(err));
}

void AtomicFile::write(const void* p, size_t n) {
  check(fd_ >= 0, "{}: write failed: the file is closed", path_);
  pos_ += n;
  if (const int err = out_->write(p, n)) write_failed(err);
}

void AtomicFile::pad_to(uint64_t align) {
  static const char zeros[64] = {};
  while (pos_ % align) write(zeros, std::min<uint64_t>(align - pos_ % align, sizeof(zeros)));
}

void AtomicFile::commit() {
  check(fd_ >= 0, "{}: written already", path_);
  if (const int err = out_->flush()) write_failed(err);
  out_.reset();
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
