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

// The ETA extrapolates the time per unit, or per unit of work where the
// units cost unequal time: a profile's first measurements (a large embedding)
// made a count-based ETA read hours for a profile of minutes.
TEST(Progress, EtaByCountOrByWork) {
  set_progress_enabled(false);  // nothing drawn: status_line is checked directly
  Progress by_count("p", 100, "measurements");
  by_count.update(10);
  EXPECT_EQ(by_count.status_line(20.0, false), "p: 10/100 measurements, 2.0 s/measurement, ETA 3m00s");
  Progress by_work("p", 100, "measurements");
  by_work.set_total_work(1000.0);
  by_work.update_work(10, 500.0);  // ten large ones: half the work
  EXPECT_EQ(by_work.status_line(20.0, false, "embed"), "p: 10/100 measurements, 2.0 s/measurement, ETA 20s, embed");
  EXPECT_EQ(by_work.status_line(20.0, true), "p: 10/100 measurements, 2.0 s/measurement, 20s");
  set_progress_enabled(true);
}

}  // namespace optiq
