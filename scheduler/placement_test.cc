#include "scheduler/placement.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

#include "absl/random/random.h"

namespace isorun::scheduler {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

RunnerView Runner(const std::string& name, int64_t used_slots = 0) {
  RunnerView r;
  r.id = name;
  r.name = name;
  r.region = "local";
  r.capacity = {8000, 16384, 10};
  r.allocated = {used_slots * 1000, used_slots * 512, used_slots};
  r.last_heartbeat = kNow - absl::Seconds(1);
  return r;
}

PlacementRequest Req(const std::string& image = "busybox:1.36") {
  return PlacementRequest{image, "local", 1000, 512};
}

TEST(Placement, WarmBeatsColdAtEqualLoad) {
  std::vector<RunnerView> runners = {Runner("a"), Runner("b"), Runner("c")};
  runners[1].images.insert("busybox:1.36");
  std::mt19937 rng(1);
  for (int i = 0; i < 20; ++i) {
    auto d = ChoosePlacement(runners, Req(), kNow, rng);
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->runner_index, 1u);
    EXPECT_TRUE(d->warm);
  }
}

TEST(Placement, FullWarmRunnerIsSkippedForAColdOneWithRoom) {
  std::vector<RunnerView> runners = {Runner("warm", 10), Runner("cold")};
  runners[0].images.insert("busybox:1.36");
  std::mt19937 rng(1);
  auto d = ChoosePlacement(runners, Req(), kNow, rng);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->runner_index, 1u);
  EXPECT_FALSE(d->warm);
}

TEST(Placement, LeastAllocatedWinsAmongCold) {
  std::vector<RunnerView> runners = {Runner("busy", 6), Runner("idle", 1), Runner("mid", 3)};
  std::mt19937 rng(1);
  auto d = ChoosePlacement(runners, Req(), kNow, rng);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->runner_index, 1u);
}

TEST(Placement, DrainingUnhealthyAndOtherRegionsGetNothing) {
  std::vector<RunnerView> runners = {Runner("drain"), Runner("stale"), Runner("far")};
  runners[0].draining = true;
  runners[1].last_heartbeat = kNow - absl::Minutes(5);
  runners[2].region = "eu";
  std::mt19937 rng(1);
  EXPECT_FALSE(ChoosePlacement(runners, Req(), kNow, rng).has_value());
  auto any_region = Req();
  any_region.region = "";
  auto d = ChoosePlacement(runners, any_region, kNow, rng);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->runner_index, 2u);
}

TEST(Placement, NoRoomMeansNoPlacement) {
  std::vector<RunnerView> runners = {Runner("a", 10)};
  std::mt19937 rng(1);
  EXPECT_FALSE(ChoosePlacement(runners, Req(), kNow, rng).has_value());
  PlacementRequest huge = Req();
  huge.memory_mb = 1 << 20;
  runners = {Runner("b")};
  EXPECT_FALSE(ChoosePlacement(runners, huge, kNow, rng).has_value());
}

TEST(Placement, TiesAreBrokenAtRandom) {
  std::vector<RunnerView> runners = {Runner("a"), Runner("b"), Runner("c")};
  std::mt19937 rng(7);
  std::map<size_t, int> seen;
  for (int i = 0; i < 300; ++i) ++seen[ChoosePlacement(runners, Req(), kNow, rng)->runner_index];
  EXPECT_EQ(seen.size(), 3u);
  for (const auto& [idx, n] : seen) EXPECT_GT(n, 50) << idx;
}

}  // namespace
}  // namespace isorun::scheduler
