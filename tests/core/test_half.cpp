#include <gtest/gtest.h>

#include <cmath>

#include "core/half.h"
#include "test_util.h"

namespace optiq {

TEST(Half, RoundTripF16) {
  for (float x : test::random_floats(1000, 1)) {
    float y = f16_to_f32(f32_to_f16(x));
    EXPECT_NEAR(x, y, std::abs(x) * 1e-3f + 1e-7f);
  }
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
}

TEST(Half, RoundTripBF16) {
  for (float x : test::random_floats(1000, 2)) {
    float y = bf16_to_f32(f32_to_bf16(x));
    EXPECT_NEAR(x, y, std::abs(x) * 8e-3f);
  }
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
}

}  // namespace optiq
