#pragma once

// What a runner needs from the thing that actually runs sandboxes. Two implementations: the
// simulated driver (no processes; thousands per process for scale tests and benchmarks) and, with
// the runner issue, runc.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "isorun/v1/runner.pb.h"

namespace isorun::runner {

struct CachedImageInfo {
  std::string digest;
  int64_t size_bytes = 0;
  std::vector<std::string> refs;
};

struct StartResult {
  std::string image_digest;
  bool warm = false;
};

class Driver {
 public:
  virtual ~Driver() = default;
  // Idempotent per sandbox id.
  virtual absl::StatusOr<StartResult> Start(const v1::StartSandboxRequest& request) = 0;
  // Returns whether the sandbox existed.
  virtual absl::StatusOr<bool> Stop(const std::string& sandbox_id) = 0;
  // Freeze and thaw every process of a sandbox. NOT_FOUND for an unknown sandbox; idempotent.
  virtual absl::Status Pause(const std::string& sandbox_id) = 0;
  virtual absl::Status Unpause(const std::string& sandbox_id) = 0;
  virtual std::vector<std::string> Sandboxes() = 0;
  virtual std::vector<CachedImageInfo> Images() = 0;
  virtual absl::StatusOr<v1::ExecResponse> Exec(const std::string& sandbox_id,
                                                const v1::ExecRequest& request) = 0;
};

}  // namespace isorun::runner
