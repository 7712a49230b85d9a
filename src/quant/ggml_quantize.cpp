// GGUF block quantizers (quant/ggml_quantize.h). Layouts as in
// quant/ggml_dequant.cpp; fitting procedures after llama.cpp's
// ggml-quants.c (make_qkx2_quants, make_qx_quants), written again.
#include "quant/ggml_quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/half.h"
#include "quant/ggml_dequant.h"
#include "quant/ggml_iq4.h"

namespace optiq {

namespace {

constexpr int kQK = 256;             // k-quant super-block
constexpr float kGroupEps = 1e-15f;  // a sub-block with |x| below this is zero

// Round half to even, as ggml's nearest_int (which adds 1.5 * 2^23).
inline int nearest(float v) { return static_cast<int>(std::lrintf(v)); }
inline float f16r(float v) { return f16_to_f32(f32_to_f16(v)); }
inline void put_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

// ------------------------------------------------------------------ fits

// x ~ scale * L + offset with L in [0, nmax]: tries inverse scales
// (nmax + rmin + rdelta * k) / (max - min), k = 0..nstep, each with the
// weighted least-squares (scale, offset) of its rounding, and keeps the one
// with the least weighted error (absolute when mad, else squared). With
// nonpositive_offset the offset stays <= 0 (k-quants store -offset as a
// "min"). Returns the scale; L gets the codes.
float fit_affine(const float* x, const float* w, int n, int nmax, float rmin, float rdelta, int nstep, bool mad,
                 bool nonpositive_offset, uint8_t* L, float* offset) {
  float lo = x[0], hi = x[0], sum_w = w[0], sum_x = w[0] * x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (nonpositive_offset && lo > 0) lo = 0;
  if (hi == lo) {
    std::fill(L, L + n, uint8_t{0});
    *offset = lo;
    return 0.0f;
  }
  auto error = [&](float s, float m, const uint8_t* codes) {
    float e = 0;
    for (int i = 0; i < n; ++i) {
      const float d = s * codes[i] + m - x[i];
      e += w[i] * (mad ? std::fabs(d) : d * d);
    }
    return e;
  };
  float iscale = nmax / (hi - lo), scale = 1 / iscale, min = lo;
  for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(std::clamp(nearest(iscale * (x[i] - lo)), 0, nmax));
  float best = error(scale, min, L);
  uint8_t aux[kQK];
  for (int k = 0; k <= nstep; ++k) {
    // As llama.cpp: candidates are laid out from the best offset found so far.
    iscale = (rmin + rdelta * k + nmax) / (hi - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest(iscale * (x[i] - min)), 0, nmax);
      aux[i] = static_cast<uint8_t>(l);
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (det <= 0) continue;
    float s = (sum_w * sum_xl - sum_x * sum_l) / det, m = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if (nonpositive_offset && m > 0) m = 0, s = sum_xl / sum_l2;
    const float e = error(s, m, aux);
    if (e < best) {
      std::copy(aux, aux + n, L);
      best = e, scale = s, min = m;
    }
  }
  *offset = min;
  return scale;
}

// x ~ scale * (L - nmax) with L - nmax in [-nmax, nmax - 1]: inverse scales
// -(nmax + step * k) / max (max: the value of largest magnitude) for k in
// [-steps, steps], each scored by the weighted least-squares fit; keeps the
// best. Returns the scale (0 for an all-zero input); L gets the offset codes.
float fit_symmetric(const float* x, const float* w, int n, int nmax, int steps, float step, uint8_t* L) {
  float amax = 0, max = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), max = x[i];
  if (amax < kGroupEps) {
    std::fill(L, L + n, static_cast<uint8_t>(nmax));
    return 0.0f;
  }
  auto score = [&](float iscale, float& slx, float& sl2) {
    slx = sl2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest(iscale * x[i]), -nmax, nmax - 1);
      slx += w[i] * x[i] * l;
      sl2 += w[i] * l * l;
    }
  };
  auto codes = [&](float iscale) {
    for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(std::clamp(nearest(iscale * x[i]), -nmax, nmax - 1) + nmax);
  };
  float iscale = -nmax / max, slx, sl2;
  score(iscale, slx, sl2);
  codes(iscale);
  float scale = sl2 > 0 ? slx / sl2 : 0.0f, best = scale * slx;
  for (int k = -steps; k <= steps; ++k) {
    if (k == 0) continue;
    const float is = -(nmax + step * k) / max;
    score(is, slx, sl2);
    if (sl2 > 0 && slx * slx > best * sl2) {
      codes(is);
      scale = slx / sl2;
      best = scale * slx;
    }
  }
  return scale;
}

