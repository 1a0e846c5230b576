#include "scheduler/fleet.h"

#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "scheduler/fleet_store_contract.h"
#include "services/kit/status.h"

namespace isorun::scheduler {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

// Counts the calls that reach the store, to prove heartbeats do not.
class CountingStore final : public FleetStore {
 public:
  absl::StatusOr<std::pair<std::string, bool>> UpsertRunner(const RunnerView& r) override {
    ++upserts;
    return inner.UpsertRunner(r);
  }
  absl::Status TouchRunners(const std::vector<std::pair<std::string, absl::Time>>& s) override {
    touched += static_cast<int>(s.size());
    return inner.TouchRunners(s);
  }
  absl::Status ReplaceImages(const std::vector<RunnerImages>& r) override {
    images_written += static_cast<int>(r.size());
    return inner.ReplaceImages(r);
  }
  absl::StatusOr<std::vector<std::string>> DrainingRunners() override {
    return inner.DrainingRunners();
  }
  absl::Status InsertPlacements(const std::vector<StoredPlacement>& p) override {
    return inner.InsertPlacements(p);
  }
  absl::StatusOr<std::vector<bool>> DeletePlacements(const std::vector<std::string>& ids) override {
    return inner.DeletePlacements(ids);
  }
  absl::StatusOr<FleetSnapshot> Load() override { return inner.Load(); }

  MemoryFleetStore inner;
  std::atomic<int> upserts{0}, touched{0}, images_written{0};
};

RunnerView NewRunner(const std::string& name, int slots = 10) {
  RunnerView r;
  r.name = name;
  r.address = "127.0.0.1:1";
  r.region = "local";
  r.capacity = {100000, 100000, slots};
  return r;
}

CachedImage Img(const std::string& ref, const std::string& digest) {
  CachedImage i;
  i.digest = digest;
  i.refs = {ref};
  return i;
}

PlacementRequest Req(const std::string& image = "busybox:1.36") {
  return PlacementRequest{image, "local", 500, 256};
}

class FleetTest : public ::testing::Test {
 protected:
  FleetOptions Options() {
    FleetOptions o;
    o.policy.healthy_within = absl::Seconds(5);
    o.lost_after = absl::Seconds(60);
    o.last_seen_every = absl::Seconds(5);
    o.unplaced_grace = absl::Seconds(5);
    return o;
  }
  std::unique_ptr<Fleet> NewFleet() {
    return std::make_unique<Fleet>(
        store_, [this] { return now_; }, Options());
  }
  std::string StateOf(Fleet& fleet, const std::string& id) {
    for (const auto& r : fleet.List()) {
      if (r.view.id == id) return r.state;
    }
    return "";
  }

