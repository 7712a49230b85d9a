// The CUDA backend's plane layout of affine codes (backend/cuda/code_planes.h)
// checked on the CPU: the functions are plain C++, shared with the kernels.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "backend/cuda/code_planes.h"
#include "quant/affine.h"

namespace optiq {
namespace {

template <int kBits>
void check_width(std::mt19937& rng) {
  constexpr int kChunks = 7;  // an odd count: chunks stay in place
  std::uniform_int_distribution<int> code(0, (1 << kBits) - 1);
  std::vector<uint8_t> codes(32 * kChunks);
  for (auto& c : codes) c = static_cast<uint8_t>(code(rng));
  std::vector<uint32_t> stream(kChunks * kBits), planes(kChunks * kBits);
  pack_row(codes.data(), static_cast<int64_t>(codes.size()), kBits, stream.data());  // MLX's bit stream
  for (int c = 0; c < kChunks; ++c) {
    for (int j = 0; j < 32; ++j) ASSERT_EQ(cuda::stream_code<kBits>(&stream[c * kBits], j), codes[32 * c + j]);
    ASSERT_EQ(cuda::stream_to_planes(kBits, &stream[c * kBits], &planes[c * kBits]), kBits != 8);
    if (kBits == 8) planes = stream;
    for (int g = 0; g < 8; ++g) {
      const uint32_t four = cuda::group_codes<kBits>(&planes[c * kBits], g);
      for (int t = 0; t < 4; ++t)
        ASSERT_EQ((four >> (8 * t)) & 0xFFu, codes[32 * c + 4 * g + t]) << kBits << "-bit chunk " << c << " code " << 4 * g + t;
    }
  }
}

TEST(CodePlanes, GroupsHoldTheStreamsCodesInActivationOrder) {
  std::mt19937 rng(11);
  check_width<2>(rng);
  check_width<3>(rng);
  check_width<4>(rng);
  check_width<5>(rng);
  check_width<6>(rng);
  check_width<8>(rng);
}

TEST(CodePlanes, FourBitPlanesKeepLowAndHighHalvesOfEachGroupPair) {
  // Codes 0..31 in order: word 0's low nibbles are codes 0..3, high nibbles 4..7.
  std::vector<uint8_t> codes(32);
  for (int j = 0; j < 32; ++j) codes[j] = static_cast<uint8_t>(j & 15);
  uint32_t stream[4], planes[4];
  pack_row(codes.data(), 32, 4, stream);
  ASSERT_TRUE(cuda::stream_to_planes(4, stream, planes));
  EXPECT_EQ(planes[0], 0x73625140u);
  EXPECT_EQ(planes[1], 0xFBEAD9C8u);
}

}  // namespace
}  // namespace optiq
