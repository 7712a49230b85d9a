#include "fuzz_util.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "formats/llama2c.h"

namespace optiq::fuzz {

namespace fs = std::filesystem;

MemFile::MemFile(const char* name) {
  fd_ = ::memfd_create(name, MFD_CLOEXEC);
  if (fd_ < 0) fail("memfd_create({}): {}", name, std::strerror(errno));
  path_ = "/proc/self/fd/" + std::to_string(fd_);
}

MemFile::~MemFile() {
  if (fd_ >= 0) ::close(fd_);
}

void MemFile::write(const uint8_t* data, size_t size) {
  // Shrink first: a parser must never see bytes of the previous input.
  if (::ftruncate(fd_, 0) != 0) fail("{}: ftruncate: {}", path_, std::strerror(errno));
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
    if (n <= 0) fail("{}: write: {}", path_, std::strerror(errno));
    done += static_cast<size_t>(n);
  }
}

namespace {
std::string scratch_root() {
  std::error_code ec;
  if (fs::is_directory("/dev/shm", ec)) return "/dev/shm";
  const char* t = std::getenv("TMPDIR");
  return t && *t ? t : "/tmp";
}
}  // namespace

ScratchDir::ScratchDir(const char* name) {
  path_ = scratch_root() + "/optiq-fuzz-" + name + "-" + std::to_string(::getpid());
  std::error_code ec;
  fs::remove_all(path_, ec);
  fs::create_directories(path_);
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

void ScratchDir::write(std::string_view name, const uint8_t* data, size_t size) const {
  std::ofstream f(file(name), std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!f) fail("{}: cannot write", file(name));
}

void ScratchDir::remove(std::string_view name) const {
  std::error_code ec;
  fs::remove(file(name), ec);
}

ModelConfig stories_config() {
  Llama2cHeader h;
  h.dim = 64;
  h.hidden_dim = 172;
  h.n_layers = 5;
  h.n_heads = 8;
  h.n_kv_heads = 4;
  h.vocab_size = 512;
  h.seq_len = 512;
  return config_from_llama2c(h);
}

std::string stories_dir() {
  if (const char* d = std::getenv("OPTIQ_FUZZ_MODELS_DIR"); d && *d) return d;
  return std::string(OPTIQ_SHARED_DIR) + "/models/stories260K";
}

std::string cache_models_dir() {
  if (const char* c = std::getenv("OPTIQ_CACHE"); c && *c) return std::string(c) + "/models";
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/optiq/models";
}

}  // namespace optiq::fuzz
