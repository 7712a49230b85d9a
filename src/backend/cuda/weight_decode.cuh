// Device functions that turn 32 consecutive weights of a row ("a chunk":
// chunk c holds columns [32c, 32c + 32)) into fp32, for every storage the
// backend keeps. Shared by the decode products (matvec.cu) and the
// dequantization for prefill and embeddings (dequant.cu). Values are bit for
// bit those of quant/affine.cpp and quant/ggml_dequant.cpp: products and sums
// are written with __fmul_rn/__fadd_rn so the compiler cannot fuse them.
#pragma once
#include "backend/cuda/code_planes.h"
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"

#include <type_traits>

namespace optiq::cuda {

// Calls f(std::integral_constant<int, bits>{}) for a code width the kernels
// are compiled for (2, 3, 4, 5, 6; anything else is 8): the one width switch
// of the host's launches (matvec.cu) and of the device's chunk decoding.
#pragma nv_exec_check_disable
template <typename F>
__host__ __device__ __forceinline__ void with_bits(int bits, F&& f) {
  switch (bits) {
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

// Loads `words` 32-bit words starting at p (4-byte aligned).
template <int kWords>
__device__ __forceinline__ void load_words(const uint32_t* p, uint32_t (&w)[kWords]) {
  if constexpr (kWords % 4 == 0) {
#pragma unroll
    for (int j = 0; j < kWords / 4; ++j) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + j);
      w[4 * j] = v.x, w[4 * j + 1] = v.y, w[4 * j + 2] = v.z, w[4 * j + 3] = v.w;
    }
  } else if constexpr (kWords == 2) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
    w[0] = v.x, w[1] = v.y;
  } else {
#pragma unroll
    for (int j = 0; j < kWords; ++j) w[j] = __ldg(p + j);
  }
}

// Code j (0..31) of a chunk of kBits-bit codes in the GPU's plane layout
// (code_planes.h; the backend rewrites MLX's bit stream on upload).
template <int kBits>
__device__ __forceinline__ uint32_t chunk_code(const uint32_t (&w)[kBits], int j) {
  return (group_codes<kBits>(w, j >> 2) >> (8 * (j & 3))) & 0xFFu;
}

// Exact small integer -> float without the (slow) integer conversion unit.
__device__ __forceinline__ float code_to_float(uint32_t code) {
  return __uint_as_float(0x4B000000u | code) - 8388608.0f;
}

__device__ __forceinline__ float f16_at(const uint8_t* p) {
  return half_word(static_cast<uint16_t>(p[0] | (p[1] << 8)));
}

