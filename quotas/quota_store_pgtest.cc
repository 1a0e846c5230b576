#include "quotas/quota_store.h"

#include "quotas/quota_service.h"
#include "services/kit/shard.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "services/kit/status.h"
#include "tests/support/test_database.h"

namespace isorun::quota {
namespace {

std::string CreateTenant(const testing::TestDatabase& db, const std::string& name, int limit) {
  return db.Scalar(
      "WITH t AS (INSERT INTO accounts.tenants (name) VALUES ('" + name + "') RETURNING id), "
      "l AS (INSERT INTO quota.limits (tenant_id, max_concurrent) SELECT id, " +
      std::to_string(limit) +
      " FROM t RETURNING tenant_id), "
      "u AS (INSERT INTO quota.usage (tenant_id) SELECT tenant_id FROM l RETURNING tenant_id) "
      "SELECT tenant_id FROM u");
}

// Outcomes of racing admissions.
struct Tally {
  std::atomic<int> admitted{0}, refused{0}, other{0};
  void Add(const absl::StatusOr<AdmitResult>& r) {
    if (r.ok()) {
      ++admitted;
    } else if (r.status().code() == absl::StatusCode::kResourceExhausted) {
      ++refused;
    } else {
      ++other;
    }
  }
};

// Exactly `limit` of `tries` racing admissions won, the rest were refused, and the tenant's usage
// and reservations say the same.
void ExpectExactlyLimitWon(testing::TestDatabase& db, const Tally& tally,
                           const std::string& tenant, int limit, int tries) {
  EXPECT_EQ(tally.admitted, limit);
  EXPECT_EQ(tally.refused, tries - limit);
  EXPECT_EQ(tally.other, 0);
  EXPECT_EQ(db.Scalar("SELECT active FROM quota.usage WHERE tenant_id = '" + tenant + "'"),
            std::to_string(limit));
  EXPECT_EQ(db.Scalar("SELECT count(*) FROM quota.reservations"), std::to_string(limit));
}

TEST(QuotaStore, ExactlyLimitWinsWhenFiftyRaceForFive) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 20, Durability::kAsync);
  QuotaStore store(pool);
  std::string tenant = CreateTenant(db, "racer", 5);
  Tally tally;
  std::vector<std::thread> threads;
  for (int i = 0; i < 50; ++i) {
    threads.emplace_back([&, i] { tally.Add(store.Admit(tenant, "sbx_" + std::to_string(i))); });
  }
  for (auto& t : threads) t.join();
  ExpectExactlyLimitWon(db, tally, tenant, 5, 50);
}

TEST(QuotaStore, BatchesRacingForOneTenantAdmitExactlyTheLimit) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 8, Durability::kAsync);
  QuotaStore store(pool);
  std::string tenant = CreateTenant(db, "batches", 25);
  Tally tally;
  std::vector<std::thread> threads;
  for (int b = 0; b < 6; ++b) {
    threads.emplace_back([&, b] {
      std::vector<QuotaStore::AdmitItem> items;
      for (int i = 0; i < 10; ++i) items.push_back({tenant, absl::StrCat("sbx_", b, "_", i)});
      for (const auto& r : store.AdmitMany(items)) tally.Add(r);
    });
  }
  for (auto& t : threads) t.join();
  ExpectExactlyLimitWon(db, tally, tenant, 25, 60);
}

