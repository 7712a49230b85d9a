// ggml block dequantizers on hand-built blocks with known values. The full
// cross-check of every type against gguf-py is tests/reference/test_gguf_dequant.py.
#include <gtest/gtest.h>

#include <cstring>

#include "core/error.h"
#include "core/half.h"
#include "quant/ggml_dequant.h"
#include "test_util.h"

namespace optiq {
namespace {

void put_f16(uint8_t* p, float v) {
  uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

TEST(GgmlDequant, Q8_0) {
  uint8_t b[2 * 34];
  for (int blk = 0; blk < 2; ++blk) {
    uint8_t* p = b + blk * 34;
    put_f16(p, blk ? -0.5f : 0.25f);
    for (int j = 0; j < 32; ++j) p[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j * 8 - 128 + blk));
  }
  float y[64];
  dequantize_row(DType::Q8_0, b, y, 64);
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(y[j], (j * 8 - 128) * 0.25f) << j;
    EXPECT_EQ(y[32 + j], (j * 8 - 127) * -0.5f) << j;
  }
}

TEST(GgmlDequant, Q4_0) {
  uint8_t b[18];
  put_f16(b, 1.5f);
  // element j (j < 16) in the low nibble of byte j, element j + 16 in its high nibble
  for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float y[32];
  dequantize_row(DType::Q4_0, b, y, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], (j - 8) * 1.5f) << j;
    EXPECT_EQ(y[16 + j], (15 - j - 8) * 1.5f) << j;
  }
}

TEST(GgmlDequant, Q4_1) {
  uint8_t b[20];
  put_f16(b, 0.125f);
  put_f16(b + 2, -1.0f);
  for (int j = 0; j < 16; ++j) b[4 + j] = static_cast<uint8_t>(((j * 7) % 16) | (j << 4));
  float y[32];
  dequantize_row(DType::Q4_1, b, y, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], ((j * 7) % 16) * 0.125f - 1.0f) << j;
    EXPECT_EQ(y[16 + j], j * 0.125f - 1.0f) << j;
  }
}

TEST(GgmlDequant, Q5_0AndQ5_1) {
  // fifth bit of element j is bit j of the little-endian qh word
  uint8_t b0[22], b1[24];
  put_f16(b0, 2.0f);
  put_f16(b1, 0.5f);
  put_f16(b1 + 2, 3.0f);
  const uint32_t qh = 0xA5C3F00Fu;
  std::memcpy(b0 + 2, &qh, 4);
  std::memcpy(b1 + 4, &qh, 4);
  for (int j = 0; j < 16; ++j) b0[6 + j] = b1[8 + j] = static_cast<uint8_t>((j % 16) | (((j * 3) % 16) << 4));
  float y0[32], y1[32];
  dequantize_row(DType::Q5_0, b0, y0, 32);
  dequantize_row(DType::Q5_1, b1, y1, 32);
  for (int j = 0; j < 32; ++j) {
    int lo = j < 16 ? j : (((j - 16) * 3) % 16);
    int q = lo | (((qh >> j) & 1) << 4);
    EXPECT_EQ(y0[j], (q - 16) * 2.0f) << j;
    EXPECT_EQ(y1[j], q * 0.5f + 3.0f) << j;
  }
}

TEST(GgmlDequant, Q6_KConstantBlock) {
  // all 6-bit values 40 (ql nibble 8, qh bits 2), scales 3, d 0.5 -> (40-32)*3*0.5 = 12
  uint8_t b[210];
  std::memset(b, 0x88, 128);
  std::memset(b + 128, 0xAA, 64);
  std::memset(b + 192, 3, 16);
  put_f16(b + 208, 0.5f);
  float y[256];
  dequantize_row(DType::Q6_K, b, y, 256);
  for (int j = 0; j < 256; ++j) EXPECT_EQ(y[j], 12.0f) << j;
}

