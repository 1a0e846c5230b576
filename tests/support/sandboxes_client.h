#pragma once

// A gRPC client of the lifecycle's Sandboxes service for cross-process tests: statuses come back
// as absl::Status with their ErrorDetail.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "isorun/v1/sandboxes.grpc.pb.h"

namespace isorun::testing {

class SandboxesClient {
 public:
  explicit SandboxesClient(const std::string& address);

  absl::StatusOr<v1::Sandbox> Create(const std::string& tenant, int timeout_sec = 300,
                                     const std::string& image = "busybox:1.36");
  absl::StatusOr<v1::Sandbox> Get(const std::string& tenant, const std::string& id);

 private:
  std::unique_ptr<v1::Sandboxes::Stub> stub_;
};

}  // namespace isorun::testing
