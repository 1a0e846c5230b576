#include "scheduler/prewarm.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "scheduler/fleet.h"
#include "scheduler/prewarmer.h"

namespace isorun::scheduler {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

FleetState Fleet20(int64_t cache_budget = 0) {
  FleetState fleet;
  for (int i = 0; i < 20; ++i) {
    RunnerView v;
    v.id = absl::StrCat("r", i);
    v.name = v.id;
    v.address = absl::StrCat("10.0.0.", i, ":1");
    v.region = "local";
    v.capacity = {10000, 10000, 10};
    v.image_cache_bytes = cache_budget;
    v.last_heartbeat = kNow;
    fleet.Upsert(v);
  }
  return fleet;
}

void Demand(DemandTracker& d, const std::string& image, int creates, int cold = 0,
            absl::Time at = kNow) {
  for (int i = 0; i < creates; ++i) d.Record(at, "local", image, i >= cold);
}

PrewarmOptions Options() {
  PrewarmOptions o;
  o.fraction = 0.2;
  o.min_holders = 2;
  o.min_creates = 5;
  o.max_pulls_per_round = 100;
  return o;
}

std::map<std::string, int> ByImage(const std::vector<PullTask>& tasks) {
  std::map<std::string, int> out;
  for (const auto& t : tasks) ++out[t.image];
  return out;
}

TEST(Prewarm, HotImagesGoOntoAShareOfTheRegionInProportionToDemand) {
  FleetState fleet = Fleet20();
  DemandTracker demand;
  Demand(demand, "hot:1", 50);
  Demand(demand, "warmish:1", 10);
  Demand(demand, "rare:1", 2);
  PrewarmPlanner planner(Options());
  std::mt19937 rng(1);
  auto tasks = planner.Plan(fleet, demand, PolicyOptions{}, kNow, rng);
  auto by_image = ByImage(tasks);
  EXPECT_EQ(by_image["hot:1"], 4);      // 20 runners x 0.2
  EXPECT_EQ(by_image["warmish:1"], 2);  // 20 x 0.2 x 10/50 = 0.8, raised to min_holders
  EXPECT_EQ(by_image.count("rare:1"), 0u) << "below min_creates";
  std::map<RunnerIndex, int> per_runner;
  for (const auto& t : tasks) {
    EXPECT_EQ(++per_runner[t.runner], 1) << "one pull in flight per runner";
    EXPECT_EQ(t.bytes, Options().assumed_image_bytes) << "size unknown";
    EXPECT_FALSE(t.address.empty());
  }
}

TEST(Prewarm, CountsHoldersAndPullsInFlight) {
  FleetState fleet = Fleet20();
  CachedImage img;
  img.digest = "sha256:hot";
  img.refs = {"hot:1"};
  img.size_bytes = 1000;
  fleet.SetImages(0, {img});
  fleet.SetImages(1, {img});
  fleet.mutable_record(2).pulling = {"hot:1"};
  DemandTracker demand;
  Demand(demand, "hot:1", 50);
  PrewarmPlanner planner(Options());
  std::mt19937 rng(1);
  auto tasks = planner.Plan(fleet, demand, PolicyOptions{}, kNow, rng);
  ASSERT_EQ(tasks.size(), 1u) << "4 wanted: 2 hold it, 1 is pulling it";
  EXPECT_EQ(tasks[0].bytes, 1000) << "the size a holder reported";
  EXPECT_GT(tasks[0].runner, 2u);
}

TEST(Prewarm, StaysWithinEachRunnersCacheBudgetAndSkipsUnschedulableRunners) {
  FleetState fleet = Fleet20(/*cache_budget=*/1000);
  CachedImage big;
  big.digest = "sha256:hot";
  big.refs = {"hot:1"};
  big.size_bytes = 600;
  fleet.SetImages(0, {big});
  for (RunnerIndex r = 1; r < 20; ++r) {
    fleet.mutable_record(r).image_cache_used_bytes = r < 15 ? 500 : 0;  // 500 free: too little
  }
  fleet.mutable_slot(15).draining = true;
  fleet.mutable_slot(16).last_heartbeat = kNow - absl::Minutes(5);
  DemandTracker demand;
  Demand(demand, "hot:1", 50);
  PrewarmOptions o = Options();
  o.fraction = 0.5;
  PrewarmPlanner planner(o);
  std::mt19937 rng(1);
  auto tasks = planner.Plan(fleet, demand, PolicyOptions{}, kNow, rng);
  std::set<RunnerIndex> chosen;
  for (const auto& t : tasks) chosen.insert(t.runner);
  EXPECT_EQ(chosen, (std::set<RunnerIndex>{17, 18, 19}));
}

TEST(Prewarm, ARisingColdStartRateWarmsMore) {
  FleetState fleet = Fleet20();
  PrewarmPlanner planner(Options());
  std::mt19937 rng(1);
  DemandTracker calm;
  Demand(calm, "hot:1", 50, /*cold=*/0);
  EXPECT_EQ(planner.Plan(fleet, calm, PolicyOptions{}, kNow, rng).size(), 4u);
  EXPECT_DOUBLE_EQ(planner.boost("local"), 1.0);

  // Cold starts were rare before and are frequent now: the fraction doubles.
  DemandTracker rising;
  Demand(rising, "hot:1", 50, 0, kNow - absl::Seconds(40));
  Demand(rising, "hot:1", 50, 25, kNow);
  auto tasks = planner.Plan(fleet, rising, PolicyOptions{}, kNow, rng);
  EXPECT_DOUBLE_EQ(planner.boost("local"), 2.0);
  EXPECT_EQ(tasks.size(), 8u);  // 20 x 0.2 x 2
  planner.Plan(fleet, rising, PolicyOptions{}, kNow, rng);
  EXPECT_DOUBLE_EQ(planner.boost("local"), 4.0) << "still cold: more";
  // Once creates start warm again the boost decays.
  planner.Plan(fleet, calm, PolicyOptions{}, kNow, rng);
  EXPECT_DOUBLE_EQ(planner.boost("local"), 2.0);
  planner.Plan(fleet, calm, PolicyOptions{}, kNow, rng);
  planner.Plan(fleet, calm, PolicyOptions{}, kNow, rng);
  EXPECT_DOUBLE_EQ(planner.boost("local"), 1.0);
}

TEST(Prewarm, RoundsAreBounded) {
  FleetState fleet = Fleet20();
  DemandTracker demand;
  Demand(demand, "a:1", 50);
  Demand(demand, "b:1", 50);
  PrewarmOptions o = Options();
  o.max_pulls_per_round = 3;
  PrewarmPlanner planner(o);
  std::mt19937 rng(1);
  EXPECT_EQ(planner.Plan(fleet, demand, PolicyOptions{}, kNow, rng).size(), 3u);
  o.enabled = false;
  PrewarmPlanner off(o);
  EXPECT_TRUE(off.Plan(fleet, demand, PolicyOptions{}, kNow, rng).empty());
}

class FakePuller : public ImagePuller {
 public:
  absl::StatusOr<CachedImage> Pull(const std::string& address, const std::string& image) override {
    absl::MutexLock lock(&mu_);
    ++calls_[address];
    if (image == "broken:1") return absl::UnavailableError("registry down");
    CachedImage img;
    img.digest = "sha256:" + image;
    img.size_bytes = 100;
    img.refs = {image};
    return img;
  }
  int calls() {
    absl::MutexLock lock(&mu_);
    int n = 0;
    for (const auto& [a, c] : calls_) n += c;
    return n;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, int> calls_ ABSL_GUARDED_BY(mu_);
};

TEST(Prewarm, FleetRecordsPullsAndPlacesWarmOnceTheyLand) {
  MemoryFleetStore store;
  absl::Time now = kNow;
  FleetOptions options;
  options.prewarm = Options();
  options.prewarm.target_cold_rate = 1.0;  // every create here is cold: no boost in this test
  Fleet fleet(
      store, [&] { return now; }, options);
  for (int i = 0; i < 10; ++i) {
    RunnerView v;
    v.name = absl::StrCat("r", i);
    v.address = absl::StrCat("10.0.0.", i, ":1");
    v.region = "local";
    v.capacity = {100000, 100000, 100};
    ASSERT_TRUE(fleet.Register(v).ok());
  }
  for (int i = 0; i < 20; ++i) {
    auto p = fleet.Place(absl::StrCat("s", i), {"app:1", "local", 100, 100});
    ASSERT_TRUE(p.ok());
    EXPECT_FALSE(p->warm);
  }
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(fleet.Place(absl::StrCat("b", i), {"broken:1", "local", 100, 100}).ok());
  }
  FakePuller puller;
  Prewarmer prewarmer(fleet, puller, 2, nullptr, nullptr);
  const int pulls = prewarmer.RunRound();
  EXPECT_EQ(pulls, 4) << "2 for app:1 (10 x 0.2), 2 for broken:1 (min holders)";
  EXPECT_EQ(puller.calls(), 4);
  int holders = 0;
  for (const auto& r : fleet.List()) {
    EXPECT_TRUE(r.pulling.empty()) << "finished pulls are no longer in flight";
    for (const auto& img : r.view.images) holders += img.digest == "sha256:app:1" ? 1 : 0;
  }
  EXPECT_EQ(holders, 2);
  auto warm = fleet.Place("after", {"app:1", "local", 100, 100});
  ASSERT_TRUE(warm.ok());
  EXPECT_TRUE(warm->warm);
  // Failed pulls are retried in a later round: broken:1 is still wanted.
  EXPECT_EQ(fleet.StartPrewarmRound().size(), 2u);
}

}  // namespace
}  // namespace isorun::scheduler