  CountingStore store_;
  absl::Time now_ = kT0;
};

TEST(FleetStoreContract, Memory) {
  MemoryFleetStore store;
  RunFleetStoreContract(store, [&](const std::string& id) { store.SetDraining(id, true); });
}

TEST_F(FleetTest, SilenceMakesARunnerUnhealthyThenLost) {
  auto fleet = NewFleet();
  auto id = fleet->Register(NewRunner("a"));
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(StateOf(*fleet, *id), "HEALTHY");
  now_ += absl::Seconds(4);
  ASSERT_TRUE(fleet->Heartbeat({*id}).ok());
  now_ += absl::Seconds(5);
  EXPECT_EQ(StateOf(*fleet, *id), "HEALTHY");
  now_ += absl::Seconds(1);
  EXPECT_EQ(StateOf(*fleet, *id), "UNHEALTHY");
  EXPECT_EQ(fleet->Place("s", Req()).status().code(), absl::StatusCode::kResourceExhausted);
  now_ += absl::Seconds(55);
  EXPECT_EQ(StateOf(*fleet, *id), "LOST");
  ASSERT_TRUE(fleet->Heartbeat({*id}).ok());
  EXPECT_EQ(StateOf(*fleet, *id), "HEALTHY") << "a runner that comes back is used again";
  EXPECT_EQ(fleet->Heartbeat({"rn_unknown"}).code(), absl::StatusCode::kNotFound);
}

TEST_F(FleetTest, ABrokenHeartbeatStreamStopsPlacementsUntilTheNextHeartbeat) {
  auto fleet = NewFleet();
  auto id = fleet->Register(NewRunner("a"));
  ASSERT_TRUE(id.ok());
  const uint64_t first = fleet->NewStreamId();
  ASSERT_TRUE(fleet->Heartbeat({.runner_id = *id, .stream = first}).ok());
  fleet->StreamEnded(*id, first);
  EXPECT_EQ(StateOf(*fleet, *id), "UNHEALTHY");
  EXPECT_FALSE(fleet->Place("s1", Req()).ok());
  // The runner reconnects; the old stream's end, reported late, changes nothing.
  const uint64_t second = fleet->NewStreamId();
  ASSERT_TRUE(fleet->Heartbeat({.runner_id = *id, .stream = second}).ok());
  fleet->StreamEnded(*id, first);
  EXPECT_EQ(StateOf(*fleet, *id), "HEALTHY");
  EXPECT_TRUE(fleet->Place("s1", Req()).ok());
}

TEST_F(FleetTest, HeartbeatsWriteNothingAndSyncWritesOnlyNews) {
  auto fleet = NewFleet();
  std::vector<std::string> ids;
  for (int i = 0; i < 100; ++i) ids.push_back(*fleet->Register(NewRunner(absl::StrCat("r", i))));
  const int upserts = store_.upserts;
  // Ten seconds of heartbeats every 100 ms from 100 runners: 10,000 heartbeats.
  for (int tick = 0; tick < 100; ++tick) {
    now_ += absl::Milliseconds(100);
    for (const auto& id : ids) {
      HeartbeatReport hb;
      hb.runner_id = id;
      if (tick == 50 && id == ids[7]) {
        hb.images = std::vector<CachedImage>{Img("app:1", "sha256:app")};
      }
      ASSERT_TRUE(fleet->Heartbeat(hb).ok());
    }
    if (tick % 10 == 9) {
      ASSERT_TRUE(fleet->Sync().ok());
    }
  }
  EXPECT_EQ(store_.upserts, upserts);
  // A coarse last-seen: at most once per 5 s per runner (twice in 10 s), not 100 times.
  EXPECT_LE(store_.touched, 2 * 100);
  EXPECT_GE(store_.touched, 100);
  EXPECT_EQ(store_.images_written, 1) << "only the runner whose images changed";
  auto snap = store_.inner.Load();
  for (const auto& r : snap->runners) {
    if (r.id == ids[7]) {
      ASSERT_EQ(r.images.size(), 1u);
      EXPECT_EQ(r.images[0].digest, "sha256:app");
    }
  }
  // An unchanged image list (however fresh its last use) is not written again.
  HeartbeatReport same;
  same.runner_id = ids[7];
  same.images = std::vector<CachedImage>{Img("app:1", "sha256:app")};
  same.images->at(0).last_used = now_;
  ASSERT_TRUE(fleet->Heartbeat(same).ok());
  ASSERT_TRUE(fleet->Sync().ok());
  EXPECT_EQ(store_.images_written, 1);
}

TEST_F(FleetTest, SyncReadsDrainingMarks) {
  auto fleet = NewFleet();
  auto id = fleet->Register(NewRunner("a"));
  store_.inner.SetDraining(*id, true);
  EXPECT_TRUE(fleet->Place("s1", Req()).ok()) << "not read yet";
  ASSERT_TRUE(fleet->Sync().ok());
  EXPECT_EQ(StateOf(*fleet, *id), "DRAINING");
  EXPECT_EQ(fleet->Place("s2", Req()).status().code(), absl::StatusCode::kResourceExhausted);
  store_.inner.SetDraining(*id, false);
  ASSERT_TRUE(fleet->Sync().ok());
  EXPECT_TRUE(fleet->Place("s2", Req()).ok());
  // A draining runner that goes silent is still reported LOST.
  store_.inner.SetDraining(*id, true);
  ASSERT_TRUE(fleet->Sync().ok());
  now_ += absl::Minutes(2);
  EXPECT_EQ(StateOf(*fleet, *id), "LOST");
}

TEST_F(FleetTest, SandboxesWithoutPlacementCountAfterAGrace) {
  auto fleet = NewFleet();
  auto id = fleet->Register(NewRunner("a", 3));
  ASSERT_TRUE(fleet->Place("placed", Req()).ok());
  HeartbeatReport hb;
  hb.runner_id = *id;
  hb.allocated = {1500, 768, 3};
  hb.sandbox_ids = std::vector<std::string>{"placed", "orphan-1", "orphan-2"};
  ASSERT_TRUE(fleet->Heartbeat(hb).ok());
  EXPECT_EQ(fleet->List()[0].view.allocated.sandboxes, 1) << "within the grace";
  now_ += absl::Seconds(6);
  ASSERT_TRUE(fleet->Heartbeat({*id, {1500, 768, 3}}).ok());
  auto list = fleet->List();
  EXPECT_EQ(list[0].reserved.sandboxes, 1);
  EXPECT_EQ(list[0].view.allocated.sandboxes, 3);
  EXPECT_EQ(list[0].view.allocated.cpu_millis, 1500);
  EXPECT_EQ(fleet->Place("more", Req()).status().code(), absl::StatusCode::kResourceExhausted)
      << "the runner is full of sandboxes nobody placed";
  // The reconciler stops them: the next report frees the slots.
  hb.sandbox_ids = std::vector<std::string>{"placed"};
  ASSERT_TRUE(fleet->Heartbeat(hb).ok());
  EXPECT_EQ(fleet->List()[0].view.allocated.sandboxes, 1);
  EXPECT_TRUE(fleet->Place("more", Req()).ok());
  // A released placement whose sandbox is still reported (stopping) is not counted at once.
  ASSERT_TRUE(*fleet->Release("placed"));
  ASSERT_TRUE(fleet->Heartbeat({*id}).ok());
  EXPECT_EQ(fleet->List()[0].view.allocated.sandboxes, 1);
}

TEST_F(FleetTest, ARestartedFleetKnowsRunnersAndReservationsAndLosesNoRunnerForItsOwnAbsence) {
  std::string id;
  {
    auto fleet = NewFleet();
    id = *fleet->Register(NewRunner("a", 2));
    ASSERT_TRUE(fleet->Place("x", Req()).ok());
    ASSERT_TRUE(fleet->Place("y", Req()).ok());
    HeartbeatReport hb;
    hb.runner_id = id;
    hb.images = std::vector<CachedImage>{Img("busybox:1.36", "sha256:bb")};
    ASSERT_TRUE(fleet->Heartbeat(hb).ok());
    ASSERT_TRUE(fleet->Sync().ok());
  }
  now_ += absl::Minutes(10);  // the scheduler was down for ten minutes
  auto restarted = NewFleet();
  ASSERT_TRUE(restarted->Load().ok());
  auto list = restarted->List();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].view.id, id);
  EXPECT_EQ(list[0].view.allocated.sandboxes, 2);
  EXPECT_EQ(list[0].state, "UNHEALTHY") << "not LOST: nobody could heartbeat to a dead scheduler";
  ASSERT_EQ(list[0].view.images.size(), 1u);
  ASSERT_TRUE(restarted->Heartbeat({id}).ok());
  EXPECT_EQ(restarted->Place("z", Req()).status().code(), absl::StatusCode::kResourceExhausted)
      << "a full runner must not get a third sandbox";
  ASSERT_TRUE(*restarted->Release("x"));
  auto z = restarted->Place("z", Req());
  ASSERT_TRUE(z.ok());
  EXPECT_TRUE(z->warm) << "the image list came back too";
  EXPECT_EQ(*restarted->Register(NewRunner("a", 2)), id);
  // A runner that never comes back is LOST a full lost_after after the restart.
  now_ += absl::Seconds(59);
  EXPECT_NE(StateOf(*restarted, id), "LOST");
  now_ += absl::Seconds(2);
  EXPECT_EQ(StateOf(*restarted, id), "LOST");
}

