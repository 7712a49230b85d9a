#include "profile/spill_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/half.h"

namespace optiq::profile_detail {

SpillStore::~SpillStore() { clear(); }

void SpillStore::clear() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  n_ = 0;
  f_ = {};
  h_ = {};
  words_ = {};
}

void SpillStore::init(size_t n, bool bf16, bool on_disk, const std::string& dir) {
  clear();
  n_ = n;
  bf16_ = bf16;
  if (!on_disk) {
    if (bf16) h_.assign(n, 0);
    else f_.assign(n, 0.0f);
    return;
  }
  dir_ = dir.empty() ? std::filesystem::temp_directory_path().string() : dir;
  std::string name = (std::filesystem::path(dir_) / ".optiq-activations-XXXXXX").string();
  fd_ = ::mkstemp(name.data());
  check(fd_ >= 0, "{}: cannot create a temporary file for the layer-wise profile's activations: {}", dir_,
        std::strerror(errno));
  ::unlink(name.c_str());  // gone with the process, whatever happens to it
  // The file's size up front: a disk too small for it fails here, with a clear message.
  const off_t size = static_cast<off_t>(bytes());
  const int err = size > 0 ? ::posix_fallocate(fd_, 0, size) : 0;
  if (err != 0 && err != EOPNOTSUPP && err != EINVAL) {
    ::close(fd_);
    fd_ = -1;
    fail("{}: cannot hold {:.1f} MB of the layer-wise profile's activations: {}", dir_, size / 1e6,
         write_failure_reason(err));
  }
  if (err != 0) check(::ftruncate(fd_, size) == 0, "{}: {}", dir_, std::strerror(errno));
}

void SpillStore::io(bool write, size_t byte_off, void* p, size_t bytes) const {
  char* c = static_cast<char*>(p);
  while (bytes > 0) {
    const ssize_t r = write ? ::pwrite(fd_, c, bytes, static_cast<off_t>(byte_off))
                            : ::pread(fd_, c, bytes, static_cast<off_t>(byte_off));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      const int err = r < 0 ? errno : EIO;
      if (write) fail("{}: writing the layer-wise profile's activations failed: {}", dir_, write_failure_reason(err));
      fail("{}: reading the layer-wise profile's activations back failed: {}", dir_, std::strerror(err));
    }
    c += r;
    byte_off += static_cast<size_t>(r);
    bytes -= static_cast<size_t>(r);
  }
}

void SpillStore::put(size_t off, const float* x, size_t n) {
  check(off + n <= n_, "activation store: [{}, {}) past its {} values", off, off + n, n_);
  if (!bf16_) {
    if (fd_ < 0) std::copy_n(x, n, f_.data() + off);
    else io(true, off * 4, const_cast<float*>(x), n * 4);
    return;
  }
  // Spilled, h_ is empty: its data() may be null, so no offset is taken from it.
  uint16_t* w = nullptr;
  if (fd_ >= 0) {
    words_.resize(n);
    w = words_.data();
  } else {
    w = h_.data() + off;
  }
  for (size_t i = 0; i < n; ++i) w[i] = f32_to_bf16(x[i]);
  if (fd_ >= 0) io(true, off * 2, w, n * 2);
}

void SpillStore::get(size_t off, size_t n, float* out) const {
  check(off + n <= n_, "activation store: [{}, {}) past its {} values", off, off + n, n_);
  if (!bf16_) {
    if (fd_ < 0) std::copy_n(f_.data() + off, n, out);
    else io(false, off * 4, out, n * 4);
    return;
  }
  const uint16_t* w = nullptr;
  if (fd_ >= 0) {
    words_.resize(n);
    io(false, off * 2, words_.data(), n * 2);
    w = words_.data();
  } else {
    w = h_.data() + off;
  }
  for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(w[i]);
}

}  // namespace optiq::profile_detail