// 6-bit scale/min pair j of the 12-byte k-quant scale block (Q4_K, Q5_K).
__device__ __forceinline__ void kq_scale_min(int j, const uint8_t* q, int& sc, int& mn) {
  if (j < 4) {
    sc = q[j] & 63;
    mn = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Sub-block s (0..7: weights [32s, 32s + 32)) of one k-quant block, as
// quant/ggml_dequant.cpp computes it.
__device__ __forceinline__ void kq_decode_sub(DType t, const uint8_t* b, int s, float (&v)[32]) {
  switch (t) {
    case DType::Q2_K: {  // scales[16] qs[64] d dmin
      const float d = f16_at(b + 80), dmin = f16_at(b + 82);
      const int n = s >> 2, j = s & 3;
      const uint8_t* q = b + 16 + 32 * n;
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const uint8_t sc = b[2 * s + hf];
        const float dl = __fmul_rn(d, static_cast<float>(sc & 0x0f)), ml = __fmul_rn(dmin, static_cast<float>(sc >> 4));
#pragma unroll
        for (int l = 0; l < 16; ++l) {
          const int e = 16 * hf + l;
          v[e] = __fsub_rn(__fmul_rn(dl, static_cast<float>((q[e] >> (2 * j)) & 3)), ml);
        }
      }
      return;
    }
    case DType::Q3_K: {  // hmask[32] qs[64] scales[12] d
      const uint8_t* sb = b + 96;
      const float d = f16_at(b + 108);
      const int n = s >> 2, j = s & 3;
      const uint8_t* q = b + 32 + 32 * n;
      const uint8_t m = static_cast<uint8_t>(1u << (4 * n + j));
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int k = 2 * s + hf;
        const int lo = (k < 8 ? sb[k] : sb[k - 8] >> 4) & 0x0f;
        const int hi = (sb[8 + k % 4] >> (2 * (k / 4))) & 3;
        const float dl = __fmul_rn(d, static_cast<float>((lo | (hi << 4)) - 32));
#pragma unroll
        for (int l = 0; l < 16; ++l) {
          const int e = 16 * hf + l;
          const int code = ((q[e] >> (2 * j)) & 3) - ((b[e] & m) ? 0 : 4);
          v[e] = __fmul_rn(dl, static_cast<float>(code));
        }
      }
      return;
    }
    case DType::Q4_K: {  // d dmin scales[12] qs[128]
      const float d = f16_at(b), dmin = f16_at(b + 2);
      int sc, mn;
      kq_scale_min(s, b + 4, sc, mn);
      const float d1 = __fmul_rn(d, static_cast<float>(sc)), m1 = __fmul_rn(dmin, static_cast<float>(mn));
      const uint8_t* q = b + 16 + 32 * (s >> 1);
      const int shift = (s & 1) * 4;
#pragma unroll
      for (int l = 0; l < 32; ++l) v[l] = __fsub_rn(__fmul_rn(d1, static_cast<float>((q[l] >> shift) & 0x0f)), m1);
      return;
    }
    case DType::Q5_K: {  // d dmin scales[12] qh[32] qs[128]
      const float d = f16_at(b), dmin = f16_at(b + 2);
      int sc, mn;
      kq_scale_min(s, b + 4, sc, mn);
      const float d1 = __fmul_rn(d, static_cast<float>(sc)), m1 = __fmul_rn(dmin, static_cast<float>(mn));
      const uint8_t* qh = b + 16;
      const uint8_t* q = b + 48 + 32 * (s >> 1);
      const int shift = (s & 1) * 4;
#pragma unroll
      for (int l = 0; l < 32; ++l) {
        const int code = ((q[l] >> shift) & 0x0f) + (((qh[l] >> s) & 1) << 4);
        v[l] = __fsub_rn(__fmul_rn(d1, static_cast<float>(code)), m1);
      }
      return;
    }
    case DType::Q6_K: {  // ql[128] qh[64] scales[16] d
      const float d = f16_at(b + 208);
      const int h = s >> 2, k = s & 3;
      const uint8_t* ql = b + 64 * h + (k & 1) * 32;
      const uint8_t* qh = b + 128 + 32 * h;
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * h + 2 * k;
      const int lshift = (k >> 1) * 4;
#pragma unroll
      for (int l = 0; l < 32; ++l) {
        const int code = (((ql[l] >> lshift) & 0x0f) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
        v[l] = __fmul_rn(__fmul_rn(d, static_cast<float>(sc[l >> 4])), static_cast<float>(code));
      }
      return;
    }
    default:
      return;
  }
}

// Q4_K and Q6_K (llama.cpp's Q4_K_M mix, its lm_head in Q6_K) with wide
// loads: kq_decode_sub's values bit for bit, without its 32 byte loads a
// chunk. A Q4_K block (144 bytes) is 16-byte aligned in a row (uploads align
// rows' arrays to 256), a Q6_K block (210 bytes) 2-byte aligned.
__device__ __forceinline__ uint32_t byte_of(const uint32_t (&w)[3], int k) {
  const uint32_t word = k < 4 ? w[0] : (k < 8 ? w[1] : w[2]);
  return (word >> (8 * (k & 3))) & 0xffu;
}

// kq_scale_min's 6-bit pair s of Q4_K/Q5_K, from the 12-byte scale block held in three words.
__device__ __forceinline__ void scale_min_pair(const uint32_t (&sw)[3], int s, int& sc, int& mn) {
  if (s < 4) {
    sc = static_cast<int>(byte_of(sw, s) & 63);
    mn = static_cast<int>(byte_of(sw, s + 4) & 63);
  } else {
    sc = static_cast<int>((byte_of(sw, s + 4) & 0x0f) | ((byte_of(sw, s - 4) >> 6) << 4));
    mn = static_cast<int>((byte_of(sw, s + 4) >> 4) | ((byte_of(sw, s) >> 6) << 4));
  }
}

__device__ __forceinline__ void q4k_decode_sub(const uint8_t* b, int s, float (&v)[32]) {
  const uint32_t dm = __ldg(reinterpret_cast<const uint32_t*>(b));
  const float d = half_word(static_cast<uint16_t>(dm & 0xffff)), dmin = half_word(static_cast<uint16_t>(dm >> 16));
  const uint32_t sw[3] = {__ldg(reinterpret_cast<const uint32_t*>(b + 4)), __ldg(reinterpret_cast<const uint32_t*>(b + 8)),
                          __ldg(reinterpret_cast<const uint32_t*>(b + 12))};
  int sc, mn;
  scale_min_pair(sw, s, sc, mn);
  const float d1 = __fmul_rn(d, static_cast<float>(sc)), m1 = __fmul_rn(dmin, static_cast<float>(mn));
  const uint4* q = reinterpret_cast<const uint4*>(b + 16 + 32 * (s >> 1));
  const uint4 q0 = __ldg(q), q1 = __ldg(q + 1);
  const uint32_t qw[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
  const int shift = (s & 1) * 4;
#pragma unroll
  for (int l = 0; l < 32; ++l) {
    const uint32_t code = (qw[l >> 2] >> (8 * (l & 3) + shift)) & 0x0fu;
    v[l] = __fsub_rn(__fmul_rn(d1, code_to_float(code)), m1);
  }
}

__device__ __forceinline__ void q6k_decode_sub(const uint8_t* b, int s, float (&v)[32]) {
  const float d = half_word(__ldg(reinterpret_cast<const uint16_t*>(b + 208)));
  const int h = s >> 2, k = s & 3;
  const uint16_t* ql = reinterpret_cast<const uint16_t*>(b + 64 * h + (k & 1) * 32);
  const uint16_t* qh = reinterpret_cast<const uint16_t*>(b + 128 + 32 * h);
  const uint16_t scw = __ldg(reinterpret_cast<const uint16_t*>(b + 192 + 8 * h + 2 * k));
  const float s0 = __fmul_rn(d, static_cast<float>(static_cast<int8_t>(scw & 0xff))),
              s1 = __fmul_rn(d, static_cast<float>(static_cast<int8_t>(scw >> 8)));
  const int lshift = (k >> 1) * 4;
#pragma unroll
  for (int p = 0; p < 16; ++p) {
    const uint32_t lw = __ldg(ql + p), hw = __ldg(qh + p);
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int l = 2 * p + e;
      const int code = static_cast<int>((((lw >> (8 * e)) >> lshift) & 0x0f) | ((((hw >> (8 * e)) >> (2 * k)) & 3) << 4)) - 32;
      v[l] = __fmul_rn(l < 16 ? s0 : s1, static_cast<float>(code));
    }
  }
}

// IQ4_NL / IQ4_XS (quant/ggml_iq4.h): chunk c of a row is block c (IQ4_NL,
// 18 bytes) or block c % 8 of super-block c / 8 (IQ4_XS, 136 bytes).
__device__ __forceinline__ void iq4_decode_chunk(DType t, const uint8_t* row, int64_t c, float (&v)[32]) {
  constexpr int8_t kLevels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  float d;
  const uint8_t* q;
  if (t == DType::IQ4_NL) {
    const uint8_t* b = row + c * 18;
    d = f16_at(b);
    q = b + 2;
  } else {
    const uint8_t* b = row + (c >> 3) * 136;
    const int ib = static_cast<int>(c & 7);
    const int scales_h = b[2] | (b[3] << 8);
    const int ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0f) | (((scales_h >> (2 * ib)) & 3) << 4);
    d = __fmul_rn(f16_at(b), static_cast<float>(ls - 32));
    q = b + 8 + 16 * ib;
  }
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    v[j] = __fmul_rn(d, static_cast<float>(kLevels[q[j] & 0x0f]));
    v[j + 16] = __fmul_rn(d, static_cast<float>(kLevels[q[j] >> 4]));
  }
}

