// AVX-512 (F/BW/VL/DQ + VNNI) k-quant decode kernels (int8 activations);
// compiled with AVX-512 flags by CMake and only called after a cpuid check
// (kernels/kquant_matmul.cpp).
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kernels/kquant_impl.h"
#include "kernels/simd_vec.h"

namespace optiq::kern {
namespace {

inline float hsum8(__m256 v) { return ::optiq::kern::VecAvx2::hsum(v); }

// Lanes 0-7 = j, 8-15 = j + 1 (index vectors for permutexvar of 8 floats).
inline __m512i pair_idx(int j) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(j)), _mm256_set1_epi32(j + 1), 1);
}

// Q4_K: 64 bytes of codes = 4 sub-blocks of 32 (lo/hi nibbles of two chunks),
// rearranged to match two 64-byte activation loads; dpbusd (u8 x s8). Q5:
// Q5_K, whose fifth bits (qh bit 2c / 2c+1 for chunk c's low / high nibbles)
// are or-ed in as 16.
template <bool Q5, int NX>
void q45k_rows(const KQuantArgs& a, int64_t x0, int64_t r0, int64_t r1) {
  const KQuantView& W = *a.W;
  const int64_t nb = W.cols / 256;
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  const __m512i idx[4] = {pair_idx(0), pair_idx(2), pair_idx(4), pair_idx(6)};
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = W.row(r);
    __m512 acc[NX];
    __m256 macc[NX];
    for (int i = 0; i < NX; ++i) acc[i] = _mm512_setzero_ps(), macc[i] = _mm256_setzero_ps();
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint8_t* b = row + ib * (Q5 ? 176 : 144);
      const float d = kq_f16(b), dmin = kq_f16(b + 2);
      alignas(16) uint8_t sm8[16];
      kq_scales_mins(b + 4, sm8);
      const __m128i sm16 = _mm_load_si128(reinterpret_cast<const __m128i*>(sm8));
      const __m256 dsc = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sm16)));
      const __m256 dmn =
          _mm256_mul_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(sm16, 8))));
      __m512 f[NX];
      for (int i = 0; i < NX; ++i) {
        const __m256 sx = _mm256_loadu_ps(a.A->row_scale(x0 + i) + ib * 8);
        const __m256 sm = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i*)(a.A->row_sum(x0 + i) + ib * 8)));
        f[i] = _mm512_castps256_ps512(_mm256_mul_ps(dsc, sx));
        macc[i] = _mm256_fmadd_ps(dmn, _mm256_mul_ps(sx, sm), macc[i]);
      }
      const uint8_t* qs = b + (Q5 ? 48 : 16);
      [[maybe_unused]] const __m512i qh =
          Q5 ? _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16))) : _mm512_setzero_si512();
      for (int p = 0; p < 2; ++p) {
        const __m512i v = _mm512_loadu_si512(qs + 64 * p);
        __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        if constexpr (Q5) {  // lower half chunk 2p, upper half chunk 2p + 1
          const __m512i one = _mm512_set1_epi8(1);
          const __m512i c0 = _mm512_inserti64x4(_mm512_set1_epi16(static_cast<short>(4 * p)),
                                                _mm256_set1_epi16(static_cast<short>(4 * p + 2)), 1);
          const __m512i c1 = _mm512_add_epi16(c0, _mm512_set1_epi16(1));
          lo = _mm512_or_si512(lo, _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, c0), one), 4));
          hi = _mm512_or_si512(hi, _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, c1), one), 4));
        }
        // wa = sub-blocks 4p, 4p+1; wb = 4p+2, 4p+3 (element order).
        const __m512i wa = _mm512_shuffle_i64x2(lo, hi, 0x44), wb = _mm512_shuffle_i64x2(lo, hi, 0xEE);
        for (int i = 0; i < NX; ++i) {
          const int8_t* qx = a.A->row_q(x0 + i) + ib * 256 + 128 * p;
          const __m512i da = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wa, _mm512_loadu_si512(qx));
          const __m512i db = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wb, _mm512_loadu_si512(qx + 64));
          acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(da), _mm512_permutexvar_ps(idx[2 * p], f[i]), acc[i]);
          acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(db), _mm512_permutexvar_ps(idx[2 * p + 1], f[i]), acc[i]);
        }
      }
    }
    for (int i = 0; i < NX; ++i) a.Y[(x0 + i) * W.rows + r] = _mm512_reduce_add_ps(acc[i]) - hsum8(macc[i]);
  }
}

