#include "scheduler/prewarmer.h"

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include "services/kit/log.h"
#include "services/kit/server.h"
#include "services/kit/status.h"

namespace isorun::scheduler {

v1::Runner::Stub* GrpcImagePuller::StubFor(const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto& stub = stubs_[address];
  if (!stub) stub = v1::Runner::NewStub(MakeChannel(address));
  return stub.get();
}

absl::StatusOr<CachedImage> GrpcImagePuller::Pull(const std::string& runner_address,
                                                  const std::string& image) {
  v1::PullImageRequest req;
  req.set_image(image);
  v1::PullImageResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout_));
  grpc::Status s = StubFor(runner_address)->PullImage(&ctx, req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  CachedImage out;
  out.digest = resp.image_digest();
  out.size_bytes = resp.size_bytes();
  out.refs.assign(resp.refs().begin(), resp.refs().end());
  return out;
}

Prewarmer::Prewarmer(Fleet& fleet, ImagePuller& puller, int parallel_pulls, prometheus::Counter* ok,
                     prometheus::Counter* failed)
    : fleet_(fleet), puller_(puller), ok_(ok), failed_(failed) {
  for (int i = 0; i < std::max(1, parallel_pulls); ++i) workers_.emplace_back([this] { Work(); });
}

Prewarmer::~Prewarmer() { Stop(); }

void Prewarmer::Start(absl::Duration interval) {
  ticker_ = std::thread([this, interval] {
    while (!stop_.WaitForNotificationWithTimeout(interval)) {
      Enqueue(fleet_.StartPrewarmRound());
    }
  });
}

void Prewarmer::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (ticker_.joinable()) ticker_.join();
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (auto& w : workers_) {
    if (w.joinable()) w.join();
  }
  // Pulls never started are no longer in flight.
  absl::MutexLock lock(&mu_);
  for (const auto& task : queue_) {
    fleet_.FinishPull(task, absl::CancelledError("the scheduler is stopping"));
  }
  queue_.clear();
}

void Prewarmer::Enqueue(std::vector<PullTask> tasks) {
  if (tasks.empty()) return;
  LogInfo("pre-warming", {{"pulls", std::to_string(tasks.size())}});
  absl::MutexLock lock(&mu_);
  for (auto& t : tasks) queue_.push_back(std::move(t));
}

int Prewarmer::RunRound() {
  std::vector<PullTask> tasks = fleet_.StartPrewarmRound();
  const int n = static_cast<int>(tasks.size());
  Enqueue(std::move(tasks));
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || (queue_.empty() && busy_ == 0);
  };
  mu_.Await(absl::Condition(&idle));
  return n;
}

void Prewarmer::Work() {
  while (true) {
    PullTask task;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (stopping_) return;
      task = std::move(queue_.front());
      queue_.pop_front();
      ++busy_;
    }
    auto pulled = puller_.Pull(task.address, task.image);
    if (pulled.ok()) {
      if (ok_ != nullptr) ok_->Increment();
    } else {
      if (failed_ != nullptr) failed_->Increment();
      LogWarn("pre-warm pull failed", {{"runner", task.runner_id},
                                       {"image", task.image},
                                       {"error", std::string(pulled.status().message())}});
    }
    fleet_.FinishPull(task, pulled);
    absl::MutexLock lock(&mu_);
    --busy_;
  }
}

}  // namespace isorun::scheduler