// Chunk c of row r of any storage, as fp32.
__device__ __forceinline__ void decode_chunk(const DevMatrix& w, int64_t r, int64_t c, float (&v)[32]) {
  switch (w.storage) {
    case DevStorage::F32: {
      const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(w.data) + r * w.cols + 32 * c);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float4 f = __ldg(p + j);
        v[4 * j] = f.x, v[4 * j + 1] = f.y, v[4 * j + 2] = f.z, v[4 * j + 3] = f.w;
      }
      return;
    }
    case DevStorage::F16:
    case DevStorage::BF16: {
      const bool bf = w.storage == DevStorage::BF16;
      uint32_t h[16];
      load_words<16>(reinterpret_cast<const uint32_t*>(static_cast<const uint16_t*>(w.data) + r * w.cols + 32 * c), h);
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        v[2 * j] = scale_word(static_cast<uint16_t>(h[j] & 0xffff), bf);
        v[2 * j + 1] = scale_word(static_cast<uint16_t>(h[j] >> 16), bf);
      }
      return;
    }
    case DevStorage::Affine: {
      const int64_t gpr = w.cols / w.group, g = (32 * c) / w.group;
      const float s = scale_word(w.scales[r * gpr + g], w.bf16_scales);
      const float bias = w.biases ? scale_word(w.biases[r * gpr + g], w.bf16_scales)
                                  : __fmul_rn(static_cast<float>(-w.zero_point), s);
      const uint32_t* row = static_cast<const uint32_t*>(w.data) + r * (w.cols * w.bits / 32) + c * w.bits;
      auto fill = [&](auto bits_tag) {
        constexpr int kBits = decltype(bits_tag)::value;
        uint32_t words[kBits];
        load_words<kBits>(row, words);
#pragma unroll
        for (int j = 0; j < 32; ++j) v[j] = __fadd_rn(__fmul_rn(s, code_to_float(chunk_code<kBits>(words, j))), bias);
      };
      with_bits(w.bits, fill);
      return;
    }
    case DevStorage::KQuant: {
      const uint8_t* block = static_cast<const uint8_t*>(w.data) + r * w.row_bytes;
      if (w.kquant == DType::IQ4_NL || w.kquant == DType::IQ4_XS) {
        iq4_decode_chunk(w.kquant, block, c, v);
        return;
      }
      const int64_t bi = c >> 3;
      const int bytes = w.kquant == DType::Q2_K   ? 84
                        : w.kquant == DType::Q3_K ? 110
                        : w.kquant == DType::Q4_K ? 144
                        : w.kquant == DType::Q5_K ? 176
                                                  : 210;
      kq_decode_sub(w.kquant, block + bi * bytes, static_cast<int>(c & 7), v);
      return;
    }
  }
}

}  // namespace optiq::cuda