TEST(GgmlDequant, Q4_KConstantBlock) {
  // scales 6-bit: first four sub-blocks sc=2 m=1, last four packed via byte 8..11: sc=2 m=1
  uint8_t b[144];
  put_f16(b, 0.25f);
  put_f16(b + 2, 0.5f);
  uint8_t* s = b + 4;
  for (int j = 0; j < 4; ++j) {
    s[j] = 2;      // sc j
    s[j + 4] = 1;  // m j
    s[j + 8] = static_cast<uint8_t>(2 | (1 << 4));  // sc j+4 (low) and m j+4 (high)
  }
  std::memset(b + 16, 0x53, 128);  // low nibble 3, high nibble 5
  float y[256];
  dequantize_row(DType::Q4_K, b, y, 256);
  for (int j = 0; j < 256; ++j) {
    int q = (j % 64) < 32 ? 3 : 5;
    EXPECT_EQ(y[j], 0.25f * 2 * q - 0.5f * 1) << j;
  }
}

TEST(GgmlDequant, PlainTypes) {
  std::vector<float> x = test::random_floats(13, 7);
  std::vector<uint16_t> h(13), bf(13);
  for (int i = 0; i < 13; ++i) {
    h[i] = f32_to_f16(x[i]);
    bf[i] = f32_to_bf16(x[i]);
  }
  float y[13];
  dequantize_row(DType::F32, x.data(), y, 13);
  for (int i = 0; i < 13; ++i) EXPECT_EQ(y[i], x[i]);
  dequantize_row(DType::F16, h.data(), y, 13);
  for (int i = 0; i < 13; ++i) EXPECT_EQ(y[i], f16_to_f32(h[i]));
  dequantize_row(DType::BF16, bf.data(), y, 13);
  for (int i = 0; i < 13; ++i) EXPECT_EQ(y[i], bf16_to_f32(bf[i]));
}

TEST(GgmlDequant, TensorParallelMatchesRows) {
  // 300 x 512 Q4_K: big enough for the OpenMP path; compare with row-by-row.
  const int rows = 300, cols = 512;
  std::vector<uint8_t> bytes(dtype_bytes(DType::Q4_K, int64_t{rows} * cols));
  uint32_t st = 12345;
  for (auto& c : bytes) c = static_cast<uint8_t>((st = st * 1664525u + 1013904223u) >> 24);
  for (size_t blk = 0; blk < bytes.size() / 144; ++blk) {  // keep scales finite
    put_f16(bytes.data() + blk * 144, 0.01f);
    put_f16(bytes.data() + blk * 144 + 2, 0.02f);
  }
  TensorView t{"w", DType::Q4_K, {rows, cols}, bytes.data(), bytes.size()};
  std::vector<float> all = dequantize(t);
  ASSERT_EQ(all.size(), static_cast<size_t>(rows * cols));
  std::vector<float> row(cols);
  for (int r = 0; r < rows; r += 37) {
    dequantize_row(DType::Q4_K, bytes.data() + r * dtype_bytes(DType::Q4_K, cols), row.data(), cols);
    EXPECT_EQ(std::memcmp(row.data(), all.data() + r * cols, cols * 4), 0) << r;
  }
}

TEST(GgmlDequant, Errors) {
  uint8_t b[64] = {};
  float y[64];
  EXPECT_THROW(dequantize_row(DType::Q8_0, b, y, 31), Error);
  EXPECT_THROW(dequantize_row(DType::U32, b, y, 4), Error);
  TensorView t{"w", DType::Q8_0, {2, 32}, b, 34};  // too few bytes
  EXPECT_THROW(dequantize(t), Error);
  TensorView odd{"w", DType::Q8_0, {1, 48}, b, 64};  // row not whole blocks
  EXPECT_THROW(dequantize(odd), Error);
  EXPECT_TRUE(is_ggml_block_type(DType::Q6_K));
  EXPECT_TRUE(is_ggml_block_type(DType::Q4_0));
  EXPECT_FALSE(is_ggml_block_type(DType::F16));
  EXPECT_FALSE(is_ggml_block_type(DType::U32));
  EXPECT_TRUE(can_dequantize(DType::BF16));
}

}  // namespace
}  // namespace optiq
