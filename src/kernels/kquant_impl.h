// Internal: per-ISA k-quant decode kernels behind kernels/kquant_matmul.h, and
// the generic "unpack a 256-block to int8 codes + per-16 scale/min" path that
// every ISA file compiles (auto-vectorized with its own flags).
#pragma once
#include <cstdint>
#include <cstring>

#include "core/half.h"
#include "kernels/act_quant.h"
#include "kernels/kquant_matmul.h"

namespace optiq::kern {

struct KQuantArgs {
  const KQuantView* W;
  const Int8Activations* A;  // n rows, cols = W->cols
  int64_t n;
  float* Y;  // n x W->rows
};

// Decode rows [r0, r1) of Y for all A->n activation rows.
void kquant_decode_scalar(const KQuantArgs& a, int64_t r0, int64_t r1);
void kquant_decode_avx2(const KQuantArgs& a, int64_t r0, int64_t r1);
void kquant_decode_avx512(const KQuantArgs& a, int64_t r0, int64_t r1);

// Exposed fp32 tile GEMM of simd_kernels.inc (matmul_avx*.cpp):
// Y[i*ldy + m] = dot(X_i, W_m), W {mrows, K} contiguous.
void gemm_tile_avx2(const float* W, int64_t mrows, int64_t K, const float* X, int64_t n, float* Y, int64_t ldy);
void gemm_tile_avx512(const float* W, int64_t mrows, int64_t K, const float* X, int64_t n, float* Y, int64_t ldy);

inline float kq_f16(const uint8_t* p) { return f16_to_f32(static_cast<uint16_t>(p[0] | (p[1] << 8))); }

// 6-bit scale/min pair j of the 12-byte Q4_K/Q5_K scale block.
inline void kq_scale_min(int j, const uint8_t* q, int& sc, int& mn) {
  if (j < 4) {
    sc = q[j] & 63;
    mn = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// All 8 scale/min pairs of a Q4_K/Q5_K block at once: bytes 0-7 of the
// result are the scales, 8-15 the mins (the same values as kq_scale_min).
inline void kq_scales_mins(const uint8_t* q, uint8_t out[16]) {
  constexpr uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
  uint32_t u[4];
  std::memcpy(u, q, 12);
  u[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
  const uint32_t m = u[1] & k1;
  u[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
  u[2] = m;
  u[0] &= k1;
  std::memcpy(out, u, 16);
}

// One 256-weight block as w[k] = scale[k/16] * q[k] - min[k/16], with the
// same fp32 scale/min products as quant/ggml_dequant (so the dequantized
// values are identical).
struct KBlock {
  int8_t q[256];
  float scale[16], min[16];
};

inline void kq_unpack(DType t, const uint8_t* b, KBlock& o) {
  switch (t) {
    case DType::Q2_K: {
      const uint8_t* sc = b;
      const uint8_t* q = b + 16;
      const float d = kq_f16(b + 80), dmin = kq_f16(b + 82);
      int is = 0, k = 0;
      for (int n = 0; n < 256; n += 128, q += 32)
        for (int shift = 0; shift < 8; shift += 2)
          for (int half = 0; half < 2; ++half, ++is) {
            o.scale[is] = d * (sc[is] & 0x0f);
            o.min[is] = dmin * (sc[is] >> 4);
            for (int l = 0; l < 16; ++l) o.q[k++] = static_cast<int8_t>((q[16 * half + l] >> shift) & 3);
          }
      return;
    }
    case DType::Q3_K: {
      const uint8_t* hm = b;
      const uint8_t* q = b + 32;
      const uint8_t* s = b + 96;
      const float d_all = kq_f16(b + 108);
      for (int j = 0; j < 16; ++j) {
        const int lo = (j < 8 ? s[j] : s[j - 8] >> 4) & 0x0f;
        const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        o.scale[j] = d_all * static_cast<float>((lo | (hi << 4)) - 32);
        o.min[j] = 0.0f;
      }
      int k = 0;
      uint8_t m = 1;
      for (int n = 0; n < 256; n += 128, q += 32)
        for (int shift = 0; shift < 8; shift += 2, m <<= 1)
          for (int half = 0; half < 2; ++half)
            for (int l = 0; l < 16; ++l)
              o.q[k++] = static_cast<int8_t>(((q[16 * half + l] >> shift) & 3) - ((hm[16 * half + l] & m) ? 0 : 4));
      return;
    }
    case DType::Q4_K:
    case DType::Q5_K: {
      const bool five = t == DType::Q5_K;
      const float d = kq_f16(b), dmin = kq_f16(b + 2);
      const uint8_t* s = b + 4;
      const uint8_t* qh = b + 16;
      const uint8_t* ql = five ? b + 48 : b + 16;
      for (int j = 0; j < 8; ++j) {
        int sc, mn;
        kq_scale_min(j, s, sc, mn);
        o.scale[2 * j] = o.scale[2 * j + 1] = d * sc;
        o.min[2 * j] = o.min[2 * j + 1] = dmin * mn;
      }
      for (int c = 0; c < 4; ++c, ql += 32)
        for (int l = 0; l < 32; ++l) {
          int lo = ql[l] & 0x0f, hi = ql[l] >> 4;
          if (five) {
            lo += (qh[l] >> (2 * c)) & 1 ? 16 : 0;
            hi += (qh[l] >> (2 * c + 1)) & 1 ? 16 : 0;
          }
          o.q[64 * c + l] = static_cast<int8_t>(lo);
          o.q[64 * c + 32 + l] = static_cast<int8_t>(hi);
        }
      return;
    }
    default: {  // Q6_K
      const uint8_t* ql = b;
      const uint8_t* qh = b + 128;
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
      const float d = kq_f16(b + 208);
      for (int j = 0; j < 16; ++j) {
        o.scale[j] = d * sc[j];
        o.min[j] = 0.0f;
      }
      for (int n = 0; n < 256; n += 128, ql += 64, qh += 32)
        for (int l = 0; l < 32; ++l) {
          o.q[n + l] = static_cast<int8_t>(((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32);
          o.q[n + l + 32] = static_cast<int8_t>(((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32);
          o.q[n + l + 64] = static_cast<int8_t>(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
          o.q[n + l + 96] = static_cast<int8_t>(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
      return;
    }
  }
}

// Generic decode: unpack each block once, then integer dots per 16 for every
// activation row.
inline void kq_decode_generic(const KQuantArgs& a, int64_t r0, int64_t r1) {
  const KQuantView& W = *a.W;
  const int64_t nb = W.cols / 256, rb = static_cast<int64_t>(W.row_bytes() / nb);
  KBlock blk;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = W.row(r);
    float acc[4] = {0, 0, 0, 0};
    for (int64_t ib = 0; ib < nb; ++ib) {
      kq_unpack(W.dtype, row + ib * rb, blk);
      for (int64_t i = 0; i < a.n; ++i) {
        const int8_t* qx = a.A->row_q(i) + ib * 256;
        const float* sx = a.A->row_scale(i) + ib * 8;
        float s = 0;
        for (int h = 0; h < 16; ++h) {
          int32_t dot = 0, sum = 0;
          for (int l = 0; l < 16; ++l) {
            dot += static_cast<int32_t>(blk.q[16 * h + l]) * qx[16 * h + l];
            sum += qx[16 * h + l];
          }
          s += sx[h / 2] * (blk.scale[h] * static_cast<float>(dot) - blk.min[h] * static_cast<float>(sum));
        }
        acc[i] += s;
      }
    }
    for (int64_t i = 0; i < a.n; ++i) a.Y[i * W.rows + r] = acc[i];
  }
}

}  // namespace optiq::kern