// A leader that lost its lock's connection (a database outage) and won the lock back reloads the
// fleet in the same process: runners whose heartbeat streams stayed open are placed on at once,
// with what they reported on the stream (it will not resend unchanged lists); a runner whose
// stream broke meanwhile, and one this process never heard, wait for their next heartbeat.
TEST_F(FleetTest, AReloadKeepsWhatOpenHeartbeatStreamsSaid) {
  auto fleet = NewFleet();
  const std::string a = *fleet->Register(NewRunner("a", 3));
  ASSERT_TRUE(fleet->Place("x", Req()).ok());  // on a, the only runner
  const std::string b = *fleet->Register(NewRunner("b", 3));
  ASSERT_TRUE(fleet->Sync().ok());
  const uint64_t sa = fleet->NewStreamId(), sb = fleet->NewStreamId();
  HeartbeatReport hb{.runner_id = a, .stream = sa};
  hb.images = std::vector<CachedImage>{Img("busybox:1.36", "sha256:bb")};
  hb.sandbox_ids = std::vector<std::string>{"leftover"};
  ASSERT_TRUE(fleet->Heartbeat(hb).ok());
  ASSERT_TRUE(fleet->Heartbeat({.runner_id = b, .stream = sb}).ok());
  // Another scheduler process registered runner c in the store; this one never heard it.
  RunnerView c = NewRunner("c", 3);
  c.last_heartbeat = now_ - absl::Minutes(1);
  const std::string c_id = store_.inner.UpsertRunner(c)->first;
  fleet->StreamEnded(b, sb);
  now_ += absl::Seconds(2);
  ASSERT_TRUE(fleet->Heartbeat({.runner_id = a, .stream = sa}).ok());  // unchanged lists
  ASSERT_TRUE(fleet->Load().ok());
  EXPECT_EQ(StateOf(*fleet, a), "HEALTHY") << "its stream stayed open";
  EXPECT_EQ(StateOf(*fleet, b), "UNHEALTHY") << "its stream broke and it was not heard since";
  EXPECT_EQ(StateOf(*fleet, c_id), "UNHEALTHY") << "not heard by this process: wait for it";
  // The images and sandboxes a reported on its stream are kept; the placement came from the store.
  auto p = fleet->Place("y", Req());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->runner_id, a);
  EXPECT_TRUE(p->warm);
  now_ += absl::Seconds(5);  // the unplaced sandbox's grace ends
  ASSERT_TRUE(fleet->Heartbeat({.runner_id = a, .stream = sa}).ok());
  for (const auto& r : fleet->List()) {
    if (r.view.id == a) {
      EXPECT_EQ(r.view.allocated.sandboxes, 3) << "x, y and the leftover";
    }
  }
  EXPECT_EQ(fleet->Place("z", Req()).status().code(), absl::StatusCode::kResourceExhausted)
      << "a is full; b and c are not heard";
  // The stream's end, reported after the reload, still counts.
  fleet->StreamEnded(a, sa);
  EXPECT_EQ(StateOf(*fleet, a), "UNHEALTHY");
}

