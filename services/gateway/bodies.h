#pragma once

// Request decoding for the public API: JSON bodies into the lifecycle service's request messages,
// and the list route's query string. Only shape and types are checked here (JSON object, known
// fields, strings where strings belong, integers that fit); ranges, image pinning and network
// profiles are checked authoritatively by the lifecycle service. One exception: proto3 cannot
// carry an explicit zero (it means "default"), so a given sizing field must be positive here.
//
// Every error is INVALID_ARGUMENT with reason INVALID_ARGUMENT and a message naming the field.
// The caller fills tenant_id (from the authenticated key) and the sandbox id (from the path).

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "isorun/v1/sandboxes.pb.h"

namespace isorun::gateway {

// POST /v1/sandboxes: {"image", "timeoutSec"?, "cpuMillis"?, "memoryMb"?, "env"?, "metadata"?,
// "network"?: {"egress"?, "allow"?}}.
absl::StatusOr<v1::CreateSandboxRequest> ParseCreateBody(std::string_view body);

// POST /v1/sandboxes/{id}/exec and exec:stream: {"cmd", "timeoutSec"?, "env"?, "cwd"?,
// "stdin"?}.
absl::StatusOr<v1::ExecRequest> ParseExecBody(std::string_view body);

// POST /v1/sandboxes/{id}/timeout: {"timeoutSec"} (required).
absl::StatusOr<int32_t> ParseSetTimeoutBody(std::string_view body);

// POST /v1/keys: {"name", "role"?}. name: 1-128 characters, no control characters; role "admin"
// or "sandbox" (default "sandbox").
struct CreateKeyBody {
  std::string name;
  std::string role = "sandbox";
};
absl::StatusOr<CreateKeyBody> ParseCreateKeyBody(std::string_view body);

// PUT /v1/sandboxes/{id}/network: {"egress" (required), "allow"?}. The profile itself is checked
// by the lifecycle (kit/egress_policy.h).
absl::StatusOr<v1::NetworkPolicy> ParseNetworkBody(std::string_view body);

// Routes without a body (hibernate, resume): an empty body or `{}`.
absl::Status ParseEmptyBody(std::string_view body);

// GET /v1/sandboxes query: state=S[,S...] (repeatable), metadata.KEY=VALUE (repeatable),
// pageSize (1..1000, default 50), pageToken. Unknown parameters are rejected.
absl::StatusOr<v1::ListSandboxesRequest> ParseListQuery(std::string_view query);
// GET /v1/sandboxes/{id}/events: pageSize (1..1000, default 50) and pageToken only.
absl::StatusOr<v1::ListSandboxEventsRequest> ParseEventsQuery(std::string_view query);

// Splits and percent-decodes an application/x-www-form-urlencoded query string. Values must be
// valid UTF-8 without NUL.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseQueryString(
    std::string_view query);

// Whether a Content-Type header value names JSON (application/json or application/*+json,
// parameters allowed).
bool IsJsonContentType(std::string_view content_type);

// Idempotency-Key: 1..255 printable ASCII characters.
bool IsValidIdempotencyKey(std::string_view key);

}  // namespace isorun::gateway
