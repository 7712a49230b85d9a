#include "quant/ggml_to_affine.h"

#include <cstring>

#include "core/error.h"
#include "core/half.h"
#include "core/mapped_file.h"
#include "core/parallel.h"

namespace optiq {

bool ggml_maps_to_affine(DType t) {
  return t == DType::Q4_0 || t == DType::Q4_1 || t == DType::Q5_0 || t == DType::Q5_1 || t == DType::Q8_0;
}

namespace {

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Zero point of the symmetric types (their groups store no bias); 0 for Q4_1/Q5_1.
int32_t symmetric_zero(DType t) {
  return t == DType::Q4_0 ? 8 : t == DType::Q5_0 ? 16 : t == DType::Q8_0 ? 128 : 0;
}

// One 32-weight block -> codes, fp16 scale and (Q4_1/Q5_1) fp16 bias; the
// symmetric types leave `bias` alone: it is -symmetric_zero * scale.
void convert_block(DType t, const uint8_t* b, uint8_t* codes, uint16_t& scale, uint16_t& bias) {
  scale = load_u16(b);
  switch (t) {
    case DType::Q4_0:  // {d, qs[16]}: w = d * (q - 8)
      for (int j = 0; j < 16; ++j) {
        codes[j] = b[2 + j] & 0xF;
        codes[j + 16] = b[2 + j] >> 4;
      }
      break;
    case DType::Q4_1:  // {d, m, qs[16]}: w = d * q + m
      for (int j = 0; j < 16; ++j) {
        codes[j] = b[4 + j] & 0xF;
        codes[j + 16] = b[4 + j] >> 4;
      }
      bias = load_u16(b + 2);
      break;
    case DType::Q5_0:    // {d, qh[4], qs[16]}: w = d * (q - 16)
    case DType::Q5_1: {  // {d, m, qh[4], qs[16]}: w = d * q + m
      const int off = t == DType::Q5_0 ? 2 : 4;
      uint32_t qh;
      std::memcpy(&qh, b + off, 4);
      const uint8_t* qs = b + off + 4;
      for (int j = 0; j < 16; ++j) {
        codes[j] = static_cast<uint8_t>((qs[j] & 0xF) | (((qh >> j) & 1u) << 4));
        codes[j + 16] = static_cast<uint8_t>((qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
      }
      if (t == DType::Q5_1) bias = load_u16(b + 2);
      break;
    }
    case DType::Q8_0:  // {d, int8 qs[32]}: w = d * q = d * (q + 128) - 128 d
      for (int j = 0; j < 32; ++j) codes[j] = static_cast<uint8_t>(static_cast<int8_t>(b[2 + j]) + 128);
      break;
    default:
      fail("{} cannot be converted to affine groups", dtype_name(t));
  }
}

}  // namespace

AffineMatrix ggml_to_affine(const TensorView& t, bool release_source) {
  check(ggml_maps_to_affine(t.dtype), "tensor {}: {} cannot be converted to affine groups", t.name, dtype_name(t.dtype));
  check(t.shape.size() == 2, "tensor {}: expected a 2-D matrix", t.name);
  const int64_t rows = t.shape[0], cols = t.shape[1];
  check(cols % 32 == 0 && t.nbytes == dtype_bytes(t.dtype, rows * cols), "tensor {}: inconsistent size", t.name);
  const AffineFormat fmt{t.dtype == DType::Q8_0 ? 8 : (t.dtype == DType::Q5_0 || t.dtype == DType::Q5_1) ? 5 : 4, 32};
  const BlockLayout bl = block_layout(t.dtype);
  const int64_t groups = cols / 32;
  AffineMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.fmt = fmt;
  m.bf16_scales = false;
  resize_huge(m.packed, rows * affine_words_per_row(fmt, cols));
  resize_huge(m.scales, rows * groups);
  m.zero_point = symmetric_zero(t.dtype);
  if (m.zero_point == 0) resize_huge(m.biases, rows * groups);
  const uint8_t* src = static_cast<const uint8_t*>(t.data);
  parallel_for_range(rows, 64, [&](int64_t r0, int64_t r1) {
    std::vector<uint8_t> codes(cols);
    uint16_t unused_bias;
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t g = 0; g < groups; ++g)
        convert_block(t.dtype, src + (r * groups + g) * bl.block_bytes, &codes[g * 32], m.scales[r * groups + g],
                      m.zero_point ? unused_bias : m.biases[r * groups + g]);
      pack_row(codes.data(), cols, fmt.bits, &m.packed[r * affine_words_per_row(fmt, cols)]);
    }
    if (release_source)
      drop_mapped_pages(src + r0 * groups * bl.block_bytes, static_cast<size_t>((r1 - r0) * groups * bl.block_bytes));
  });
  // The pages that straddled two tasks' ranges (a fifth of them for 64 rows of
  // 680 bytes) are whole pages of the tensor.
  if (release_source) drop_mapped_pages(src, t.nbytes);
  return m;
}

}  // namespace optiq
