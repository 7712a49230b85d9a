// AVX2 + FMA gated activations (kernels/activation.h).

#include <immintrin.h>

#include <cstdint>

#include "kernels/activation.h"
#include "kernels/simd_exp.h"

namespace optiq::kern {
namespace {
alignas(32) constexpr int32_t kTailMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

template <GateAct kAct>
inline __m256 act_mul(__m256 x, __m256 u) {
  __m256 z = x;
  if constexpr (kAct == GateAct::GeluTanh) {
    const __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
    z = _mm256_mul_ps(_mm256_set1_ps(2.0f * 0.7978845608028654f), _mm256_fmadd_ps(x3, _mm256_set1_ps(0.044715f), x));
  }
  const __m256 e = simd_exp::exp256(_mm256_sub_ps(_mm256_setzero_ps(), z));
  return _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

template <GateAct kAct>
void run(float* gate, const float* up, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(gate + i, act_mul<kAct>(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
  if (i < n) {
    const int rem = static_cast<int>(n - i);
    const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTailMask + 8 - rem));
    const __m256 y = act_mul<kAct>(_mm256_maskload_ps(gate + i, m), _mm256_maskload_ps(up + i, m));
    _mm256_maskstore_ps(gate + i, m, y);
  }
}
}  // namespace

void gated_activation_avx2(GateAct act, float* gate, const float* up, int64_t n) {
  if (act == GateAct::Silu) run<GateAct::Silu>(gate, up, n);
  else run<GateAct::GeluTanh>(gate, up, n);
}

}  // namespace optiq::kern
