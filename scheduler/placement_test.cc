#include "scheduler/placement.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>

#include "absl/strings/str_cat.h"

namespace isorun::scheduler {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);
const std::string kBusyboxDigest =
    "sha256:1111111111111111111111111111111111111111111111111111111111111111";

RunnerView Runner(const std::string& name, int64_t used_slots = 0) {
  RunnerView r;
  r.id = name;
  r.name = name;
  r.region = "local";
  r.capacity = {10000, 16384, 10};
  r.allocated = {used_slots * 1000, used_slots * 512, used_slots};
  r.last_heartbeat = kNow - absl::Seconds(1);
  return r;
}

void Cache(RunnerView& r, const std::string& ref = "busybox:1.36",
           const std::string& digest = kBusyboxDigest, int64_t size = 0) {
  CachedImage img;
  img.digest = digest;
  img.size_bytes = size;
  img.refs = {ref};
  r.images.push_back(img);
}

PlacementRequest Req(const std::string& image = "busybox:1.36") {
  return PlacementRequest{image, "local", 1000, 512};
}

TEST(Placement, WarmBeatsColdAtEqualLoad) {
  std::vector<RunnerView> runners = {Runner("a"), Runner("b"), Runner("c")};
  Cache(runners[1]);
  std::mt19937 rng(1);
  for (int i = 0; i < 50; ++i) {
    auto d = ChoosePlacement(runners, Req(), kNow, rng);
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->runner_index, 1u);
    EXPECT_TRUE(d->warm);
  }
}

TEST(Placement, FullWarmRunnerIsSkippedForAColdOneWithRoom) {
  std::vector<RunnerView> runners = {Runner("warm", 10), Runner("cold", 9)};
  Cache(runners[0]);
  std::mt19937 rng(1);
  auto d = ChoosePlacement(runners, Req(), kNow, rng);
  ASSERT_TRUE(d.has_value()) << "a cold runner with room must be used, never a refusal";
  EXPECT_EQ(d->runner_index, 1u);
  EXPECT_FALSE(d->warm);
}

TEST(Placement, WarmRunnerLosesOnlyWhenFullerThanTheBestColdOneByMoreThanTheSkew) {
  PolicyOptions options;
  options.warm_skew = 0.3;
  // Size unknown: full bonus 0.3. One sandbox is about 0.077 of the runner (mean of 1/10 of its
  // cpu, 1/32 of its memory and 1/10 of its slots).
  std::mt19937 rng(1);
  for (int extra = 0; extra <= 5; ++extra) {
    std::vector<RunnerView> runners = {Runner("warm", 2 + extra), Runner("cold", 2)};
    Cache(runners[0]);
    auto d = ChoosePlacement(runners, Req(), kNow, rng, options);
    ASSERT_TRUE(d.has_value());
    // Loads differ by 0.077 x extra; the warm one wins while that is below the bonus.
    EXPECT_EQ(d->warm, extra < 4) << "extra=" << extra;
  }
}

TEST(Placement, SmallImagesEarnASmallerBonus) {
  PolicyOptions options;
  options.warm_skew = 0.3;
  options.large_image_bytes = 1000;
  options.min_size_factor = 0.2;
  std::mt19937 rng(1);
  std::vector<RunnerView> runners = {Runner("warm", 3), Runner("cold", 2)};
  Cache(runners[0], "big:1", "sha256:big", 1000);
  Cache(runners[0], "small:1", "sha256:small", 10);
  // Fuller by 0.1: the big image (bonus 0.3) stays warm, the small one (bonus 0.06) goes cold.
  EXPECT_TRUE(ChoosePlacement(runners, Req("big:1"), kNow, rng, options)->warm);
  EXPECT_FALSE(ChoosePlacement(runners, Req("small:1"), kNow, rng, options)->warm);
}

