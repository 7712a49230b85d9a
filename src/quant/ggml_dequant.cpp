// Block layouts follow ggml (llama.cpp ggml-common.h); the code is our own.
// All multi-byte fields are little-endian and read byte-wise, so blocks need
// no alignment. Float evaluation order matches ggml's reference C code, so the
// results are bit-identical to ggml's and gguf-py's dequantizers.
#include "quant/ggml_dequant.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"
#include "quant/ggml_iq4.h"

namespace optiq {

namespace {

inline float f16_at(const uint8_t* p) { return f16_to_f32(static_cast<uint16_t>(p[0] | (p[1] << 8))); }

// Q8_0: d(f16) qs[32](i8)
void dq_q8_0(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  const int8_t* q = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = q[j] * d;
}

// Q4_0: d(f16) qs[16]; low nibbles are elements 0..15, high nibbles 16..31.
void dq_q4_0(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  const uint8_t* q = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = ((q[j] & 0x0f) - 8) * d;
    y[j + 16] = ((q[j] >> 4) - 8) * d;
  }
}

// Q4_1: d(f16) m(f16) qs[16]
void dq_q4_1(const uint8_t* b, float* y) {
  const float d = f16_at(b), m = f16_at(b + 2);
  const uint8_t* q = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = (q[j] & 0x0f) * d + m;
    y[j + 16] = (q[j] >> 4) * d + m;
  }
}

inline uint32_t u32_at(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

// Q5_0: d(f16) qh(u32: 5th bits) qs[16]
void dq_q5_0(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  const uint32_t qh = u32_at(b + 2);
  const uint8_t* q = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int h0 = ((qh >> j) << 4) & 0x10;
    const int h1 = (qh >> (j + 12)) & 0x10;
    y[j] = (((q[j] & 0x0f) | h0) - 16) * d;
    y[j + 16] = (((q[j] >> 4) | h1) - 16) * d;
  }
}

// Q5_1: d(f16) m(f16) qh(u32) qs[16]
void dq_q5_1(const uint8_t* b, float* y) {
  const float d = f16_at(b), m = f16_at(b + 2);
  const uint32_t qh = u32_at(b + 4);
  const uint8_t* q = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int h0 = ((qh >> j) << 4) & 0x10;
    const int h1 = (qh >> (j + 12)) & 0x10;
    y[j] = ((q[j] & 0x0f) | h0) * d + m;
    y[j + 16] = ((q[j] >> 4) | h1) * d + m;
  }
}

// Q2_K: scales[16] (low nibble scale, high nibble min) qs[64] d(f16) dmin(f16)
void dq_q2_k(const uint8_t* b, float* y) {
  const uint8_t* sc = b;
  const uint8_t* q = b + 16;
  const float d = f16_at(b + 80), dmin = f16_at(b + 82);
  int is = 0;
  for (int n = 0; n < 256; n += 128) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int half = 0; half < 2; ++half) {
        const uint8_t s = sc[is++];
        const float dl = d * (s & 0x0f), ml = dmin * (s >> 4);
        const uint8_t* qq = q + 16 * half;
        for (int l = 0; l < 16; ++l) *y++ = dl * ((qq[l] >> shift) & 3) - ml;
      }
    }
    q += 32;
  }
}

// Q3_K: hmask[32] qs[64] scales[12] (16 packed 6-bit scales) d(f16)
void dq_q3_k(const uint8_t* b, float* y) {
  const uint8_t* hm = b;
  const uint8_t* q = b + 32;
  const uint8_t* s = b + 96;
  const float d_all = f16_at(b + 108);
  // Scale k: low 4 bits from s[k % 8] (nibble k / 8), high 2 bits from s[8 + k % 4] (bits 2*(k/4)).
  int8_t scales[16];
  for (int k = 0; k < 16; ++k) {
    const int lo = (k < 8 ? s[k] : s[k - 8] >> 4) & 0x0f;
    const int hi = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
    scales[k] = static_cast<int8_t>((lo | (hi << 4)) - 32);
  }
  int is = 0;
  uint8_t m = 1;
  for (int n = 0; n < 256; n += 128) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int half = 0; half < 2; ++half) {
        const float dl = d_all * scales[is++];
        const uint8_t* qq = q + 16 * half;
        const uint8_t* hh = hm + 16 * half;
        for (int l = 0; l < 16; ++l) *y++ = dl * (((qq[l] >> shift) & 3) - ((hh[l] & m) ? 0 : 4));
      }
      m <<= 1;
    }
    q += 32;
  }
}

// 6-bit scale/min pair j of the 12-byte k-quant scale block (Q4_K, Q5_K).
inline void scale_min_k4(int j, const uint8_t* q, int& sc, int& mn) {
  if (j < 4) {
    sc = q[j] & 63;
    mn = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K: d(f16) dmin(f16) scales[12] qs[128]
void dq_q4_k(const uint8_t* b, float* y) {
  const float d = f16_at(b), dmin = f16_at(b + 2);
  const uint8_t* s = b + 4;
  const uint8_t* q = b + 16;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
    int sc, mn;
    scale_min_k4(is, s, sc, mn);
    const float d1 = d * sc, m1 = dmin * mn;
    scale_min_k4(is + 1, s, sc, mn);
    const float d2 = d * sc, m2 = dmin * mn;
    for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0x0f) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
  }
}

// Q5_K: d(f16) dmin(f16) scales[12] qh[32] qs[128]
void dq_q5_k(const uint8_t* b, float* y) {
  const float d = f16_at(b), dmin = f16_at(b + 2);
  const uint8_t* s = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
    int sc, mn;
    scale_min_k4(is, s, sc, mn);
    const float d1 = d * sc, m1 = dmin * mn;
    scale_min_k4(is + 1, s, sc, mn);
    const float d2 = d * sc, m2 = dmin * mn;
    for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0x0f) + ((qh[l] & u1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
  }
}

