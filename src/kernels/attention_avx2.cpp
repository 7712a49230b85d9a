// AVX2 + FMA attention kernel (kernels/attention.h).
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "core/half.h"
#include "kernels/attention.h"

namespace optiq::kern {
namespace {

alignas(32) constexpr int32_t kTailMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

struct A {
  using F = __m256;
  static constexpr int L = 8;
  static __m256i mask(int n) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTailMask + 8 - n)); }
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float f) { return _mm256_set1_ps(f); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F loadn(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static void storen(float* p, F v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static float hsum(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

#include "kernels/attention.inc"

}  // namespace

void attn_head_avx2(const AttnHead& a) { attn_head_impl(a); }

}  // namespace optiq::kern
