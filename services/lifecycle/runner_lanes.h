#pragma once

// Work on runners, one lane per runner address: a lane runs its jobs one after another on a
// thread of its own while it has any, and lanes run in parallel. A runner whose port black-holes
// (every call waits out its deadline) holds up only its own lane, never the idle reaper's or the
// reconciler's work on other runners. Bounded: at most `max_lanes` lanes run at once (a job of
// another lane waits for a free one).
//
// Also remembers runners that did not answer: after a call to a runner ran out its deadline
// (DEADLINE_EXCEEDED: a black-holed port, a hung runner), its further calls fail at once for
// `cool_off`, so a lane with many sandboxes of a silent runner drains in one deadline, not one
// per sandbox; the next call after the cool-off tries the runner again. Other failures cost no
// time (a runner that is down or restarting refuses at once, UNAVAILABLE) and leave the next
// call free to reach it the moment it is back.
//
// Thread-safe.

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace isorun::lifecycle {

class RunnerLanes {
 public:
  // `now` is the clock of the cool-off (tests pass one of their own).
  explicit RunnerLanes(int max_lanes = 64, absl::Duration cool_off = absl::Seconds(5),
                       std::function<absl::Time()> now = [] { return absl::Now(); });
  // Waits for every queued job to run.
  ~RunnerLanes();
  RunnerLanes(const RunnerLanes&) = delete;
  RunnerLanes& operator=(const RunnerLanes&) = delete;

  using Done = std::shared_ptr<absl::Notification>;
  // Queues `job` on `runner`'s lane; the notification fires once it has run.
  Done Submit(const std::string& runner, std::function<void()> job);
  // Whether `runner`'s lane has a job queued or running.
  bool Busy(const std::string& runner);
  // The runners whose lanes have a job queued or running.
  std::set<std::string> BusyRunners();
  // Waits until `runner`'s lane has nothing queued or running, or `deadline` passed; true when
  // idle.
  bool WaitIdle(const std::string& runner, absl::Time deadline);
  // Waits until every one of `done` fired or `deadline` passed; true when all fired.
  static bool WaitAll(const std::vector<Done>& done, absl::Time deadline);

  // Calls `call` unless `runner` ran out a deadline within the cool-off; records its outcome.
  absl::Status Call(const std::string& runner, const std::function<absl::Status()>& call);

 private:
  struct Lane {
    std::deque<std::pair<std::function<void()>, Done>> jobs;
    bool running = false;
  };
  void Drain(const std::string& runner);
  void StartReady() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int max_lanes_;
  const absl::Duration cool_off_;
  const std::function<absl::Time()> now_;
  absl::Mutex mu_;
  std::map<std::string, Lane> lanes_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> ready_ ABSL_GUARDED_BY(mu_);  // lanes with jobs waiting for a thread
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, absl::Time> silent_until_ ABSL_GUARDED_BY(mu_);
};

}  // namespace isorun::lifecycle