// Weights of the fits in a super-block (or block) of n: llama.cpp's imatrix
// weighting with importance, else `plain(i)`.
template <class Plain>
void fit_weights(const float* x, int n, const float* importance, Plain plain, float* w) {
  if (!importance) {
    for (int i = 0; i < n; ++i) w[i] = plain(i);
    return;
  }
  float sum_x2 = 0;
  for (int i = 0; i < n; ++i) sum_x2 += x[i] * x[i];
  const float sigma2 = 2 * sum_x2 / n;
  for (int i = 0; i < n; ++i) w[i] = importance[i] * std::sqrt(sigma2 + x[i] * x[i]);
}

// ------------------------------------------------------------ 32-blocks

void q8_0(const float* x, uint8_t* out) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
  put_f16(out, d);
  for (int j = 0; j < 32; ++j) out[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::round(x[j] * id)));
}

// Codes of a symmetric block (Q4_0: zero 8, max 15; Q5_0: 16, 31) for scale d,
// with ggml's rounding: trunc(x / d + zero + 0.5), capped at max.
void sym_codes(const float* x, float d, int zero, uint8_t* q) {
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const float half = static_cast<float>(zero) + 0.5f;
  for (int j = 0; j < 32; ++j)
    q[j] = static_cast<uint8_t>(std::clamp(static_cast<int>(x[j] * id + half), 0, 2 * zero - 1));
}

double sym_error(const float* x, const float* imp, float d, int zero, const uint8_t* q) {
  const float dr = f16r(d);
  double e = 0;
  for (int j = 0; j < 32; ++j) {
    const double r = x[j] - dr * (static_cast<int>(q[j]) - zero);
    e += (imp ? imp[j] : 1.0) * r * r;
  }
  return e;
}

// Q4_0 / Q5_0: d = max / -zero (ggml's reference), or with `thorough` the
// best of scales 0.80x..1.10x of it, both signs.
float symmetric_block(const float* x, const float* imp, bool thorough, int zero, uint8_t* q) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < 32; ++j)
    if (amax < std::fabs(x[j])) amax = std::fabs(x[j]), max = x[j];
  float d = max / static_cast<float>(-zero);
  sym_codes(x, d, zero, q);
  if (thorough && d != 0.0f) {
    double best = sym_error(x, imp, d, zero, q);
    uint8_t t[32];
    for (int k = 1; k <= 16; ++k) {
      const float s = 0.80f + 0.02f * static_cast<float>(k - 1);
      for (float sign : {1.0f, -1.0f}) {
        const float dk = d * s * sign;
        sym_codes(x, dk, zero, t);
        const double e = sym_error(x, imp, dk, zero, t);
        if (e < best) best = e, d = dk, std::memcpy(q, t, 32);
      }
    }
  }
  return d;
}

void q4_0(const float* x, const float* imp, bool thorough, uint8_t* out) {
  uint8_t q[32];
  put_f16(out, symmetric_block(x, imp, thorough, 8, q));
  for (int j = 0; j < 16; ++j) out[2 + j] = static_cast<uint8_t>(q[j] | (q[j + 16] << 4));
}

// Fifth bits of 32 codes: bit j of qh is bit 4 of code j.
void put_qh(const uint8_t* q, uint8_t* p) {
  uint32_t qh = 0;
  for (int j = 0; j < 32; ++j) qh |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
  for (int b = 0; b < 4; ++b) p[b] = static_cast<uint8_t>(qh >> (8 * b));
}

void q5_0(const float* x, const float* imp, bool thorough, uint8_t* out) {
  uint8_t q[32];
  put_f16(out, symmetric_block(x, imp, thorough, 16, q));
  put_qh(q, out + 2);
  for (int j = 0; j < 16; ++j) out[6 + j] = static_cast<uint8_t>((q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4));
}

