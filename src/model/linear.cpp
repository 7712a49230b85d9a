#include "model/linear.h"

#include <cstring>

#include "core/error.h"
#include "kernels/matmul.h"

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

Linear Linear::from_affine(AffineMatrix m) {
  auto owned = std::make_shared<const AffineMatrix>(std::move(m));
  Linear l = from_affine_view(owned->view());
  l.owned_affine_ = std::move(owned);
  return l;
}

Linear Linear::from_affine_view(const AffineMatrixView& v) {
  check_view(v);
  Linear l;
  l.rows_ = v.rows;
  l.cols_ = v.cols;
  l.affine_view_ = v;
  return l;
}

void Linear::forward(const float* x, int64_t n, float* y) const {
  if (affine_view_)
    affine_matmul(*affine_view_, x, n, y);
  else
    f32_matmul(f32(), rows_, cols_, x, n, y);
}

void Linear::row(int64_t r, float* out) const {
  if (affine_view_)
    dequantize_row(*affine_view_, r, out);
  else
    std::memcpy(out, f32() + r * cols_, sizeof(float) * cols_);
}

std::vector<float> Linear::to_f32() const {
  if (affine_view_) return dequantize(*affine_view_);
  return std::vector<float>(f32(), f32() + rows_ * cols_);
}

size_t Linear::bytes() const {
  if (affine_view_) return optiq::bytes(*affine_view_);
  return static_cast<size_t>(rows_ * cols_) * sizeof(float);
}

std::string Linear::format() const { return affine_view_ ? affine_format_name(affine_view_->fmt) : "F32"; }

}  // namespace optiq
