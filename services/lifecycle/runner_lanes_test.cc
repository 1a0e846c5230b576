#include "services/lifecycle/runner_lanes.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace isorun::lifecycle {
namespace {

// A runner whose calls hang holds up only its own lane: the other lane's jobs run meanwhile.
// No timing: the stuck job waits for a notification the test gives only at the end, and every
// wait below is for an event that must come (the deadlines are bounds, never margins).
TEST(RunnerLanes, AStuckLaneHoldsUpOnlyItself) {
  RunnerLanes lanes;
  absl::Notification started, release;
  auto stuck = lanes.Submit("a", [&] {
    started.Notify();
    release.WaitForNotification();
  });
  std::vector<int> order;
  std::vector<RunnerLanes::Done> done;
  for (int i = 0; i < 3; ++i) {
    done.push_back(lanes.Submit("b", [&order, i] { order.push_back(i); }));
  }
  // Queued behind the stuck job: it cannot run before the release.
  std::atomic<bool> second_on_a{false};
  auto after_stuck = lanes.Submit("a", [&] { second_on_a = true; });
  const absl::Time bound = absl::Now() + absl::Seconds(60);
  ASSERT_TRUE(RunnerLanes::WaitAll(done, bound)) << "lane b waited for lane a";
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2})) << "one lane runs its jobs in order";
  ASSERT_TRUE(lanes.WaitIdle("b", bound));
  EXPECT_FALSE(lanes.Busy("b"));
  EXPECT_EQ(lanes.BusyRunners(), std::set<std::string>{"a"});
  ASSERT_TRUE(started.WaitForNotificationWithDeadline(bound));
  EXPECT_TRUE(lanes.Busy("a"));
  EXPECT_FALSE(stuck->HasBeenNotified());
  EXPECT_FALSE(after_stuck->HasBeenNotified());
  EXPECT_FALSE(second_on_a.load());
  release.Notify();
  EXPECT_TRUE(RunnerLanes::WaitAll({stuck, after_stuck}, bound));
  EXPECT_TRUE(second_on_a.load());
  ASSERT_TRUE(lanes.WaitIdle("a", bound));
  EXPECT_TRUE(lanes.BusyRunners().empty());
}

// After a call to a runner ran out its deadline, its calls fail at once for the cool-off; a
// refusal (UNAVAILABLE: the runner is down or restarting), other failures and other runners
// are not affected. The cool-off runs on a clock of the test's own.
TEST(RunnerLanes, ARunnerThatDidNotAnswerIsSkippedForTheCoolOff) {
  absl::Mutex clock_mu;
  absl::Time now = absl::FromUnixSeconds(1000000);
  auto clock = [&] {
    absl::MutexLock lock(&clock_mu);
    return now;
  };
  auto advance = [&](absl::Duration d) {
    absl::MutexLock lock(&clock_mu);
    now += d;
  };
  RunnerLanes lanes(4, absl::Seconds(5), clock);
  int calls = 0;
  auto timeout = [&] {
    ++calls;
    return absl::DeadlineExceededError("deadline");
  };
  EXPECT_EQ(lanes.Call("a", timeout).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(lanes.Call("a", timeout).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(calls, 1) << "the second call did not reach the runner";
  advance(absl::Seconds(4));
  EXPECT_EQ(lanes.Call("a", timeout).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(calls, 1) << "still within the cool-off";
  EXPECT_TRUE(lanes.Call("b", [] { return absl::OkStatus(); }).ok());
  EXPECT_EQ(lanes.Call("c", [] { return absl::NotFoundError("x"); }).code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(lanes.Call("c", [] { return absl::OkStatus(); }).ok());
  // A runner that refuses (down, restarting) is asked again at the next call.
  int refused = 0;
  EXPECT_EQ(lanes.Call("d",
                       [&] {
                         ++refused;
                         return absl::UnavailableError("connection refused");
                       })
                .code(),
            absl::StatusCode::kUnavailable);
  EXPECT_TRUE(lanes.Call("d", [&] {
                     ++refused;
                     return absl::OkStatus();
                   }).ok());
  EXPECT_EQ(refused, 2);
  advance(absl::Seconds(1));
  EXPECT_TRUE(lanes.Call("a", [&] {
                     ++calls;
                     return absl::OkStatus();
                   }).ok());
  EXPECT_EQ(calls, 2) << "after the cool-off the runner is tried again";
}

// More lanes than threads: every job still runs.
TEST(RunnerLanes, MoreLanesThanThreadsAllRun) {
  std::atomic<int> ran{0};
  std::vector<RunnerLanes::Done> done;
  {
    RunnerLanes lanes(2);
    for (int i = 0; i < 20; ++i) {
      done.push_back(lanes.Submit("r" + std::to_string(i % 7), [&] { ++ran; }));
    }
    EXPECT_TRUE(RunnerLanes::WaitAll(done, absl::Now() + absl::Seconds(10)));
  }
  EXPECT_EQ(ran.load(), 20);
}

}  // namespace
}  // namespace isorun::lifecycle
