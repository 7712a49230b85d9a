// AVX-512 (F/BW/VL/DQ) kernels; compiled with AVX-512 flags by CMake and only
// called after a cpuid check (kernels/matmul.cpp).
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/half.h"
#include "kernels/kernels_impl.h"

namespace optiq::kern {
namespace {

template <int bits>
constexpr CodeUnpackTables<bits, 16> kTables{};

struct V {
  using F = __m512;
  static constexpr int L = 16;
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float f) { return _mm512_set1_ps(f); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static float hsum(F v) { return _mm512_reduce_add_ps(v); }
  template <int bits>
  static F decode(const uint8_t* p) {
    if constexpr (bits == 8) {
      return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    } else {
      __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      v = _mm512_shuffle_epi8(v, _mm512_load_si512(kTables<bits>.shuf.data()));
      v = _mm512_srlv_epi32(v, _mm512_load_si512(kTables<bits>.shift.data()));
      v = _mm512_and_si512(v, _mm512_set1_epi32((1 << bits) - 1));
      return _mm512_cvtepi32_ps(v);
    }
  }
};

#include "kernels/simd_kernels.inc"

// Codes of one row as bytes, 16 at a time: the chunk's 2*bits bytes are
// broadcast to every 128-bit lane, shuffled so code i sits in dword i, shifted
// and masked, then narrowed to bytes. A chunk whose 16-byte load would run past
// the row is unpacked by the scalar code, so the last row of a matrix is never
// over-read.
template <int bits>
void unpack_codes_avx512(const uint8_t* p, int64_t K, uint8_t* out) {
  const int64_t row_bytes = K * bits / 8;
  const __m512i shuf = _mm512_load_si512(kTables<bits>.shuf.data());
  const __m512i shift = _mm512_load_si512(kTables<bits>.shift.data());
  const __m512i mask = _mm512_set1_epi32((1 << bits) - 1);
  int64_t j = 0;
  for (; j + 16 <= K && j / 8 * bits + 16 <= row_bytes; j += 16) {
    __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + j / 8 * bits)));
    v = _mm512_and_si512(_mm512_srlv_epi32(_mm512_shuffle_epi8(v, shuf), shift), mask);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), _mm512_cvtepi32_epi8(v));
  }
  for (; j < K; j += 8) {
    uint64_t v = 0;
    std::memcpy(&v, p + j / 8 * bits, bits);
    for (int t = 0; t < 8; ++t) out[j + t] = static_cast<uint8_t>((v >> (bits * t)) & ((1u << bits) - 1));
  }
}

void unpack_codes_row_avx512(const AffineMatrixView& W, int64_t r, uint8_t* out) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(W.packed + r * W.words_per_row());
  switch (W.fmt.bits) {
    case 2: return unpack_codes_avx512<2>(p, W.cols, out);
    case 3: return unpack_codes_avx512<3>(p, W.cols, out);
    case 5: return unpack_codes_avx512<5>(p, W.cols, out);
    case 6: return unpack_codes_avx512<6>(p, W.cols, out);
    default: return unpack_codes_row(W, r, out);
  }
}

// 4-bit decode: word lane i of a 512-bit load holds codes 8i..8i+7; shifting
// by 4k exposes code 8i+k in every lane, multiplied with the permuted X. Lane i
// belongs to group 8i/gs, so each lane is scaled by its group's scale.
template <int NX>
void fused_q4(const AffineArgs& a, int64_t x0, int64_t r0, int64_t r1) {
  const AffineMatrixView& W = *a.W;
  const int64_t gs = W.fmt.group_size, ng = W.groups_per_row(), K = W.cols;
  const int64_t nb = K / 128;
  const int gpb = static_cast<int>(128 / gs);  // groups per block: 1, 2 or 4
  const __mmask16 smask = static_cast<__mmask16>((1u << gpb) - 1);
  const __m512i lane_group = _mm512_srli_epi32(_mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(8)),
                                               gs == 32 ? 5 : gs == 64 ? 6 : 7);
  const __m512i m4 = _mm512_set1_epi32(0xF);
  RowScratch& s = scratch();
  const float* X = a.X + x0 * K;
  const float* XP = a.xperm + x0 * K;
  const float* xs = a.xsum + x0 * ng;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* p = row_bytes(W, r, s);
    row_scales(W, r, s);
    __m512 acc[NX];
    for (int i = 0; i < NX; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const __m512i v = _mm512_loadu_si512(p + b * 64);
      const float* xb = XP + b * 128;
      __m512 t[NX];
      {
        const __m512 q = _mm512_cvtepi32_ps(_mm512_and_si512(v, m4));
        for (int i = 0; i < NX; ++i) t[i] = _mm512_mul_ps(_mm512_loadu_ps(xb + i * K), q);
      }
#define OPTIQ_Q4_STEP(k)                                                                        \
  {                                                                                             \
    const __m512 q = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(v, 4 * (k)), m4));   \
    for (int i = 0; i < NX; ++i) t[i] = _mm512_fmadd_ps(_mm512_loadu_ps(xb + i * K + 16 * (k)), q, t[i]); \
  }
      OPTIQ_Q4_STEP(1) OPTIQ_Q4_STEP(2) OPTIQ_Q4_STEP(3) OPTIQ_Q4_STEP(4) OPTIQ_Q4_STEP(5) OPTIQ_Q4_STEP(6)
      OPTIQ_Q4_STEP(7)