// Q4_1 / Q5_1: d = (max - min) / nmax, offset min (ggml's reference), or with
// `thorough` the weighted fit; codes rounded with the stored d and m.
void affine_block(const float* x, const float* imp, bool thorough, int nmax, float& d, float& m, uint8_t* q) {
  float lo = x[0], hi = x[0];
  for (int j = 1; j < 32; ++j) lo = std::min(lo, x[j]), hi = std::max(hi, x[j]);
  if (!thorough) {
    d = (hi - lo) / static_cast<float>(nmax);
    m = lo;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; ++j) {
      const int v = static_cast<int>((x[j] - lo) * id + 0.5f);
      q[j] = static_cast<uint8_t>(std::min(nmax, v));
    }
    return;
  }
  float w[32];
  for (int j = 0; j < 32; ++j) w[j] = imp ? imp[j] : 1.0f;
  d = fit_affine(x, w, 32, nmax, -1.0f, 0.05f, 40, false, false, q, &m);
  const float dr = f16r(d), mr = f16r(m);
  if (dr == 0.0f) return;
  for (int j = 0; j < 32; ++j) q[j] = static_cast<uint8_t>(std::clamp(nearest((x[j] - mr) / dr), 0, nmax));
}

void q4_1(const float* x, const float* imp, bool thorough, uint8_t* out) {
  float d, m;
  uint8_t q[32];
  affine_block(x, imp, thorough, 15, d, m, q);
  put_f16(out, d);
  put_f16(out + 2, m);
  for (int j = 0; j < 16; ++j) out[4 + j] = static_cast<uint8_t>(q[j] | (q[j + 16] << 4));
}

void q5_1(const float* x, const float* imp, bool thorough, uint8_t* out) {
  float d, m;
  uint8_t q[32];
  affine_block(x, imp, thorough, 31, d, m, q);
  put_f16(out, d);
  put_f16(out + 2, m);
  put_qh(q, out + 4);
  for (int j = 0; j < 16; ++j) out[8 + j] = static_cast<uint8_t>((q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4));
}

// ------------------------------------------------------------- k-quants

