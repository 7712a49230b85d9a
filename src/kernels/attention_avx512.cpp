// AVX-512F attention kernel (kernels/attention.h).
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/half.h"
#include "kernels/attention.h"
#include "kernels/simd_vec.h"

namespace optiq::kern {
namespace {

struct A : VecAvx512 {
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