#undef OPTIQ_Q4_STEP
      const __m512 sv = _mm512_permutexvar_ps(lane_group, _mm512_maskz_loadu_ps(smask, s.sc.data() + b * gpb));
      for (int i = 0; i < NX; ++i) acc[i] = _mm512_fmadd_ps(t[i], sv, acc[i]);
    }
    // Tail groups (cols not a multiple of 128): natural order, generic decode.
    for (int64_t g = nb * gpb; g < ng; ++g) {
      const uint8_t* pg = p + g * gs / 2;
      __m512 t[NX];
      for (int i = 0; i < NX; ++i) t[i] = _mm512_setzero_ps();
      for (int64_t c = 0; c < gs / 16; ++c) {
        const __m512 q = V::decode<4>(pg + c * 8);
        for (int i = 0; i < NX; ++i) t[i] = _mm512_fmadd_ps(_mm512_loadu_ps(X + i * K + g * gs + c * 16), q, t[i]);
      }
      const __m512 sv = _mm512_set1_ps(s.sc[g]);
      for (int i = 0; i < NX; ++i) acc[i] = _mm512_fmadd_ps(t[i], sv, acc[i]);
    }
    for (int i = 0; i < NX; ++i) {
      float bsum = 0;
      const float* xsi = xs + i * ng;
      for (int64_t g = 0; g < ng; ++g) bsum += s.bi[g] * xsi[g];
      a.Y[(x0 + i) * W.rows + r] = _mm512_reduce_add_ps(acc[i]) + bsum;
    }
  }
}

// ------------------------------------------------------------ int8 decode
// 4-bit: a chunk is 4 blocks (64 weight bytes = 128 codes), X permuted by
// permute_q4_act(cb = 4); int32 lane l of the dot belongs to block l/4.
// 8-bit (and 2/3/5/6-bit codes unpacked to bytes): a chunk is 2 blocks, lane l
// belongs to block l/8. A short last chunk is read with byte masks. Per lane,
// the int32 dot is scaled by s_x(block) * s_w(group) into fp32 accumulators.
namespace i8 {

struct Scratch {
  std::vector<uint8_t> codes;
};
Scratch& scratch8() {
  static thread_local Scratch s;
  return s;
}

// 16 lanes as a vector element (std::vector<__m512> would drop __m512's
// attributes from the template argument: -Wignored-attributes).
struct Lanes16 {
  __m512 v;
};

inline __mmask16 mask16(int64_t n) { return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1); }
inline __mmask64 mask64(int64_t n) { return n >= 64 ? ~__mmask64{0} : ((__mmask64{1} << n) - 1); }

inline __m512 halves16(const uint16_t* p, __mmask16 m, bool bf16) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)) : _mm512_cvtph_ps(h);
}

