// MLX-compatible affine group quantization: w ~ scale * q + bias for each group
// of `group_size` consecutive weights along a row of a {out, in} matrix, with
// q in [0, 2^bits - 1].
//
// Packing is bit-identical to MLX's `mx.quantize` (mode "affine"): each row is
// one little-endian bit stream, code j of the row occupying bits
// [j*bits, (j+1)*bits) of the row's uint32 words (bit 0 = LSB of word 0). For
// 2/4/8 bits this is "32/bits codes per word, first code in the low bits"; for
// 3/5/6 bits MLX writes 8 (3, 5 bits) or 4 (6 bits) codes into 3/5/3 bytes,
// which is the same stream, so codes may straddle word boundaries.
// Shapes as MLX stores them: packed uint32 {rows, cols*bits/32}, scales and
// biases {rows, cols/group_size} in the model's float type (fp16 or bf16).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace optiq {

struct AffineFormat {
  int bits = 4;
  int group_size = 64;
  bool operator==(const AffineFormat&) const = default;
};

// Throws optiq::Error unless bits in {2,3,4,5,6,8} and group_size in {32,64,128}.
void check_affine_format(AffineFormat fmt);
// Throws unless cols is a positive multiple of group_size (and fmt is valid).
void check_affine_shape(AffineFormat fmt, int64_t rows, int64_t cols);
std::string affine_format_name(AffineFormat fmt);  // e.g. "affine-q4-g64"

// Storage cost per weight: bits + (bits of scale + bias) / group_size, e.g.
// 4 + 32/64 = 4.5 for q4 g64 with fp16 scales (scale_bytes = 2).
double bits_per_weight(AffineFormat fmt, int scale_bytes = 2);

inline int64_t affine_words_per_row(AffineFormat fmt, int64_t cols) { return cols * fmt.bits / 32; }
inline int64_t affine_groups_per_row(AffineFormat fmt, int64_t cols) { return cols / fmt.group_size; }

// fp16 / bf16 scale words <-> float.
float scale_to_f32(uint16_t h, bool bf16);
uint16_t f32_to_scale(float f, bool bf16);

// Non-owning view, e.g. into a memory-mapped safetensors file. The kernels take
// this. Rows are contiguous: row r's words start at packed + r*words_per_row().
struct AffineMatrixView {
  int64_t rows = 0, cols = 0;
  AffineFormat fmt;
  bool bf16_scales = false;
  const uint32_t* packed = nullptr;
  const uint16_t* scales = nullptr;
  const uint16_t* biases = nullptr;  // null: symmetric, bias = -zero_point * scale
  // Symmetric groups (GGUF's Q4_0/Q5_0/Q8_0 blocks: w = d * (u - 2^(bits-1)))
  // store no biases: half a bit per weight less than keeping them, so a GGUF
  // runs in the bytes of its file. The bias is exact: a power of two times
  // the scale.
  int32_t zero_point = 0;

  int64_t words_per_row() const { return affine_words_per_row(fmt, cols); }
  int64_t groups_per_row() const { return affine_groups_per_row(fmt, cols); }
  bool symmetric() const { return biases == nullptr; }
  float scale(int64_t row, int64_t group) const { return scale_to_f32(scales[row * groups_per_row() + group], bf16_scales); }
  float bias(int64_t row, int64_t group) const {
    return biases ? scale_to_f32(biases[row * groups_per_row() + group], bf16_scales)
                  : static_cast<float>(-zero_point) * scale(row, group);
  }
};

struct AffineMatrix {
  int64_t rows = 0, cols = 0;
  AffineFormat fmt;
  bool bf16_scales = false;
  std::vector<uint32_t> packed;          // rows * cols*bits/32
  std::vector<uint16_t> scales, biases;  // rows * cols/group_size each (biases empty: symmetric)
  int32_t zero_point = 0;                // symmetric: bias = -zero_point * scale

  AffineMatrixView view() const {
    return {rows, cols, fmt, bf16_scales, packed.data(), scales.data(), biases.empty() ? nullptr : biases.data(),
            zero_point};
  }
  // Bytes of packed words + scales + biases.
  size_t bytes() const;
};

size_t bytes(const AffineMatrixView& v);

// Bit-stream packing of one row: n codes (n*bits a multiple of 32) <-> n*bits/32 words.
void pack_row(const uint8_t* codes, int64_t n, int bits, uint32_t* words);
void unpack_row(const uint32_t* words, int64_t n, int bits, uint8_t* codes);

// Whole matrix from codes {rows, cols} (each < 2^bits) and scale/bias words
// {rows, cols/group_size}. Checks every size.
AffineMatrix pack(const uint8_t* codes, int64_t rows, int64_t cols, AffineFormat fmt, std::vector<uint16_t> scales,
                  std::vector<uint16_t> biases, bool bf16_scales);
// All codes of the matrix, row-major {rows, cols}.
std::vector<uint8_t> unpack(const AffineMatrixView& v);

// out[cols] = scale * q + bias for row `row` (fp32, scale and bias widened first).
void dequantize_row(const AffineMatrixView& v, int64_t row, float* out);
std::vector<float> dequantize(const AffineMatrixView& v);

// Checks that a view's pointers are set and its shape/format are valid.
void check_view(const AffineMatrixView& v);

}  // namespace optiq
