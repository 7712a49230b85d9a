// What every harness in tests/fuzz shares: a way to hand fuzz bytes to
// parsers that only take a path, the rule for what counts as a clean
// rejection, and the fixed model the plan/profile harnesses check against.
//
// A thrown optiq::Error is the expected outcome for bad input. Any other
// exception escapes LLVMFuzzerTestOneInput, and libFuzzer reports it as a
// crash: a parser must turn every problem into optiq's one-line error.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/error.h"
#include "model/config.h"

namespace optiq::fuzz {

// An in-memory file (memfd) that parsers open as "/proc/self/fd/N": they
// open and mmap it like any regular file, and nothing touches the disk.
class MemFile {
 public:
  explicit MemFile(const char* name);
  ~MemFile();
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;

  const std::string& path() const { return path_; }
  void write(const uint8_t* data, size_t size);  // replaces the contents

 private:
  int fd_ = -1;
  std::string path_;
};

// A per-process scratch directory (under /dev/shm when it exists, else
// $TMPDIR or /tmp), for parsers that read a model directory; removed when the
// process exits normally.
class ScratchDir {
 public:
  explicit ScratchDir(const char* name);
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }
  std::string file(std::string_view name) const { return path_ + "/" + std::string(name); }
  void write(std::string_view name, const uint8_t* data, size_t size) const;
  void write(std::string_view name, std::string_view text) const {
    write(name, reinterpret_cast<const uint8_t*>(text.data()), text.size());
  }
  void remove(std::string_view name) const;

 private:
  std::string path_;
};

// Runs f(); true if it returned, false if it threw optiq::Error.
template <typename F>
bool accepts(F&& f) {
  try {
    f();
    return true;
  } catch (const Error&) {
    return false;
  }
}

// The model plans and profiles are checked against: stories260K's shape
// (config_from_llama2c of its header), so that seeds made from it parse.
ModelConfig stories_config();

// $OPTIQ_FUZZ_MODELS_DIR or the stories260K directory this tree's tests use
// (../shared/models/stories260K), and the optiq model cache
// ($OPTIQ_CACHE/models, default ~/.cache/optiq/models).
std::string stories_dir();
std::string cache_models_dir();

}  // namespace optiq::fuzz
