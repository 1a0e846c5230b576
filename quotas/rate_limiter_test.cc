#include "quotas/rate_limiter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

namespace isorun::quota {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

std::vector<Bucket> One(double rate, int burst) {
  return {Bucket{"t:a", "requests", RateParams{rate, burst}}};
}

TEST(RateLimiter, BurstThenSteadyRate) {
  RateLimiter rl;
  for (int i = 0; i < 5; ++i) {
    auto d = rl.Check(One(5, 5), kT0);
    ASSERT_TRUE(d.allowed) << i;
    EXPECT_EQ(d.remaining, 4 - i);
  }
  auto refused = rl.Check(One(5, 5), kT0);
  EXPECT_FALSE(refused.allowed);
  EXPECT_EQ(refused.remaining, 0);
  EXPECT_EQ(refused.retry_after, absl::Milliseconds(200));
  EXPECT_EQ(refused.policy, "requests");
  // The allowance returns with time: one every 200 ms.
  EXPECT_FALSE(rl.Check(One(5, 5), kT0 + absl::Milliseconds(199)).allowed);
  EXPECT_TRUE(rl.Check(One(5, 5), kT0 + absl::Milliseconds(200)).allowed);
  EXPECT_FALSE(rl.Check(One(5, 5), kT0 + absl::Milliseconds(200)).allowed);
  // Fully refilled after a second.
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(rl.Check(One(5, 5), kT0 + absl::Seconds(2)).allowed);
}

TEST(RateLimiter, RefusedRequestsConsumeNothingFromAnyBucket) {
  RateLimiter rl;
  std::vector<Bucket> req = {{"k:key1", "requests", {100, 100}}, {"t:a", "requests", {100, 100}},
                             {"c:a", "creates", {1, 1}}};
  ASSERT_TRUE(rl.Check(req, kT0).allowed);
  auto second = rl.Check(req, kT0);
  EXPECT_FALSE(second.allowed);
  EXPECT_EQ(second.policy, "creates");
  EXPECT_EQ(second.retry_after, absl::Seconds(1));
  // The refused create did not use up request allowance: 99 plain requests still pass.
  std::vector<Bucket> plain(req.begin(), req.begin() + 2);
  for (int i = 0; i < 99; ++i) ASSERT_TRUE(rl.Check(plain, kT0).allowed) << i;
  EXPECT_FALSE(rl.Check(plain, kT0).allowed);
}

TEST(RateLimiter, ReportsTheTightestBucket) {
  RateLimiter rl;
  std::vector<Bucket> req = {{"k:x", "requests", {10, 10}}, {"c:x", "creates", {2, 2}}};
  auto d = rl.Check(req, kT0);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.policy, "creates");
  EXPECT_EQ(d.remaining, 1);
}

TEST(RateLimiter, ExactUnderConcurrency) {
  RateLimiter rl;
  std::atomic<int> allowed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        std::vector<Bucket> req = {{"k:" + std::to_string(t), "requests", {1000, 1000}},
                                   {"t:shared", "requests", {50, 50}}};
        if (rl.Check(req, kT0).allowed) ++allowed;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(allowed, 50);
}

TEST(RateLimiter, CollectDropsFullBuckets) {
  RateLimiter rl;
  rl.Check(One(10, 10), kT0);
  EXPECT_EQ(rl.size(), 1u);
  EXPECT_EQ(rl.Collect(kT0), 0u);
  EXPECT_EQ(rl.Collect(kT0 + absl::Seconds(1)), 1u);
  EXPECT_EQ(rl.size(), 0u);
}

}  // namespace
}  // namespace isorun::quota
