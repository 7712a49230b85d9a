// AVX-512 VNNI kernels of kernels/int8_gemm.h; compiled with AVX-512 flags and
// called only after a cpuid check.
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>

#include "kernels/int8_gemm.h"

namespace optiq::kern {
namespace {

inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// C activation rows against the tile's 16 rows. Per sub-block j and row c:
// SUB/4 vpdpbusd (16 rows x 4 inputs each) into a fresh int32 sum, then one
// conversion, scaled by s_w[j] * s_x[c][j] and the bias term added: the fp32
// accumulator holds the 16 outputs of row c, stored as one vector.
template <int SUB, int C>
void rows_c(const Int8Tile& t, const Int8GemmArgs& a, int64_t i0, int64_t r0, __mmask16 keep) {
  const int64_t nsub = t.K / SUB, ldq = a.A->blocks * 32, nblk = a.A->blocks;
  const int8_t* xq = a.A->q.data() + i0 * ldq;
  const float* sx = a.A->scale.data() + i0 * nblk;
  const float* xs = a.xs + i0 * nsub;
  const uint8_t* w = t.codes.data();
  __m512 acc[C];
  for (int c = 0; c < C; ++c) acc[c] = _mm512_setzero_ps();
  for (int64_t j = 0; j < nsub; ++j) {
    __m512i d[C];
    for (int c = 0; c < C; ++c) d[c] = _mm512_setzero_si512();
    const int64_t k0 = j * SUB;
#pragma GCC unroll 8
    for (int kk = 0; kk < SUB / 4; ++kk) {
      const __m512i wv = _mm512_loadu_si512(w + (k0 / 4 + kk) * 64);
      for (int c = 0; c < C; ++c) d[c] = _mm512_dpbusd_epi32(d[c], wv, bcast4(xq + c * ldq + k0 + 4 * kk));
    }
    const __m512 sw = _mm512_loadu_ps(t.scale.data() + j * kTileRows);
    const __m512 bw = _mm512_loadu_ps(t.bias.data() + j * kTileRows);
    const int64_t b = k0 / 32;
    for (int c = 0; c < C; ++c) {
      acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[c]), _mm512_mul_ps(sw, _mm512_set1_ps(sx[c * nblk + b])), acc[c]);
      acc[c] = _mm512_fmadd_ps(bw, _mm512_set1_ps(xs[c * nsub + j]), acc[c]);
    }
  }
  for (int c = 0; c < C; ++c) _mm512_mask_storeu_ps(a.Y + (i0 + c) * a.ldy + r0, keep, acc[c]);
}

template <int SUB>
void tile_all(const Int8Tile& t, const Int8GemmArgs& a, int64_t r0) {
  const __mmask16 keep = static_cast<__mmask16>(t.rows >= 16 ? 0xFFFF : (1u << t.rows) - 1);
  int64_t i = 0;
  for (; i + 6 <= a.n; i += 6) rows_c<SUB, 6>(t, a, i, r0, keep);
  switch (a.n - i) {
    case 5: rows_c<SUB, 5>(t, a, i, r0, keep); break;
    case 4: rows_c<SUB, 4>(t, a, i, r0, keep); break;
    case 3: rows_c<SUB, 3>(t, a, i, r0, keep); break;
    case 2: rows_c<SUB, 2>(t, a, i, r0, keep); break;
    case 1: rows_c<SUB, 1>(t, a, i, r0, keep); break;
    default: break;
  }
}

}  // namespace

void int8_gemm_tile_avx512(const Int8Tile& t, const Int8GemmArgs& a, int64_t r0) {
  if (t.sub == 16) tile_all<16>(t, a, r0);
  else tile_all<32>(t, a, r0);
}

// Same arithmetic as quantize_activation_rows: amax / 127, 1 / s, round to
// nearest even (nearbyint under the default rounding mode), zero padding.
void quantize_activation_rows_avx512(const float* x, int64_t i0, int64_t i1, Int8Activations& out) {
  const int64_t cols = out.cols, width = out.blocks * kActBlock;
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  for (int64_t i = i0; i < i1; ++i) {
    const float* xr = x + i * cols;
    int8_t* qr = out.q.data() + i * width;
    for (int64_t b = 0; b < out.blocks; ++b) {
      const int64_t k0 = b * kActBlock;
      const int64_t left = cols - k0;
      const __mmask16 m0 = static_cast<__mmask16>(left >= 16 ? 0xFFFF : (1u << left) - 1);
      const __mmask16 m1 = static_cast<__mmask16>(left >= 32 ? 0xFFFF : left <= 16 ? 0 : (1u << (left - 16)) - 1);
      const __m512 v0 = _mm512_maskz_loadu_ps(m0, xr + k0), v1 = _mm512_maskz_loadu_ps(m1, xr + k0 + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(v0, absmask), _mm512_and_ps(v1, absmask)));
      const float s = amax / 127.0f;
      const float inv = s > 0 ? 1.0f / s : 0.0f;
      const __m512 vi = _mm512_set1_ps(inv);
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(v0, vi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(v1, vi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qr + k0), _mm512_cvtsepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qr + k0 + 16), _mm512_cvtsepi32_epi8(q1));
      out.scale[i * out.blocks + b] = s;
      out.sum[i * out.blocks + b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
  }
}

}  // namespace optiq::kern
