// AVX2 + FMA attention kernel (kernels/attention.h).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/half.h"
#include "kernels/attention.h"
#include "kernels/simd_exp.h"

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
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F exp(F x) { return simd_exp::exp256(x); }
  static float hmax(F v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static constexpr int kAcc = 8;
  // See attention_avx512.cpp: lanes with bit kBit clear keep a's pair sums.
  template <int kBit>
  static F fold(F a, F b) {
    constexpr int sel = kBit == 1 ? 0xAA : kBit == 2 ? 0xCC : 0xF0;
    const F x = _mm256_blend_ps(a, b, sel), y = _mm256_blend_ps(b, a, sel);
    F ys;
    if constexpr (kBit == 1) ys = _mm256_permute_ps(y, 0xB1);
    else if constexpr (kBit == 2) ys = _mm256_permute_ps(y, 0x4E);
    else ys = _mm256_permute2f128_ps(y, y, 1);
    return _mm256_add_ps(x, ys);
  }
  static F reduce_lanes(const F* v) {
    F u[4], w[2];
    for (int i = 0; i < 4; ++i) u[i] = fold<1>(v[2 * i], v[2 * i + 1]);
    for (int i = 0; i < 2; ++i) w[i] = fold<2>(u[2 * i], u[2 * i + 1]);
    return fold<4>(w[0], w[1]);
  }
};

#include "kernels/attention.inc"

}  // namespace

void attn_group_avx2(const AttnGroup& g) { attn_group_impl(g); }

}  // namespace optiq::kern
