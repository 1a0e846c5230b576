#pragma once

// What a runner needs from the thing that actually runs sandboxes. Two implementations: the
// simulated driver (no processes; thousands per process for scale tests and benchmarks) and the
// runc driver (real OCI containers, runc_driver.h).

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "isorun/v1/runner.pb.h"

namespace isorun::runner {

struct CachedImageInfo {
  std::string digest;
  int64_t size_bytes = 0;
  std::vector<std::string> refs;
  int sandboxes = 0;  // sandboxes using it now (never evicted while > 0)
  absl::Time last_used;
};

struct StartResult {
  std::string image_digest;
  bool warm = false;
};

// Receives streamed output (a chunk with stdout or stderr). Returns false when the receiver is
// gone, which stops the command.
using ExecSink = std::function<bool(const v1::ExecChunk&)>;

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
  // Puts `image` in the cache without starting anything (the scheduler's pre-warming); answers
  // at once when it is cached already. Idempotent.
  virtual absl::StatusOr<CachedImageInfo> Pull(const std::string& image) {
    return absl::UnimplementedError("this runner driver does not pull images ahead of demand");
  }
  // The pull of `image` in progress, if any: phase "PULLING" (bytes so far and in all, 0 when
  // unknown) or "UNPACKING"; nullopt when none runs.
  virtual std::optional<v1::StartProgress> PullProgress(const std::string& image) {
    return std::nullopt;
  }
  // A process in the sandbox's network namespace (its init) while the sandbox runs or is paused;
  // 0 when there is none (unknown sandbox, or a driver without processes). The public-URL
  // tunnel and the port listing enter that namespace.
  virtual int NetnsPid(const std::string& sandbox_id) { return 0; }
  // Replaces a running or hibernated sandbox's network profile at once (already validated).
  virtual absl::Status SetNetwork(const std::string& sandbox_id,
                                  const v1::NetworkPolicy& policy) = 0;
  // Recent connection attempts of the sandbox, oldest first.
  virtual absl::StatusOr<std::vector<v1::EgressLogEntry>> EgressLog(
      const std::string& sandbox_id) = 0;
  // Runs `/bin/sh -c cmd` to completion: timeout_sec 0 means 30 s; at the timeout the command
  // and everything it started are killed and the answer is DEADLINE_EXCEEDED (EXEC_TIMEOUT).
  // FAILED_PRECONDITION (SANDBOX_NOT_RUNNING) on a paused sandbox.
  virtual absl::StatusOr<v1::ExecResponse> Exec(const std::string& sandbox_id,
                                                const v1::ExecRequest& request) = 0;
  // As Exec, but output goes to `sink` as it arrives and there is no default timeout
  // (timeout_sec > 0 sets one). The command is killed when `cancelled` turns true or `sink`
  // returns false. Returns the exit code; the caller sends the final chunk.
  virtual absl::StatusOr<int> ExecStream(const std::string& sandbox_id,
                                         const v1::ExecRequest& request, const ExecSink& sink,
                                         const std::function<bool()>& cancelled) = 0;
};

}  // namespace isorun::runner
