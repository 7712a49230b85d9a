#include <gtest/gtest.h>

#include "core/progress.h"

namespace optiq {

TEST(Progress, RateReadsPerSecondOrSecondsPerUnit) {
  EXPECT_EQ(format_rate(2.5, "measurements"), "2.5 measurements/s");
  EXPECT_EQ(format_rate(0.8, "measurements"), "1.2 s/measurement");
  EXPECT_EQ(format_rate(0.5, "M weights"), "2.0 s/M weight");
  EXPECT_EQ(format_rate(0.25, "MB"), "4.0 s/MB");  // an abbreviation keeps its letters
  EXPECT_EQ(format_rate(0.5, "it"), "2.0 s/it");
}

TEST(Progress, DurationsInTheirLargestUnits) {
  EXPECT_EQ(format_duration(-3), "0s");
  EXPECT_EQ(format_duration(42.4), "42s");
  EXPECT_EQ(format_duration(61), "1m01s");
  EXPECT_EQ(format_duration(3 * 3600 + 4 * 60 + 5), "3h04m");
}

}  // namespace optiq
