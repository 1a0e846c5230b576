#include <gtest/gtest.h>

#include <map>

#include "scheduler/capacity_history_store.h"
#include "tests/support/test_database.h"

namespace isorun::scheduler {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);  // a multiple of 300

class CapacityHistoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = std::make_unique<isorun::testing::TestDatabase>();
    pool_ = std::make_unique<PgPool>(db_->url(), 2);
    store_ = std::make_unique<CapacityHistoryStore>(*pool_);
  }
  static CapacitySample Sample(absl::Time at, const std::string& region, int64_t slots_allocated,
                               int64_t refusals = 0) {
    CapacitySample s;
    s.at = at;
    s.region = region;
    s.runners_healthy = 2;
    s.capacity = {8000, 16000, 100};
    s.allocated = {1000, 2000, slots_allocated};
    s.free = s.capacity - s.allocated;
    s.capacity_refusals = refusals;
    s.placements_cold = 1;
    return s;
  }
  std::string Count(const std::string& table) {
    return db_->Scalar("SELECT count(*) FROM scheduler." + table);
  }

  std::unique_ptr<isorun::testing::TestDatabase> db_;
  std::unique_ptr<PgPool> pool_;
  std::unique_ptr<CapacityHistoryStore> store_;
};

TEST_F(CapacityHistoryTest, QueryBucketsGaugesByAverageAndCountsBySum) {
  std::vector<CapacitySample> samples;
  for (int i = 0; i < 12; ++i) {  // one a 10 s for 2 minutes
    absl::Time at = kT0 + absl::Seconds(10 * i);
    samples.push_back(Sample(at, "", 10 + i, i == 3 ? 4 : 0));
    samples.push_back(Sample(at, "eu", 5));
  }
  ASSERT_TRUE(store_->Insert(samples).ok());
  ASSERT_TRUE(store_->Insert({Sample(kT0, "", 999)}).ok()) << "a replica's duplicate is ignored";

  auto got = store_->Query(kT0, kT0 + absl::Minutes(2), absl::Minutes(1));
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 4u);  // fleet and eu, two minutes each
  const CapacitySample& first = (*got)[0];
  EXPECT_EQ(first.region, "");
  EXPECT_EQ(first.at, kT0);
  EXPECT_EQ(first.allocated.sandboxes, 13) << "avg of 10..15 is 12.5, rounded";
  EXPECT_EQ(first.capacity_refusals, 4);
  EXPECT_EQ(first.placements_cold, 6) << "six snapshots in the minute";
  EXPECT_EQ((*got)[1].at, kT0 + absl::Minutes(1));
  EXPECT_EQ((*got)[2].region, "eu");

  auto eu_only = store_->Query(kT0, kT0 + absl::Minutes(2), absl::Minutes(2), "eu");
  ASSERT_TRUE(eu_only.ok());
  EXPECT_EQ(eu_only->size(), 2u) << "the region asked for, and the fleet";
  auto other = store_->Query(kT0, kT0 + absl::Minutes(2), absl::Minutes(2), "us");
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->size(), 1u) << "only the fleet";
}

TEST_F(CapacityHistoryTest, CompactionFoldsWholeBucketsOnceAndKeepsTheSums) {
  std::vector<CapacitySample> samples;
  // 20 minutes of 10 s snapshots: 120 rows; one refusal in each.
  for (int i = 0; i < 120; ++i) samples.push_back(Sample(kT0 + absl::Seconds(10 * i), "", 20, 1));
  ASSERT_TRUE(store_->Insert(samples).ok());

  // Cut at kT0 + 12.5 min: whole buckets only, so the cut goes down to 10 min.
  auto folded = store_->Compact(kT0 + absl::Seconds(750), kT0 - absl::Hours(1));
  ASSERT_TRUE(folded.ok()) << folded.status();
  EXPECT_EQ(*folded, 60);
  EXPECT_EQ(Count("capacity_history"), "60");
  EXPECT_EQ(Count("capacity_history_5m"), "2");
  // Again: nothing more to fold, nothing counted twice.
  folded = store_->Compact(kT0 + absl::Seconds(750), kT0 - absl::Hours(1));
  ASSERT_TRUE(folded.ok());
  EXPECT_EQ(*folded, 0);

  auto all = store_->Query(kT0, kT0 + absl::Minutes(20), absl::Minutes(20));
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].capacity_refusals, 120) << "counts survive downsampling";
  EXPECT_EQ((*all)[0].allocated.sandboxes, 20);

  // Retention of the downsampled rows.
  ASSERT_TRUE(store_->Compact(kT0, kT0 + absl::Minutes(5) + absl::Seconds(1)).ok());
  EXPECT_EQ(Count("capacity_history_5m"), "0") << "both buckets were older than the cut";
}

