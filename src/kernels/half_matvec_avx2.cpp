// AVX2 + FMA + F16C fp16/bf16 decode kernels (kernels/half_matvec.h).
#include <immintrin.h>

#include <cstring>

#include "kernels/half_matvec.h"

namespace optiq::kern {
namespace {

alignas(32) constexpr int32_t kTailMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

struct H {
  using F = __m256;
  static constexpr int L = 8;
  static F zero() { return _mm256_setzero_ps(); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F loadn(const float* p, int n) {
    return _mm256_maskload_ps(p, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTailMask + 8 - n)));
  }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static float hsum(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static F widen16(__m128i h, bool bf16) {
    if (bf16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
  }
  template <bool bf16>
  static F widen(const uint16_t* p) {
    return widen16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), bf16);
  }
  template <bool bf16>
  static F widen_n(const uint16_t* p, int n) {
    alignas(16) uint16_t buf[8] = {};
    std::memcpy(buf, p, sizeof(uint16_t) * n);
    return widen16(_mm_load_si128(reinterpret_cast<const __m128i*>(buf)), bf16);
  }
};

#include "kernels/half_matvec.inc"

}  // namespace

void half_matvec_block_avx2(const DenseArgs& a, int64_t r0, int64_t r1) {
  if (a.kind == 2)
    half_matvec_impl<true>(a, r0, r1);
  else
    half_matvec_impl<false>(a, r0, r1);
}

}  // namespace optiq::kern
