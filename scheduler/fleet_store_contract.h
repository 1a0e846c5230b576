#pragma once

// The contract every FleetStore keeps, run by fleet_test.cc (MemoryFleetStore) and
// fleet_pgtest.cc (SchedulerStore on Postgres).

#include <gtest/gtest.h>

#include <algorithm>

#include "scheduler/fleet_store.h"

namespace isorun::scheduler {

inline RunnerView ContractRunner(const std::string& name) {
  RunnerView r;
  r.name = name;
  r.address = "127.0.0.1:1";
  r.region = "local";
  r.capacity = {4000, 8192, 10};
  r.image_cache_bytes = 1 << 30;
  r.image_cache_used_bytes = 300;
  CachedImage img;
  img.digest = "sha256:aaa";
  img.size_bytes = 300;
  img.refs = {"busybox:1.36", "registry:5000/busybox:1.36"};
  img.last_used = absl::FromUnixSeconds(1'800'000'000);
  r.images.push_back(img);
  return r;
}

// `set_draining` marks a runner as an operator would.
template <typename SetDraining>
void RunFleetStoreContract(FleetStore& store, SetDraining set_draining) {
  auto a = store.UpsertRunner(ContractRunner("a"));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_FALSE(a->second);
  auto again = store.UpsertRunner(ContractRunner("a"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->first, a->first) << "a runner keeps its id across registrations";
  auto b = store.UpsertRunner(ContractRunner("b"));
  ASSERT_TRUE(b.ok());
  EXPECT_NE(b->first, a->first);

  const absl::Time seen = absl::FromUnixSeconds(2'000'000'000);
  ASSERT_TRUE(store.TouchRunners({{a->first, seen}, {"rn_unknown", seen}}).ok());
  CachedImage other;
  other.digest = "sha256:bbb";
  other.size_bytes = 700;
  other.refs = {"app:2"};
  ASSERT_TRUE(store.ReplaceImages({{b->first, {other}, 700}, {"rn_unknown", {other}, 1}}).ok());

  set_draining(b->first);
  auto draining = store.DrainingRunners();
  ASSERT_TRUE(draining.ok());
  EXPECT_EQ(*draining, std::vector<std::string>{b->first});

  StoredPlacement p{"sbx_1", a->first, 500, 256, "busybox:1.36", true, absl::Now()};
  ASSERT_TRUE(store.InsertPlacement(p).ok());
  ASSERT_TRUE(store.InsertPlacement(p).ok()) << "idempotent";
  StoredPlacement q{"sbx_2", b->first, 100, 64, "app:2", false, absl::Now()};
  ASSERT_TRUE(store.InsertPlacement(q).ok());
  auto deleted = store.DeletePlacement("sbx_2");
  ASSERT_TRUE(deleted.ok());
  EXPECT_TRUE(*deleted);
  EXPECT_FALSE(*store.DeletePlacement("sbx_2"));

  auto snap = store.Load();
  ASSERT_TRUE(snap.ok()) << snap.status();
  ASSERT_EQ(snap->runners.size(), 2u);
  std::sort(snap->runners.begin(), snap->runners.end(),
            [](const RunnerView& x, const RunnerView& y) { return x.name < y.name; });
  const RunnerView& ra = snap->runners[0];
  const RunnerView& rb = snap->runners[1];
  EXPECT_EQ(ra.id, a->first);
  EXPECT_EQ(ra.capacity, (ResourceVector{4000, 8192, 10}));
  EXPECT_EQ(ra.image_cache_bytes, 1 << 30);
  EXPECT_GE(ra.last_heartbeat, seen);
  EXPECT_FALSE(ra.draining);
  ASSERT_EQ(ra.images.size(), 1u);
  EXPECT_EQ(ra.images[0].digest, "sha256:aaa");
  EXPECT_EQ(ra.images[0].size_bytes, 300);
  auto refs = ra.images[0].refs;
  std::sort(refs.begin(), refs.end());
  EXPECT_EQ(refs, (std::vector<std::string>{"busybox:1.36", "registry:5000/busybox:1.36"}));
  EXPECT_EQ(ra.images[0].last_used, absl::FromUnixSeconds(1'800'000'000));
  EXPECT_TRUE(rb.draining);
  ASSERT_EQ(rb.images.size(), 1u);
  EXPECT_EQ(rb.images[0].digest, "sha256:bbb");
  EXPECT_EQ(rb.image_cache_used_bytes, 700);
  ASSERT_EQ(snap->placements.size(), 1u);
  EXPECT_EQ(snap->placements[0].sandbox_id, "sbx_1");
  EXPECT_EQ(snap->placements[0].runner_id, a->first);
  EXPECT_EQ(snap->placements[0].cpu_millis, 500);
  EXPECT_EQ(snap->placements[0].memory_mb, 256);
  EXPECT_TRUE(snap->placements[0].warm);
}

}  // namespace isorun::scheduler