// Q6_K: ql[128] (low 4 bits) qh[64] (high 2 bits) scales[16](i8) d(f16)
void dq_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = f16_at(b + 208);
  for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = static_cast<int>((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = static_cast<int>((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = static_cast<int>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = static_cast<int>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * sc[is] * q1;
      y[l + 32] = d * sc[is + 2] * q2;
      y[l + 64] = d * sc[is + 4] * q3;
      y[l + 96] = d * sc[is + 6] * q4;
    }
  }
}

// IQ4_NL: d(f16) qs[16]: y = d * level[index].
void dq_iq4_nl(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  const uint8_t* q = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * iq4::kLevels[q[j] & 0x0f];
    y[j + 16] = d * iq4::kLevels[q[j] >> 4];
  }
}

// IQ4_XS: d(f16) scales_h(u16) scales_l[4] qs[128]: block of 32 ib has
// scale d * (ls - 32), ls = low 4 bits from scales_l, high 2 from scales_h.
void dq_iq4_xs(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  const uint16_t scales_h = static_cast<uint16_t>(b[2] | (b[3] << 8));
  const uint8_t* scales_l = b + 4;
  const uint8_t* q = b + 8;
  for (int ib = 0; ib < 8; ++ib, q += 16, y += 32) {
    const int ls = ((scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f) | (((scales_h >> (2 * ib)) & 3) << 4);
    const float dl = d * static_cast<float>(ls - 32);
    for (int j = 0; j < 16; ++j) {
      y[j] = dl * iq4::kLevels[q[j] & 0x0f];
      y[j + 16] = dl * iq4::kLevels[q[j] >> 4];
    }
  }
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn block_fn(DType t) {
  switch (t) {
    case DType::Q4_0: return dq_q4_0;
    case DType::Q4_1: return dq_q4_1;
    case DType::Q5_0: return dq_q5_0;
    case DType::Q5_1: return dq_q5_1;
    case DType::Q8_0: return dq_q8_0;
    case DType::Q2_K: return dq_q2_k;
    case DType::Q3_K: return dq_q3_k;
    case DType::Q4_K: return dq_q4_k;
    case DType::Q5_K: return dq_q5_k;
    case DType::Q6_K: return dq_q6_k;
    case DType::IQ4_NL: return dq_iq4_nl;
    case DType::IQ4_XS: return dq_iq4_xs;
    default: return nullptr;
  }
}

}  // namespace

bool is_ggml_block_type(DType t) { return block_fn(t) != nullptr; }

bool can_dequantize(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16 || is_ggml_block_type(t); }

namespace {
// Caller has checked the type and n.
void row_unchecked(DType t, const void* src, float* dst, int64_t n) {
  const BlockLayout bl = block_layout(t);
  const uint8_t* s = static_cast<const uint8_t*>(src);
  switch (t) {
    case DType::F32:
      if (n) std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_at(s + 2 * i);
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(static_cast<uint16_t>(s[2 * i] | (s[2 * i + 1] << 8)));
      return;
    default: break;
  }
  const BlockFn fn = block_fn(t);
  const int64_t nb = n / bl.block_elems;
  for (int64_t i = 0; i < nb; ++i) fn(s + i * bl.block_bytes, dst + i * bl.block_elems);
}
}  // namespace

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
  const BlockLayout bl = block_layout(t);
  check(can_dequantize(t), "cannot dequantize dtype {}", dtype_name(t));
  check(n >= 0 && n % bl.block_elems == 0, "dequantize: {} elements is not a whole number of {} blocks of {}", n,
        dtype_name(t), bl.block_elems);
  row_unchecked(t, src, dst, n);
}

void dequantize_into(const TensorView& t, float* dst) {
  check(can_dequantize(t.dtype), "tensor {}: cannot dequantize dtype {}", t.name, dtype_name(t.dtype));
  check(!t.shape.empty() || t.numel() == 1, "tensor {}: no shape", t.name);
  for (int64_t d : t.shape) check(d >= 0, "tensor {}: bad shape {}", t.name, shape_str(t.shape));
  const int64_t numel = t.numel();
  const int64_t row = t.shape.empty() ? 1 : t.shape.back();
  const BlockLayout bl = block_layout(t.dtype);
  check(row % bl.block_elems == 0, "tensor {}: row length {} is not a multiple of the {} block size {}", t.name, row,
        dtype_name(t.dtype), bl.block_elems);
  const size_t need = dtype_bytes(t.dtype, numel);
  check(t.nbytes >= need && (need == 0 || t.data != nullptr), "tensor {} ({} {}) has {} bytes, needs {}", t.name,
        dtype_name(t.dtype), shape_str(t.shape), t.nbytes, need);
  if (numel == 0) return;
  const int64_t rows = numel / row;
  const size_t row_bytes = dtype_bytes(t.dtype, row);
  const uint8_t* src = static_cast<const uint8_t*>(t.data);
  // Group rows into chunks of >= 64k elements so small tensors stay serial.
  const int64_t rows_per_chunk = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(row, 1));
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  parallel_for(chunks, [&](int64_t c) {
    const int64_t r0 = c * rows_per_chunk, r1 = std::min(rows, r0 + rows_per_chunk);
    for (int64_t r = r0; r < r1; ++r)
      row_unchecked(t.dtype, src + static_cast<size_t>(r) * row_bytes, dst + r * row, row);
  });
}

std::vector<float> dequantize(const TensorView& t) {
  std::vector<float> out(static_cast<size_t>(std::max<int64_t>(t.numel(), 0)));
  dequantize_into(t, out.data());
  return out;
}

}  // namespace optiq