// acc + bias_w[g] * xsum[g] over row r's groups, the biases widened from
// fp16/bf16 on the fly (one horizontal sum per row, no fp32 copy of the row);
// symmetric matrices: bias = -zero_point * scale (exact, so the same sums).
inline __m512 add_bias_terms(__m512 acc, const AffineMatrixView& W, int64_t r, const float* xs) {
  const int64_t ng = W.groups_per_row();
  if (W.biases) {
    const uint16_t* bp = W.biases + r * ng;
    for (int64_t g = 0; g < ng; g += 16) {
      const __mmask16 m = mask16(ng - g);
      acc = _mm512_fmadd_ps(halves16(bp + g, m, W.bf16_scales), _mm512_maskz_loadu_ps(m, xs + g), acc);
    }
    return acc;
  }
  const uint16_t* sp = W.scales + r * ng;
  const __m512 minus_zero = _mm512_set1_ps(static_cast<float>(-W.zero_point));
  for (int64_t g = 0; g < ng; g += 16) {
    const __mmask16 m = mask16(ng - g);
    const __m512 b = _mm512_mul_ps(minus_zero, halves16(sp + g, m, W.bf16_scales));
    acc = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(m, xs + g), acc);
  }
  return acc;
}

// Bits = 4: packed nibbles; Bits = 8: bytes (packed 8-bit, or unpacked codes
// when Unpacked).
template <int Bits, bool Unpacked, int NX>
void rows(const Int8Args& a, int64_t x0, int64_t r0, int64_t r1) {
  const AffineMatrixView& W = *a.W;
  const int64_t K = W.cols, nblk = K / 32, ng = W.groups_per_row(), gs = W.fmt.group_size;
  const int gshift = gs == 32 ? 0 : gs == 64 ? 1 : 2;
  constexpr int CB = Bits == 4 ? 4 : 2;        // blocks per chunk
  constexpr int LB = Bits == 4 ? 2 : 3;        // log2(lanes per block)
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i idx_b = _mm512_srli_epi32(lane, LB);
  const __m512i idx_g = _mm512_srli_epi32(idx_b, gshift);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  Scratch& s = scratch8();
  if (Unpacked && static_cast<int64_t>(s.codes.size()) < K) s.codes.resize(K);
  // The activation block scales of each chunk, spread to its lanes: the same
  // for every row, so computed once per call instead of once per row.
  const int64_t nchunks = (nblk + CB - 1) / CB;
  thread_local std::vector<Lanes16> sx_lanes;
  if (static_cast<int64_t>(sx_lanes.size()) < nchunks * NX) sx_lanes.resize(nchunks * NX);
  for (int i = 0; i < NX; ++i)
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t b = c * CB, m = std::min<int64_t>(CB, nblk - b);
      sx_lanes[c * NX + i].v = _mm512_permutexvar_ps(idx_b, _mm512_maskz_loadu_ps(mask16(m), a.sx + (x0 + i) * nblk + b));
    }
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* p;
    if constexpr (Unpacked) {
      unpack_codes_row_avx512(W, r, s.codes.data());
      p = s.codes.data();
    } else {
      p = reinterpret_cast<const uint8_t*>(W.packed + r * W.words_per_row());
    }
    // Scales are widened per chunk straight from the row's fp16/bf16 words
    // (converting the whole row into scratch first cost 7% of decode).
    const uint16_t* sp = W.scales + r * ng;
    __m512 acc[NX];
    for (int i = 0; i < NX; ++i) acc[i] = _mm512_setzero_ps();
    constexpr int64_t bpb = Bits == 4 ? 16 : 32;  // weight bytes per block
    // One chunk of m blocks at block b; Full: m == CB, no byte masks.
    auto chunk = [&](auto full_tag, int64_t b, int64_t m) {
      constexpr bool full = decltype(full_tag)::value;
      const uint8_t* pw = p + b * bpb;
      const __m512i w = full ? _mm512_loadu_si512(pw) : _mm512_maskz_loadu_epi8(mask64(m * bpb), pw);
      const int64_t g0 = b >> gshift;
      const __m512 swl = _mm512_permutexvar_ps(idx_g, halves16(sp + g0, mask16(ng - g0), W.bf16_scales));
      for (int i = 0; i < NX; ++i) {
        const int8_t* xb = a.xq + (x0 + i) * a.ldq + b * 32;
        __m512i d;
        if constexpr (Bits == 4) {
          const __m512i lo = _mm512_and_si512(w, m4), hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), m4);
          const __m512i xl = full ? _mm512_loadu_si512(xb) : _mm512_maskz_loadu_epi8(mask64(16 * m), xb);
          const __m512i xh = full ? _mm512_loadu_si512(xb + 64) : _mm512_maskz_loadu_epi8(mask64(16 * m), xb + 16 * m);
          d = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl), hi, xh);
        } else {
          const __m512i x = full ? _mm512_loadu_si512(xb) : _mm512_maskz_loadu_epi8(mask64(32 * m), xb);
          d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
        }
        const __m512 sxl = sx_lanes[(b / CB) * NX + i].v;
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sxl, swl), acc[i]);
      }
    };
    int64_t b = 0;
    for (; b + CB <= nblk; b += CB) chunk(std::true_type{}, b, CB);
    if (b < nblk) chunk(std::false_type{}, b, nblk - b);
    for (int i = 0; i < NX; ++i)
      a.Y[(x0 + i) * W.rows + r] =
          _mm512_reduce_add_ps(add_bias_terms(acc[i], W, r, a.xsum + (x0 + i) * ng));
  }
}

