// AVX-512 (F/BW/VL) fp16/bf16 decode kernels (kernels/half_matvec.h).
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kernels/half_matvec.h"

namespace optiq::kern {
namespace {

struct H {
  using F = __m512;
  static constexpr int L = 16;
  static F zero() { return _mm512_setzero_ps(); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static float hsum(F v) { return _mm512_reduce_add_ps(v); }
  static F widen16(__m256i h, bool bf16) {
    if (bf16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
  }
  template <bool bf16>
  static F widen(const uint16_t* p) {
    return widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), bf16);
  }
  template <bool bf16>
  static F widen_n(const uint16_t* p, int n) {
    return widen16(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p), bf16);
  }
};

#include "kernels/half_matvec.inc"

}  // namespace

void half_matvec_block_avx512(const DenseArgs& a, int64_t r0, int64_t r1) {
  if (a.kind == 2)
    half_matvec_impl<true>(a, r0, r1);
  else
    half_matvec_impl<false>(a, r0, r1);
}

}  // namespace optiq::kern
