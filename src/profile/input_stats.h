// What the fast profiler keeps of a matrix product's inputs X (the
// calibration tokens as one input site sees them, tokens x cols): enough to
// give, for any weight error D, the output error sum_t ||D x_t||^2 (the
// proxy), the per-channel energies sum_t x_tk^2 (the weighted rounding) and
// the Gram sums X^T X (GPTQ's Hessian).
//
// Held as whichever is smaller, the Gram sums (cols x cols) or the rows of X
// themselves (tokens x cols), and the proxy costs the same ratio: D G D^T is
// rows x cols^2 multiply-adds, ||D X^T||^2 rows x cols x tokens. A quick
// profile of an 8B model reads 1-2k calibration tokens, while its down_proj
// has 14,336 input channels (Gram sums 0.8 GB, rows 58 MB; 14x fewer
// operations per candidate); a small model profiled on many tokens keeps the
// Gram sums. Both give the same sums up to fp32 rounding.
#pragma once
#include <cstdint>
#include <vector>

#include "backend/backend.h"

namespace optiq::profile_detail {

class InputStats {
 public:
  InputStats() = default;
  // Statistics of `tokens` rows of `cols` inputs to come, in be's memory.
  InputStats(Backend& be, int64_t cols, int64_t tokens);
  // The bytes such statistics hold (the smaller form).
  static int64_t bytes(int64_t cols, int64_t tokens);

  bool empty() const { return cols_ == 0; }
  int64_t cols() const { return cols_; }
  bool holds_rows() const { return rows_; }

  // The next n rows of X (be's memory). Throws past `tokens` rows in all.
  void add(const float* x, int64_t n);
  // sum over the tokens of ||D x||^2 for D (rows x cols, be's memory).
  double quadratic(const float* d, int64_t rows) const;
  // sum over the tokens of x_k^2, for each input channel k.
  std::vector<double> channel_sums() const;
  // The Gram sums X^T X (cols x cols, row-major) on the host.
  std::vector<float> gram_on_host() const;

 private:
  Backend* be_ = nullptr;
  Buffer data_;  // Gram sums (cols x cols) or rows (tokens x cols)
  int64_t cols_ = 0, tokens_ = 0, filled_ = 0;
  bool rows_ = false;
};

}  // namespace optiq::profile_detail
