#pragma once

// The simulated driver: keeps sandboxes and an image cache in memory and runs nothing. A cold
// image costs `pull_delay`, any start `start_delay`, so benchmarks can model cold and warm starts.
// `fail_images_containing` makes starts of matching images fail, to test the compensation paths
// of create with real processes.

#include <map>
#include <set>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "services/runner/driver.h"

namespace isorun::runner {

struct SimOptions {
  absl::Duration pull_delay = absl::ZeroDuration();
  absl::Duration start_delay = absl::ZeroDuration();
  std::string fail_images_containing;
};

class SimDriver final : public Driver {
 public:
  explicit SimDriver(SimOptions options = {}) : options_(std::move(options)) {}

  absl::StatusOr<StartResult> Start(const v1::StartSandboxRequest& request) override;
  absl::StatusOr<bool> Stop(const std::string& sandbox_id) override;
  absl::Status Pause(const std::string& sandbox_id) override;
  absl::Status Unpause(const std::string& sandbox_id) override;
  std::vector<std::string> Sandboxes() override;
  bool IsPaused(const std::string& sandbox_id);
  std::vector<CachedImageInfo> Images() override;
  // Marks the image cached after `pull_delay` (none when it is cached already).
  absl::StatusOr<CachedImageInfo> Pull(const std::string& image) override;
  // Simulated sandboxes have no network: a profile change is accepted and nothing is logged.
  absl::Status SetNetwork(const std::string& sandbox_id, const v1::NetworkPolicy& policy) override;
  absl::StatusOr<std::vector<v1::EgressLogEntry>> EgressLog(const std::string& sandbox_id) override;
  absl::StatusOr<v1::ExecResponse> Exec(const std::string& sandbox_id,
                                        const v1::ExecRequest& request) override;
  absl::StatusOr<int> ExecStream(const std::string& sandbox_id, const v1::ExecRequest& request,
                                 const ExecSink& sink,
                                 const std::function<bool()>& cancelled) override;

 private:
  const SimOptions options_;
  absl::Mutex mu_;
  std::map<std::string, std::string> sandboxes_ ABSL_GUARDED_BY(mu_);  // id -> image
  std::set<std::string> images_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> paused_ ABSL_GUARDED_BY(mu_);
};

// A made-up but stable digest for an image reference.
std::string SimulatedDigest(const std::string& image);

}  // namespace isorun::runner
