#include "kernels/elementwise.h"

#include <cmath>

#include "core/half.h"

namespace optiq {

void rms_norm(const float* x, const float* w, int64_t dim, float eps, float* out) {
  double ss = 0.0;
  for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float scale = static_cast<float>(1.0 / std::sqrt(ss / dim + eps));
  for (int64_t i = 0; i < dim; ++i) out[i] = x[i] * scale * w[i];
}

// Only the rotated dims see mscale, as in HF and mlx-lm.
void rope(float* v, int n_heads, int head_dim, int rot_dim, int pos, const float* inv_freq, float mscale) {
  const int half = rot_dim / 2;
  for (int i = 0; i < half; ++i) {
    const float angle = static_cast<float>(pos) * inv_freq[i];
    const float c = std::cos(angle) * mscale, s = std::sin(angle) * mscale;
    for (int h = 0; h < n_heads; ++h) {
      float* p = v + h * head_dim;
      const float x = p[i], y = p[i + half];
      p[i] = x * c - y * s;
      p[i + half] = x * s + y * c;
    }
  }
}

float gelu_tanh_llamacpp(float x) {
  if (x <= -10.0f) return 0.0f;
  if (x >= 10.0f) return x;
  const float xh = f16_to_f32(f32_to_f16(x));
  const float g = 0.5f * xh * (1.0f + std::tanh(0.7978845608028654f * xh * (1.0f + 0.044715f * xh * xh)));
  return f16_to_f32(f32_to_f16(g));
}

void softcap(float* x, int64_t n, float cap) {
  const float inv = 1.0f / cap;
  for (int64_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] * inv);
}

}  // namespace optiq