TEST(QuotaStore, EachItemOfABatchGetsItsOwnOutcome) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 2);
  QuotaStore store(pool);
  std::string a = CreateTenant(db, "a", 2);
  std::string b = CreateTenant(db, "b", 1);
  ASSERT_TRUE(store.Admit(a, "held").ok());
  auto results = store.AdmitMany({{a, "held"},
                                  {b, "b1"},
                                  {a, "a1"},
                                  {a, "a2"},
                                  {"not-a-uuid", "x"},
                                  {"00000000-0000-0000-0000-000000000000", "y"},
                                  {b, "b1"},
                                  {b, "b2"},
                                  {a, ""}});
  ASSERT_EQ(results.size(), 9u);
  ASSERT_TRUE(results[0].ok());
  EXPECT_TRUE(results[0]->already_admitted);
  ASSERT_TRUE(results[1].ok());
  EXPECT_FALSE(results[1]->already_admitted);
  EXPECT_EQ(results[1]->active, 1);
  ASSERT_TRUE(results[2].ok());
  EXPECT_EQ(results[2]->active, 2);
  EXPECT_EQ(results[3].status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrorDetailOf(results[3].status())->current(), 2);
  EXPECT_EQ(results[4].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(results[5].status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(results[6].ok()) << "the same sandbox twice in a batch: the second holds the slot";
  EXPECT_TRUE(results[6]->already_admitted);
  EXPECT_EQ(results[7].status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(results[8].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(db.Scalar("SELECT active FROM quota.usage WHERE tenant_id = '" + a + "'"), "2");
  EXPECT_EQ(db.Scalar("SELECT active FROM quota.usage WHERE tenant_id = '" + b + "'"), "1");

  auto released = store.ReleaseMany({"held", "b1", "nothing", "held"});
  ASSERT_EQ(released.size(), 4u);
  EXPECT_TRUE(*released[0]);
  EXPECT_TRUE(*released[1]);
  EXPECT_FALSE(*released[2]);
  EXPECT_FALSE(*released[3]) << "a sandbox named twice is released once";
  EXPECT_EQ(db.Scalar("SELECT active FROM quota.usage WHERE tenant_id = '" + a + "'"), "1");
  EXPECT_EQ(db.Scalar("SELECT active FROM quota.usage WHERE tenant_id = '" + b + "'"), "0");
  EXPECT_EQ(db.Scalar("SELECT count(*) FROM quota.reservations"), "1");
}

TEST(QuotaStore, RefusalCarriesLimitCurrentAndRetryAfter) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 2);
  QuotaStore store(pool);
  std::string tenant = CreateTenant(db, "small", 1);
  ASSERT_TRUE(store.Admit(tenant, "a").ok());
  auto r = store.Admit(tenant, "b");
  ASSERT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  auto detail = ErrorDetailOf(r.status());
  ASSERT_TRUE(detail.has_value());
  EXPECT_EQ(detail->reason(), "CONCURRENT_SANDBOX_LIMIT");
  EXPECT_EQ(detail->limit(), 1);
  EXPECT_EQ(detail->current(), 1);
  EXPECT_GE(detail->retry_after_sec(), 1);
  EXPECT_NE(r.status().message().find("1 of 1"), std::string::npos);
  // The refused admission left nothing behind.
  EXPECT_EQ(db.Scalar("SELECT count(*) FROM quota.reservations"), "1");
}

TEST(QuotaStore, AdmitAndReleaseAreIdempotent) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 2);
  QuotaStore store(pool);
  std::string tenant = CreateTenant(db, "idem", 2);
  auto first = store.Admit(tenant, "a");
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->already_admitted);
  auto again = store.Admit(tenant, "a");
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->already_admitted);
  EXPECT_EQ(again->active, 1);
  auto released = store.Release("a");
  ASSERT_TRUE(released.ok());
  EXPECT_TRUE(*released);
  released = store.Release("a");
  ASSERT_TRUE(released.ok());
  EXPECT_FALSE(*released);
  auto usage = store.GetUsage(tenant);
  ASSERT_TRUE(usage.ok());
  EXPECT_EQ(usage->active, 0);
  EXPECT_EQ(usage->limits.max_concurrent, 2);
}

TEST(QuotaStore, SlotIsFreeRightAfterRelease) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 2, Durability::kAsync);
  QuotaStore store(pool);
  std::string tenant = CreateTenant(db, "cycle", 1);
  for (int i = 0; i < 20; ++i) {
    std::string id = "s" + std::to_string(i);
    ASSERT_TRUE(store.Admit(tenant, id).ok()) << i;
    ASSERT_TRUE(store.Release(id).ok());
  }
}

TEST(QuotaStore, BadTenantIdsAreAnsweredNotCrashed) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 2);
  QuotaStore store(pool);
  EXPECT_EQ(store.Admit("not-a-uuid", "x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.Admit("00000000-0000-0000-0000-000000000000", "x").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(db.Scalar("SELECT count(*) FROM quota.reservations"), "0");
}

}  // namespace
}  // namespace isorun::quota

namespace isorun::quota {
namespace {

TEST(QuotaService, RateChecksFollowTenantLimits) {
  testing::TestDatabase db;
  PgPool pool(db.url(), 4);
  QuotaStore store(pool);
  std::string tenant = CreateTenant(db, "rated", 5);
  db.Scalar("UPDATE quota.limits SET requests_per_sec = 3, creates_per_sec = 1");
  absl::Time now = absl::FromUnixSeconds(1'800'000'000);
  prometheus::Registry registry;
  QuotaService a(store, registry, {}, [&] { return now; });
  auto check = [&](QuotaService& s, v1::RateKind kind) {
    grpc::ServerContext ctx;
    v1::CheckRateRequest req;
    req.set_tenant_id(tenant);
    req.set_key_id("key1");
    req.set_kind(kind);
    v1::CheckRateResponse resp;
    return FromGrpcStatus(s.CheckRate(&ctx, &req, &resp));
  };
  EXPECT_TRUE(check(a, v1::CREATE).ok());
  absl::Status create = check(a, v1::CREATE);
  ASSERT_EQ(create.code(), absl::StatusCode::kResourceExhausted);
  auto detail = ErrorDetailOf(create);
  ASSERT_TRUE(detail.has_value());
  EXPECT_EQ(detail->reason(), "RATE_LIMIT");
  EXPECT_EQ(detail->rate().policy(), "creates");
  EXPECT_EQ(detail->retry_after_sec(), 1);
  // Creates are limited separately: plain requests still pass, up to 3 a second.
  EXPECT_TRUE(check(a, v1::REQUEST).ok());
  EXPECT_TRUE(check(a, v1::REQUEST).ok());
  absl::Status limited = check(a, v1::REQUEST);
  EXPECT_EQ(ErrorDetailOf(limited)->rate().policy(), "requests");
  now += absl::Seconds(1);
  EXPECT_TRUE(check(a, v1::REQUEST).ok());
  EXPECT_TRUE(check(a, v1::CREATE).ok());
}

}  // namespace
}  // namespace isorun::quota
