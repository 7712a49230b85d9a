// Internal to src/profile: rows of floats for the layer-wise profiler (the
// residual streams of the calibration windows, the anchors' streams, the
// reference log-probabilities), held in memory or, past a memory budget, in
// a temporary file. The file is created in a given directory (mkstemp) and
// unlinked at once: nothing is left behind by a crash, and its blocks go back
// to the disk when the store is destroyed.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace optiq::profile_detail {

class SpillStore {
 public:
  SpillStore() = default;
  ~SpillStore();
  SpillStore(const SpillStore&) = delete;
  SpillStore& operator=(const SpillStore&) = delete;
  friend void swap(SpillStore& a, SpillStore& b) noexcept {
    std::swap(a.n_, b.n_);
    std::swap(a.bf16_, b.bf16_);
    std::swap(a.fd_, b.fd_);
    a.dir_.swap(b.dir_);
    a.f_.swap(b.f_);
    a.h_.swap(b.h_);
    a.words_.swap(b.words_);
  }

  // n values, stored as fp32 or (bf16) as bfloat16 words; in memory, or in
  // an unlinked temporary file in `dir` when on_disk (throws naming dir when
  // it cannot be created). Values are zero until put.
  void init(size_t n, bool bf16, bool on_disk, const std::string& dir);
  // Values [off, off + n) from / to x (fp32 in memory).
  void put(size_t off, const float* x, size_t n);
  void get(size_t off, size_t n, float* out) const;
  // Releases the values (memory or file).
  void clear();

  size_t size() const { return n_; }
  bool bf16() const { return bf16_; }
  bool on_disk() const { return fd_ >= 0; }
  int64_t bytes() const { return static_cast<int64_t>(n_) * (bf16_ ? 2 : 4); }

 private:
  void io(bool write, size_t byte_off, void* p, size_t bytes) const;
  size_t n_ = 0;
  bool bf16_ = false;
  int fd_ = -1;
  std::string dir_;
  std::vector<float> f_;
  std::vector<uint16_t> h_;
  mutable std::vector<uint16_t> words_;  // a bf16 file's values on their way in or out
};

}  // namespace optiq::profile_detail
