#include "scheduler/fleet.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "services/kit/status.h"
#include "tests/support/test_database.h"

namespace isorun::scheduler {
namespace {

RunnerView NewRunner(const std::string& name, int slots) {
  RunnerView r;
  r.name = name;
  r.address = "127.0.0.1:1";
  r.region = "local";
  r.capacity = {100000, 100000, slots};
  return r;
}

PlacementRequest Req() { return PlacementRequest{"busybox:1.36", "local", 500, 256}; }

TEST(Fleet, ConcurrentPlacementsNeverOvercommit) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 8);
  SchedulerStore store(pool);
  Fleet fleet(store, [] { return absl::Now(); });
  ASSERT_TRUE(fleet.Register(NewRunner("a", 7)).ok());
  ASSERT_TRUE(fleet.Register(NewRunner("b", 5)).ok());
  std::atomic<int> placed{0}, refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        auto r = fleet.Place("s" + std::to_string(t * 10 + i), Req());
        if (r.ok()) {
          ++placed;
        } else {
          EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
          EXPECT_EQ(ErrorDetailOf(r.status())->reason(), "CAPACITY");
          ++refused;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(placed, 12);
  EXPECT_EQ(refused, 28);
  EXPECT_EQ(db.Scalar("SELECT count(*) FROM scheduler.placements"), "12");
  for (const auto& s : fleet.List()) {
    EXPECT_LE(s.view.allocated.sandboxes, s.view.capacity.sandboxes);
  }
}

TEST(Fleet, PlaceIsIdempotentAndReleaseFreesTheSlot) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 2);
  SchedulerStore store(pool);
  Fleet fleet(store, [] { return absl::Now(); });
  ASSERT_TRUE(fleet.Register(NewRunner("a", 1)).ok());
  auto first = fleet.Place("x", Req());
  ASSERT_TRUE(first.ok());
  auto again = fleet.Place("x", Req());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->runner_id, first->runner_id);
  EXPECT_FALSE(fleet.Place("y", Req()).ok());
  EXPECT_TRUE(*fleet.Release("x"));
  EXPECT_FALSE(*fleet.Release("x"));
  EXPECT_TRUE(fleet.Place("y", Req()).ok());
}

TEST(Fleet, RestartedSchedulerRebuildsItsViewFromPostgres) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 2);
  SchedulerStore store(pool);
  std::string id;
  {
    Fleet fleet(store, [] { return absl::Now(); });
    auto r = fleet.Register(NewRunner("a", 2));
    ASSERT_TRUE(r.ok());
    id = *r;
    ASSERT_TRUE(fleet.Place("x", Req()).ok());
    ASSERT_TRUE(fleet.Place("y", Req()).ok());
  }
  Fleet restarted(store, [] { return absl::Now(); });
  ASSERT_TRUE(restarted.Load().ok());
  auto list = restarted.List();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].view.id, id);
  EXPECT_EQ(list[0].view.allocated.sandboxes, 2);
  EXPECT_FALSE(restarted.Place("z", Req()).ok()) << "full runner accepted a third sandbox";
  ASSERT_TRUE(restarted.Heartbeat(id, {}).ok());
  EXPECT_TRUE(restarted.Get("x").ok());
  // A runner re-registering under its name keeps its id.
  EXPECT_EQ(*restarted.Register(NewRunner("a", 2)), id);
}

TEST(Fleet, DrainingSetInTheTableIsHonouredAfterAHeartbeat) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 2);
  SchedulerStore store(pool);
  Fleet fleet(store, [] { return absl::Now(); });
  auto id = fleet.Register(NewRunner("a", 5));
  ASSERT_TRUE(id.ok());
  db.Scalar("UPDATE scheduler.runners SET draining = true");
  ASSERT_TRUE(fleet.Heartbeat(*id, {}).ok());
  EXPECT_EQ(fleet.Place("x", Req()).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(fleet.List()[0].state, "DRAINING");
  EXPECT_EQ(fleet.Heartbeat("rn_unknown", {}).code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace isorun::scheduler
