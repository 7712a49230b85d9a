// AVX-512F attention kernel (kernels/attention.h).
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "core/half.h"
#include "kernels/attention.h"

namespace optiq::kern {
namespace {

struct A {
  using F = __m512;
  static constexpr int L = 16;
  static __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1); }
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float f) { return _mm512_set1_ps(f); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void storen(float* p, F v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static float hsum(F v) { return _mm512_reduce_add_ps(v); }
};

#include "kernels/attention.inc"

}  // namespace

void attn_head_avx512(const AttnHead& a) { attn_head_impl(a); }

}  // namespace optiq::kern
