#include "quotas/exec_leases.h"

#include <gtest/gtest.h>

#include "services/kit/status.h"

namespace isorun::quota {
namespace {

TEST(ExecLeaseTable, TheCapHoldsAndAReleaseFreesAPlace) {
  ExecLeaseTable table;
  const absl::Time now = absl::FromUnixSeconds(1000);
  const absl::Duration ttl = absl::Seconds(10);
  EXPECT_EQ(*table.Acquire({"t", "a"}, 2, ttl, now), 1);
  EXPECT_EQ(*table.Acquire({"t", "b"}, 2, ttl, now), 2);
  auto refused = table.Acquire({"t", "c"}, 2, ttl, now);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  auto detail = ErrorDetailOf(refused.status());
  ASSERT_TRUE(detail.has_value());
  EXPECT_EQ(detail->reason(), "EXEC_LIMIT");
  EXPECT_EQ(detail->limit(), 2);
  EXPECT_EQ(detail->current(), 2);
  EXPECT_EQ(detail->retry_after_sec(), 1);
  // Taking a held lease again renews it and takes no second place.
  EXPECT_EQ(*table.Acquire({"t", "a"}, 2, ttl, now), 2);
  // Another tenant is not affected.
  EXPECT_EQ(*table.Acquire({"u", "a"}, 2, ttl, now), 1);
  EXPECT_EQ(table.Release({{"t", "a"}, {"t", "nope"}}), 1);
  EXPECT_EQ(*table.Acquire({"t", "c"}, 2, ttl, now), 2);
}

TEST(ExecLeaseTable, LeasesLapseUnlessRenewedAndRenewalRestoresUnknownOnes) {
  ExecLeaseTable table;
  absl::Time now = absl::FromUnixSeconds(1000);
  const absl::Duration ttl = absl::Seconds(3);
  ASSERT_TRUE(table.Acquire({"t", "kept"}, 2, ttl, now).ok());
  ASSERT_TRUE(table.Acquire({"t", "dead"}, 2, ttl, now).ok());
  // Only "kept" is renewed (its holder lives); "dead"'s holder was killed.
  now += absl::Seconds(2);
  EXPECT_EQ(table.Renew({{"t", "kept"}}, ttl, now), 0);
  now += absl::Seconds(2);
  EXPECT_EQ(table.Running("t", now), 1);
  EXPECT_TRUE(table.Acquire({"t", "new"}, 2, ttl, now).ok());
  EXPECT_FALSE(table.Acquire({"t", "more"}, 2, ttl, now).ok());
  // A replica that never saw a lease (its tenant moved here) counts it from its renewal on, even
  // beyond the cap: the command runs either way; new ones wait until the tenant is under it.
  ExecLeaseTable other;
  ASSERT_TRUE(other.Acquire({"t", "x"}, 2, ttl, now).ok());
  EXPECT_EQ(other.Renew({{"t", "kept"}, {"t", "new"}}, ttl, now), 2);
  EXPECT_EQ(other.Running("t", now), 3);
  EXPECT_FALSE(other.Acquire({"t", "y"}, 2, ttl, now).ok());
  // Collect drops what lapsed.
  EXPECT_EQ(other.Collect(now + absl::Seconds(4)), 3u);
  EXPECT_EQ(other.Running("t", now + absl::Seconds(4)), 0);
}

}  // namespace
}  // namespace isorun::quota