// Levels L in [0, nmax] for non-negative values x (sub-block scales or mins),
// weighted by w: the super-block scale s with x ~ s * L (llama.cpp's
// make_qp_quants): the best of a few scales around max / nmax, then
// coordinate descent on the levels. Returns s.
float fit_levels(const float* x, const float* w, int n, int nmax, int density, uint8_t* L) {
  float max = 0;
  for (int i = 0; i < n; ++i) max = std::max(max, x[i]);
  if (max < kGroupEps) {
    std::fill(L, L + n, uint8_t{0});
    return 0.0f;
  }
  float iscale = nmax / max;
  for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(nearest(iscale * x[i]));
  float scale = 1 / iscale, best = 0;
  for (int i = 0; i < n; ++i) {
    const float diff = x[i] - scale * L[i];
    best += w[i] * diff * diff;
  }
  for (int k = -4 * density; k <= 4 * density; ++k) {
    if (k == 0) continue;
    const float is = (0.1f / density * k + nmax) / max, sc = 1 / is;
    float mse = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::min(nmax, nearest(is * x[i]));
      const float diff = x[i] - sc * l;
      mse += w[i] * diff * diff;
    }
    if (mse < best) best = mse, iscale = is;
  }
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::min(nmax, nearest(iscale * x[i]));
    L[i] = static_cast<uint8_t>(l);
    sumlx += w[i] * x[i] * l;
    suml2 += w[i] * l * l;
  }
  for (int round = 0; round < 5; ++round) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      float slx = sumlx - w[i] * x[i] * L[i], sl2 = suml2 - w[i] * L[i] * L[i];
      if (slx <= 0 || sl2 <= 0) continue;
      const int nl = std::min(nmax, nearest(x[i] * sl2 / slx));
      if (nl == L[i]) continue;
      slx += w[i] * x[i] * nl;
      sl2 += w[i] * nl * nl;
      if (slx * slx * suml2 > sumlx * sumlx * sl2) {
        L[i] = static_cast<uint8_t>(nl);
        sumlx = slx, suml2 = sl2;
        ++changed;
      }
    }
    if (!changed) break;
  }
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Q3_K's reference sub-block fit (llama.cpp's make_q3_quants): the symmetric
// rounding, then coordinate descent on the codes with weights x^2. Codes in L
// are offset by nmax; returns the scale.
float fit_q3(const float* x, int n, int nmax, uint8_t* L) {
  float amax = 0, max = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), max = x[i];
  if (amax < kGroupEps) {
    std::fill(L, L + n, uint8_t{0});
    return 0.0f;
  }
  const float iscale = -nmax / max;
  int l8[kQK];
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    l8[i] = std::clamp(nearest(iscale * x[i]), -nmax, nmax - 1);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l8[i];
    suml2 += w * l8[i] * l8[i];
  }
  for (int round = 0; round < 5; ++round) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * l8[i];
      if (slx <= 0) continue;
      float sl2 = suml2 - w * l8[i] * l8[i];
      const int nl = std::clamp(nearest(x[i] * sl2 / slx), -nmax, nmax - 1);
      if (nl == l8[i]) continue;
      slx += w * x[i] * nl;
      sl2 += w * nl * nl;
      if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
        l8[i] = nl;
        sumlx = slx, suml2 = sl2;
        ++changed;
      }
    }
    if (!changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(l8[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// The 2-bit codes of a super-block, four to a byte (Q2_K qs, Q3_K low bits):
// byte 32h + l holds codes 128h + l + 32s at bits 2s.
void pack_2bit(const uint8_t* L, uint8_t* qs) {
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const uint8_t* c = L + 128 * h + l;
      qs[32 * h + l] = static_cast<uint8_t>(c[0] | (c[32] << 2) | (c[64] << 4) | (c[96] << 6));
    }
}

// Q4_K / Q5_K: eight 6-bit (scale, min) pairs in 12 bytes (get_scale_min_k4's layout).
void pack_scale_min(const uint8_t* ls, const uint8_t* lm, uint8_t* s) {
  std::memset(s, 0, 12);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      s[j] = ls[j];
      s[j + 4] = lm[j];
    } else {
      s[j + 4] = static_cast<uint8_t>((ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4));
      s[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
      s[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
    }
  }
}

// Q3_K: sixteen 6-bit levels (scale + 32) in 12 bytes.
void pack_q3_scales(const uint8_t* level, uint8_t* s) {
  std::memset(s, 0, 12);
  for (int j = 0; j < 16; ++j) {
    const int l = level[j];
    if (j < 8)
      s[j] = static_cast<uint8_t>(l & 0x0f);
    else
      s[j - 8] |= static_cast<uint8_t>((l & 0x0f) << 4);
    s[8 + j % 4] |= static_cast<uint8_t>((l >> 4) << (2 * (j / 4)));
  }
}

// llama.cpp's imatrix weights: importance * sqrt(sigma2 + x^2), sigma2 =
// sigma2_scale * mean x^2 over the super-block; sw gets each sub-block's sum.
void imatrix_weights(const float* x, const float* imp, float sigma2_scale, int sub, float* w, float* sw) {
  float sum_x2 = 0;
  for (int i = 0; i < kQK; ++i) sum_x2 += x[i] * x[i];
  const float sigma2 = sigma2_scale * sum_x2 / kQK;
  for (int j = 0; j < kQK / sub; ++j) {
    float s = 0;
    for (int i = 0; i < sub; ++i) {
      const int k = sub * j + i;
      w[k] = imp[k] * std::sqrt(sigma2 + x[k] * x[k]);
      s += w[k];
    }
    sw[j] = s;
  }
}

// Asymmetric k-quant sub-block fits: scales and mins (>= 0) of `sub` weights
// each; grids llama.cpp's, `density` times as fine.
void affine_fits(const float* x, const float* w, int sub, int nmax, float rmin, float rdelta, int nstep, bool mad,
                 int density, float* scales, float* mins, uint8_t* L) {
  for (int j = 0; j < kQK / sub; ++j) {
    float offset;
    scales[j] = fit_affine(x + sub * j, w + sub * j, sub, nmax, rmin, rdelta / density, nstep * density, mad, true,
                           L + sub * j, &offset);
    mins[j] = -offset;
  }
}

// Reference super-block scales: levels against the largest sub-block value.
void max_levels(const float* v, int n, int levels, float& super, uint8_t* L) {
  float max = 0;
  for (int j = 0; j < n; ++j) max = std::max(max, v[j]);
  const float inv = max > 0 ? levels / max : 0.0f;
  for (int j = 0; j < n; ++j) L[j] = static_cast<uint8_t>(std::min(levels, nearest(inv * v[j])));
  super = max / static_cast<float>(levels);
}

// Codes rounded with the scales as stored: x ~ d * L - m in [0, nmax].
void requantize_affine(const float* x, int sub, int nmax, float d, float dmin, const uint8_t* ls, const uint8_t* lm,
                       uint8_t* L) {
  const float dr = f16r(d), mr = f16r(dmin);
  for (int j = 0; j < kQK / sub; ++j) {
    const float dd = dr * ls[j];
    if (dd == 0.0f) continue;  // keeps the fit's codes, as llama.cpp
    const float dm = mr * lm[j];
    for (int i = 0; i < sub; ++i)
      L[sub * j + i] = static_cast<uint8_t>(std::clamp(nearest((x[sub * j + i] + dm) / dd), 0, nmax));
  }
}

// Each k-quant: llama.cpp's reference procedure without importance, its
// imatrix procedure with it; `density` 1 is llama.cpp's grids exactly.
void q2_k(const float* x, const float* imp, int density, uint8_t* out) {
  float w[kQK], sw[16], scales[16], mins[16], d, dmin;
  uint8_t L[kQK], ls[16], lm[16];
  if (!imp) {
    for (int i = 0; i < kQK; ++i) w[i] = std::fabs(x[i]);
    affine_fits(x, w, 16, 3, -0.5f, 0.1f, 15, true, density, scales, mins, L);
    max_levels(scales, 16, 15, d, ls);
    max_levels(mins, 16, 15, dmin, lm);
  } else {
    imatrix_weights(x, imp, 1.0f, 16, w, sw);
    affine_fits(x, w, 16, 3, -0.9f, 0.05f, 36, false, density, scales, mins, L);
    d = fit_levels(scales, sw, 16, 15, density, ls);
    dmin = fit_levels(mins, sw, 16, 15, density, lm);
  }
  requantize_affine(x, 16, 3, d, dmin, ls, lm, L);
  for (int j = 0; j < 16; ++j) out[j] = static_cast<uint8_t>(ls[j] | (lm[j] << 4));
  pack_2bit(L, out + 16);
  put_f16(out + 80, d);
  put_f16(out + 82, dmin);
}

// Q4_K and Q5_K share everything but the code width, the reference grid and
// how the codes are packed: this writes d, dmin and the scales (the first 16
// bytes) and leaves the codes in L.
void q45_k(const float* x, const float* imp, int density, int nmax, float ref_rmin, int ref_nstep, uint8_t* out,
           uint8_t* L) {
  float w[kQK], sw[8], scales[8], mins[8], d, dmin;
  uint8_t ls[8], lm[8];
  if (!imp) {
    for (int j = 0; j < 8; ++j) {  // the rms of the sub-block + |x|
      float s2 = 0;
      for (int i = 0; i < 32; ++i) s2 += x[32 * j + i] * x[32 * j + i];
      const float av = std::sqrt(s2 / 32);
      for (int i = 0; i < 32; ++i) w[32 * j + i] = av + std::fabs(x[32 * j + i]);
    }
    affine_fits(x, w, 32, nmax, ref_rmin, 0.1f, ref_nstep, false, density, scales, mins, L);
    max_levels(scales, 8, 63, d, ls);
    max_levels(mins, 8, 63, dmin, lm);
  } else {
    imatrix_weights(x, imp, 2.0f, 32, w, sw);
    affine_fits(x, w, 32, nmax, -0.9f, 0.05f, 36, false, density, scales, mins, L);
    d = fit_levels(scales, sw, 8, 63, density, ls);
    dmin = fit_levels(mins, sw, 8, 63, density, lm);
  }
  requantize_affine(x, 32, nmax, d, dmin, ls, lm, L);
  put_f16(out, d);
  put_f16(out + 2, dmin);
  pack_scale_min(ls, lm, out + 4);
}

void q4_k(const float* x, const float* imp, int density, uint8_t* out) {
  uint8_t L[kQK];
  q45_k(x, imp, density, 15, -1.0f, 20, out, L);
  uint8_t* q = out + 16;
  for (int j = 0; j < 4; ++j)
    for (int l = 0; l < 32; ++l) q[32 * j + l] = static_cast<uint8_t>(L[64 * j + l] | (L[64 * j + l + 32] << 4));
}

void q5_k(const float* x, const float* imp, int density, uint8_t* out) {
  uint8_t L[kQK];
  q45_k(x, imp, density, 31, -0.5f, 15, out, L);
  uint8_t* qh = out + 16;
  uint8_t* ql = out + 48;
  std::memset(qh, 0, 32);
  for (int j = 0; j < 4; ++j)
    for (int l = 0; l < 32; ++l) {
      const uint8_t a = L[64 * j + l], b = L[64 * j + l + 32];
      ql[32 * j + l] = static_cast<uint8_t>((a & 0x0f) | ((b & 0x0f) << 4));
      qh[l] |= static_cast<uint8_t>(((a >> 4) << (2 * j)) | ((b >> 4) << (2 * j + 1)));
    }
}

// The sub-block scale of largest magnitude (with its sign).
float largest(const float* v, int n) {
  float amax = 0, max = 0;
  for (int j = 0; j < n; ++j)
    if (std::fabs(v[j]) > amax) amax = std::fabs(v[j]), max = v[j];
  return max;
}

void q3_k(const float* x, const float* imp, int density, uint8_t* out) {
  float scales[16], d = 0;
  uint8_t L[kQK], level[16] = {};
  std::memset(out, 0, 110);
  if (!imp) {
    for (int j = 0; j < 16; ++j) scales[j] = fit_q3(x + 16 * j, 16, 4, L + 16 * j);
    const float max_scale = largest(scales, 16);
    if (max_scale != 0.0f) {
      const float iscale = -32.0f / max_scale;
      for (int j = 0; j < 16; ++j) level[j] = static_cast<uint8_t>(std::clamp(nearest(iscale * scales[j]), -32, 31) + 32);
      d = 1 / iscale;
    }
  } else {
    float w[kQK], sw[16];
    imatrix_weights(x, imp, 2.0f, 16, w, sw);
    for (int j = 0; j < 16; ++j)
      scales[j] = fit_symmetric(x + 16 * j, w + 16 * j, 16, 4, 9 * density, 0.1f / density, L + 16 * j);
    d = fit_symmetric(scales, sw, 16, 32, 9 * density, 0.1f / density, level);
  }
  pack_q3_scales(level, out + 96);
  put_f16(out + 108, d);
  const float dr = f16r(d);
  for (int j = 0; j < 16; ++j) {
    const float dd = dr * (level[j] - 32);
    if (dd == 0.0f) continue;
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] = static_cast<uint8_t>(std::clamp(nearest(x[16 * j + i] / dd), -4, 3) + 4);
  }
  for (int j = 0; j < kQK; ++j)  // the high bit of code j: bit j / 32 of hmask[j % 32]
    if (L[j] > 3) {
      out[j % 32] |= static_cast<uint8_t>(1 << (j / 32));
      L[j] = static_cast<uint8_t>(L[j] - 4);
    }
  pack_2bit(L, out + 32);
}

void q6_k(const float* x, const float* imp, int density, uint8_t* out) {
  float w[kQK], scales[16];
  for (int i = 0; i < kQK; ++i) w[i] = imp ? imp[i] : x[i] * x[i];  // llama.cpp weighs Q6_K by the importance alone
  uint8_t L[kQK];
  for (int j = 0; j < 16; ++j)
    scales[j] = fit_symmetric(x + 16 * j, w + 16 * j, 16, 32, 9 * density, 0.1f / density, L + 16 * j);
  const float max_scale = largest(scales, 16);
  std::memset(out, 0, 210);
  if (std::fabs(max_scale) < kGroupEps) return;  // an all-zero block
  const float iscale = -128.0f / max_scale, d = 1 / iscale;
  auto* sc = reinterpret_cast<int8_t*>(out + 192);
  for (int j = 0; j < 16; ++j) sc[j] = static_cast<int8_t>(std::min(127, nearest(iscale * scales[j])));
  put_f16(out + 208, d);
  const float dr = f16r(d);
  for (int j = 0; j < 16; ++j) {
    const float dd = dr * sc[j];
    if (dd == 0.0f) continue;
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] = static_cast<uint8_t>(std::clamp(nearest(x[16 * j + i] / dd), -32, 31) + 32);
  }
  uint8_t* ql = out;
  uint8_t* qh = out + 128;
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const uint8_t* c = L + 128 * h + l;
      ql[64 * h + l] = static_cast<uint8_t>((c[0] & 0x0f) | ((c[64] & 0x0f) << 4));
      ql[64 * h + l + 32] = static_cast<uint8_t>((c[32] & 0x0f) | ((c[96] & 0x0f) << 4));
      qh[32 * h + l] = static_cast<uint8_t>((c[0] >> 4) | ((c[32] >> 4) << 2) | ((c[64] >> 4) << 4) | ((c[96] >> 4) << 6));
    }
}

