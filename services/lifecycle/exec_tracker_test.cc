#include "services/lifecycle/exec_tracker.h"

#include <gtest/gtest.h>

#include <string>

#include "services/kit/status.h"

namespace isorun::lifecycle {
namespace {

std::string ReasonOf(const absl::Status& s) {
  auto detail = ErrorDetailOf(s);
  return detail ? detail->reason() : "";
}

TEST(ExecTracker, SandboxCapHoldsBesidesTheTenantCap) {
  ExecTracker tracker(/*per_sandbox_limit=*/2);
  auto a1 = tracker.Begin("t", "sbx_a", 10, 60);
  auto a2 = tracker.Begin("t", "sbx_a", 10, 60);
  ASSERT_TRUE(a1.ok() && a2.ok());
  // The sandbox is full though the tenant has room: 429 EXEC_LIMIT naming the sandbox's cap.
  auto a3 = tracker.Begin("t", "sbx_a", 10, 60);
  ASSERT_EQ(a3.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ReasonOf(a3.status()), "EXEC_LIMIT");
  auto detail = ErrorDetailOf(a3.status());
  ASSERT_TRUE(detail.has_value());
  EXPECT_EQ(detail->limit(), 2);
  EXPECT_EQ(detail->current(), 2);
  // A refused call holds nothing; another sandbox of the tenant still runs commands.
  EXPECT_EQ(tracker.running("t"), 2);
  auto b1 = tracker.Begin("t", "sbx_b", 10, 60);
  EXPECT_TRUE(b1.ok());
  EXPECT_EQ(tracker.running("t"), 3);
  // An ended call frees its place in both counts.
  a1->reset();
  EXPECT_EQ(tracker.running("t"), 2);
  EXPECT_TRUE(tracker.Begin("t", "sbx_a", 10, 60).ok());
}

TEST(ExecTracker, TenantCapHoldsAcrossSandboxes) {
  ExecTracker tracker(/*per_sandbox_limit=*/16);
  auto a = tracker.Begin("t", "sbx_a", 2, 60);
  auto b = tracker.Begin("t", "sbx_b", 2, 60);
  ASSERT_TRUE(a.ok() && b.ok());
  auto c = tracker.Begin("t", "sbx_c", 2, 60);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ReasonOf(c.status()), "EXEC_LIMIT");
  // Another tenant is not affected.
  EXPECT_TRUE(tracker.Begin("u", "sbx_d", 2, 60).ok());
}

TEST(ExecTracker, RunningCallsKeepTheirSandboxActive) {
  ExecTracker tracker(16);
  absl::Time now = absl::Now();
  {
    auto t = tracker.Begin("t", "sbx_a", 2, /*timeout_sec=*/3);
    ASSERT_TRUE(t.ok());
    // Moved well within the sandbox's 3 s timeout, for as long as the call runs.
    EXPECT_TRUE(tracker.DueForTouch(now).empty());
    EXPECT_EQ(tracker.DueForTouch(now + absl::Seconds(1.1)), std::vector<std::string>{"sbx_a"});
    EXPECT_EQ(tracker.DueForTouch(now + absl::Seconds(2.2)), std::vector<std::string>{"sbx_a"});
  }
  EXPECT_TRUE(tracker.DueForTouch(now + absl::Seconds(10)).empty());
}

}  // namespace
}  // namespace isorun::lifecycle
