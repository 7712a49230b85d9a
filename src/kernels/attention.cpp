#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/half.h"
#include "core/parallel.h"
#include "kernels/matmul.h"

namespace optiq {

namespace kern {

namespace {
void attn_row_scalar(const AttnGroup& g, const AttnRow& row) {
  const int hd = g.hd;
  float* sc = g.scores;
  float maxv = -INFINITY;
  for (int t = row.t0; t <= row.t1; ++t) {
    const float* kt = g.k + t * g.kv_stride;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int d = 0; d < hd; ++d) s += row.q[d] * kt[d];
    s *= g.scale;
    if (g.cap > 0.0f) s = g.cap * std::tanh(s / g.cap);
    sc[t] = s;
    maxv = std::max(maxv, s);
  }
  float sum = 0.0f;
  for (int t = row.t0; t <= row.t1; ++t) {
    sc[t] = std::exp(sc[t] - maxv);
    sum += sc[t];
  }
  const float inv = 1.0f / sum;
  std::fill(row.out, row.out + hd, 0.0f);
  for (int t = row.t0; t <= row.t1; ++t) {
    float p = sc[t] * inv;
    if (g.f16_probs) p = f16_to_f32(f32_to_f16(p));
    const float* vt = g.v + t * g.kv_stride;
#pragma omp simd
    for (int d = 0; d < hd; ++d) row.out[d] += p * vt[d];
  }
}
}  // namespace

// The reference: one row at a time, scores indexed by absolute position
// (g.scores needs room for max t1 + 1).
void attn_group_scalar(const AttnGroup& g) {
  for (int r = 0; r < g.nrows; ++r) attn_row_scalar(g, g.rows[r]);
}

}  // namespace kern

void causal_attention(const AttentionParams& p, const float* q, int64_t n, int start_pos, const float* k_cache,
                      const float* v_cache, float* out) {
  if (n <= 0) return;
  const int hd = p.head_dim, group = p.n_heads / p.n_kv_heads;
  const Isa isa = active_isa();
  auto fn = isa == Isa::Avx512 ? kern::attn_group_avx512
            : isa == Isa::Avx2 ? kern::attn_group_avx2
                               : kern::attn_group_scalar;
  const bool scalar = isa != Isa::Avx512 && isa != Isa::Avx2;
  // A task: the query heads of one kv head for a block of queries, about 16
  // rows, ordered (query, head) so that neighbouring rows see nearly the same
  // keys.
  // A multiple of 4 rows when one exists: the kernels score 4 rows at a time.
  int64_t qblock = std::max(1, 16 / group);
  for (int64_t b = qblock; b >= 1; --b)
    if (b * group % 4 == 0) {
      qblock = b;
      break;
    }
  const int64_t nqb = (n + qblock - 1) / qblock;
  const int max_pos = start_pos + static_cast<int>(n);
  // Rough work (keys x head_dim over all pairs): small decode steps stay on
  // the calling thread, where a hand-off would cost more than the work.
  const double work = static_cast<double>(n) * p.n_heads * hd * (p.window > 0 ? std::min(p.window, max_pos) : max_pos);
  parallel_for_range(
      nqb * p.n_kv_heads, 1,
      [&](int64_t j0, int64_t j1) {
        thread_local std::vector<float> scores;
        thread_local std::vector<kern::AttnRow> rows;
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t qb = j / p.n_kv_heads;
          const int kvh = static_cast<int>(j % p.n_kv_heads);
          const int64_t i0 = qb * qblock, i1 = std::min(n, i0 + qblock);
          rows.clear();
          rows.reserve(static_cast<size_t>(qblock * group));
          int tmin = max_pos, tmax = 0;
          for (int64_t i = i0; i < i1; ++i) {
            const int pos = start_pos + static_cast<int>(i);
            const int t0 = p.window > 0 && pos >= p.window ? pos - p.window + 1 : 0;
            tmin = std::min(tmin, t0);
            tmax = std::max(tmax, pos);
            for (int h = kvh * group; h < (kvh + 1) * group; ++h)
              rows.push_back({q + i * p.q_stride + h * hd, out + i * p.q_stride + h * hd, t0, pos});
          }
          // The scalar kernel indexes scores by position, the SIMD ones from tmin.
          const int64_t ld = scalar ? std::max(max_pos, p.max_ctx) : tmax - tmin + 1;
          // Sized once for the whole cache (decode must not allocate per token).
          const size_t need = static_cast<size_t>(scalar ? ld : ld * static_cast<int64_t>(rows.size()));
          if (scores.size() < need)
            scores.resize(std::max<size_t>(need, static_cast<size_t>(std::max(max_pos, p.max_ctx)) * rows.size()));
          const int64_t kvoff = static_cast<int64_t>(kvh) * hd;
          fn({rows.data(), static_cast<int>(rows.size()), k_cache + kvoff, v_cache + kvoff, p.kv_stride, hd, p.scale,
              p.softcap, p.f16_probs, scores.data(), ld});
        }
      },
      work < 3e4 ? 1 : 0);
}

}  // namespace optiq
