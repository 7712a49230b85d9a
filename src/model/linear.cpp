#include "model/linear.h"

#include <cstring>

#include "core/error.h"

namespace optiq {

Linear Linear::from_f32(std::vector<float> w, int64_t rows, int64_t cols) {
  check(static_cast<int64_t>(w.size()) == rows * cols, "Linear: {} values for a {}x{} matrix", w.size(), rows, cols);
  Linear l;
  l.rows_ = rows;
  l.cols_ = cols;
  l.owned_ = std::move(w);
  return l;
}

Linear Linear::from_f32_view(const float* w, int64_t rows, int64_t cols) {
  Linear l;
  l.rows_ = rows;
  l.cols_ = cols;
  l.f32_ = w;
  return l;
}

const float* Linear::f32() const { return owned_.empty() ? f32_ : owned_.data(); }

// Temporary portable kernel until kernels/ provides the SIMD one.
void Linear::forward(const float* x, int64_t n, float* y) const {
  const float* w = f32();
  const int64_t rows = rows_, cols = cols_;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = w + r * cols;
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = x + i * cols;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t c = 0; c < cols; ++c) acc += wr[c] * xi[c];
      y[i * rows + r] = acc;
    }
  }
}

void Linear::row(int64_t r, float* out) const { std::memcpy(out, f32() + r * cols_, sizeof(float) * cols_); }

std::vector<float> Linear::to_f32() const { return std::vector<float>(f32(), f32() + rows_ * cols_); }

size_t Linear::bytes() const { return static_cast<size_t>(rows_ * cols_) * sizeof(float); }

std::string Linear::format() const { return "F32"; }

}  // namespace optiq