// One activation row against R weight rows per pass (packed 4/8-bit): the
// activation bytes and their block scales are loaded once for all R rows, and
// R independent accumulator chains keep the FMA/VNNI ports busy.
template <int Bits, int R>
void rows_multi(const Int8Args& a, int64_t r0, int64_t r1) {
  const AffineMatrixView& W = *a.W;
  const int64_t nblk = W.cols / 32, ng = W.groups_per_row(), gs = W.fmt.group_size;
  const int gshift = gs == 32 ? 0 : gs == 64 ? 1 : 2;
  constexpr int CB = Bits == 4 ? 4 : 2;
  constexpr int LB = Bits == 4 ? 2 : 3;
  constexpr int64_t bpb = Bits == 4 ? 16 : 32;
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i idx_b = _mm512_srli_epi32(lane, LB);
  const __m512i idx_g = _mm512_srli_epi32(idx_b, gshift);
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const int64_t nchunks = (nblk + CB - 1) / CB;
  thread_local std::vector<Lanes16> sx_lanes;
  if (static_cast<int64_t>(sx_lanes.size()) < nchunks) sx_lanes.resize(nchunks);
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t b = c * CB, m = std::min<int64_t>(CB, nblk - b);
    sx_lanes[c].v = _mm512_permutexvar_ps(idx_b, _mm512_maskz_loadu_ps(mask16(m), a.sx + b));
  }
  // Software prefetch two passes ahead: the rows of a pass are adjacent, so
  // this runs ahead of the stream across 4 kB page ends, where the hardware
  // prefetcher stops (measured on Gemma's 168 MB lm_head: see BENCHMARKS.md).
  const int64_t prefetch = 2 * R * W.words_per_row() * 4;
  int64_t r = r0;
  for (; r + R <= r1; r += R) {
    const uint8_t* p[R];
    const uint16_t* sp[R];
    __m512 acc[R];
    for (int k = 0; k < R; ++k) {
      p[k] = reinterpret_cast<const uint8_t*>(W.packed + (r + k) * W.words_per_row());
      sp[k] = W.scales + (r + k) * ng;
      acc[k] = _mm512_setzero_ps();
      prefetch_row_scales(W, r + k + 2 * R);
    }
    auto chunk = [&](auto full_tag, int64_t b, int64_t m) {
      constexpr bool full = decltype(full_tag)::value;
      const int8_t* xb = a.xq + b * 32;
      const int64_t g0 = b >> gshift;
      const __m512 sxl = sx_lanes[b / CB].v;
      if constexpr (Bits == 4) {
        const __m512i xl = full ? _mm512_loadu_si512(xb) : _mm512_maskz_loadu_epi8(mask64(16 * m), xb);
        const __m512i xh = full ? _mm512_loadu_si512(xb + 64) : _mm512_maskz_loadu_epi8(mask64(16 * m), xb + 16 * m);
        for (int k = 0; k < R; ++k) {
          const uint8_t* pw = p[k] + b * bpb;
          _mm_prefetch(reinterpret_cast<const char*>(pw + prefetch), _MM_HINT_T0);
          const __m512i w = full ? _mm512_loadu_si512(pw) : _mm512_maskz_loadu_epi8(mask64(m * bpb), pw);
          const __m512i lo = _mm512_and_si512(w, m4), hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), m4);
          const __m512i d = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl), hi, xh);
          const __m512 swl = _mm512_permutexvar_ps(idx_g, halves16(sp[k] + g0, mask16(ng - g0), W.bf16_scales));
          acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sxl, swl), acc[k]);
        }
      } else {
        const __m512i x = full ? _mm512_loadu_si512(xb) : _mm512_maskz_loadu_epi8(mask64(32 * m), xb);
        for (int k = 0; k < R; ++k) {
          const uint8_t* pw = p[k] + b * bpb;
          _mm_prefetch(reinterpret_cast<const char*>(pw + prefetch), _MM_HINT_T0);
          const __m512i w = full ? _mm512_loadu_si512(pw) : _mm512_maskz_loadu_epi8(mask64(m * bpb), pw);
          const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
          const __m512 swl = _mm512_permutexvar_ps(idx_g, halves16(sp[k] + g0, mask16(ng - g0), W.bf16_scales));
          acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sxl, swl), acc[k]);
        }
      }
    };
    int64_t b = 0;
    for (; b + CB <= nblk; b += CB) chunk(std::true_type{}, b, CB);
    if (b < nblk) chunk(std::false_type{}, b, nblk - b);
    for (int k = 0; k < R; ++k)
      a.Y[r + k] = _mm512_reduce_add_ps(add_bias_terms(acc[k], W, r + k, a.xsum));
  }
  if (r < r1) rows<Bits, false, 1>(a, 0, r, r1);
}

