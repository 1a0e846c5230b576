#include "services/kit/client_limits.h"

#include "gtest/gtest.h"

namespace isorun::http {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'700'000'000);

TEST(ClientLimits, CapsConnectionsPerAddress) {
  ClientLimits limits(2, 0);
  EXPECT_TRUE(limits.Open("10.0.0.1", kT0));
  EXPECT_TRUE(limits.Open("10.0.0.1", kT0));
  EXPECT_FALSE(limits.Open("10.0.0.1", kT0));
  EXPECT_TRUE(limits.Open("10.0.0.2", kT0));  // another address is not affected
  limits.Close("10.0.0.1");
  EXPECT_TRUE(limits.Open("10.0.0.1", kT0));
}

TEST(ClientLimits, RateIsATokenBucketPerAddress) {
  ClientLimits limits(0, 10, 3);
  absl::Duration wait;
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(limits.AllowRequest("a", kT0, &wait)) << i;
  EXPECT_FALSE(limits.AllowRequest("a", kT0, &wait));
  EXPECT_GT(wait, absl::ZeroDuration());
  EXPECT_LE(wait, absl::Milliseconds(100));
  EXPECT_TRUE(limits.AllowRequest("b", kT0, &wait));
  // 100 ms later one more token is there, and only one.
  EXPECT_TRUE(limits.AllowRequest("a", kT0 + absl::Milliseconds(100), &wait));
  EXPECT_FALSE(limits.AllowRequest("a", kT0 + absl::Milliseconds(100), &wait));
}

TEST(ClientLimits, ABucketOutlivesTheConnections) {
  ClientLimits limits(5, 1, 1);
  absl::Duration wait;
  ASSERT_TRUE(limits.Open("a", kT0));
  EXPECT_TRUE(limits.AllowRequest("a", kT0, &wait));
  limits.Close("a");
  ASSERT_TRUE(limits.Open("a", kT0));
  EXPECT_FALSE(limits.AllowRequest("a", kT0, &wait)) << "a new connection refilled the bucket";
}

TEST(ClientLimits, TheTableStaysBounded) {
  ClientLimits limits(0, 1000, 10);
  absl::Duration wait;
  for (int i = 0; i < 100000; ++i) {
    limits.AllowRequest("10.1." + std::to_string(i), kT0 + absl::Seconds(i), &wait);
  }
  EXPECT_LT(limits.tracked(), 10000u);
}

TEST(ClientLimits, DisabledLetsEverythingThrough) {
  ClientLimits limits(0, 0);
  absl::Duration wait;
  for (int i = 0; i < 1000; ++i) {
    EXPECT_TRUE(limits.Open("a", kT0));
    EXPECT_TRUE(limits.AllowRequest("a", kT0, &wait));
  }
}

}  // namespace
}  // namespace isorun::http
