// Which bytes of a matrix an L2 prefetch covers (L2Prefetch, cuda_kernels.h):
// the first rows' codes, scales and biases, in whole 128-byte lines.
#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_kernels.h"

namespace optiq::cuda {
namespace {

constexpr int64_t kLine = 128;

struct Part {
  const void* start;
  int64_t bytes;
};

// The arrays a product reads, each {rows x per-row bytes}: at most three.
int parts_of(const DevMatrix& w, Part (&out)[3]) {
  const int64_t elems = w.rows * w.cols;
  switch (w.storage) {
    case DevStorage::F32: out[0] = {w.data, elems * 4}; return 1;
    case DevStorage::F16:
    case DevStorage::BF16: out[0] = {w.data, elems * 2}; return 1;
    case DevStorage::KQuant: out[0] = {w.data, w.rows * w.row_bytes}; return 1;
    case DevStorage::Affine: {
      const int64_t groups = w.group > 0 ? w.rows * (w.cols / w.group) : 0;
      int n = 0;
      out[n++] = {w.data, elems * w.bits / 8};
      if (w.scales) out[n++] = {w.scales, groups * 2};
      if (w.biases) out[n++] = {w.biases, groups * 2};
      return n;
    }
  }
  return 0;
}

}  // namespace

int64_t weight_bytes(const DevMatrix& w) {
  Part parts[3];
  const int n = parts_of(w, parts);
  int64_t total = 0;
  for (int i = 0; i < n; ++i) total += parts[i].bytes;
  return total;
}

int64_t add_prefetch(L2Prefetch& pf, const DevMatrix& w, double fraction) {
  Part parts[3];
  const int n = parts_of(w, parts);
  fraction = std::clamp(fraction, 0.0, 1.0);
  int64_t added = 0;
  for (int i = 0; i < n && pf.count < L2Prefetch::kMaxRanges; ++i) {
    // Whole lines only: a prefetch past the allocation's end is not ours to make.
    const int64_t lines = static_cast<int64_t>(std::floor(static_cast<double>(parts[i].bytes) * fraction)) / kLine;
    if (lines <= 0 || parts[i].start == nullptr) continue;
    pf.start[pf.count] = static_cast<const char*>(parts[i].start);
    pf.lines[pf.count] = static_cast<uint32_t>(std::min<int64_t>(lines, UINT32_MAX));
    ++pf.count;
    added += lines * kLine;
  }
  return added;
}

}  // namespace optiq::cuda
