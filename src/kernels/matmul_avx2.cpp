// AVX2 + FMA + F16C kernels; compiled with those flags by CMake and only called
// after a cpuid check (kernels/matmul.cpp).
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/half.h"
#include "kernels/int8_gemm.h"
#include "kernels/kernels_impl.h"
#include "kernels/simd_vec.h"

namespace optiq::kern {
namespace {

template <int bits>
constexpr CodeUnpackTables<bits, 8> kTables{};

alignas(32) constexpr int32_t kTailMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

struct V {
  using F = __m256;
  static constexpr int L = 8;
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float f) { return _mm256_set1_ps(f); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F loadn(const float* p, int n) {
    return _mm256_maskload_ps(p, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTailMask + 8 - n)));
  }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static float hsum(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  template <int bits>
  static F decode(const uint8_t* p) {
    if constexpr (bits == 8) {
      return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    } else {
      __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      v = _mm256_shuffle_epi8(v, _mm256_load_si256(reinterpret_cast<const __m256i*>(kTables<bits>.shuf.data())));
      v = _mm256_srlv_epi32(v, _mm256_load_si256(reinterpret_cast<const __m256i*>(kTables<bits>.shift.data())));
      v = _mm256_and_si256(v, _mm256_set1_epi32((1 << bits) - 1));
      return _mm256_cvtepi32_ps(v);
    }
  }
};

#include "kernels/simd_kernels.inc"

#define OPTIQ_INT8_VNNI 0
#include "kernels/int8_kernels_256.inc"
#undef OPTIQ_INT8_VNNI

}  // namespace

void int8_block_avx2(const Int8Args& a, int64_t r0, int64_t r1) { i8::int8_block_impl(a, r0, r1); }
void int8_gemm_tile_avx2(const Int8Tile& t, const Int8GemmArgs& a, int64_t r0) { i8::int8_gemm_tile_impl(t, a, r0); }

// Same arithmetic as quantize_activation_rows: amax / 127, 1 / s, round to
// nearest even, zero padding; four vectors of 8 a block.
void quantize_activation_rows_avx2(const float* x, int64_t i0, int64_t i1, Int8Activations& out) {
  const int64_t cols = out.cols, width = out.blocks * kActBlock;
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t i = i0; i < i1; ++i) {
    const float* xr = x + i * cols;
    int8_t* qr = out.q.data() + i * width;
    for (int64_t b = 0; b < out.blocks; ++b) {
      const int64_t k0 = b * kActBlock, left = cols - k0;
      __m256 v[4];
      for (int j = 0; j < 4; ++j) {
        const int64_t n = std::clamp<int64_t>(left - 8 * j, 0, 8);
        v[j] = n == 8 ? V::load(xr + k0 + 8 * j) : n > 0 ? V::loadn(xr + k0 + 8 * j, static_cast<int>(n)) : V::zero();
      }
      const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absmask), _mm256_and_ps(v[1], absmask)),
                                     _mm256_max_ps(_mm256_and_ps(v[2], absmask), _mm256_and_ps(v[3], absmask)));
      const float amax = VecAvx2::hmax(m);
      const float s = amax / 127.0f;
      const float inv = s > 0 ? 1.0f / s : 0.0f;
      const __m256 vi = _mm256_set1_ps(inv);
      __m256i q[4];
      for (int j = 0; j < 4; ++j)
        q[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[j], vi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      // packs work within 128-bit lanes: bytes come out in the order of `order`'s dwords.
      const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(qr + k0), _mm256_permutevar8x32_epi32(bytes, order));
      const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
      out.scale[i * out.blocks + b] = s;
      out.sum[i * out.blocks + b] = _mm_cvtsi128_si32(s4);
    }
  }
}

void affine_block_avx2(const AffineArgs& a, int64_t r0, int64_t r1) { affine_block_impl(a, r0, r1); }
void dense_block_avx2(const DenseArgs& a, int64_t r0, int64_t r1) { dense_block_impl(a, r0, r1); }
void gemm_tile_avx2(const float* W, int64_t mrows, int64_t K, const float* X, int64_t n, float* Y, int64_t ldy) {
  gemm_tile(W, mrows, K, X, n, Y, ldy);
}

namespace {
// 8 codes per step: the chunk's `bits` bytes broadcast to both 128-bit lanes,
// code i shuffled into dword i, shifted, masked, and the low bytes of the 8
// dwords gathered into 8 output bytes. A step whose 16-byte load would pass the
// row's end is done by the scalar code (no over-read of the last row).
template <int bits>
void unpack_codes_avx2(const uint8_t* p, int64_t K, uint8_t* out) {
  const int64_t row_bytes = K * bits / 8;
  const __m256i shuf = _mm256_load_si256(reinterpret_cast<const __m256i*>(kTables<bits>.shuf.data()));
  const __m256i shift = _mm256_load_si256(reinterpret_cast<const __m256i*>(kTables<bits>.shift.data()));
  const __m256i mask = _mm256_set1_epi32((1 << bits) - 1);
  const __m256i low_bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12,
                                             -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i gather = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
  int64_t j = 0;
  for (; j + 8 <= K && j / 8 * bits + 16 <= row_bytes; j += 8) {
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + j / 8 * bits)));
    v = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(v, shuf), shift), mask);
    v = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, low_bytes), gather);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out + j), _mm256_castsi256_si128(v));
  }
  for (; j < K; j += 8) {
    uint64_t v = 0;
    std::memcpy(&v, p + j / 8 * bits, bits);
    for (int t = 0; t < 8; ++t) out[j + t] = static_cast<uint8_t>((v >> (bits * t)) & ((1u << bits) - 1));
  }
}
}  // namespace

void unpack_codes_row_avx2(const AffineMatrixView& W, int64_t r, uint8_t* out) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(W.packed + r * W.words_per_row());
  switch (W.fmt.bits) {
    case 2: return unpack_codes_avx2<2>(p, W.cols, out);
    case 3: return unpack_codes_avx2<3>(p, W.cols, out);
    case 5: return unpack_codes_avx2<5>(p, W.cols, out);
    case 6: return unpack_codes_avx2<6>(p, W.cols, out);
    default: return unpack_codes_row(W, r, out);
  }
}

}  // namespace optiq::kern
