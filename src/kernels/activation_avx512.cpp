// AVX-512F gated activations (kernels/activation.h).
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "kernels/activation.h"
#include "kernels/simd_exp.h"

namespace optiq::kern {
namespace {


template <GateAct kAct>
inline __m512 act_mul(__m512 x, __m512 u) {
  __m512 z = x;
  if constexpr (kAct == GateAct::GeluTanh) {
    const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    z = _mm512_mul_ps(_mm512_set1_ps(2.0f * 0.7978845608028654f), _mm512_fmadd_ps(x3, _mm512_set1_ps(0.044715f), x));
  }
  const __m512 e = simd_exp::exp512(_mm512_sub_ps(_mm512_setzero_ps(), z));
  return _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), u);
}

template <GateAct kAct>
void run(float* gate, const float* up, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(gate + i, act_mul<kAct>(_mm512_loadu_ps(gate + i), _mm512_loadu_ps(up + i)));
  if (i < n) {
    const int rem = static_cast<int>(n - i);
    const __mmask16 m = static_cast<__mmask16>((1u << rem) - 1);
    const __m512 y = act_mul<kAct>(_mm512_maskz_loadu_ps(m, gate + i), _mm512_maskz_loadu_ps(m, up + i));
    _mm512_mask_storeu_ps(gate + i, m, y);
  }
}
}  // namespace

void gated_activation_avx512(GateAct act, float* gate, const float* up, int64_t n) {
  if (act == GateAct::Silu) run<GateAct::Silu>(gate, up, n);
  else run<GateAct::GeluTanh>(gate, up, n);
}

}  // namespace optiq::kern