// Q6_K: per 128-weight half, 64 bytes of low bits give two 64-weight runs;
// maddubs (u8 x s8) then madd with the int16 sub-block scales.
template <int NX>
void q6k_rows(const KQuantArgs& a, int64_t x0, int64_t r0, int64_t r1) {
  const KQuantView& W = *a.W;
  const int64_t nb = W.cols / 256;
  const __m512i m4 = _mm512_set1_epi8(0x0f), m30 = _mm512_set1_epi8(0x30), k32 = _mm512_set1_epi8(32);
  const __m512i shl = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
  const __m512i shr = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
  __m512i sidx[4];  // int16 lane t of group g -> scale 4g + t/8
  for (int g = 0; g < 4; ++g) {
    alignas(64) int16_t t[32];
    for (int l = 0; l < 32; ++l) t[l] = static_cast<int16_t>(4 * g + l / 8);
    sidx[g] = _mm512_load_si512(t);
  }
  const __m512i fidx[4] = {pair_idx(0), pair_idx(2), pair_idx(4), pair_idx(6)};
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = W.row(r);
    __m512 acc[NX];
    for (int i = 0; i < NX; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint8_t* b = row + ib * 210;
      const float d = kq_f16(b + 208);
      const __m512i s16 =
          _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192))));
      __m512 f[NX];
      for (int i = 0; i < NX; ++i)
        f[i] = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_set1_ps(d), _mm256_loadu_ps(a.A->row_scale(x0 + i) + ib * 8)));
      for (int h = 0; h < 2; ++h) {
        const __m512i L = _mm512_loadu_si512(b + 64 * h);
        const __m512i H = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * h)));
        const __m512i qa = _mm512_or_si512(_mm512_and_si512(L, m4), _mm512_and_si512(_mm512_sllv_epi16(H, shl), m30));
        const __m512i qb = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(L, 4), m4),
                                           _mm512_and_si512(_mm512_srlv_epi16(H, shr), m30));
        const __m512i sa = _mm512_permutexvar_epi16(sidx[2 * h], s16), sb = _mm512_permutexvar_epi16(sidx[2 * h + 1], s16);
        for (int i = 0; i < NX; ++i) {
          const int8_t* qx = a.A->row_q(x0 + i) + ib * 256 + 128 * h;
          const __m512i xa = _mm512_loadu_si512(qx), xb = _mm512_loadu_si512(qx + 64);
          const __m512i pa = _mm512_sub_epi16(_mm512_maddubs_epi16(qa, xa), _mm512_maddubs_epi16(k32, xa));
          const __m512i pb = _mm512_sub_epi16(_mm512_maddubs_epi16(qb, xb), _mm512_maddubs_epi16(k32, xb));
          acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_madd_epi16(pa, sa)),
                                   _mm512_permutexvar_ps(fidx[2 * h], f[i]), acc[i]);
          acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_madd_epi16(pb, sb)),
                                   _mm512_permutexvar_ps(fidx[2 * h + 1], f[i]), acc[i]);
        }
      }
    }
    for (int i = 0; i < NX; ++i) a.Y[(x0 + i) * W.rows + r] = _mm512_reduce_add_ps(acc[i]);
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

void kquant_decode_avx512(const KQuantArgs& a, int64_t r0, int64_t r1) {
  switch (a.W->dtype) {
    case DType::Q4_K: by_n<q45k_rows<false, 1>, q45k_rows<false, 2>, q45k_rows<false, 3>>(a, r0, r1); return;
    case DType::Q5_K: by_n<q45k_rows<true, 1>, q45k_rows<true, 2>, q45k_rows<true, 3>>(a, r0, r1); return;
    case DType::Q6_K: by_n<q6k_rows<1>, q6k_rows<2>, q6k_rows<3>>(a, r0, r1); return;
    default: kq_decode_generic(a, r0, r1); return;
  }
}

}  // namespace optiq::kern
