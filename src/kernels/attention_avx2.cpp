// AVX2 + FMA attention kernel (kernels/attention.h).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/half.h"
#include "kernels/attention.h"
#include "kernels/simd_vec.h"

namespace optiq::kern {
namespace {

struct A : VecAvx2 {
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
