#pragma once

// The one mapping between absl::Status (domain code), grpc::Status (between services) and HTTP
// (the gateway), including the machine-readable ErrorDetail that rides along.

#include <grpcpp/support/status.h>

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "isorun/v1/errors.pb.h"

namespace isorun {

// An error status with a stable reason (and optional figures for 429s).
absl::Status Error(absl::StatusCode code, std::string_view reason, std::string_view message,
                   int limit = 0, int current = 0, int retry_after_sec = 0,
                   const v1::RateWindow* rate = nullptr);

// The ErrorDetail attached to `status`, if any.
std::optional<v1::ErrorDetail> ErrorDetailOf(const absl::Status& status);

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// The outcome of one item of a batched call, both ways.
v1::ItemStatus ToItemStatus(const absl::Status& status);
absl::Status FromItemStatus(const v1::ItemStatus& status);

// "RESOURCE_EXHAUSTED" and friends: gRPC code names.
std::string_view CodeName(absl::StatusCode code);

// The usual gRPC-to-HTTP mapping of API.md.
int HttpStatusFor(absl::StatusCode code);

// The reason to report when a status carries none: INVALID_ARGUMENT, NOT_FOUND and so on.
std::string DefaultReason(absl::StatusCode code);

}  // namespace isorun
