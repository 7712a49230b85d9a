// AVX2 k-quant decode kernels (int8 activations); compiled with AVX2 flags by
// CMake and only called after a cpuid check (kernels/kquant_matmul.cpp).
#include <immintrin.h>

#include "kernels/kquant_impl.h"
#include "kernels/simd_vec.h"

namespace optiq::kern {
namespace {

inline float hsum8(__m256 v) { return ::optiq::kern::VecAvx2::hsum(v); }

// Q4_K (Q5 = false) and Q5_K: 8 sub-blocks of 32, w = d*sc*q - dmin*m, q in
// 0..15 (0..31 with Q5_K's fifth bits).
template <bool Q5, int NX>
void q45k_rows(const KQuantArgs& a, int64_t x0, int64_t r0, int64_t r1) {
  const KQuantView& W = *a.W;
  const int64_t nb = W.cols / 256;
  const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = W.row(r);
    __m256 acc[NX], macc[NX];
    for (int i = 0; i < NX; ++i) acc[i] = macc[i] = _mm256_setzero_ps();
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint8_t* b = row + ib * (Q5 ? 176 : 144);
      const float d = kq_f16(b), dmin = kq_f16(b + 2);
      alignas(16) uint8_t sm8[16];
      kq_scales_mins(b + 4, sm8);
      const __m128i sm16 = _mm_load_si128(reinterpret_cast<const __m128i*>(sm8));
      const __m256 dsc = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sm16)));
      const __m256 dmn =
          _mm256_mul_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(sm16, 8))));
      alignas(32) float f[NX][8];
      for (int i = 0; i < NX; ++i) {
        const __m256 sx = _mm256_loadu_ps(a.A->row_scale(x0 + i) + ib * 8);
        const __m256 sm = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i*)(a.A->row_sum(x0 + i) + ib * 8)));
        _mm256_store_ps(f[i], _mm256_mul_ps(dsc, sx));
        macc[i] = _mm256_fmadd_ps(dmn, _mm256_mul_ps(sx, sm), macc[i]);
      }
      const uint8_t* qs = b + (Q5 ? 48 : 16);
      [[maybe_unused]] const __m256i qh = Q5 ? _mm256_loadu_si256((const __m256i*)(b + 16)) : _mm256_setzero_si256();
      for (int c = 0; c < 4; ++c) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(qs + 32 * c));
        __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        if constexpr (Q5) {
          const __m256i one = _mm256_set1_epi8(1);
          const __m128i s0 = _mm_cvtsi32_si128(2 * c), s1 = _mm_cvtsi32_si128(2 * c + 1);
          lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, s0), one), 4));
          hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, s1), one), 4));
        }
        for (int i = 0; i < NX; ++i) {
          const int8_t* qx = a.A->row_q(x0 + i) + ib * 256 + 64 * c;
          const __m256i x_lo = _mm256_loadu_si256((const __m256i*)qx), x_hi = _mm256_loadu_si256((const __m256i*)(qx + 32));
          const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x_lo), ones);
          const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x_hi), ones);
          acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(f[i][2 * c]), acc[i]);
          acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(f[i][2 * c + 1]), acc[i]);
        }
      }
    }
    for (int i = 0; i < NX; ++i) a.Y[(x0 + i) * W.rows + r] = hsum8(acc[i]) - hsum8(macc[i]);
  }
}

// Q6_K: 16 sub-blocks of 16 with int8 scales, w = d*sc*(q - 32), q in 0..63.
template <int NX>
void q6k_rows(const KQuantArgs& a, int64_t x0, int64_t r0, int64_t r1) {
  const KQuantView& W = *a.W;
  const int64_t nb = W.cols / 256;
  const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30), k32 = _mm256_set1_epi8(32);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = W.row(r);
    __m256 acc[NX];
    for (int i = 0; i < NX; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint8_t* b = row + ib * 210;
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
      const float d = kq_f16(b + 208);
      alignas(32) float f[NX][8];
      for (int i = 0; i < NX; ++i)
        _mm256_store_ps(f[i], _mm256_mul_ps(_mm256_set1_ps(d), _mm256_loadu_ps(a.A->row_scale(x0 + i) + ib * 8)));
      for (int h = 0; h < 2; ++h) {
        const uint8_t* ql = b + 64 * h;
        const __m256i l0 = _mm256_loadu_si256((const __m256i*)ql), l1 = _mm256_loadu_si256((const __m256i*)(ql + 32));
        const __m256i hb = _mm256_loadu_si256((const __m256i*)(b + 128 + 32 * h));
        __m256i q[4];
        q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
        q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hb, m30));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                               _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
        for (int k = 0; k < 4; ++k) {
          const int s = 8 * h + 2 * k;
          const __m256i scv = _mm256_set_m128i(_mm_set1_epi16(sc[s + 1]), _mm_set1_epi16(sc[s]));
          for (int i = 0; i < NX; ++i) {
            const __m256i x = _mm256_loadu_si256((const __m256i*)(a.A->row_q(x0 + i) + ib * 256 + 128 * h + 32 * k));
            const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q[k], x), _mm256_maddubs_epi16(k32, x));
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p, scv)), _mm256_set1_ps(f[i][4 * h + k]),
                                     acc[i]);
          }
        }
      }
    }
    for (int i = 0; i < NX; ++i) a.Y[(x0 + i) * W.rows + r] = hsum8(acc[i]);
  }
}


template <void (*F1)(const KQuantArgs&, int64_t, int64_t, int64_t), void (*F2)(const KQuantArgs&, int64_t, int64_t, int64_t),
          void (*F3)(const KQuantArgs&, int64_t, int64_t, int64_t)>
void by_n(const KQuantArgs& a, int64_t r0, int64_t r1) {
  if (a.n == 1) F1(a, 0, r0, r1);
  else if (a.n == 2) F2(a, 0, r0, r1);
  else F3(a, 0, r0, r1);
}

}  // namespace

void kquant_decode_avx2(const KQuantArgs& a, int64_t r0, int64_t r1) {
  switch (a.W->dtype) {
    case DType::Q4_K: by_n<q45k_rows<false, 1>, q45k_rows<false, 2>, q45k_rows<false, 3>>(a, r0, r1); return;
    case DType::Q5_K: by_n<q45k_rows<true, 1>, q45k_rows<true, 2>, q45k_rows<true, 3>>(a, r0, r1); return;
    case DType::Q6_K: by_n<q6k_rows<1>, q6k_rows<2>, q6k_rows<3>>(a, r0, r1); return;
    default: kq_decode_generic(a, r0, r1); return;
  }
}

}  // namespace optiq::kern
