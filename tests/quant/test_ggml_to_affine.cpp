// ggml's 32-blocks re-laid as MLX affine groups dequantize to exactly the
// values ggml gives, for every mappable type, on random blocks.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "core/error.h"
#include "core/half.h"
#include "quant/ggml_dequant.h"
#include "quant/ggml_to_affine.h"

namespace optiq {
namespace {

std::vector<uint8_t> random_blocks(DType t, int64_t n_blocks, uint32_t seed) {
  const BlockLayout bl = block_layout(t);
  std::mt19937 rng(seed);
  std::vector<uint8_t> b(n_blocks * bl.block_bytes);
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  std::normal_distribution<float> d(0.0f, 0.02f);
  for (int64_t i = 0; i < n_blocks; ++i) {  // sane fp16 scales (and mins) in front of each block
    uint8_t* p = &b[i * bl.block_bytes];
    const uint16_t s = f32_to_f16(d(rng) + 0.03f), m = f32_to_f16(d(rng));
    std::memcpy(p, &s, 2);
    if (t == DType::Q4_1 || t == DType::Q5_1) std::memcpy(p + 2, &m, 2);
  }
  return b;
}

TEST(GgmlToAffine, BitExactForEveryType) {
  for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0}) {
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{3, 96}, {17, 32}, {5, 576}}) {
      auto bytes = random_blocks(t, rows * cols / 32, static_cast<uint32_t>(rows * 7 + cols));
      TensorView v{"w", t, {rows, cols}, bytes.data(), bytes.size()};
      std::vector<float> ref = dequantize(v);
      AffineMatrix a = ggml_to_affine(v);
      EXPECT_EQ(a.fmt.group_size, 32);
      // The symmetric types keep no biases: the matrix takes the file's bytes.
      const bool sym = t == DType::Q4_0 || t == DType::Q5_0 || t == DType::Q8_0;
      EXPECT_EQ(a.view().symmetric(), sym) << dtype_name(t);
      EXPECT_EQ(a.zero_point, t == DType::Q4_0 ? 8 : t == DType::Q5_0 ? 16 : t == DType::Q8_0 ? 128 : 0);
      if (sym) {
        EXPECT_EQ(a.bytes(), bytes.size()) << dtype_name(t);
      }
      std::vector<float> got = dequantize(a.view());
      ASSERT_EQ(got.size(), ref.size());
      for (size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(got[i], ref[i]) << dtype_name(t) << " element " << i;
    }
  }
}

TEST(GgmlToAffine, RejectsOtherTypes) {
  std::vector<uint8_t> bytes(144);
  TensorView v{"w", DType::Q4_K, {1, 256}, bytes.data(), bytes.size()};
  EXPECT_FALSE(ggml_maps_to_affine(DType::Q4_K));
  EXPECT_THROW(ggml_to_affine(v), Error);
}

}  // namespace
}  // namespace optiq
