#include "scheduler/demand.h"

#include <gtest/gtest.h>

namespace isorun::scheduler {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

TEST(Demand, CountsImagesPerRegionWithinTheWindow) {
  DemandTracker d(absl::Seconds(60), 12);
  for (int i = 0; i < 5; ++i) d.Record(kT0, "eu", "a:1", i < 2);
  d.Record(kT0, "us", "a:1", false);
  d.Record(kT0 + absl::Seconds(30), "eu", "b:1", true);
  auto images = d.Images(kT0 + absl::Seconds(30));
  ASSERT_EQ(images.size(), 3u);
  EXPECT_EQ(images[0].region, "eu");
  EXPECT_EQ(images[0].image, "a:1");
  EXPECT_EQ(images[0].count.creates, 5);
  EXPECT_EQ(images[0].count.cold, 3);
  // Sixty seconds on, the first bucket has left the window.
  images = d.Images(kT0 + absl::Seconds(61));
  ASSERT_EQ(images.size(), 1u);
  EXPECT_EQ(images[0].image, "b:1");
  EXPECT_TRUE(d.Images(kT0 + absl::Seconds(200)).empty());
}

TEST(Demand, TrendSplitsRecentFromEarlier) {
  DemandTracker d(absl::Seconds(60), 12);
  for (int i = 0; i < 10; ++i) d.Record(kT0, "eu", "a:1", true);
  for (int i = 0; i < 10; ++i) d.Record(kT0 + absl::Seconds(50), "eu", "a:1", i >= 5);
  auto t = d.RegionTrend(kT0 + absl::Seconds(50), "eu");
  EXPECT_EQ(t.earlier.creates, 10);
  EXPECT_EQ(t.earlier.cold, 0);
  EXPECT_EQ(t.recent.creates, 10);
  EXPECT_EQ(t.recent.cold, 5);
  EXPECT_DOUBLE_EQ(t.recent.cold_rate(), 0.5);
  EXPECT_EQ(d.RegionTrend(kT0, "us").recent.creates, 0);
}

}  // namespace
}  // namespace isorun::scheduler
