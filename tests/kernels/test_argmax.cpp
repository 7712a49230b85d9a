// argmax (kernels/elementwise.h), greedy decoding's pick, against a plain
// walk: random values at odd lengths (the vector loops' tails), ties (the
// first wins, as std::max_element), NaNs (skipped) and the edge cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/elementwise.h"
#include "test_util.h"

namespace optiq {
namespace {

// The first index of the largest non-NaN value; -1 when there is none.
int64_t reference(const std::vector<float>& x) {
  int64_t best = -1;
  for (size_t i = 0; i < x.size(); ++i)
    if (!std::isnan(x[i]) && (best < 0 || x[i] > x[static_cast<size_t>(best)])) best = static_cast<int64_t>(i);
  return best;
}

}  // namespace

TEST(Argmax, RandomValuesAtOddLengths) {
  for (int64_t n : {1, 2, 3, 4, 5, 15, 16, 17, 31, 33, 63, 64, 65, 1000, 49152, 128256}) {
    const auto x = test::random_floats(static_cast<size_t>(n), 7 + static_cast<uint32_t>(n));
    ASSERT_EQ(argmax(x.data(), n), std::max_element(x.begin(), x.end()) - x.begin()) << "n=" << n;
  }
}

TEST(Argmax, TiesGoToTheFirst) {
  std::mt19937 rng(11);
  for (int t = 0; t < 2000; ++t) {
    std::vector<float> x(1 + rng() % 150);
    for (float& v : x) v = static_cast<float>(static_cast<int>(rng() % 9) - 6);  // few values: many ties
    ASSERT_EQ(argmax(x.data(), static_cast<int64_t>(x.size())), std::max_element(x.begin(), x.end()) - x.begin())
        << "trial " << t;
  }
  const std::vector<float> zeros = {-0.0f, 0.0f, -0.0f};  // equal values: the first
  EXPECT_EQ(argmax(zeros.data(), 3), 0);
}

TEST(Argmax, NansAreSkipped) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::mt19937 rng(5);
  for (int t = 0; t < 500; ++t) {
    auto x = test::random_floats(1 + rng() % 100, 100 + static_cast<uint32_t>(t));
    for (int k = 0; k < 3; ++k) x[rng() % x.size()] = nan;
    if (t % 5 == 0) x[0] = nan;  // a NaN where the running maxima start
    ASSERT_EQ(argmax(x.data(), static_cast<int64_t>(x.size())), reference(x)) << "trial " << t;
  }
}

TEST(Argmax, EdgeCases) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(argmax(nullptr, 0), -1);
  const std::vector<float> all_nan(20, nan), all_low(20, -inf);
  EXPECT_EQ(argmax(all_nan.data(), 20), -1);
  EXPECT_EQ(argmax(all_low.data(), 20), 0);
  std::vector<float> x = test::random_floats(40, 3);
  x[37] = inf;
  EXPECT_EQ(argmax(x.data(), 40), 37);
  x[37] = std::numeric_limits<float>::max(), x[21] = std::numeric_limits<float>::max();
  EXPECT_EQ(argmax(x.data(), 40), 21);
}

}  // namespace optiq
