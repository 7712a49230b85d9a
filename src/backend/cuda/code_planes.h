// The GPU's layout of affine codes: "code planes". Plain C++ (host and
// device), so the CPU tests check it without a GPU.
//
// MLX packs a row's b-bit codes as one bit stream (code j at bits [j*b,
// (j+1)*b)). For the decode products' dp4a (four int8 products per
// instruction) that is the wrong shape: 4-bit codes 0, 2, 4, 6 share the low
// nibbles of a word, so every dp4a first shuffles the activations' bytes to
// match; 3-, 5- and 6-bit codes straddle words and are gathered one by one.
// On upload the CUDA backend rewrites each chunk of 32 codes (b words; a
// chunk keeps its place in the row) as bit planes of 4-code groups:
//
//   a p-bit plane (p = 1, 2, 4 or 8) holds code 4g + t of the chunk at
//   word (g*p)/8, bits [8t + s, 8t + s + p) with s = p*(g % (8/p)),
//
// so (word >> s) & mask(p) is the four codes of group g, one a byte, in the
// order of the activations' int8 word g. b = 2, 4, 8: one plane; 3 = 2 + 1,
// 5 = 4 + 1, 6 = 4 + 2 (the low bits' plane first, the high bits' plane in
// the words after it). Scales and biases are not touched.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define OPTIQ_HD __host__ __device__ __forceinline__
#else
#define OPTIQ_HD inline
#endif

namespace optiq::cuda {

// Bits of a b-bit code held by its low plane; the rest are in the high plane.
template <int kBits>
constexpr int kLowPlane = kBits == 3 ? 2 : (kBits == 5 || kBits == 6 ? 4 : kBits);
template <int kBits>
constexpr int kHighPlane = kBits - kLowPlane<kBits>;

template <int kP>
constexpr uint32_t kPlaneMask = kP == 1 ? 0x01010101u : kP == 2 ? 0x03030303u : kP == 4 ? 0x0F0F0F0Fu : 0xFFFFFFFFu;

// The four p-bit values of group g (one a byte) of a p-bit plane's words.
template <int kP>
OPTIQ_HD uint32_t plane_group(const uint32_t* plane, int g) {
  return (plane[(g * kP) / 8] >> (kP * (g % (8 / kP)))) & kPlaneMask<kP>;
}

// Codes 4g .. 4g + 3 of a chunk in the plane layout, one a byte (g = 0..7).
template <int kBits>
OPTIQ_HD uint32_t group_codes(const uint32_t* chunk, int g) {
  constexpr int lo = kLowPlane<kBits>, hi = kHighPlane<kBits>;
  uint32_t v = plane_group<lo>(chunk, g);
  if constexpr (hi > 0) v |= plane_group<hi>(chunk + lo, g) << lo;  // lo + hi <= 6: stays in its byte
  return v;
}

// Code j of a chunk in MLX's bit stream.
template <int kBits>
OPTIQ_HD uint32_t stream_code(const uint32_t* chunk, int j) {
  const int bit = j * kBits, wi = bit >> 5, off = bit & 31;
  uint32_t v = chunk[wi] >> off;
  if (off + kBits > 32) v |= chunk[wi + 1] << (32 - off);
  return v & ((1u << kBits) - 1u);
}

// One chunk from MLX's bit stream to planes (in and out may not overlap).
template <int kBits>
OPTIQ_HD void stream_to_planes(const uint32_t* in, uint32_t* out) {
  constexpr int lo = kLowPlane<kBits>, hi = kHighPlane<kBits>;
  for (int i = 0; i < kBits; ++i) out[i] = 0;
  for (int j = 0; j < 32; ++j) {
    const uint32_t code = stream_code<kBits>(in, j);
    const int g = j >> 2, t = j & 3;
    out[(g * lo) / 8] |= (code & ((1u << lo) - 1u)) << (8 * t + lo * (g % (8 / lo)));
    if constexpr (hi > 0) out[lo + (g * hi) / 8] |= (code >> lo) << (8 * t + hi * (g % (8 / hi)));
  }
}

// Runtime-width form for the host (tests, tools): false for a width with no
// plane layout (8-bit codes are already planes: bytes in order).
OPTIQ_HD bool stream_to_planes(int bits, const uint32_t* in, uint32_t* out) {
  switch (bits) {
    case 2: stream_to_planes<2>(in, out); return true;
    case 3: stream_to_planes<3>(in, out); return true;
    case 4: stream_to_planes<4>(in, out); return true;
    case 5: stream_to_planes<5>(in, out); return true;
    case 6: stream_to_planes<6>(in, out); return true;
    default: return false;
  }
}

}  // namespace optiq::cuda
