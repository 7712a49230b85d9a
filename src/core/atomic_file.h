// Files written so that readers never see half of one: the content goes to a
// temporary file in the same directory (".<name>.tmp-<pid>-<n>"), which is
// synced and renamed over the target only when complete. An AtomicFile that
// is destroyed without commit() removes its temporary (an error, or Ctrl-C
// unwinding through the writer, leaves the target as it was).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace optiq {

class AtomicFile {
 public:
  // Throws "<path>: cannot create a temporary file in <dir>: <reason>".
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Appends n bytes (buffered); throws "<path>: cannot write: <reason>" (disk full, ...).
  void write(const void* p, size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  // Zero bytes up to the next multiple of `align`.
  void pad_to(uint64_t align);
  uint64_t pos() const { return pos_; }
  // Flushes, fsyncs and renames the temporary over the target.
  void commit();
  const std::string& path() const { return path_; }

 private:
  void flush();
  std::string path_, tmp_;
  int fd_ = -1;
  std::string buf_;
  uint64_t pos_ = 0;
};

// A whole file at once (plans, profiles, small caches).
void write_file_atomic(const std::string& path, std::string_view content);

}  // namespace optiq
