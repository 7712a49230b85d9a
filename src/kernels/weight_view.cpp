#include "kernels/weight_view.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/half.h"
#include "kernels/act_quant.h"
#include "kernels/matmul.h"

namespace optiq {

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

void weight_matmul(const WeightView& w, const float* x, int64_t n, float* y) {
  if (w.act != ActRounding::Exact) {
    thread_local std::vector<float> rounded;
    rounded.assign(x, x + n * w.cols);
    round_activations(w.act, rounded.data(), n, w.cols);
    x = rounded.data();
  }
  if (const auto* kq = w.as<KQuantView>())  // int8 decode only for fp32 activations (not llama.cpp's Q8_K rounding)
    kquant_matmul(*kq, x, n, y, w.act == ActRounding::Exact && kernels::decode_int8_enabled());
  else if (const auto* a = w.as<AffineMatrixView>())
    affine_matmul(*a, x, n, y);
  else if (const auto* h = w.as<HalfWeights>())
    half_matmul(h->data, h->bf16, w.rows, w.cols, x, n, y);
  else
    f32_matmul(w.as<F32Weights>()->data, w.rows, w.cols, x, n, y);
}

void weight_row(const WeightView& w, int64_t r, float* out) {
  const int64_t cols = w.cols;
  if (const auto* h = w.as<HalfWeights>()) {
    const uint16_t* src = h->data + r * cols;
    for (int64_t c = 0; c < cols; ++c) out[c] = h->bf16 ? bf16_to_f32(src[c]) : f16_to_f32(src[c]);
  } else if (const auto* kq = w.as<KQuantView>()) {
    kquant_dequantize_row(*kq, r, out);
  } else if (const auto* a = w.as<AffineMatrixView>()) {
    dequantize_row(*a, r, out);
  } else {
    std::memcpy(out, w.as<F32Weights>()->data + r * cols, sizeof(float) * cols);
  }
}

size_t weight_bytes(const WeightView& w) {
  if (const auto* kq = w.as<KQuantView>()) return kq->bytes();
  if (const auto* a = w.as<AffineMatrixView>()) return bytes(*a);
  if (w.as<HalfWeights>()) return static_cast<size_t>(w.rows * w.cols) * 2;
  return static_cast<size_t>(w.rows * w.cols) * sizeof(float);
}

}  // namespace optiq
