// Causal attention kernels (kernels/attention.h): every ISA against a plain
// double-precision reference on random data, over odd head dims, GQA groups,
// sliding windows, soft-capping and llama.cpp's fp16 probabilities.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "core/half.h"
#include "kernels/attention.h"
#include "kernels/matmul.h"
#include "isa_guard.h"
#include "test_util.h"

namespace optiq {
namespace {

using test::IsaGuard;

// out (n x q_stride) and, per element, the magnitude sum_t p_t |v_t| that
// bounds its rounding error.
void reference(const AttentionParams& p, const float* q, int64_t n, int start, const float* kc, const float* vc,
               std::vector<double>& out, std::vector<double>& mag) {
  const int hd = p.head_dim, group = p.n_heads / p.n_kv_heads;
  out.assign(n * p.q_stride, 0.0);
  mag.assign(n * p.q_stride, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int h = 0; h < p.n_heads; ++h) {
      const int pos = start + static_cast<int>(i);
      const int t0 = p.window > 0 ? std::max(0, pos - p.window + 1) : 0;
      const float* qh = q + i * p.q_stride + h * hd;
      const int64_t kvo = (h / group) * hd;
      std::vector<double> s(pos + 1);
      double mx = -INFINITY;
      for (int t = t0; t <= pos; ++t) {
        double d = 0;
        for (int j = 0; j < hd; ++j) d += static_cast<double>(qh[j]) * kc[t * p.kv_stride + kvo + j];
        d *= p.scale;
        if (p.softcap > 0) d = p.softcap * std::tanh(d / p.softcap);
        s[t] = d;
        mx = std::max(mx, d);
      }
      double sum = 0;
      for (int t = t0; t <= pos; ++t) sum += (s[t] = std::exp(s[t] - mx));
      for (int t = t0; t <= pos; ++t) {
        double pr = s[t] / sum;
        if (p.f16_probs) pr = f16_to_f32(f32_to_f16(static_cast<float>(pr)));
        for (int j = 0; j < hd; ++j) {
          const double v = vc[t * p.kv_stride + kvo + j];
          out[i * p.q_stride + h * hd + j] += pr * v;
          mag[i * p.q_stride + h * hd + j] += pr * std::abs(v);
        }
      }
    }
}

}  // namespace

TEST(Attention, MatchesReferenceAllIsas) {
  IsaGuard guard;
  uint32_t seed = 1;
  for (int hd : {40, 64, 72, 80, 96, 256})
    for (int group : {1, 2, 3, 4})
      for (int window : {0, 5})
        for (float cap : {0.0f, 50.0f})
          for (bool f16 : {false, true})
            for (auto [start, n] : {std::pair{0, 1}, std::pair{0, 9}, std::pair{19, 1}, std::pair{12, 3}}) {
              AttentionParams p;
              p.n_kv_heads = 2;
              p.n_heads = 2 * group;
              p.head_dim = hd;
              p.q_stride = p.n_heads * hd;
              p.kv_stride = p.n_kv_heads * hd;
              p.scale = 1.0f / std::sqrt(static_cast<float>(hd));
              p.softcap = cap;
              p.window = window;
              p.f16_probs = f16;
              const int len = start + n;
              // Spread scores so the softmax is not flat (and the soft-cap bites).
              auto q = test::random_floats(n * p.q_stride, seed++, cap > 0 ? 12.0f : 2.0f);
              auto k = test::random_floats(len * p.kv_stride, seed++);
              auto v = test::random_floats(len * p.kv_stride, seed++);
              std::vector<double> ref, mag;
              reference(p, q.data(), n, start, k.data(), v.data(), ref, mag);
              for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
                if (!isa_supported(isa)) continue;
                set_isa(isa);
                std::vector<float> out(n * p.q_stride, NAN);
                causal_attention(p, q.data(), n, start, k.data(), v.data(), out.data());
                // fp16 probabilities: a probability at a rounding boundary may
                // round either way (one fp16 ulp, 2^-11 relative).
                const double tol = f16 ? 1e-3 : 2e-5;
                int bad = 0;
                for (size_t j = 0; j < out.size(); ++j)
                  if (!(std::abs(out[j] - ref[j]) <= tol * mag[j] + 1e-7) && bad++ < 3)
                    ADD_FAILURE() << fmt::format("{} hd={} group={} window={} cap={} f16={} start={} n={}: out[{}] = {} "
                                                 "expected {} (mag {})",
                                                 isa_name(isa), hd, group, window, cap, f16, start, n, j, out[j],
                                                 ref[j], mag[j]);
              }
            }
}

// Many queries and a long cache: the parallel split over (query, head) pairs.
TEST(Attention, LongContextParallel) {
  IsaGuard guard;
  AttentionParams p;
  p.n_heads = 9;
  p.n_kv_heads = 3;
  p.head_dim = 64;
  p.q_stride = 9 * 64;
  p.kv_stride = 3 * 64;
  p.scale = 0.125f;
  const int start = 200, n = 40, len = start + n;
  auto q = test::random_floats(n * p.q_stride, 5);
  auto k = test::random_floats(len * p.kv_stride, 6);
  auto v = test::random_floats(len * p.kv_stride, 7);
  std::vector<double> ref, mag;
  reference(p, q.data(), n, start, k.data(), v.data(), ref, mag);
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!isa_supported(isa)) continue;
    set_isa(isa);
    std::vector<float> out(n * p.q_stride, NAN);
    causal_attention(p, q.data(), n, start, k.data(), v.data(), out.data());
    for (size_t j = 0; j < out.size(); ++j) ASSERT_NEAR(out[j], ref[j], 2e-5 * mag[j] + 1e-7) << isa_name(isa) << " " << j;
  }
}

}  // namespace optiq
