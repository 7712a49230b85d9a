#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/half.h"
#include "core/parallel.h"
#include "kernels/matmul.h"

namespace optiq {

namespace kern {

void attn_head_scalar(const AttnHead& a) {
  const int hd = a.hd;
  float maxv = -INFINITY;
  for (int t = a.t0; t <= a.t1; ++t) {
    const float* kt = a.k + t * a.kv_stride;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int d = 0; d < hd; ++d) s += a.q[d] * kt[d];
    s *= a.scale;
    if (a.cap > 0.0f) s = a.cap * std::tanh(s / a.cap);
    a.scores[t] = s;
    maxv = std::max(maxv, s);
  }
  float sum = 0.0f;
  for (int t = a.t0; t <= a.t1; ++t) {
    a.scores[t] = std::exp(a.scores[t] - maxv);
    sum += a.scores[t];
  }
  const float inv = 1.0f / sum;
  std::fill(a.out, a.out + hd, 0.0f);
  for (int t = a.t0; t <= a.t1; ++t) {
    float p = a.scores[t] * inv;
    if (a.f16_probs) p = f16_to_f32(f32_to_f16(p));
    const float* vt = a.v + t * a.kv_stride;
#pragma omp simd
    for (int d = 0; d < hd; ++d) a.out[d] += p * vt[d];
  }
}

}  // namespace kern

void causal_attention(const AttentionParams& p, const float* q, int64_t n, int start_pos, const float* k_cache,
                      const float* v_cache, float* out) {
  if (n <= 0) return;
  const int hd = p.head_dim, group = p.n_heads / p.n_kv_heads;
  const Isa isa = active_isa();
  auto fn = isa == Isa::Avx512 ? kern::attn_head_avx512
            : isa == Isa::Avx2 ? kern::attn_head_avx2
                               : kern::attn_head_scalar;
  const int max_pos = start_pos + static_cast<int>(n);
  // Rough work (keys x head_dim over all pairs): small decode steps stay on
  // the calling thread, where a hand-off would cost more than the work.
  const double work = static_cast<double>(n) * p.n_heads * hd * (p.window > 0 ? std::min(p.window, max_pos) : max_pos);
  parallel_for_range(
      n * p.n_heads, 1,
      [&](int64_t j0, int64_t j1) {
        thread_local std::vector<float> scores;
        if (static_cast<int>(scores.size()) < max_pos) scores.resize(std::max(max_pos, p.max_ctx));
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t i = j / p.n_heads;
          const int h = static_cast<int>(j % p.n_heads);
          const int pos = start_pos + static_cast<int>(i);
          const int t0 = p.window > 0 && pos >= p.window ? pos - p.window + 1 : 0;
          const int64_t kvoff = static_cast<int64_t>(h / group) * hd;
          fn({q + i * p.q_stride + h * hd, k_cache + kvoff, v_cache + kvoff, p.kv_stride, hd, t0, pos, p.scale,
              p.softcap, p.f16_probs, scores.data(), out + i * p.q_stride + h * hd});
        }
      },
      work < 3e4 ? 1 : 0);
}

}  // namespace optiq
