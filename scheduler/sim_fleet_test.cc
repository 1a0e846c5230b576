#include "scheduler/sim_fleet.h"

#include <gtest/gtest.h>

#include "absl/random/random.h"

namespace isorun::scheduler {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

TEST(Zipf, PopularityFallsWithRank) {
  ZipfSampler zipf(100, 1.0);
  absl::BitGen rng;
  std::vector<int> counts(100);
  for (int i = 0; i < 100000; ++i) ++counts[static_cast<size_t>(zipf.Sample(rng))];
  EXPECT_GT(counts[0], counts[1]);
  EXPECT_GT(counts[1], counts[9]);
  EXPECT_GT(counts[9], counts[99]);
  EXPECT_NEAR(counts[0] / 100000.0, zipf.Probability(0), 0.01);
}

// The policy on a simulated fleet at a modest scale: it finds a warm runner whenever one could
// take the request (within 1%), and never overcommits a runner.
TEST(SimFleet, WarmAlmostWheneverTheOracleCanAndNeverOvercommits) {
  SimFleetOptions options;
  options.runners = 1000;
  options.images = 200;
  options.regions = {"eu", "us"};
  std::seed_seq seed{7};
  absl::BitGen rng(seed);
  SimFleet sim(options, kNow, rng);
  PlacementPolicy policy;
  int64_t warm = 0, oracle = 0, placed = 0;
  for (int i = 0; i < 50000; ++i) {
    PlacementRequest req = sim.NextRequest(rng);
    const bool could = policy.WarmFeasible(sim.state(), req, sim.now());
    auto d = policy.Choose(sim.state(), req, sim.now(), rng);
    ASSERT_TRUE(d.has_value()) << "capacity is not tight: " << sim.active() << " active";
    ASSERT_EQ(sim.state().record(d->runner_index).region, req.region);
    if (i >= 10000) {  // after the warm-up
      ++placed;
      warm += d->warm ? 1 : 0;
      oracle += could ? 1 : 0;
    }
    if (d->warm) {
      ASSERT_TRUE(could);
    }
    sim.Apply(req, *d);
  }
  for (RunnerIndex r = 0; r < sim.state().size(); ++r) {
    const RunnerSlot& s = sim.state().slot(r);
    ASSERT_LE(s.reserved.cpu_millis, s.capacity.cpu_millis);
    ASSERT_LE(s.reserved.memory_mb, s.capacity.memory_mb);
    ASSERT_LE(s.reserved.sandboxes, s.capacity.sandboxes);
  }
  const double warm_ratio = static_cast<double>(warm) / static_cast<double>(placed);
  const double oracle_ratio = static_cast<double>(oracle) / static_cast<double>(placed);
  EXPECT_GE(warm_ratio, oracle_ratio - 0.01) << "warm " << warm_ratio << " oracle " << oracle_ratio;
  EXPECT_GT(oracle_ratio, 0.5);
}

}  // namespace
}  // namespace isorun::scheduler
