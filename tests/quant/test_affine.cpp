#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "quant/affine.h"
#include "quant/quantizer.h"
#include "test_util.h"

namespace optiq {

namespace {
const int kBits[] = {2, 3, 4, 5, 6, 8};
const int kGroups[] = {32, 64, 128};
}  // namespace

TEST(Affine, PackUnpackRoundTrip) {
  std::mt19937 rng(7);
  for (int bits : kBits) {
    for (int64_t n : {32, 96, 320}) {
      std::vector<uint8_t> codes(n), back(n);
      for (auto& c : codes) c = static_cast<uint8_t>(rng() & ((1u << bits) - 1));
      std::vector<uint32_t> words(n * bits / 32);
      pack_row(codes.data(), n, bits, words.data());
      unpack_row(words.data(), n, bits, back.data());
      EXPECT_EQ(codes, back) << bits << " bits, n=" << n;
    }
  }
}

// The layout MLX documents through its pack/extract code: 3 bits = 8 codes in
// 3 bytes (code 2 straddles bytes 0 and 1), 6 bits = 4 codes in 3 bytes.
TEST(Affine, PackLayoutMatchesMlx) {
  uint8_t c3[32];
  for (int i = 0; i < 32; ++i) c3[i] = static_cast<uint8_t>(i & 7);
  uint32_t w3[3];
  pack_row(c3, 32, 3, w3);
  const uint8_t* b = reinterpret_cast<const uint8_t*>(w3);
  // byte0 = c0 | c1<<3 | (c2&3)<<6 ; byte1 = c2>>2 | c3<<1 | c4<<4 | (c5&1)<<7
  EXPECT_EQ(b[0], static_cast<uint8_t>(0 | 1 << 3 | (2 & 3) << 6));
  EXPECT_EQ(b[1], static_cast<uint8_t>((2 >> 2) | 3 << 1 | 4 << 4 | (5 & 1) << 7));
  uint8_t c4[32];
  for (int i = 0; i < 32; ++i) c4[i] = static_cast<uint8_t>(15 - (i & 15));
  uint32_t w4[4];
  pack_row(c4, 32, 4, w4);
  EXPECT_EQ(w4[0], 0x89abcdefu);
  uint8_t c6[32];
  for (int i = 0; i < 32; ++i) c6[i] = static_cast<uint8_t>(i * 2 + 1);
  uint32_t w6[6];
  pack_row(c6, 32, 6, w6);
  const uint8_t* b6 = reinterpret_cast<const uint8_t*>(w6);
  EXPECT_EQ(b6[0], static_cast<uint8_t>(1 | (3 & 3) << 6));
  EXPECT_EQ(b6[1], static_cast<uint8_t>((3 >> 2) | (5 & 15) << 4));
  EXPECT_EQ(b6[2], static_cast<uint8_t>((5 >> 4) | 7 << 2));
}

TEST(Affine, DequantizeMatchesCodes) {
  for (int bits : kBits)
    for (int gs : kGroups)
      for (bool bf16 : {false, true}) {
        const int64_t rows = 3, cols = 2 * gs;
        auto w = test::random_floats(rows * cols, bits * 100 + gs);
        QuantizeOptions o;
        o.method = QuantMethod::MinMax;
        o.bf16_scales = bf16;
        AffineMatrix m = quantize(w.data(), rows, cols, {bits, gs}, o);
        EXPECT_EQ(m.packed.size(), static_cast<size_t>(rows * cols * bits / 32));
        EXPECT_EQ(m.scales.size(), static_cast<size_t>(rows * cols / gs));
        auto codes = unpack(m.view());
        auto deq = dequantize(m.view());
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) {
            const float s = m.view().scale(r, c / gs), b = m.view().bias(r, c / gs);
            ASSERT_EQ(deq[r * cols + c], s * codes[r * cols + c] + b);
            ASSERT_LT(codes[r * cols + c], 1 << bits);
          }
        AffineMatrix again = pack(codes.data(), rows, cols, {bits, gs}, m.scales, m.biases, bf16);
        EXPECT_EQ(again.packed, m.packed);
      }
}

TEST(Affine, BitsPerWeightAndBytes) {
  EXPECT_DOUBLE_EQ(bits_per_weight({4, 64}), 4.5);
  EXPECT_DOUBLE_EQ(bits_per_weight({3, 32}), 4.0);
  EXPECT_DOUBLE_EQ(bits_per_weight({8, 128}), 8.25);
  auto w = test::random_floats(4 * 128, 3);
  AffineMatrix m = quantize(w.data(), 4, 128, {4, 64});
  EXPECT_EQ(m.bytes(), 4u * (128 * 4 / 8 + 2 * 2 * 2));
}

TEST(Affine, RejectsBadFormats) {
  auto w = test::random_floats(100, 1);
  EXPECT_THROW(quantize(w.data(), 1, 100, {4, 64}), Error);
  EXPECT_THROW(quantize(w.data(), 1, 64, {7, 64}), Error);
  EXPECT_THROW(quantize(w.data(), 1, 64, {4, 48}), Error);
  std::vector<uint8_t> codes(64, 1);
  EXPECT_THROW(pack(codes.data(), 1, 64, {4, 32}, {1}, {1, 2}, false), Error);
}

}  // namespace optiq
