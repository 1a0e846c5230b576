#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "scheduler/fleet.h"
#include "scheduler/fleet_store_contract.h"
#include "scheduler/leader.h"
#include "scheduler/scheduler_store.h"
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
  ASSERT_TRUE(restarted.Heartbeat({id}).ok());
  EXPECT_TRUE(restarted.Get("x").ok());
  // A runner re-registering under its name keeps its id.
  EXPECT_EQ(*restarted.Register(NewRunner("a", 2)), id);
}

TEST(Fleet, DrainingSetInTheTableIsHonouredAfterASync) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 2);
  SchedulerStore store(pool);
  Fleet fleet(store, [] { return absl::Now(); });
  auto id = fleet.Register(NewRunner("a", 5));
  ASSERT_TRUE(id.ok());
  db.Scalar("UPDATE scheduler.runners SET draining = true");
  ASSERT_TRUE(fleet.Sync().ok());
  EXPECT_EQ(fleet.Place("x", Req()).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(fleet.List()[0].state, "DRAINING");
  EXPECT_EQ(fleet.Heartbeat({"rn_unknown"}).code(), absl::StatusCode::kNotFound);
}

TEST(FleetStoreContract, Postgres) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 2);
  SchedulerStore store(pool);
  RunFleetStoreContract(store, [&](const std::string& id) {
    db.Scalar("UPDATE scheduler.runners SET draining = true WHERE id = '" + id + "'");
  });
}

TEST(Fleet, HeartbeatNewsReachesPostgresInBatches) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 2);
  SchedulerStore store(pool);
  absl::Time now = absl::Now();
  FleetOptions options;
  options.last_seen_every = absl::Seconds(5);
  Fleet fleet(
      store, [&] { return now; }, options);
  std::vector<std::string> ids;
  for (int i = 0; i < 50; ++i) {
    auto id = fleet.Register(NewRunner("r" + std::to_string(i), 5));
    ASSERT_TRUE(id.ok());
    ids.push_back(*id);
  }
  db.Scalar("UPDATE scheduler.runners SET last_heartbeat = now() - interval '1 hour'");
  now += absl::Seconds(6);
  for (const auto& id : ids) {
    HeartbeatReport hb;
    hb.runner_id = id;
    if (id == ids[3]) {
      CachedImage img;
      img.digest = "sha256:abc";
      img.size_bytes = 1234;
      img.refs = {"busybox:1.36"};
      img.last_used = now;
      hb.images = std::vector<CachedImage>{img};
      hb.image_cache_used_bytes = 1234;
    }
    ASSERT_TRUE(fleet.Heartbeat(hb).ok());
  }
  EXPECT_EQ(db.Scalar("SELECT count(*) FROM scheduler.runners "
                      "WHERE last_heartbeat > now() - interval '1 minute'"),
            "0")
      << "heartbeats alone write nothing";
  ASSERT_TRUE(fleet.Sync().ok());
  EXPECT_EQ(db.Scalar("SELECT count(*) FROM scheduler.runners "
                      "WHERE last_heartbeat > now() - interval '1 minute'"),
            "50");
  EXPECT_EQ(db.Scalar("SELECT digest || ' ' || size_bytes || ' ' || array_to_string(refs, ',') "
                      "FROM scheduler.runner_images WHERE runner_id = '" +
                      ids[3] + "'"),
            "sha256:abc 1234 busybox:1.36");
  EXPECT_EQ(
      db.Scalar("SELECT image_cache_used_bytes FROM scheduler.runners WHERE id = '" + ids[3] + "'"),
      "1234");
  // A restarted scheduler sees the image at once.
  Fleet restarted(
      store, [&] { return now; }, options);
  ASSERT_TRUE(restarted.Load().ok());
  ASSERT_TRUE(restarted.Heartbeat({ids[3]}).ok());
  auto p = restarted.Place("x", PlacementRequest{"busybox:1.36", "local", 100, 100});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->runner_id, ids[3]);
  EXPECT_TRUE(p->warm);
}

// One leader per database: the lock is held while its session lives, and another replica takes
// it as soon as that session ends (a process killed with -9 closes its connection the same way).
TEST(LeaderLock, OneHolderAtATimeAndTheNextTakesOverWhenItsSessionEnds) {
  testing::TestDatabase db;
  auto first = std::make_unique<LeaderLock>(db.url());
  LeaderLock second(db.url());
  ASSERT_TRUE(*first->TryAcquire());
  EXPECT_TRUE(*first->TryAcquire());  // still ours
  EXPECT_FALSE(*second.TryAcquire());
  EXPECT_TRUE(first->Check().ok());
  EXPECT_FALSE(second.Check().ok());  // a follower holds nothing to check
  first.reset();
  bool took = false;
  for (int i = 0; i < 100 && !took; ++i) {
    took = *second.TryAcquire();
    if (!took) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(took);
  EXPECT_TRUE(second.Check().ok());
}

}  // namespace
}  // namespace isorun::scheduler
