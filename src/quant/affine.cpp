#include "quant/affine.h"

#include <cstring>

#include "core/parallel.h"
#include "core/error.h"
#include "core/half.h"

namespace optiq {

void check_affine_format(AffineFormat fmt) {
  const int b = fmt.bits;
  check(b == 2 || b == 3 || b == 4 || b == 5 || b == 6 || b == 8,
        "affine quantization: {} bits is not supported: use 2, 3, 4, 5, 6 or 8", b);
  const int g = fmt.group_size;
  check(g == 32 || g == 64 || g == 128, "affine quantization: group size {} is not supported: use 32, 64 or 128", g);
}

void check_affine_shape(AffineFormat fmt, int64_t rows, int64_t cols) {
  check_affine_format(fmt);
  check(rows > 0 && cols > 0 && cols % fmt.group_size == 0,
        "affine quantization: a {}x{} matrix cannot be split in groups of {}: the input dimension must be a multiple "
        "of the group size",
        rows, cols, fmt.group_size);
}

std::string affine_format_name(AffineFormat fmt) { return fmt::format("affine-q{}-g{}", fmt.bits, fmt.group_size); }

double bits_per_weight(AffineFormat fmt, int scale_bytes) {
  return fmt.bits + 2.0 * 8.0 * scale_bytes / fmt.group_size;
}

float scale_to_f32(uint16_t h, bool bf16) { return bf16 ? bf16_to_f32(h) : f16_to_f32(h); }
uint16_t f32_to_scale(float f, bool bf16) { return bf16 ? f32_to_bf16(f) : f32_to_f16(f); }

size_t bytes(const AffineMatrixView& v) {
  return static_cast<size_t>(v.rows) * (v.words_per_row() * 4 + v.groups_per_row() * (v.symmetric() ? 2 : 4));
}

size_t AffineMatrix::bytes() const { return optiq::bytes(view()); }

void pack_row(const uint8_t* codes, int64_t n, int bits, uint32_t* words) {
  const int64_t nw = n * bits / 32;
  const uint32_t mask = (1u << bits) - 1;
  if (32 % bits == 0) {  // 1, 2, 4, 8 bits: no code straddles two words
    const int per = 32 / bits;
    for (int64_t w = 0; w < nw; ++w) {
      uint32_t word = 0;
      for (int k = 0; k < per; ++k) word |= (static_cast<uint32_t>(codes[w * per + k]) & mask) << (k * bits);
      words[w] = word;
    }
    return;
  }
  std::memset(words, 0, sizeof(uint32_t) * nw);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t p = j * bits;
    const int64_t w = p >> 5;
    const int off = static_cast<int>(p & 31);
    const uint64_t v = static_cast<uint64_t>(codes[j] & mask) << off;
    words[w] |= static_cast<uint32_t>(v);
    if (off + bits > 32) words[w + 1] |= static_cast<uint32_t>(v >> 32);
  }
}

void unpack_row(const uint32_t* words, int64_t n, int bits, uint8_t* codes) {
  const uint32_t mask = (1u << bits) - 1;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t p = j * bits;
    const int64_t w = p >> 5;
    const int off = static_cast<int>(p & 31);
    uint64_t v = words[w];
    if (off + bits > 32) v |= static_cast<uint64_t>(words[w + 1]) << 32;
    codes[j] = static_cast<uint8_t>((v >> off) & mask);
  }
}

void check_view(const AffineMatrixView& v) {
  check_affine_shape(v.fmt, v.rows, v.cols);
  check(v.packed && v.scales && (v.biases || v.zero_point > 0),
        "affine matrix {}x{}: missing packed words, scales or biases", v.rows, v.cols);
}

AffineMatrix pack(const uint8_t* codes, int64_t rows, int64_t cols, AffineFormat fmt, std::vector<uint16_t> scales,
                  std::vector<uint16_t> biases, bool bf16_scales) {
  check_affine_shape(fmt, rows, cols);
  const int64_t ng = rows * affine_groups_per_row(fmt, cols);
  check(static_cast<int64_t>(scales.size()) == ng && static_cast<int64_t>(biases.size()) == ng,
        "affine pack: {} scales and {} biases for a {}x{} matrix in groups of {}: expected {} each", scales.size(),
        biases.size(), rows, cols, fmt.group_size, ng);
  AffineMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.fmt = fmt;
  m.bf16_scales = bf16_scales;
  const int64_t wpr = affine_words_per_row(fmt, cols);
  m.packed.resize(rows * wpr);
  parallel_for_range(rows, std::max<int64_t>(1, (int64_t{1} << 16) / cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) pack_row(codes + r * cols, cols, fmt.bits, m.packed.data() + r * wpr);
  });
  m.scales = std::move(scales);
  m.biases = std::move(biases);
  return m;
}

std::vector<uint8_t> unpack(const AffineMatrixView& v) {
  check_view(v);
  std::vector<uint8_t> codes(v.rows * v.cols);
  const int64_t wpr = v.words_per_row();
  for (int64_t r = 0; r < v.rows; ++r) unpack_row(v.packed + r * wpr, v.cols, v.fmt.bits, codes.data() + r * v.cols);
  return codes;
}

void dequantize_row(const AffineMatrixView& v, int64_t row, float* out) {
  const int64_t gs = v.fmt.group_size, ng = v.groups_per_row();
  uint8_t codes[128];
  const int64_t wpg = gs * v.fmt.bits / 32;  // words per group
  const uint32_t* words = v.packed + row * v.words_per_row();
  for (int64_t g = 0; g < ng; ++g) {
    unpack_row(words + g * wpg, gs, v.fmt.bits, codes);
    const float s = v.scale(row, g), b = v.bias(row, g);
    float* o = out + g * gs;
    for (int64_t j = 0; j < gs; ++j) o[j] = s * static_cast<float>(codes[j]) + b;
  }
}

std::vector<float> dequantize(const AffineMatrixView& v) {
  check_view(v);
  std::vector<float> out(v.rows * v.cols);
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(v.cols, 1));
  parallel_for(v.rows, [&](int64_t r) { dequantize_row(v, r, out.data() + r * v.cols); }, grain);
  return out;
}

}  // namespace optiq
