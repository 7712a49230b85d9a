#include "model/linear.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/half.h"

#include "core/error.h"
#include "kernels/act_quant.h"
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

Linear Linear::from_half_view(const uint16_t* w, bool bf16, int64_t rows, int64_t cols) {
  Linear l;
  l.rows_ = rows;
  l.cols_ = cols;
  l.half_ = w;
  l.half_bf16_ = bf16;
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

Linear Linear::from_ggml_view(DType dtype, const void* data, int64_t rows, int64_t cols) {
  KQuantView v{dtype, rows, cols, static_cast<const uint8_t*>(data)};
  check_view(v);
  Linear l;
  l.rows_ = rows;
  l.cols_ = cols;
  l.kq_view_ = v;
  return l;
}

Linear Linear::from_ggml(DType dtype, std::vector<uint8_t> blocks, int64_t rows, int64_t cols) {
  auto owned = std::make_shared<const std::vector<uint8_t>>(std::move(blocks));
  Linear l = from_ggml_view(dtype, owned->data(), rows, cols);
  check(owned->size() == l.kq_view_->bytes(), "Linear: {} bytes for a {}x{} {} matrix", owned->size(), rows, cols,
        dtype_name(dtype));
  l.owned_blocks_ = std::move(owned);
  return l;
}

void round_activations(ActRounding r, float* x, int64_t n, int64_t cols) {
  const int64_t total = n * cols;
  switch (r) {
    case ActRounding::Exact:
      return;
    case ActRounding::F16:
      for (int64_t i = 0; i < total; ++i) x[i] = f16_to_f32(f32_to_f16(x[i]));
      return;
    case ActRounding::BF16:
      for (int64_t i = 0; i < total; ++i) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
      return;
    case ActRounding::Q8Block32:  // ggml quantize_row_q8_0/q8_1: d = amax/127 stored as fp16
      for (int64_t b = 0; b + 32 <= total; b += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::abs(x[b + j]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f, d16 = f16_to_f32(f32_to_f16(d));
        for (int j = 0; j < 32; ++j) x[b + j] = std::nearbyint(x[b + j] * id) * d16;
      }
      return;
    case ActRounding::Q8KBlock256:  // ggml quantize_row_q8_K: scale from the signed extreme, fp32
      for (int64_t b = 0; b + 256 <= total; b += 256) {
        float amax = 0.0f, maxv = 0.0f;
        for (int j = 0; j < 256; ++j)
          if (std::abs(x[b + j]) > amax) amax = std::abs(x[b + j]), maxv = x[b + j];
        if (amax == 0.0f) continue;
        const float iscale = -127.0f / maxv, d = 1.0f / iscale;
        for (int j = 0; j < 256; ++j)
          x[b + j] = d * static_cast<float>(std::min(127, static_cast<int>(std::nearbyint(iscale * x[b + j]))));
      }
      return;
  }
}

void Linear::forward(const float* x, int64_t n, float* y) const {
  if (act_rounding_ != ActRounding::Exact) {
    thread_local std::vector<float> rounded;
    rounded.assign(x, x + n * cols_);
    round_activations(act_rounding_, rounded.data(), n, cols_);
    x = rounded.data();
  }
  if (kq_view_)  // int8 decode only for fp32 activations (not llama.cpp's Q8_K rounding)
    kquant_matmul(*kq_view_, x, n, y, act_rounding_ == ActRounding::Exact && kernels::decode_int8_enabled());
  else if (affine_view_)
    affine_matmul(*affine_view_, x, n, y);
  else if (half_)
    half_matmul(half_, half_bf16_, rows_, cols_, x, n, y);
  else
    f32_matmul(f32(), rows_, cols_, x, n, y);
}

void Linear::row(int64_t r, float* out) const {
  if (half_) {
    const uint16_t* src = half_ + r * cols_;
    for (int64_t c = 0; c < cols_; ++c) out[c] = half_bf16_ ? bf16_to_f32(src[c]) : f16_to_f32(src[c]);
    return;
  }
  if (kq_view_)
    kquant_dequantize_row(*kq_view_, r, out);
  else if (affine_view_)
    dequantize_row(*affine_view_, r, out);
  else
    std::memcpy(out, f32() + r * cols_, sizeof(float) * cols_);
}

std::vector<float> Linear::to_f32() const {
  if (affine_view_) return dequantize(*affine_view_);
  if (half_ || kq_view_) {
    std::vector<float> w(rows_ * cols_);
    for (int64_t r = 0; r < rows_; ++r) row(r, &w[r * cols_]);
    return w;
  }
  return std::vector<float>(f32(), f32() + rows_ * cols_);
}

size_t Linear::bytes() const {
  if (kq_view_) return kq_view_->bytes();
  if (affine_view_) return optiq::bytes(*affine_view_);
  if (half_) return static_cast<size_t>(rows_ * cols_) * 2;
  return static_cast<size_t>(rows_ * cols_) * sizeof(float);
}

std::string Linear::format() const {
  if (kq_view_) return std::string(dtype_name(kq_view_->dtype));
  if (affine_view_) return affine_format_name(affine_view_->fmt);
  if (half_) return half_bf16_ ? "BF16" : "F16";
  return "F32";
}

}  // namespace optiq
