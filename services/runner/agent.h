#pragma once

// The runner's link to the scheduler: registers (name, address, region, capacity, image cache
// budget, cached images, running sandboxes) and heartbeats at the interval the scheduler asks for,
// registering again when the scheduler no longer knows it (NOT_FOUND) or was unreachable.
//
// Heartbeats go on one long-lived client stream (Scheduler.HeartbeatStream): one small message
// per interval, no call set-up each time, and the scheduler sees at once when the stream breaks.
// A message carries the image and sandbox lists only when they changed (and in full as the first
// message of every stream and every `full_report_every` messages). Against a scheduler without
// the stream it falls back to unary heartbeats. Owns one background thread.

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/channel.h>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "isorun/v1/scheduler.grpc.pb.h"
#include "services/runner/driver.h"

namespace isorun::runner {

struct AgentOptions {
  std::string name;
  std::string address;  // where the scheduler and lifecycle reach this runner
  std::string region;
  int cpu_millis = 0;
  int memory_mb = 0;
  int max_sandboxes = 0;
  int64_t image_cache_bytes = 0;  // the image cache's disk budget; 0: not reported
  int full_report_every = 30;
};

class Agent {
 public:
  Agent(std::shared_ptr<grpc::Channel> scheduler, Driver& driver, AgentOptions options);
  ~Agent();
  void Start();
  void Stop();
  // True once the scheduler accepted the registration.
  bool registered() const { return registered_.load(); }

 private:
  void Run();
  bool Register();
  // Heartbeats on one stream until it ends or Stop(); false when the scheduler has no stream.
  bool StreamHeartbeats();
  void UnaryHeartbeat();
  // Fills a heartbeat; with `full` false, leaves out lists that did not change since the last.
  void FillHeartbeat(v1::HeartbeatRequest* req, bool full);
  int64_t FillImages(const std::vector<CachedImageInfo>& images,
                     google::protobuf::RepeatedPtrField<v1::CachedImage>* out);

  std::unique_ptr<v1::Scheduler::Stub> stub_;
  Driver& driver_;
  const AgentOptions options_;
  std::string runner_id_;
  int interval_ms_ = 1000;
  std::atomic<bool> registered_{false};
  bool streaming_ = true;  // false once the scheduler answered UNIMPLEMENTED
  size_t images_hash_ = 0;
  size_t sandboxes_hash_ = 0;
  absl::Mutex stream_mu_;
  grpc::ClientContext* stream_ctx_ ABSL_GUARDED_BY(stream_mu_) = nullptr;  // to cancel on Stop
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace isorun::runner