TEST_F(FleetTest, AFailedPlacementWriteUndoesTheReservation) {
  auto fleet = NewFleet();
  ASSERT_TRUE(fleet->Register(NewRunner("a", 1)).ok());
  store_.inner.SetFailing(true);
  EXPECT_EQ(fleet->Place("x", Req()).status().code(), absl::StatusCode::kUnavailable);
  store_.inner.SetFailing(false);
  EXPECT_EQ(fleet->List()[0].view.allocated.sandboxes, 0);
  EXPECT_TRUE(fleet->Place("x", Req()).ok());
}

TEST_F(FleetTest, ABatchIsPlacedInOrderAndEachItemGetsItsOwnOutcome) {
  auto fleet = NewFleet();
  ASSERT_TRUE(fleet->Register(NewRunner("a", 2)).ok());
  auto results = fleet->PlaceMany({{"s1", Req()},
                                   {"", Req()},
                                   {"s1", Req()},
                                   {"s2", Req()},
                                   {"s3", Req()},
                                   {"s4", PlacementRequest{"busybox:1.36", "local", -1, 256}}});
  ASSERT_EQ(results.size(), 6u);
  EXPECT_TRUE(results[0].ok());
  EXPECT_EQ(results[1].status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(results[2].ok()) << "the same sandbox twice: one placement";
  EXPECT_EQ(results[2]->runner_id, results[0]->runner_id);
  EXPECT_TRUE(results[3].ok());
  EXPECT_EQ(results[4].status().code(), absl::StatusCode::kResourceExhausted) << "2 slots";
  EXPECT_EQ(results[5].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(fleet->List()[0].view.allocated.sandboxes, 2);

  auto released = fleet->ReleaseMany({"s1", "nothing", "s2", "s1"});
  ASSERT_EQ(released.size(), 4u);
  EXPECT_TRUE(*released[0]);
  EXPECT_FALSE(*released[1]);
  EXPECT_TRUE(*released[2]);
  EXPECT_FALSE(*released[3]);
  EXPECT_EQ(fleet->List()[0].view.allocated.sandboxes, 0);
}

TEST_F(FleetTest, AFailedBatchWriteUndoesEveryReservationOfTheBatch) {
  auto fleet = NewFleet();
  ASSERT_TRUE(fleet->Register(NewRunner("a", 3)).ok());
  ASSERT_TRUE(fleet->Place("kept", Req()).ok());
  store_.inner.SetFailing(true);
  auto results = fleet->PlaceMany({{"x", Req()}, {"kept", Req()}, {"y", Req()}});
  store_.inner.SetFailing(false);
  EXPECT_EQ(results[0].status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(results[1].ok()) << "an existing placement is not undone";
  EXPECT_EQ(results[2].status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(fleet->List()[0].view.allocated.sandboxes, 1);
  EXPECT_TRUE(fleet->Place("x", Req()).ok());
  EXPECT_TRUE(fleet->Place("y", Req()).ok());
}

TEST_F(FleetTest, ConcurrentPlacementsNeverOvercommit) {
  auto fleet = NewFleet();
  for (int i = 0; i < 20; ++i) {
    RunnerView r = NewRunner(absl::StrCat("r", i), 1000);
    r.capacity = {4000, 8192, 1000};  // cpu binds: 4 to 16 sandboxes each
    ASSERT_TRUE(fleet->Register(r).ok());
  }
  std::atomic<int> placed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 200; ++i) {
        PlacementRequest req = Req(absl::StrCat("img", rng() % 5, ":1"));
        req.cpu_millis = 250 << (rng() % 3);
        auto id = absl::StrCat("s", t, "-", i);
        if (fleet->Place(id, req).ok()) {
          ++placed;
          if (rng() % 4 == 0) {
            ASSERT_TRUE(*fleet->Release(id));
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_GT(placed, 0);
  int64_t total = 0;
  for (const auto& s : fleet->List()) {
    EXPECT_LE(s.view.allocated.cpu_millis, s.view.capacity.cpu_millis) << s.view.name;
    EXPECT_EQ(s.view.allocated, s.reserved);
    total += s.view.allocated.sandboxes;
  }
  EXPECT_EQ(total, fleet->Totals().placements);
}

TEST_F(FleetTest, AResizedRunnerIsSeenAtOnceAndStoredAtTheNextSync) {
  auto fleet = NewFleet();
  auto id = *fleet->Register(NewRunner("a", 1));
  ASSERT_TRUE(fleet->Place("x", Req()).ok());
  EXPECT_FALSE(fleet->Place("y", Req()).ok());
  HeartbeatReport hb;
  hb.runner_id = id;
  hb.capacity = ResourceVector{100000, 100000, 2};
  ASSERT_TRUE(fleet->Heartbeat(hb).ok());
  EXPECT_TRUE(fleet->Place("y", Req()).ok());
  const int upserts = store_.upserts;
  ASSERT_TRUE(fleet->Sync().ok());
  EXPECT_EQ(store_.upserts, upserts + 1);
  EXPECT_EQ(store_.inner.Load()->runners[0].capacity.sandboxes, 2);
  ASSERT_TRUE(fleet->Heartbeat(hb).ok());
  ASSERT_TRUE(fleet->Sync().ok());
  EXPECT_EQ(store_.upserts, upserts + 1) << "unchanged: not written again";
}

TEST_F(FleetTest, TotalsCountStatesAndFreeCapacity) {
  auto fleet = NewFleet();
  auto a = *fleet->Register(NewRunner("a", 10));
  auto b = *fleet->Register(NewRunner("b", 10));
  ASSERT_TRUE(fleet->Place("x", Req()).ok());
  now_ += absl::Seconds(6);
  ASSERT_TRUE(fleet->Heartbeat({a}).ok());
  auto t = fleet->Totals();
  EXPECT_EQ(t.runners_by_state["HEALTHY"], 1);
  EXPECT_EQ(t.runners_by_state["UNHEALTHY"], 1);
  EXPECT_EQ(t.runners_by_state["LOST"], 0);
  EXPECT_EQ(t.capacity.sandboxes, 20);
  EXPECT_EQ(t.allocated.sandboxes, 1);
  EXPECT_EQ(t.free.sandboxes, 19);
  EXPECT_EQ(t.schedulable_capacity.sandboxes, 10);
  EXPECT_EQ(t.placements, 1);
  (void)b;
}

}  // namespace
}  // namespace isorun::scheduler
