// IQ4_NL / IQ4_XS quantizers (quant/ggml_iq4.h): llama.cpp's procedure
// (ggml-quants.c, quantize_row_iq4_nl_impl), written again; the float
// operations are in its order, so the reference variant writes its blocks.
#include "quant/ggml_iq4.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/half.h"
#include "quant/ggml_dequant.h"

namespace optiq::iq4 {

namespace {

constexpr float kGroupEps = 1e-15f;  // a block with |x| below this is zero

// The index of the level nearest v (ties to the lower one, as llama.cpp's best_index_int8).
int nearest_level(float v) {
  if (v <= kLevels[0]) return 0;
  if (v >= kLevels[15]) return 15;
  int lo = 0, hi = 15;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (v < kLevels[mid])
      hi = mid;
    else
      lo = mid;
  }
  return v - kLevels[hi - 1] < kLevels[hi] - v ? hi - 1 : hi;
}

inline int round_even(float v) { return static_cast<int>(std::lrintf(v)); }

void put_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v & 0xff);
  p[1] = static_cast<uint8_t>(v >> 8);
}

// One super-block of `blocks` blocks of 32 (1: IQ4_NL, 8: IQ4_XS). The
// candidate inverse scales are (k * step + level[0]) / max for k in
// [-tries, tries]; llama.cpp's grid is tries 7, step 1.
void quantize_super(const float* x, const float* qw, int blocks, int tries, float step, uint8_t* out) {
  const int n = 32 * blocks;
  float sigma2 = 0;
  for (int j = 0; j < n; ++j) sigma2 += x[j] * x[j];
  sigma2 *= 2.f / static_cast<float>(n);

  uint8_t L[256] = {};
  float scales[8] = {};
  float weight[32];
  float max_scale = 0, amax_scale = 0;
  for (int ib = 0; ib < blocks; ++ib) {
    const float* xb = x + 32 * ib;
    uint8_t* Lb = L + 32 * ib;
    for (int j = 0; j < 32; ++j)
      weight[j] = qw ? qw[32 * ib + j] * std::sqrt(sigma2 + xb[j] * xb[j]) : xb[j] * xb[j];
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j) {
      const float ax = std::fabs(xb[j]);
      if (ax > amax) amax = ax, max = xb[j];
    }
    if (amax < kGroupEps) {
      scales[ib] = 0;
      continue;
    }
    float d = -max / kLevels[0];
    float id = 1 / d;
    float sumqx = 0, sumq2 = 0;
    for (int j = 0; j < 32; ++j) {
      const int l = nearest_level(id * xb[j]);
      Lb[j] = static_cast<uint8_t>(l);
      const float q = kLevels[l], w = weight[j];
      sumqx += w * q * xb[j];
      sumq2 += w * q * q;
    }
    d = sumqx / sumq2;
    float best = d * sumqx;
    for (int k = -tries; k <= tries; ++k) {
      id = (static_cast<float>(k) * step + kLevels[0]) / max;
      sumqx = sumq2 = 0;
      for (int j = 0; j < 32; ++j) {
        const float q = kLevels[nearest_level(id * xb[j])], w = weight[j];
        sumqx += w * q * xb[j];
        sumq2 += w * q * q;
      }
      if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
        d = sumqx / sumq2;
        best = d * sumqx;
      }
    }
    scales[ib] = d;
    if (std::fabs(d) > amax_scale) amax_scale = std::fabs(d), max_scale = d;
  }

  uint8_t* qs;
  if (blocks > 1) {
    // 6-bit block scales under one fp16 scale; the indices are picked again
    // with each block's scale as stored (but the unrounded super-scale, as llama.cpp).
    uint16_t scales_h = 0;
    uint8_t scales_l[4] = {};
    const float d = -max_scale / 32;
    put_u16(out, f32_to_f16(d));
    const float id = d != 0 ? 1 / d : 0.f;
    for (int ib = 0; ib < blocks; ++ib) {
      int l = std::clamp(round_even(id * scales[ib]), -32, 31);
      const float dl = d * static_cast<float>(l);
      const float idl = dl != 0 ? 1 / dl : 0.f;
      for (int j = 0; j < 32; ++j) L[32 * ib + j] = static_cast<uint8_t>(nearest_level(idl * x[32 * ib + j]));
      l += 32;
      scales_l[ib / 2] |= static_cast<uint8_t>((l & 0xf) << (4 * (ib % 2)));
      scales_h |= static_cast<uint16_t>((l >> 4) << (2 * (ib % 8)));
    }
    put_u16(out + 2, scales_h);
    std::memcpy(out + 4, scales_l, 4);
    qs = out + 8;
  } else {
    put_u16(out, f32_to_f16(scales[0]));
    const float id = scales[0] != 0 ? 1 / scales[0] : 0.f;
    for (int j = 0; j < 32; ++j) L[j] = static_cast<uint8_t>(nearest_level(id * x[j]));
    qs = out + 2;
  }
  for (int ib = 0; ib < blocks; ++ib)
    for (int j = 0; j < 16; ++j) qs[16 * ib + j] = static_cast<uint8_t>(L[32 * ib + j] | (L[32 * ib + 16 + j] << 4));
}

// llama.cpp's grid, and with `thorough` also a four times finer one over the
// same range; the blocks closer to x (importance-weighted) are kept.
void quantize(DType t, int blocks, const float* x, const float* imp, bool thorough, uint8_t* out) {
  const int n = 32 * blocks;
  const size_t bytes = block_layout(t).block_bytes;
  quantize_super(x, imp, blocks, 7, 1.0f, out);
  if (!thorough) return;
  auto error = [&](const uint8_t* b) {
    float dq[256];
    dequantize_row(t, b, dq, n);
    double e = 0;
    for (int j = 0; j < n; ++j) e += (imp ? imp[j] : 1.0) * double(x[j] - dq[j]) * (x[j] - dq[j]);
    return e;
  };
  // Without importance, llama.cpp weighs x^2; the error we keep is flat, so
  // the finer grid also fits with flat importance (weights sqrt(sigma^2 + x^2)).
  float flat[256];
  std::fill(flat, flat + n, 1.0f);
  double best = error(out);
  uint8_t cand[136];
  for (const float* w : {imp, imp ? nullptr : static_cast<const float*>(flat)}) {
    if (w == nullptr && imp) continue;
    quantize_super(x, w, blocks, 28, 0.25f, cand);
    const double e = error(cand);
    if (e < best) best = e, std::memcpy(out, cand, bytes);
  }
}

}  // namespace

void quantize_nl(const float* x, const float* importance, bool thorough, uint8_t* out) {
  quantize(DType::IQ4_NL, 1, x, importance, thorough, out);
}

void quantize_xs(const float* x, const float* importance, bool thorough, uint8_t* out) {
  quantize(DType::IQ4_XS, 8, x, importance, thorough, out);
}

}  // namespace optiq::iq4