TEST_F(CapacityHistoryTest, RecorderWritesDeltasOfCumulativeCounters) {
  std::vector<RunnerStatus> runners(1);
  runners[0].view.name = "r1";
  runners[0].view.region = "local";
  runners[0].state = "HEALTHY";
  runners[0].view.capacity = {4000, 4096, 10};
  runners[0].view.allocated = {1000, 512, 2};
  runners[0].placements_warm = 5;
  CapacityCounters counters{5, 0, 7, 1};
  CapacityRecorder::Options options;
  options.interval = absl::Seconds(10);
  CapacityRecorder recorder(
      *store_, [&] { return runners; }, [&] { return counters; }, options);
  ASSERT_TRUE(recorder.RecordOnce(kT0 + absl::Seconds(3)).ok());
  runners[0].placements_warm = 8;
  counters.capacity_refusals = 10;
  ASSERT_TRUE(recorder.RecordOnce(kT0 + absl::Seconds(13)).ok());

  auto got = store_->Query(kT0, kT0 + absl::Minutes(1), absl::Seconds(10));
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), 4u);  // fleet x2, local x2
  EXPECT_EQ((*got)[0].at, kT0) << "times are truncated to the interval";
  EXPECT_EQ((*got)[0].capacity_refusals, 0) << "the first snapshot has no previous";
  EXPECT_EQ((*got)[1].capacity_refusals, 3);
  EXPECT_EQ((*got)[1].placements_warm, 3);
  EXPECT_EQ((*got)[1].allocated.sandboxes, 2);
  EXPECT_EQ((*got)[3].region, "local");
  EXPECT_EQ((*got)[3].placements_warm, 3);
  EXPECT_EQ((*got)[3].capacity_refusals, 0) << "no refusals were counted for the region";
}