using KFn = void (*)(const float* x, const float* imp, int density, uint8_t* out);

// optiq's search for a k-quant super-block: llama.cpp's procedure at its own
// grids and at finer ones, and with importance also the reference procedure;
// the candidate whose dequantized weights are closest to x (importance-weighted)
// is kept, so the result is never worse than llama.cpp's by that measure.
void kquant_search(DType t, KFn fn, const float* x, const float* imp, uint8_t* out) {
  const size_t bb = block_layout(t).block_bytes;
  uint8_t cand[256];
  float dq[kQK];
  double best = -1;
  for (int v = 0; v < (imp ? 4 : 2); ++v) {
    fn(x, v < 2 ? imp : nullptr, 1 + v % 2, cand);
    dequantize_row(t, cand, dq, kQK);
    double e = 0;
    for (int i = 0; i < kQK; ++i) e += (imp ? imp[i] : 1.0) * double(x[i] - dq[i]) * (x[i] - dq[i]);
    if (best < 0 || e < best) {
      best = e;
      std::memcpy(out, cand, bb);
    }
  }
}

template <DType kType, KFn kFn>
void kquant(const float* x, const float* imp, bool thorough, uint8_t* out) {
  if (thorough)
    kquant_search(kType, kFn, x, imp, out);
  else
    kFn(x, imp, 1, out);
}

