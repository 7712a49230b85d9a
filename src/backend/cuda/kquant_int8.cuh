// GGUF k-quant chunks as int8 codes, for the int8 decode products (fast
// numerics): the GPU side of the CPU's kquant_matmul int8 path
// (kernels/kquant_impl.h). A chunk is 32 weights, sub-block s = c % 8 of
// 256-weight block c / 8, and each 16-weight half h has its own scale and min:
//     w = scale[h] * code - min[h]
// so against activation block (q_x, s_x) of the chunk
//     y += s_x * sum_h (scale[h] * dot_h(code, q_x) - min[h] * sum_h(q_x)),
// the CPU's formula (kq_decode_generic). Codes are small signed integers in
// the bytes of 8 words (byte j of word g: weight 4g + j), as dp4a takes them.
#pragma once
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/weight_decode.cuh"

#include <cstdint>

namespace optiq::cuda {
namespace {

struct KqChunk {
  uint32_t q[8];
  float s0, s1;  // the halves' scales
  float m0, m1;  // the halves' mins (0 for Q3_K and Q6_K)
};

// The k-quant types with int8 decode products, their block bytes, and
// whether a chunk's two halves share one scale and min (Q4_K, Q5_K: one
// 6-bit pair a sub-block) or have mins at all.
__host__ __device__ constexpr bool kq_has_int8(DType t) {
  return t == DType::Q2_K || t == DType::Q3_K || t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K;
}
__host__ __device__ constexpr int kq_block_bytes(DType t) {
  return t == DType::Q2_K ? 84 : t == DType::Q3_K ? 110 : t == DType::Q4_K ? 144 : t == DType::Q5_K ? 176 : 210;
}
__host__ __device__ constexpr bool kq_one_scale(DType t) { return t == DType::Q4_K || t == DType::Q5_K; }
__host__ __device__ constexpr bool kq_has_min(DType t) { return t != DType::Q3_K && t != DType::Q6_K; }

__device__ __forceinline__ float f16_lo(uint32_t w) { return half_word(static_cast<uint16_t>(w & 0xffff)); }
__device__ __forceinline__ float f16_hi(uint32_t w) { return half_word(static_cast<uint16_t>(w >> 16)); }

// kWords words from p, which is only 2-byte aligned (Q2_K, Q3_K and Q6_K
// blocks have even sizes that are not multiples of 4): aligned word loads
// joined by a funnel shift. Reads up to 4 bytes past the last word; every
// caller's bytes are followed by more of their block.
template <int kWords>
__device__ __forceinline__ void load_words_unaligned(const uint8_t* p, uint32_t (&w)[kWords]) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uint32_t* base = reinterpret_cast<const uint32_t*>(a & ~uintptr_t{3});
  const unsigned shift = static_cast<unsigned>(a & 3) * 8;
  uint32_t raw[kWords + 1];
#pragma unroll
  for (int j = 0; j <= kWords; ++j) raw[j] = __ldg(base + j);
#pragma unroll
  for (int j = 0; j < kWords; ++j) w[j] = __funnelshift_r(raw[j], raw[j + 1], shift);
}

// Chunk s of the block at b (Q4_K and Q5_K blocks are 16-byte aligned: 144
// and 176 bytes, rows aligned to 256 on upload).
template <DType kT>
__device__ __forceinline__ void kq_chunk(const uint8_t* b, int s, KqChunk& o) {
  if constexpr (kT == DType::Q4_K || kT == DType::Q5_K) {  // d dmin scales[12] [qh[32]] qs[128]
    const uint4 h = __ldg(reinterpret_cast<const uint4*>(b));
    const uint32_t sw[3] = {h.y, h.z, h.w};
    int sc, mn;
    scale_min_pair(sw, s, sc, mn);
    o.s0 = o.s1 = __fmul_rn(f16_lo(h.x), static_cast<float>(sc));
    o.m0 = o.m1 = __fmul_rn(f16_hi(h.x), static_cast<float>(mn));
    constexpr int kQs = kT == DType::Q5_K ? 48 : 16;
    const uint4* q = reinterpret_cast<const uint4*>(b + kQs + 32 * (s >> 1));
    const uint4 q0 = __ldg(q), q1 = __ldg(q + 1);
    const uint32_t qw[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
    const int shift = (s & 1) * 4;
#pragma unroll
    for (int g = 0; g < 8; ++g) o.q[g] = (qw[g] >> shift) & 0x0f0f0f0fu;
    if constexpr (kT == DType::Q5_K) {  // bit s of qh[l] is the fifth bit of weight l of sub-block s
      const uint4* qh = reinterpret_cast<const uint4*>(b + 16);
      const uint4 h0 = __ldg(qh), h1 = __ldg(qh + 1);
      const uint32_t hw[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
#pragma unroll
      for (int g = 0; g < 8; ++g) o.q[g] |= ((hw[g] >> s) & 0x01010101u) << 4;
    }
  } else if constexpr (kT == DType::Q6_K) {  // ql[128] qh[64] scales[16] d
    const int h = s >> 2, k = s & 3;
    uint32_t lw[8], hw[8];
    load_words_unaligned<8>(b + 64 * h + 32 * (k & 1), lw);
    load_words_unaligned<8>(b + 128 + 32 * h, hw);
    const uint16_t scw = __ldg(reinterpret_cast<const uint16_t*>(b + 192 + 8 * h + 2 * k));
    const float d = half_word(__ldg(reinterpret_cast<const uint16_t*>(b + 208)));
    o.s0 = __fmul_rn(d, static_cast<float>(static_cast<int8_t>(scw & 0xff)));
    o.s1 = __fmul_rn(d, static_cast<float>(static_cast<int8_t>(scw >> 8)));
    o.m0 = o.m1 = 0.0f;
    const int lshift = (k >> 1) * 4;
#pragma unroll
    for (int g = 0; g < 8; ++g) {
      const uint32_t code = ((lw[g] >> lshift) & 0x0f0f0f0fu) | (((hw[g] >> (2 * k)) & 0x03030303u) << 4);
      o.q[g] = __vsub4(code, 0x20202020u);  // 0..63 -> -32..31, byte by byte
    }
  } else if constexpr (kT == DType::Q2_K) {  // scales[16] qs[64] d dmin
    const int n = s >> 2, j = s & 3;
    uint32_t qw[8];
    load_words_unaligned<8>(b + 16 + 32 * n, qw);
    const uint16_t scw = __ldg(reinterpret_cast<const uint16_t*>(b + 2 * s));
    const uint32_t dm = (static_cast<uint32_t>(__ldg(reinterpret_cast<const uint16_t*>(b + 82))) << 16) |
                        __ldg(reinterpret_cast<const uint16_t*>(b + 80));
    const float d = f16_lo(dm), dmin = f16_hi(dm);
    o.s0 = __fmul_rn(d, static_cast<float>(scw & 0x0f));
    o.m0 = __fmul_rn(dmin, static_cast<float>((scw >> 4) & 0x0f));
    o.s1 = __fmul_rn(d, static_cast<float>((scw >> 8) & 0x0f));
    o.m1 = __fmul_rn(dmin, static_cast<float>(scw >> 12));
#pragma unroll
    for (int g = 0; g < 8; ++g) o.q[g] = (qw[g] >> (2 * j)) & 0x03030303u;
  } else {  // Q3_K: hmask[32] qs[64] scales[12] d
    const int n = s >> 2, j = s & 3;
    uint32_t qw[8], hm[8], sw[3];
    load_words_unaligned<8>(b + 32 + 32 * n, qw);
    load_words_unaligned<8>(b, hm);
    const uint16_t* sh = reinterpret_cast<const uint16_t*>(b + 96);  // the block's last 14 bytes: no overread
#pragma unroll
    for (int k = 0; k < 3; ++k) sw[k] = __ldg(sh + 2 * k) | (static_cast<uint32_t>(__ldg(sh + 2 * k + 1)) << 16);
    const float d = half_word(__ldg(reinterpret_cast<const uint16_t*>(b + 108)));
    float sc[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int k = 2 * s + hf;
      const int lo = static_cast<int>((k < 8 ? byte_of(sw, k) : byte_of(sw, k - 8) >> 4) & 0x0f);
      const int hi = static_cast<int>((byte_of(sw, 8 + k % 4) >> (2 * (k / 4))) & 3);
      sc[hf] = __fmul_rn(d, static_cast<float>((lo | (hi << 4)) - 32));
    }
    o.s0 = sc[0], o.s1 = sc[1];
    o.m0 = o.m1 = 0.0f;
    const int mbit = 4 * n + j;  // the hmask bit of this sub-block: set means +0, clear means -4
#pragma unroll
    for (int g = 0; g < 8; ++g) {
      const uint32_t low = (qw[g] >> (2 * j)) & 0x03030303u;
      const uint32_t high = (hm[g] >> mbit) & 0x01010101u;  // 1 where nothing is subtracted
      o.q[g] = __vsub4(low, (high ^ 0x01010101u) << 2);
    }
  }
}

// The chunk's contribution against one activation block: codes . q_x per
// half, the halves' sums of q_x where they carry a min.
template <DType kT>
__device__ __forceinline__ float kq_chunk_dot(const KqChunk& o, const int (&x)[8], float sx, int32_t xsum) {
  int d0 = 0, d1 = 0;
#pragma unroll
  for (int g = 0; g < 4; ++g) d0 = __dp4a(static_cast<int>(o.q[g]), x[g], d0);
#pragma unroll
  for (int g = 4; g < 8; ++g) d1 = __dp4a(static_cast<int>(o.q[g]), x[g], d1);
  if constexpr (kq_one_scale(kT)) {
    return sx * (o.s0 * static_cast<float>(d0 + d1) - o.m0 * static_cast<float>(xsum));
  } else if constexpr (kq_has_min(kT)) {
    int sum0 = 0;
#pragma unroll
    for (int g = 0; g < 4; ++g) sum0 = __dp4a(0x01010101, x[g], sum0);
    return sx * (o.s0 * static_cast<float>(d0) + o.s1 * static_cast<float>(d1) - o.m0 * static_cast<float>(sum0) -
                 o.m1 * static_cast<float>(xsum - sum0));
  } else {
    return sx * (o.s0 * static_cast<float>(d0) + o.s1 * static_cast<float>(d1));
  }
}

}  // namespace
}  // namespace optiq::cuda
