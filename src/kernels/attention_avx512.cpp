// AVX-512F attention kernel (kernels/attention.h).
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/half.h"
#include "kernels/attention.h"
#include "kernels/simd_exp.h"

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
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F exp(F x) { return simd_exp::exp512(x); }
  static float hsum(F v) { return _mm512_reduce_add_ps(v); }
  static float hmax(F v) { return _mm512_reduce_max_ps(v); }
  static constexpr int kAcc = 16;
  // Pairs (a, b) -> one vector: lanes whose index bit kBit is clear take a's partial
  // sums, the others b's, each the sum of two lanes that differ in that bit.
  template <int kBit>
  static F fold(F a, F b) {
    constexpr __mmask16 sel = kBit == 1 ? 0xAAAA : kBit == 2 ? 0xCCCC : kBit == 4 ? 0xF0F0 : 0xFF00;
    const F x = _mm512_mask_blend_ps(sel, a, b), y = _mm512_mask_blend_ps(sel, b, a);
    F ys;
    if constexpr (kBit == 1) ys = _mm512_permute_ps(y, 0xB1);
    else if constexpr (kBit == 2) ys = _mm512_permute_ps(y, 0x4E);
    else if constexpr (kBit == 4) ys = _mm512_shuffle_f32x4(y, y, 0xB1);
    else ys = _mm512_shuffle_f32x4(y, y, 0x4E);
    return _mm512_add_ps(x, ys);
  }
  static F reduce_lanes(const F* v) {
    F u[8], w[4], z[2];
    for (int i = 0; i < 8; ++i) u[i] = fold<1>(v[2 * i], v[2 * i + 1]);
    for (int i = 0; i < 4; ++i) w[i] = fold<2>(u[2 * i], u[2 * i + 1]);
    for (int i = 0; i < 2; ++i) z[i] = fold<4>(w[2 * i], w[2 * i + 1]);
    return fold<8>(z[0], z[1]);
  }
};

#include "kernels/attention.inc"

}  // namespace

void attn_group_avx512(const AttnGroup& g) { attn_group_impl(g); }

}  // namespace optiq::kern
