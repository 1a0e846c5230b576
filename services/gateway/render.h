#pragma once

// Response bodies of the public API (API.md), written by hand so that the shape is exactly the
// contract's: tenant_id, runner_id and env never leave the gateway, ended-only fields are omitted
// while a sandbox lives, times are RFC 3339 UTC.

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "isorun/v1/sandboxes.pb.h"
#include "services/gateway/http_types.h"
#include "services/kit/json.h"

namespace isorun::gateway {

void WriteSandbox(JsonWriter& w, const v1::Sandbox& sandbox);
std::string SandboxJson(const v1::Sandbox& sandbox);
// {"sandboxes": [...], "nextPageToken": "..."} (empty token on the last page).
std::string ListJson(const v1::ListSandboxesResponse& list);
// {"exitCode", "stdout", "stderr", "durationMs"} (+ "stdoutTruncated"/"stderrTruncated" when
// set). Output is text: invalid UTF-8 is replaced.
std::string ExecJson(const v1::ExecResponse& exec);
// One NDJSON line of exec:stream, with its newline: {"stdout": "..."}, {"stderr": "..."} or
// {"exitCode": N}; empty for a chunk with none of them. Output is text: invalid UTF-8 is
// replaced, so every line is valid JSON whatever the command printed.
std::string ExecChunkLine(const v1::ExecChunk& chunk);
// {"activeSandboxes", "hibernatedSandboxes", "limits": {...}}.
std::string UsageJson(const v1::Usage& usage);
// GET /v1/sandboxes/{id}/network/log: {"entries": [{"time", "address", "port", "domain"?,
// "verdict", "protocol"}]}.
std::string NetworkLogJson(const v1::NetworkLog& log);
// GET /v1/sandboxes/{id}/events: {"events": [{"time", "kind", "state", "reason"?, "message"?}],
// "nextPageToken"}.
std::string EventsJson(const v1::ListSandboxEventsResponse& events);

// A shortest round-trip decimal for a double (10 -> "10", 0.5 -> "0.5").
std::string FormatDouble(double value);

// An error answer: HTTP status, API.md's body and the headers that go with it.
struct ErrorReply {
  int http_status = 500;
  std::string reason;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

// Renders `status` (not OK). `http_status` 0 means the usual mapping (HttpStatusFor); a non-zero
// value overrides it (413, 415, 405, ...). The reason is the status' ErrorDetail reason, or the
// code name. 429s carry retryAfterSec (at least 1), limit and current, and a Retry-After header;
// reason RATE_LIMIT also carries RateLimit-Policy and RateLimit headers.
ErrorReply RenderError(const absl::Status& status, int http_status = 0);

// The same, as a response.
HttpResponse ErrorResponse(const absl::Status& status, int http_status = 0);

}  // namespace isorun::gateway
