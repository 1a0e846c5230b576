#pragma once

// Runs pre-warming (policy in prewarm.h): every interval asks the fleet for a round of pulls and
// makes the runners' PullImage calls on a small pool of worker threads, reporting each result
// back to the fleet (which marks the image cached at once; the runner's next heartbeat confirms).
// Owns its threads; Stop() (or the destructor) waits for calls in flight.

#include <grpcpp/channel.h>

#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "isorun/v1/runner.grpc.pb.h"
#include "prometheus/counter.h"
#include "scheduler/fleet.h"

namespace isorun::scheduler {

// Asks a runner to pull an image. Thread-safe.
class ImagePuller {
 public:
  virtual ~ImagePuller() = default;
  virtual absl::StatusOr<CachedImage> Pull(const std::string& runner_address,
                                           const std::string& image) = 0;
};

// Over isorun.v1.Runner/PullImage, one channel per runner address.
class GrpcImagePuller final : public ImagePuller {
 public:
  explicit GrpcImagePuller(absl::Duration timeout) : timeout_(timeout) {}
  absl::StatusOr<CachedImage> Pull(const std::string& runner_address,
                                   const std::string& image) override;

 private:
  v1::Runner::Stub* StubFor(const std::string& address);

  const absl::Duration timeout_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<v1::Runner::Stub>> stubs_ ABSL_GUARDED_BY(mu_);
};

class Prewarmer {
 public:
  // `ok` and `failed` count finished pulls (may be null).
  Prewarmer(Fleet& fleet, ImagePuller& puller, int parallel_pulls, prometheus::Counter* ok,
            prometheus::Counter* failed);
  ~Prewarmer();

  // Starts a round every `interval`.
  void Start(absl::Duration interval);
  void Stop();

  // Plans one round, runs its pulls and waits for them. Returns how many pulls it made.
  int RunRound();

 private:
  void Work();
  void Enqueue(std::vector<PullTask> tasks);

  Fleet& fleet_;
  ImagePuller& puller_;
  prometheus::Counter* const ok_;
  prometheus::Counter* const failed_;

  absl::Mutex mu_;
  std::deque<PullTask> queue_ ABSL_GUARDED_BY(mu_);
  int busy_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
  std::thread ticker_;
  absl::Notification stop_;
};

}  // namespace isorun::scheduler