// Places `n` requests for one image among 1 warm and 9 cold runners (caches never change, so
// the image stays on one runner) and returns how many sandboxes each runner got.
std::vector<int64_t> PlaceOnOneWarmRunner(const PolicyOptions& options, int n,
                                          int64_t* worst_lead) {
  FleetState fleet;
  for (int i = 0; i < 10; ++i) {
    RunnerView v = Runner(absl::StrCat("r", i));
    v.capacity = {20000, 20000, 20};
    if (i == 0) Cache(v, "app:1", "sha256:app", int64_t{2} << 30);
    fleet.Upsert(v);
  }
  PlacementPolicy policy(options);
  std::mt19937 rng(3);
  *worst_lead = 0;
  for (int i = 0; i < n; ++i) {
    auto d = policy.Choose(fleet, PlacementRequest{"app:1", "local", 1000, 1000}, kNow, rng);
    if (!d) break;
    fleet.Reserve(d->runner_index, {1000, 1000, 1});
    fleet.RecordPlacement(d->image);
    int64_t coldest = INT64_MAX;
    for (RunnerIndex r = 1; r < 10; ++r) {
      coldest = std::min(coldest, fleet.slot(r).reserved.sandboxes);
    }
    *worst_lead = std::max(*worst_lead, fleet.slot(0).reserved.sandboxes - coldest);
  }
  std::vector<int64_t> out;
  for (RunnerIndex r = 0; r < 10; ++r) out.push_back(fleet.slot(r).reserved.sandboxes);
  return out;
}

TEST(Placement, SpreadScalingStopsOneWarmRunnerBeingSwamped) {
  // One sandbox is 5% of a runner. Every create asks for the image and one runner of ten holds it:
  // it would keep ten busy, so its spread factor is 1/10, floored at 0.5: bonus 0.28 x 0.5 = 0.14,
  // so the
  // warm runner takes a sandbox only while it leads the emptiest cold runner by less than 2.8
  // sandboxes: its lead never passes 3.
  PolicyOptions options;
  options.warm_skew = 0.28;
  options.min_spread_factor = 0.5;
  int64_t lead = 0;
  auto scaled = PlaceOnOneWarmRunner(options, 100, &lead);
  EXPECT_LE(lead, 3) << "the warm runner was swamped";
  EXPECT_GE(scaled[0], 11) << "but it is still preferred";
  for (size_t r = 1; r < scaled.size(); ++r) EXPECT_GE(scaled[r], 8) << r;

  // Without spread scaling the lone warm runner draws twice the lead (bonus 0.28: 5.6 sandboxes).
  options.min_spread_factor = 1.0;
  int64_t unscaled_lead = 0;
  auto unscaled = PlaceOnOneWarmRunner(options, 100, &unscaled_lead);
  EXPECT_LE(unscaled_lead, 6);
  EXPECT_GT(unscaled[0], scaled[0]);
}

TEST(Placement, SpreadScalingFollowsDemandNotJustHolders) {
  FleetState fleet;
  for (int i = 0; i < 100; ++i) {
    RunnerView v = Runner(absl::StrCat("r", i));
    if (i == 0) {
      Cache(v, "rare:1", "sha256:rare", int64_t{2} << 30);
      Cache(v, "hot:1", "sha256:hot", int64_t{2} << 30);
    }
    if (i == 1) Cache(v, "other:1", "sha256:other", int64_t{2} << 30);
    fleet.Upsert(v);
  }
  PolicyOptions options;
  options.warm_skew = 0.3;
  options.min_spread_factor = 0.5;
  PlacementPolicy policy(options);
  const ImageId rare = fleet.Resolve("rare:1");
  const ImageId hot = fleet.Resolve("hot:1");
  EXPECT_DOUBLE_EQ(policy.WarmBonus(fleet, rare), 0.3) << "no demand seen yet";
  // Of the last 100 placements, 1 asked for rare:1 (one runner's worth: its one holder is
  // enough) and 60 for hot:1 (sixty runners' worth, on one runner).
  fleet.RecordPlacement(rare);
  for (int i = 0; i < 60; ++i) fleet.RecordPlacement(hot);
  for (int i = 0; i < 39; ++i) fleet.RecordPlacement(fleet.Resolve("other:1"));
  EXPECT_DOUBLE_EQ(policy.WarmBonus(fleet, rare), 0.3);
  EXPECT_DOUBLE_EQ(policy.WarmBonus(fleet, hot), 0.15);
}

TEST(Placement, LeastAllocatedWinsAmongCold) {
  std::vector<RunnerView> runners = {Runner("busy", 6), Runner("idle", 1), Runner("mid", 3)};
  std::mt19937 rng(1);
  auto d = ChoosePlacement(runners, Req(), kNow, rng);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->runner_index, 1u);
}

TEST(Placement, MostAllocatedPacks) {
  std::vector<RunnerView> runners = {Runner("busy", 6), Runner("idle", 1), Runner("full", 10)};
  PolicyOptions options;
  options.fit = FitStrategy::kMostAllocated;
  std::mt19937 rng(1);
  auto d = ChoosePlacement(runners, Req(), kNow, rng, options);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->runner_index, 0u);
}

