#include "kernels/elementwise.h"

#include <cmath>
#include <limits>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

int64_t argmax(const float* x, int64_t n) {
  float best = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
#if defined(__SSE2__)
  // Four independent running maxima of four lanes. maxps returns its second
  // operand when either is NaN, so a NaN in x never enters them.
  __m128 m0 = _mm_set1_ps(best), m1 = m0, m2 = m0, m3 = m0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm_max_ps(_mm_loadu_ps(x + i), m0);
    m1 = _mm_max_ps(_mm_loadu_ps(x + i + 4), m1);
    m2 = _mm_max_ps(_mm_loadu_ps(x + i + 8), m2);
    m3 = _mm_max_ps(_mm_loadu_ps(x + i + 12), m3);
  }
  alignas(16) float lanes[16];
  _mm_store_ps(lanes, m0), _mm_store_ps(lanes + 4, m1), _mm_store_ps(lanes + 8, m2), _mm_store_ps(lanes + 12, m3);
  for (const float v : lanes) best = v > best ? v : best;
#endif
  for (; i < n; ++i) best = x[i] > best ? x[i] : best;
  // The first index holding it (-inf itself when every value is -inf; none when all are NaN).
  int64_t k = 0;
#if defined(__SSE2__)
  const __m128 b = _mm_set1_ps(best);
  for (; k + 4 <= n; k += 4) {
    const int hit = _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(x + k), b));
    if (hit) return k + __builtin_ctz(static_cast<unsigned>(hit));
  }
#endif
  for (; k < n; ++k)
    if (x[k] == best) return k;
  return -1;
}

}  // namespace optiq
