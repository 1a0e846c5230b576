#include "services/lifecycle/runner_lanes.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"

namespace isorun::lifecycle {

RunnerLanes::RunnerLanes(int max_lanes, absl::Duration cool_off,
                         std::function<absl::Time()> now)
    : max_lanes_(std::max(1, max_lanes)), cool_off_(cool_off), now_(std::move(now)) {}

RunnerLanes::~RunnerLanes() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](RunnerLanes* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
        return self->running_ == 0 && self->ready_.empty();
      },
      this));
}

RunnerLanes::Done RunnerLanes::Submit(const std::string& runner, std::function<void()> job) {
  auto done = std::make_shared<absl::Notification>();
  absl::MutexLock lock(&mu_);
  Lane& lane = lanes_[runner];
  lane.jobs.emplace_back(std::move(job), done);
  if (!lane.running && lane.jobs.size() == 1) {
    lane.running = true;  // claimed: queued for a thread or running
    ready_.push_back(runner);
    StartReady();
  }
  return done;
}

void RunnerLanes::StartReady() {
  while (running_ < max_lanes_ && !ready_.empty()) {
    std::string runner = std::move(ready_.front());
    ready_.pop_front();
    ++running_;
    std::thread([this, runner] { Drain(runner); }).detach();
  }
}

void RunnerLanes::Drain(const std::string& runner) {
  for (;;) {
    std::function<void()> job;
    Done done;
    {
      absl::MutexLock lock(&mu_);
      Lane& lane = lanes_[runner];
      if (lane.jobs.empty()) {
        lane.running = false;
        lanes_.erase(runner);
        --running_;
        StartReady();
        return;
      }
      job = std::move(lane.jobs.front().first);
      done = lane.jobs.front().second;
      lane.jobs.pop_front();
    }
    job();
    done->Notify();
  }
}

bool RunnerLanes::Busy(const std::string& runner) {
  absl::MutexLock lock(&mu_);
  auto it = lanes_.find(runner);
  return it != lanes_.end() && (it->second.running || !it->second.jobs.empty());
}

std::set<std::string> RunnerLanes::BusyRunners() {
  absl::MutexLock lock(&mu_);
  std::set<std::string> out;
  for (const auto& [runner, lane] : lanes_) {
    if (lane.running || !lane.jobs.empty()) out.insert(runner);
  }
  return out;
}

bool RunnerLanes::WaitIdle(const std::string& runner, absl::Time deadline) {
  struct Args {
    RunnerLanes* self;
    const std::string* runner;
  } args{this, &runner};
  absl::MutexLock lock(&mu_);
  // A lane is erased (under mu_) once it has run its last job.
  return mu_.AwaitWithDeadline(
      absl::Condition(
          +[](Args* a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(a->self->mu_) {
            return a->self->lanes_.count(*a->runner) == 0;
          },
          &args),
      deadline);
}

bool RunnerLanes::WaitAll(const std::vector<Done>& done, absl::Time deadline) {
  for (const auto& d : done) {
    if (!d->WaitForNotificationWithDeadline(deadline)) return false;
  }
  return true;
}

absl::Status RunnerLanes::Call(const std::string& runner,
                               const std::function<absl::Status()>& call) {
  {
    absl::MutexLock lock(&mu_);
    auto it = silent_until_.find(runner);
    if (it != silent_until_.end()) {
      if (now_() < it->second) {
        return absl::UnavailableError(
            absl::StrCat("runner ", runner, " did not answer within its deadline a moment ago; "
                         "will retry"));
      }
      silent_until_.erase(it);
    }
  }
  absl::Status s = call();
  // Only a deadline run out is a runner that costs time to ask; a refusal (UNAVAILABLE: down,
  // restarting) comes at once, and the runner may answer the very next call.
  if (s.code() == absl::StatusCode::kDeadlineExceeded) {
    absl::MutexLock lock(&mu_);
    silent_until_[runner] = now_() + cool_off_;
  }
  return s;
}

}  // namespace isorun::lifecycle
