// Files written so that readers never see half of one: the content goes to a
// temporary file in the same directory (".<name>.tmp-<pid>-<n>"), which is
// synced and renamed over the target only when complete. An AtomicFile that
// is destroyed without commit() removes its temporary (an error, or Ctrl-C
// unwinding through the writer, leaves the target as it was).
//
// A process killed outright (SIGKILL, power loss) cannot remove its
// temporary: the next AtomicFile (or commit_directory temporary) for the same
// target removes those of processes that no longer exist
// (remove_stale_temporaries). Until then they are inert: no reader looks at
// dot-files named like that. docs/reliability.md, "Crash safety".
#pragma once
#include <cstddef>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <string_view>

#include "core/sha256.h"

namespace optiq {

// Appends to a file opened for writing through 8 MB buffers. Once a buffer
// fills, the file is also opened with O_DIRECT and whole buffers go to the
// disk from there, skipping the page cache (on the development VM buffered
// writes of a multi-GB export ran at 140-290 MB/s, the kernel's copy into
// fresh page-cache pages; O_DIRECT wrote 1.7 GB/s), on another thread while
// the next buffer fills. flush() writes everything (the unaligned tail
// through the plain descriptor) and waits for it. A file system that refuses
// O_DIRECT (tmpfs), or OPTIQ_DIRECT_IO=0 in the environment, gets plain
// writes. Failures return the errno.
class FileAppender {
 public:
  // fd: the file, open for writing; `pos`: where appending starts (the file
  // holds the bytes before it). The appender does not own fd.
  FileAppender(int fd, std::string path, uint64_t pos);
  ~FileAppender();
  FileAppender(const FileAppender&) = delete;
  FileAppender& operator=(const FileAppender&) = delete;
  int write(const void* p, size_t n);
  // Everything appended is in the file (not yet synced); 0 or errno.
  int flush();
  // Whether whole buffers bypass the page cache.
  bool direct() const { return direct_fd_ >= 0; }
  // Every byte appended from now on also goes into `h`, in file order, on
  // the thread that writes the buffer out (so a resumable file's running
  // SHA-256 costs its writer no time); complete after flush().
  void hash_into(Sha256* h) {
    hash_ = h;
    hashed_ = base_ + len_;
  }

  static constexpr size_t kBuffer = size_t{8} << 20;

 private:
  int write_full_buffer();
  int wait();
  int fd_, direct_fd_ = -1;
  std::string path_;
  bool tried_direct_ = false;
  uint64_t base_;  // file offset of buf_[0]
  size_t len_ = 0;
  struct Free {
    void operator()(uint8_t* p) const;
  };
  std::unique_ptr<uint8_t, Free> buf_, spare_;
  std::future<int> inflight_;
  Sha256* hash_ = nullptr;
  uint64_t hashed_ = 0;  // file offset up to which hash_ has the bytes
};

class AtomicFile {
 public:
  // Throws "<path>: cannot create a temporary file in <dir>: <reason>".
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Appends n bytes (buffered); throws "<path>: write failed: <reason>", e.g.
  // "the disk is full (No space left on device)" (write_failure_reason).
  void write(const void* p, size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  // Zero bytes up to the next multiple of `align`.
  void pad_to(uint64_t align);
  uint64_t pos() const { return pos_; }
  // Flushes, fsyncs and renames the temporary over the target.
  void commit();
  const std::string& path() const { return path_; }

 private:
  [[noreturn]] void write_failed(int err);
  std::string path_, tmp_;
  int fd_ = -1;
  std::unique_ptr<FileAppender> out_;
  uint64_t pos_ = 0;
};

// A whole file at once (plans, profiles, small caches).
void write_file_atomic(const std::string& path, std::string_view content);

// Writes all n bytes to fd, retrying short writes and EINTR (writes of at
// most 1 GiB at a time); 0, or the errno of the failure.
int write_fully(int fd, const void* p, size_t n);

// Why a write failed, for a one-line error: ENOSPC "the disk is full (No
// space left on device)", EDQUOT, EFBIG (the file size limit) spelled out;
// other errors as strerror.
std::string write_failure_reason(int err);

// The name of a temporary for `target` (".<name>.tmp-<pid>", or with
// "-<suffix>"), in target's directory: what remove_stale_temporaries matches.
std::string temporary_name(const std::string& target, const std::string& suffix = "");

// Removes the temporaries (files or directories) named for `target` by
// processes that no longer run (kill(pid, 0) fails with ESRCH): what a
// SIGKILLed writer left. Returns how many were removed. A process on another
// host writing the same target on a shared file system would look dead: do
// not write one output from two machines at once.
int remove_stale_temporaries(const std::string& target);

// Puts the finished directory `tmp_dir` (a temporary beside `target`) in
// place of `target`. An existing target is swapped out in one step
// (renameat2 RENAME_EXCHANGE), so that a crash leaves the old directory or the
// new one, never neither; the old one is then removed. Where the file system
// cannot exchange, the old directory is moved aside first.
void commit_directory(const std::string& tmp_dir, const std::string& target);

}  // namespace optiq