// 429 CAPACITY by the region asked for (a region without runners gets a row too), and live
// sandboxes by state: the fleet counts every one, a region those on its runners.
TEST_F(CapacityHistoryTest, RecorderCountsRefusalsPerRegionAndSandboxesByState) {
  std::vector<RunnerStatus> runners(2);
  runners[0].view.id = "id-a";
  runners[0].view.region = "local";
  runners[0].state = "HEALTHY";
  runners[0].view.capacity = {4000, 4096, 10};
  runners[1].view.id = "id-b";
  runners[1].view.region = "eu";
  runners[1].state = "HEALTHY";
  runners[1].view.capacity = {4000, 4096, 10};
  CapacityCounters counters{0, 0, 7, 0, {{"local", 5}, {"eu", 2}}};
  std::vector<SandboxStateCount> states = {{"", "PENDING", 4},
                                           {"id-a", "RUNNING", 2},
                                           {"id-a", "HIBERNATED", 1},
                                           {"id-b", "RUNNING", 3},
                                           {"id-b", "STARTING", 1},
                                           {"id-gone", "DESTROYING", 6}};
  CapacityRecorder::Options options;
  options.interval = absl::Seconds(10);
  CapacityRecorder recorder(
      *store_, [&] { return runners; }, [&] { return counters; }, options,
      [&]() -> absl::StatusOr<std::vector<SandboxStateCount>> { return states; });
  ASSERT_TRUE(recorder.RecordOnce(kT0).ok());
  counters = {0, 0, 13, 0, {{"local", 9}, {"eu", 2}, {"ap", 2}}};
  ASSERT_TRUE(recorder.RecordOnce(kT0 + absl::Seconds(10)).ok());

  auto got = store_->Query(kT0 + absl::Seconds(10), kT0 + absl::Seconds(20), absl::Seconds(10));
  ASSERT_TRUE(got.ok()) << got.status();
  std::map<std::string, CapacitySample> by_region;
  for (const auto& s : *got) by_region[s.region] = s;
  ASSERT_EQ(by_region.size(), 4u) << "fleet, ap, eu, local";
  EXPECT_EQ(by_region[""].capacity_refusals, 6);
  EXPECT_EQ(by_region["local"].capacity_refusals, 4);
  EXPECT_EQ(by_region["eu"].capacity_refusals, 0);
  EXPECT_EQ(by_region["ap"].capacity_refusals, 2) << "a region without runners, all refused";
  EXPECT_EQ(by_region["ap"].capacity.sandboxes, 0);
  const CapacitySample& fleet = by_region[""];
  EXPECT_EQ(fleet.sandboxes_pending, 4);
  EXPECT_EQ(fleet.sandboxes_starting, 1);
  EXPECT_EQ(fleet.sandboxes_running, 5);
  EXPECT_EQ(fleet.sandboxes_hibernated, 1);
  EXPECT_EQ(fleet.sandboxes_destroying, 6) << "a runner no longer listed still counts";
  EXPECT_EQ(by_region["local"].sandboxes_pending, 0) << "not placed yet: no region";
  EXPECT_EQ(by_region["local"].sandboxes_running, 2);
  EXPECT_EQ(by_region["local"].sandboxes_hibernated, 1);
  EXPECT_EQ(by_region["eu"].sandboxes_running, 3);
  EXPECT_EQ(by_region["eu"].sandboxes_starting, 1);
  const std::string json =
      HistoryJson(*got, kT0 + absl::Seconds(10), kT0 + absl::Seconds(20), absl::Seconds(10));
  EXPECT_NE(json.find(R"("sandboxesByState":{"PENDING":4,"STARTING":1,"RUNNING":5,)"
                      R"("HIBERNATED":1,"DESTROYING":6})"),
            std::string::npos)
      << json;

  // A failing count fails the snapshot (no row with made-up zeros).
  CapacityRecorder failing(
      *store_, [&] { return runners; }, [&] { return counters; }, options,
      []() -> absl::StatusOr<std::vector<SandboxStateCount>> {
        return absl::UnavailableError("lifecycle rows unreadable");
      });
  EXPECT_FALSE(failing.RecordOnce(kT0 + absl::Seconds(30)).ok());
  EXPECT_EQ(db_->Scalar("SELECT count(*) FROM scheduler.capacity_history WHERE at = "
                        "to_timestamp(" + std::to_string(absl::ToUnixSeconds(kT0) + 30) + ")"),
            "0");
}

// The count the scheduler's recorder uses: live rows of lifecycle.sandboxes by runner and state.
TEST_F(CapacityHistoryTest, CountsLiveSandboxesOfTheLifecycleByRunnerAndState) {
  const std::string tenant = "00000000-0000-0000-0000-0000000000aa";
  int n = 0;
  for (auto [state, runner] : std::vector<std::pair<std::string, std::string>>{
           {"RUNNING", "'r1'"}, {"RUNNING", "'r1'"}, {"HIBERNATED", "'r1'"}, {"RUNNING", "'r2'"},
           {"PENDING", "NULL"}, {"DESTROYED", "'r1'"}, {"FAILED", "NULL"}}) {
    ++n;
    db_->Scalar("INSERT INTO lifecycle.sandboxes (id, tenant_id, state, image, cpu_millis, "
                "memory_mb, timeout_sec, public_id, runner_id) VALUES ('sbx" + std::to_string(n) +
                "', '" + tenant + "', '" + state + "', 'busybox:1.36', 1000, 512, 300, 'p" +
                std::to_string(n) + "', " + runner + ") RETURNING 1");
  }
  auto counts = store_->CountSandboxes();
  ASSERT_TRUE(counts.ok()) << counts.status();
  std::map<std::string, int64_t> got;
  for (const auto& c : *counts) got[c.runner_id + "/" + c.state] = c.count;
  EXPECT_EQ(got, (std::map<std::string, int64_t>{
                     {"r1/RUNNING", 2}, {"r1/HIBERNATED", 1}, {"r2/RUNNING", 1}, {"/PENDING", 1}}));
}

}  // namespace
}  // namespace isorun::scheduler