TEST(Placement, DrainingUnhealthyDisconnectedAndOtherRegionsGetNothing) {
  std::vector<RunnerView> runners = {Runner("drain"), Runner("stale"), Runner("far")};
  runners[0].draining = true;
  runners[1].last_heartbeat = kNow - absl::Minutes(5);
  runners[2].region = "eu";
  for (auto& r : runners) Cache(r);
  std::mt19937 rng(1);
  for (int i = 0; i < 20; ++i) EXPECT_FALSE(ChoosePlacement(runners, Req(), kNow, rng).has_value());
  auto any_region = Req();
  any_region.region = "";
  auto d = ChoosePlacement(runners, any_region, kNow, rng);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->runner_index, 2u);
  auto nowhere = Req();
  nowhere.region = "mars";
  EXPECT_FALSE(ChoosePlacement(runners, nowhere, kNow, rng).has_value());

  // A runner whose heartbeat stream broke gets nothing until it is heard from again.
  FleetState fleet;
  RunnerIndex r = fleet.Upsert(Runner("solo"));
  fleet.mutable_slot(r).disconnected = true;
  PlacementPolicy policy;
  EXPECT_FALSE(policy.Choose(fleet, Req(), kNow, rng).has_value());
  fleet.mutable_slot(r).disconnected = false;
  EXPECT_TRUE(policy.Choose(fleet, Req(), kNow, rng).has_value());
}

TEST(Placement, TagAndDigestAreTheSameImage) {
  std::vector<RunnerView> runners = {Runner("cold"), Runner("warm")};
  Cache(runners[1], "busybox:1.36", kBusyboxDigest);
  runners[1].images[0].refs.push_back("registry.local:5000/busybox:1.36");
  std::mt19937 rng(1);
  for (const std::string& image : std::vector<std::string>{
           "busybox:1.36", "busybox@" + kBusyboxDigest, "busybox:1.36@" + kBusyboxDigest,
           kBusyboxDigest, "registry.local:5000/busybox:1.36"}) {
    auto d = ChoosePlacement(runners, Req(image), kNow, rng);
    ASSERT_TRUE(d.has_value()) << image;
    EXPECT_TRUE(d->warm) << image;
    EXPECT_EQ(d->runner_index, 1u) << image;
  }
  for (const std::string& image : std::vector<std::string>{
           "busybox:1.37",
           "busybox@sha256:2222222222222222222222222222222222222222222222222222222222222222"}) {
    auto d = ChoosePlacement(runners, Req(image), kNow, rng);
    ASSERT_TRUE(d.has_value());
    EXPECT_FALSE(d->warm) << image;
  }
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

TEST(Placement, SameSeedSameDecisions) {
  std::vector<RunnerView> runners;
  for (int i = 0; i < 100; ++i) runners.push_back(Runner(absl::StrCat("r", i), i % 7));
  for (int i = 0; i < 100; i += 3) Cache(runners[static_cast<size_t>(i)]);
  std::mt19937 a(42), b(42);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(ChoosePlacement(runners, Req(), kNow, a)->runner_index,
              ChoosePlacement(runners, Req(), kNow, b)->runner_index);
  }
}

// In a large fleet candidates are sampled, yet a request that fits one runner only still finds it.
TEST(Placement, SamplingNeverMissesTheLastRunnerWithRoom) {
  FleetState fleet;
  for (int i = 0; i < 2000; ++i) {
    RunnerView v = Runner(absl::StrCat("r", i), i == 1234 ? 9 : 10);
    fleet.Upsert(v);
    fleet.mutable_slot(static_cast<RunnerIndex>(i)).reserved = v.allocated;
  }
  PlacementPolicy policy;
  std::mt19937 rng(5);
  auto d = policy.Choose(fleet, Req(), kNow, rng);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->runner_index, 1234u);
  fleet.Reserve(d->runner_index, {1000, 512, 1});
  EXPECT_FALSE(policy.Choose(fleet, Req(), kNow, rng).has_value());
}

TEST(Placement, WarmFeasibleIsTheOracle) {
  FleetState fleet;
  RunnerView warm = Runner("warm", 10);
  Cache(warm);
  fleet.Upsert(warm);
  fleet.mutable_slot(0).reserved = warm.allocated;
  fleet.Upsert(Runner("cold"));
  PlacementPolicy policy;
  EXPECT_FALSE(policy.WarmFeasible(fleet, Req(), kNow));
  fleet.Unreserve(0, {1000, 512, 1});
  EXPECT_TRUE(policy.WarmFeasible(fleet, Req(), kNow));
}

}  // namespace
}  // namespace isorun::scheduler
