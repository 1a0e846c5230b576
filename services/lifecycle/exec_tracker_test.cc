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

TEST(ExecTracker, TenantCapHoldsAcrossSandboxes) {
  ExecTracker tracker;
  auto a = tracker.Begin("t", "sbx_a", 2, 60);
  auto b = tracker.Begin("t", "sbx_b", 2, 60);
  ASSERT_TRUE(a.ok() && b.ok());
  auto c = tracker.Begin("t", "sbx_c", 2, 60);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ReasonOf(c.status()), "EXEC_LIMIT");
  // Another tenant is not affected; a limit of 0 is no cap here (the quota's leases cap).
  EXPECT_TRUE(tracker.Begin("u", "sbx_d", 2, 60).ok());
  auto d = tracker.Begin("t", "sbx_d", 0, 60);
  EXPECT_TRUE(d.ok());
  EXPECT_EQ(tracker.running("t"), 3);
  a->reset();
  EXPECT_EQ(tracker.running("t"), 2);
}

TEST(ExecTracker, RunningCallsKeepTheirSandboxActive) {
  ExecTracker tracker;
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