// clang does not take GCC's target pragma (the fuzz build, tests/fuzz, is clang).
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512vbmi"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512vbmi")
#endif
// 2/3/5/6-bit codes at batch 1 with AVX-512 VBMI: a chunk of 64 codes
// (2 blocks, 8*Bits bytes) is spread to bytes in two instructions: vpermb puts
// bytes Bits*j .. Bits*j+7 into qword j (whose 8 codes start at bit 0), and
// vpmultishiftqb picks code t of each qword from bit Bits*t. Then as 8-bit.
template <int Bits>
struct VbmiUnpack {
  __m512i perm, shift;
  VbmiUnpack() {
    alignas(64) uint8_t p[64], sh[64];
    for (int j = 0; j < 8; ++j)
      for (int t = 0; t < 8; ++t) {
        p[8 * j + t] = static_cast<uint8_t>(Bits * j + t);
        sh[8 * j + t] = static_cast<uint8_t>(Bits * t);
      }
    perm = _mm512_load_si512(p);
    shift = _mm512_load_si512(sh);
  }
  __m512i operator()(__m512i bytes) const {
    return _mm512_and_si512(_mm512_multishift_epi64_epi8(shift, _mm512_permutexvar_epi8(perm, bytes)),
                            _mm512_set1_epi8((1 << Bits) - 1));
  }
};

template <int Bits, int R>
void rows_multi_vbmi(const Int8Args& a, int64_t r0, int64_t r1) {
  const AffineMatrixView& W = *a.W;
  const int64_t nblk = W.cols / 32, ng = W.groups_per_row(), gs = W.fmt.group_size;
  const int gshift = gs == 32 ? 0 : gs == 64 ? 1 : 2;
  constexpr int64_t bpb = 4 * Bits;  // packed bytes per block of 32 codes
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i idx_b = _mm512_srli_epi32(lane, 3);
  const __m512i idx_g = _mm512_srli_epi32(idx_b, gshift);
  const VbmiUnpack<Bits> unpack;
  const int64_t nchunks = (nblk + 1) / 2;
  thread_local std::vector<Lanes16> sx_lanes;
  if (static_cast<int64_t>(sx_lanes.size()) < nchunks) sx_lanes.resize(nchunks);
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t b = c * 2, m = std::min<int64_t>(2, nblk - b);
    sx_lanes[c].v = _mm512_permutexvar_ps(idx_b, _mm512_maskz_loadu_ps(mask16(m), a.sx + b));
  }
  const int64_t row_bytes = W.words_per_row() * 4;
  const int64_t prefetch = 2 * R * row_bytes;
  int64_t r = r0;
  for (; r + R <= r1; r += R) {
    const uint8_t* p[R];
    const uint16_t* sp[R];
    __m512 acc[R];
    for (int k = 0; k < R; ++k) {
      p[k] = reinterpret_cast<const uint8_t*>(W.packed + (r + k) * W.words_per_row());
      sp[k] = W.scales + (r + k) * ng;
      acc[k] = _mm512_setzero_ps();
      prefetch_row_scales(W, r + k + 2 * R);
    }
    for (int64_t b = 0; b < nblk; b += 2) {
      const int64_t m = std::min<int64_t>(2, nblk - b);
      const int8_t* xb = a.xq + b * 32;
      const __m512i x = _mm512_maskz_loadu_epi8(mask64(32 * m), xb);
      const int64_t g0 = b >> gshift;
      const __m512 sxl = sx_lanes[b / 2].v;
      for (int k = 0; k < R; ++k) {
        const uint8_t* pw = p[k] + b * bpb;
        _mm_prefetch(reinterpret_cast<const char*>(pw + prefetch), _MM_HINT_T0);
        // Zero codes past a short last chunk meet zero activations.
        const __m512i w = unpack(_mm512_maskz_loadu_epi8(mask64(m * bpb), pw));
        const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
        const __m512 swl = _mm512_permutexvar_ps(idx_g, halves16(sp[k] + g0, mask16(ng - g0), W.bf16_scales));
        acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sxl, swl), acc[k]);
      }
    }
    for (int k = 0; k < R; ++k)
      a.Y[r + k] = _mm512_reduce_add_ps(add_bias_terms(acc[k], W, r + k, a.xsum));
  }
  if (r < r1) rows<8, true, 1>(a, 0, r, r1);
}
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

