#include "model/gguf_matrix.h"

#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "quant/ggml_quantize.h"

namespace optiq {

namespace {

// The scale word as fp16 (GGUF blocks always hold fp16 d and m).
uint16_t as_f16(uint16_t w, bool bf16) { return bf16 ? f32_to_f16(bf16_to_f32(w)) : w; }

// Does every scale and bias word keep its value in fp16? (bf16 words may not:
// fp16 has fewer exponent bits.)
bool fp16_exact(const AffineMatrixView& v) {
  if (!v.bf16_scales) return true;
  const size_t n = static_cast<size_t>(v.rows * v.groups_per_row());
  auto exact = [](uint16_t w) {
    const float f = bf16_to_f32(w);
    return std::isfinite(f) && f16_to_f32(f32_to_f16(f)) == f;
  };
  for (size_t i = 0; i < n; ++i)
    if (!exact(v.scales[i]) || (v.biases && !exact(v.biases[i]))) return false;
  return true;
}

// The block type that holds affine groups of 32 at these bits losslessly, if
// any: symmetric groups are GGUF's own Q4_0/Q5_0/Q8_0 (zero points 8/16/128),
// groups with biases are Q4_1/Q5_1 (w = d*q + m). Q8_0 has no bias.
std::optional<DType> exact_block_type(const AffineMatrixView& v) {
  if (v.symmetric()) {
    if (v.fmt.bits == 4 && v.zero_point == 8) return DType::Q4_0;
    if (v.fmt.bits == 5 && v.zero_point == 16) return DType::Q5_0;
    if (v.fmt.bits == 8 && v.zero_point == 128) return DType::Q8_0;
    return std::nullopt;
  }
  if (v.fmt.bits == 4) return DType::Q4_1;
  if (v.fmt.bits == 5) return DType::Q5_1;
  return std::nullopt;
}

// Affine codes + scale (+ bias) of one group of 32 -> one GGUF block.
void encode_block(DType t, const uint8_t* c, uint16_t d, uint16_t m, uint8_t* b) {
  std::memcpy(b, &d, 2);
  switch (t) {
    case DType::Q4_0:  // {d, qs[16]}: low nibbles weights 0..15, high 16..31
      for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<uint8_t>(c[j] | (c[j + 16] << 4));
      break;
    case DType::Q4_1:  // {d, m, qs[16]}
      std::memcpy(b + 2, &m, 2);
      for (int j = 0; j < 16; ++j) b[4 + j] = static_cast<uint8_t>(c[j] | (c[j + 16] << 4));
      break;
    case DType::Q5_0:    // {d, qh[4], qs[16]}: bit 4 of weight j is bit j of qh
    case DType::Q5_1: {  // {d, m, qh[4], qs[16]}
      const int off = t == DType::Q5_0 ? 2 : 4;
      if (t == DType::Q5_1) std::memcpy(b + 2, &m, 2);
      uint32_t qh = 0;
      for (int j = 0; j < 32; ++j) qh |= static_cast<uint32_t>((c[j] >> 4) & 1u) << j;
      std::memcpy(b + off, &qh, 4);
      for (int j = 0; j < 16; ++j) b[off + 4 + j] = static_cast<uint8_t>((c[j] & 0xF) | ((c[j + 16] & 0xF) << 4));
      break;
    }
    case DType::Q8_0:  // {d, int8 qs[32]}: q = code - 128
      for (int j = 0; j < 32; ++j) b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(c[j] - 128));
      break;
    default: fail("GGUF export: {} is not a 32-weight block type", dtype_name(t));
  }
}

}  // namespace

GgufMatrix gguf_matrix_type(const Linear& lin, const std::string& tensor, bool bf16) {
  GgufMatrix m;
  const WeightView& w = lin.view();
  if (const auto* kq = w.as<KQuantView>()) {
    m.type = kq->dtype;
  } else if (const auto* a = w.as<AffineMatrixView>()) {
    const AffineFormat f = a->fmt;
    if (f.group_size != 32 || (f.bits != 4 && f.bits != 5 && f.bits != 8))
      fail("{}: {} has no GGUF block type (GGUF's 32-weight blocks hold groups of 32 at 4, 5 or 8 bits): plan it "
           "with GGUF formats (--target gguf, or --candidates q4_k,q5_k,q6_k,q8_0,...) or q4g32/q5g32/q8g32, or "
           "export with --format mlx",
           tensor, affine_format_name(f));
    const std::optional<DType> exact = exact_block_type(*a);
    if (exact && fp16_exact(*a)) {
      m.type = *exact;
    } else {  // the nearest block type, from the dequantized values
      m.type = f.bits == 4 ? DType::Q4_1 : f.bits == 5 ? DType::Q5_1 : DType::Q8_0;
      m.requantized = true;
    }
  } else if (const auto* h = w.as<HalfWeights>()) {
    m.type = h->bf16 ? DType::BF16 : DType::F16;
  } else {
    m.type = bf16 ? DType::BF16 : DType::F16;
  }
  m.row_bytes = dtype_bytes(m.type, lin.cols());
  return m;
}

void write_gguf_row(const Linear& lin, const GgufMatrix& m, int64_t r, uint8_t* dst) {
  const WeightView& w = lin.view();
  const int64_t cols = lin.cols();
  if (const auto* kq = w.as<KQuantView>()) {
    std::memcpy(dst, kq->row(r), m.row_bytes);
    return;
  }
  if (const auto* h = w.as<HalfWeights>()) {
    std::memcpy(dst, h->data + r * cols, m.row_bytes);
    return;
  }
  const auto* a = w.as<AffineMatrixView>();
  if (a && !m.requantized) {
    std::vector<uint8_t> codes(static_cast<size_t>(cols));
    unpack_row(a->packed + r * a->words_per_row(), cols, a->fmt.bits, codes.data());
    const size_t block = dtype_bytes(m.type, 32);
    for (int64_t g = 0; g < a->groups_per_row(); ++g) {
      const int64_t i = r * a->groups_per_row() + g;
      const uint16_t d = as_f16(a->scales[i], a->bf16_scales);
      const uint16_t bias = a->biases ? as_f16(a->biases[i], a->bf16_scales) : 0;
      encode_block(m.type, &codes[g * 32], d, bias, dst + g * block);
    }
    return;
  }
  std::vector<float> row(static_cast<size_t>(cols));
  lin.row(r, row.data());
  if (m.type == DType::F16 || m.type == DType::BF16) {
    for (int64_t j = 0; j < cols; ++j) {
      const uint16_t v = m.type == DType::BF16 ? f32_to_bf16(row[j]) : f32_to_f16(row[j]);
      std::memcpy(dst + 2 * j, &v, 2);
    }
    return;
  }
  ggml_quantize_row(m.type, row.data(), cols, nullptr, /*thorough=*/true, dst);
}

}  // namespace optiq
