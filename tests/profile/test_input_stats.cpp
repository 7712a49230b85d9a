// The profiler's input statistics give the same proxy, channel energies and
// Gram sums whichever form they hold (rows when there are fewer tokens than
// channels, else Gram sums), against double arithmetic on random inputs.
#include <gtest/gtest.h>

#include "backend/backend.h"
#include "core/error.h"
#include "profile/input_stats.h"
#include "test_util.h"

namespace optiq::profile_detail {
namespace {

void check_forms(int64_t tokens, int64_t cols, bool want_rows) {
  SCOPED_TRACE(testing::Message() << tokens << " tokens x " << cols << " channels");
  Backend& be = cpu_backend();
  const int64_t rows = 19;
  const auto x = test::random_floats(static_cast<size_t>(tokens * cols), 7);
  const auto d = test::random_floats(static_cast<size_t>(rows * cols), 8);
  InputStats s(be, cols, tokens);
  EXPECT_EQ(s.holds_rows(), want_rows);
  EXPECT_EQ(InputStats::bytes(cols, tokens), (want_rows ? tokens : cols) * cols * 4);
  // Added in uneven batches, as windows of different lengths are.
  const int64_t first = tokens / 3;
  s.add(x.data(), first);
  s.add(x.data() + first * cols, tokens - first);
  EXPECT_THROW(s.add(x.data(), 1), Error);

  double want_q = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < tokens; ++t) {
      double dot = 0;
      for (int64_t k = 0; k < cols; ++k) dot += double(d[r * cols + k]) * x[t * cols + k];
      want_q += dot * dot;
    }
  EXPECT_NEAR(s.quadratic(d.data(), rows), want_q, 1e-5 * want_q);

  const auto sums = s.channel_sums();
  const auto gram = s.gram_on_host();
  ASSERT_EQ(sums.size(), static_cast<size_t>(cols));
  ASSERT_EQ(gram.size(), static_cast<size_t>(cols * cols));
  for (int64_t a = 0; a < cols; ++a)
    for (int64_t b = 0; b < cols; ++b) {
      double g = 0;
      for (int64_t t = 0; t < tokens; ++t) g += double(x[t * cols + a]) * x[t * cols + b];
      EXPECT_NEAR(gram[a * cols + b], g, 1e-4 * (1 + std::abs(g))) << a << "," << b;
      if (a == b) {
        EXPECT_NEAR(sums[a], g, 1e-4 * g) << a;
      }
    }
}

TEST(InputStats, RowsFormWithFewerTokensThanChannels) { check_forms(23, 57, true); }
TEST(InputStats, GramFormOtherwise) {
  check_forms(57, 57, false);
  check_forms(70, 31, false);
}
TEST(InputStats, NoTokens) {
  InputStats s(cpu_backend(), 5, 0);
  const auto d = test::random_floats(10, 3);
  EXPECT_EQ(s.quadratic(d.data(), 2), 0.0);
  EXPECT_EQ(s.channel_sums(), std::vector<double>(5, 0.0));
}

}  // namespace
}  // namespace optiq::profile_detail