bool cpu_vbmi() {
  static const bool v = __builtin_cpu_supports("avx512vbmi");
  return v;
}

template <int Bits, bool Unpacked>
void per_x(const Int8Args& a, int64_t r0, int64_t r1) {
  if constexpr (!Unpacked) {
    if (a.n == 1) return rows_multi<Bits, 4>(a, r0, r1);
  } else {
    if (a.n == 1 && cpu_vbmi()) {
      switch (a.W->fmt.bits) {
        case 2: return rows_multi_vbmi<2, 4>(a, r0, r1);
        case 3: return rows_multi_vbmi<3, 4>(a, r0, r1);
        case 5: return rows_multi_vbmi<5, 4>(a, r0, r1);
        case 6: return rows_multi_vbmi<6, 4>(a, r0, r1);
        default: break;
      }
    }
  }
  int64_t i = 0;
  for (; i + 3 <= a.n; i += 3) rows<Bits, Unpacked, 3>(a, i, r0, r1);
  for (; i + 2 <= a.n; i += 2) rows<Bits, Unpacked, 2>(a, i, r0, r1);
  for (; i < a.n; ++i) rows<Bits, Unpacked, 1>(a, i, r0, r1);
}

}  // namespace i8

}  // namespace

void int8_block_avx512(const Int8Args& a, int64_t r0, int64_t r1) {
  switch (a.W->fmt.bits) {
    case 4: i8::per_x<4, false>(a, r0, r1); break;
    case 8: i8::per_x<8, false>(a, r0, r1); break;
    default: i8::per_x<8, true>(a, r0, r1); break;
  }
}

void permute_x_q4_avx512(const float* x, int64_t cols, float* xp) {
  const int64_t nb = cols / 128;
  for (int64_t b = 0; b < nb; ++b)
    for (int k = 0; k < 8; ++k)
      for (int i = 0; i < 16; ++i) xp[b * 128 + k * 16 + i] = x[b * 128 + 8 * i + k];
  for (int64_t j = nb * 128; j < cols; ++j) xp[j] = x[j];
}

void affine_block_avx512(const AffineArgs& a, int64_t r0, int64_t r1) {
  if (a.xperm && a.W->fmt.bits == 4 && a.n < kFusedMaxN) {
    int64_t i = 0;
    for (; i + 2 <= a.n; i += 2) fused_q4<2>(a, i, r0, r1);
    if (i < a.n) fused_q4<1>(a, i, r0, r1);
    return;
  }
  affine_block_impl(a, r0, r1);
}
void dense_block_avx512(const DenseArgs& a, int64_t r0, int64_t r1) { dense_block_impl(a, r0, r1); }
void gemm_tile_avx512(const float* W, int64_t mrows, int64_t K, const float* X, int64_t n, float* Y, int64_t ldy) {
  gemm_tile(W, mrows, K, X, n, Y, ldy);
}

}  // namespace optiq::kern