using QuantizeBlockFn = void (*)(const float* x, const float* imp, bool thorough, uint8_t* out);

QuantizeBlockFn quantize_block_fn(DType t) {
  switch (t) {
    case DType::Q8_0: return [](const float* x, const float*, bool, uint8_t* out) { q8_0(x, out); };
    case DType::Q4_0: return q4_0;
    case DType::Q4_1: return q4_1;
    case DType::Q5_0: return q5_0;
    case DType::Q5_1: return q5_1;
    case DType::Q2_K: return kquant<DType::Q2_K, q2_k>;
    case DType::Q3_K: return kquant<DType::Q3_K, q3_k>;
    case DType::Q4_K: return kquant<DType::Q4_K, q4_k>;
    case DType::Q5_K: return kquant<DType::Q5_K, q5_k>;
    case DType::Q6_K: return kquant<DType::Q6_K, q6_k>;
    case DType::IQ4_NL: return iq4::quantize_nl;
    case DType::IQ4_XS: return iq4::quantize_xs;
    default: return nullptr;
  }
}

}  // namespace

bool ggml_can_quantize(DType t) { return quantize_block_fn(t) != nullptr; }

void ggml_quantize_row(DType t, const float* x, int64_t n, const float* importance, bool thorough, uint8_t* out) {
  const QuantizeBlockFn fn = quantize_block_fn(t);
  check(fn != nullptr, "quantize: GGUF type {} has no quantizer", dtype_name(t));
  const BlockLayout bl = block_layout(t);
  check(n % bl.block_elems == 0, "quantize: {} weights are not whole {} blocks of {}", n, dtype_name(t),
        bl.block_elems);
  for (int64_t b = 0; b < n / bl.block_elems; ++b)
    fn(x + b * bl.block_elems, importance ? importance + b * bl.block_elems : nullptr, thorough,
       out + b * bl.block_bytes);
}

}  // namespace optiq
