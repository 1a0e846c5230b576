#pragma once

// The runner's link to the scheduler: registers (name, address, region, capacity, cached images,
// running sandboxes) and heartbeats at the interval the scheduler asks for, registering again when
// the scheduler no longer knows it (NOT_FOUND) or was unreachable. Owns one background thread.

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/channel.h>

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
  void FillImages(google::protobuf::RepeatedPtrField<v1::CachedImage>* out);

  std::unique_ptr<v1::Scheduler::Stub> stub_;
  Driver& driver_;
  const AgentOptions options_;
  std::string runner_id_;
  int interval_ms_ = 1000;
  std::atomic<bool> registered_{false};
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace isorun::runner
