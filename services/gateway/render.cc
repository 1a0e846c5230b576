#include "services/gateway/render.h"

#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <charconv>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "services/gateway/rate_limit.h"
#include "services/gateway/strings.h"
#include "services/kit/log.h"
#include "services/kit/status.h"

namespace isorun::gateway {
namespace {

void WriteTime(JsonWriter& w, const google::protobuf::Timestamp& ts, bool present) {
  if (!present) {
    w.Null();
    return;
  }
  w.String(google::protobuf::util::TimeUtil::ToString(ts));
}

void WriteStringMap(JsonWriter& w, const google::protobuf::Map<std::string, std::string>& map) {
  // Sorted keys: stable output for clients and tests (protobuf maps are unordered).
  std::vector<std::pair<std::string_view, std::string_view>> entries;
  entries.reserve(map.size());
  for (const auto& [key, value] : map) entries.emplace_back(key, value);
  std::sort(entries.begin(), entries.end());
  w.BeginObject();
  for (const auto& [key, value] : entries) w.Key(key).String(value);
  w.EndObject();
}

}  // namespace

void WriteSandbox(JsonWriter& w, const v1::Sandbox& s) {
  w.BeginObject();
  w.Key("id").String(s.id());
  w.Key("state").String(v1::SandboxState_Name(s.state()));
  w.Key("image").String(s.image());
  w.Key("imageDigest").String(s.image_digest());
  w.Key("cpuMillis").Int(s.cpu_millis());
  w.Key("memoryMb").Int(s.memory_mb());
  if (s.disk_mb() > 0) w.Key("diskMb").Int(s.disk_mb());
  w.Key("timeoutSec").Int(s.timeout_sec());
  w.Key("createdAt");
  WriteTime(w, s.created_at(), s.has_created_at());
  w.Key("expiresAt");
  WriteTime(w, s.expires_at(), s.has_expires_at());
  if (s.has_ended_at()) {
    w.Key("endedAt");
    WriteTime(w, s.ended_at(), true);
  }
  if (s.end_reason() != v1::END_REASON_UNSPECIFIED) {
    w.Key("endReason").String(v1::EndReason_Name(s.end_reason()));
  }
  if (!s.end_message().empty()) w.Key("endMessage").String(s.end_message());
  w.Key("metadata");
  WriteStringMap(w, s.metadata());
  w.Key("network").BeginObject();
  w.Key("egress").String(s.network().egress().empty() ? "open" : s.network().egress());
  w.Key("allow").BeginArray();
  for (const auto& host : s.network().allow()) w.String(host);
  w.EndArray().EndObject();
  w.Key("publicId").String(s.public_id());
  if (s.has_start_progress() && !s.start_progress().phase().empty()) {
    const v1::StartProgress& p = s.start_progress();
    w.Key("startProgress").BeginObject();
    w.Key("phase").String(p.phase());
    if (p.pull_bytes_done() > 0) w.Key("pullBytesDone").Int(p.pull_bytes_done());
    if (p.pull_bytes_total() > 0) w.Key("pullBytesTotal").Int(p.pull_bytes_total());
    w.EndObject();
  }
  if (!s.urls().empty()) {
    w.Key("urls");
    WriteStringMap(w, s.urls());
  }
  w.EndObject();
}

std::string SandboxJson(const v1::Sandbox& sandbox) {
  JsonWriter w;
  WriteSandbox(w, sandbox);
  return w.Take();
}

std::string ListJson(const v1::ListSandboxesResponse& list) {
  JsonWriter w;
  w.BeginObject().Key("sandboxes").BeginArray();
  for (const auto& s : list.sandboxes()) WriteSandbox(w, s);
  w.EndArray();
  w.Key("nextPageToken").String(list.next_page_token());
  w.EndObject();
  return w.Take();
}

std::string ExecJson(const v1::ExecResponse& exec) {
  JsonWriter w;
  w.BeginObject();
  w.Key("exitCode").Int(exec.exit_code());
  w.Key("stdout").String(exec.stdout());
  w.Key("stderr").String(exec.stderr());
  w.Key("durationMs").Int(exec.duration_ms());
  if (exec.stdout_truncated()) w.Key("stdoutTruncated").Bool(true);
  if (exec.stderr_truncated()) w.Key("stderrTruncated").Bool(true);
  w.EndObject();
  return w.Take();
}

std::string FormatDouble(double value) {
  if (!std::isfinite(value)) return "null";
  char buf[64];
  auto [ptr, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  if (ec != std::errc()) return "null";
  return std::string(buf, ptr);
}

std::string ExecChunkLine(const v1::ExecChunk& chunk) {
  JsonWriter w;
  w.BeginObject();
  switch (chunk.kind_case()) {
    case v1::ExecChunk::kStdout:
      w.Key("stdout").String(chunk.stdout());
      break;
    case v1::ExecChunk::kStderr:
      w.Key("stderr").String(chunk.stderr());
      break;
    case v1::ExecChunk::kExitCode:
      w.Key("exitCode").Int(chunk.exit_code());
      break;
    default:
      return "";
  }
  w.EndObject();
  return w.Take() + "\n";
}

std::string UsageJson(const v1::Usage& usage) {
  JsonWriter w;
  w.BeginObject();
  w.Key("activeSandboxes").Int(usage.active_sandboxes());
  w.Key("hibernatedSandboxes").Int(usage.hibernated_sandboxes());
  w.Key("limits").BeginObject();
  w.Key("maxConcurrent").Int(usage.limits().max_concurrent());
  w.Key("createsPerSec").Raw(FormatDouble(usage.limits().creates_per_sec()));
  w.Key("requestsPerSec").Raw(FormatDouble(usage.limits().requests_per_sec()));
  w.Key("maxHibernated").Int(usage.limits().max_hibernated());
  w.Key("maxConcurrentExecs").Int(usage.limits().max_concurrent_execs());
  w.Key("hibernationRetentionSec").Int(usage.limits().hibernation_retention_sec());
  w.EndObject();
  w.EndObject();
  return w.Take();
}

std::string NetworkLogJson(const v1::NetworkLog& log) {
  JsonWriter w;
  w.BeginObject();
  w.Key("entries").BeginArray();
  for (const auto& e : log.entries()) {
    w.BeginObject();
    w.Key("time");
    WriteTime(w, e.time(), true);
    w.Key("address").String(e.address());
    w.Key("port").Int(e.port());
    if (!e.domain().empty()) w.Key("domain").String(e.domain());
    w.Key("verdict").String(e.verdict());
    if (!e.protocol().empty()) w.Key("protocol").String(e.protocol());
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return w.Take();
}

std::string EventsJson(const v1::ListSandboxEventsResponse& events) {
  JsonWriter w;
  w.BeginObject();
  w.Key("events").BeginArray();
  for (const auto& e : events.events()) {
    w.BeginObject();
    w.Key("time");
    WriteTime(w, e.time(), true);
    w.Key("kind").String(e.kind());
    w.Key("state").String(v1::SandboxState_Name(e.state()));
    if (!e.reason().empty()) w.Key("reason").String(e.reason());
    if (!e.message().empty()) w.Key("message").String(e.message());
    w.EndObject();
  }
  w.EndArray();
  w.Key("nextPageToken").String(events.next_page_token());
  w.EndObject();
  return w.Take();
}

ErrorReply RenderError(const absl::Status& status, int http_status) {
  ErrorReply reply;
  absl::StatusCode code = status.code();
  if (code == absl::StatusCode::kOk) code = absl::StatusCode::kInternal;  // cannot happen
  reply.http_status = http_status != 0 ? http_status : HttpStatusFor(code);
  auto detail = ErrorDetailOf(status);
  reply.reason = detail && !detail->reason().empty() ? detail->reason() : DefaultReason(code);
  std::string message(status.message());
  if (message.empty()) message = std::string(CodeName(code));
  // A server-side failure that carries no reason of ours is somebody else's text (a SQL error, a
  // gRPC transport message with peer addresses, a tool's output): never shown to clients.
  const std::string original = message;
  if (!(detail && !detail->reason().empty())) {
    switch (code) {
      case absl::StatusCode::kInternal:
      case absl::StatusCode::kUnknown:
      case absl::StatusCode::kDataLoss:
        message = "internal error; it has been logged, retry later";
        break;
      case absl::StatusCode::kUnavailable:
        message = "a service is unavailable; retry later";
        break;
      case absl::StatusCode::kDeadlineExceeded:
        message = "the request took too long; retry later";
        break;
      default:
        break;
    }
    if (message != original) {
      LogWarn("internal error (not shown to the client)",
              {{"code", std::string(CodeName(code))}, {"error", original}});
    }
  }

  JsonWriter w;
  w.BeginObject().Key("error").BeginObject();
  w.Key("status").Int(reply.http_status);
  w.Key("code").String(CodeName(code));
  w.Key("reason").String(reply.reason);
  w.Key("message").String(message);
  if (reply.http_status == 429) {
    int retry_after = std::max(1, detail ? detail->retry_after_sec() : 0);
    int limit = detail ? detail->limit() : 0;
    int current = detail ? detail->current() : 0;
    w.Key("retryAfterSec").Int(retry_after);
    w.Key("limit").Int(limit);
    w.Key("current").Int(current);
    reply.headers.emplace_back("Retry-After", std::to_string(retry_after));
    if (reply.reason == "RATE_LIMIT") {
      v1::RateWindow window;
      if (detail && detail->has_rate()) {
        window = detail->rate();
      } else {  // a refusal without its window: describe what the figures say
        window.set_burst(limit);
        window.set_window_sec(1);
        window.set_reset_sec(retry_after);
      }
      window.set_remaining(0);
      for (auto& header : RateLimitHeaders(window)) reply.headers.push_back(std::move(header));
    }
  }
  w.EndObject().EndObject();
  reply.body = w.Take();
  return reply;
}

HttpResponse ErrorResponse(const absl::Status& status, int http_status) {
  ErrorReply reply = RenderError(status, http_status);
  HttpResponse r;
  r.status = reply.http_status;
  r.body = std::move(reply.body);
  r.headers = std::move(reply.headers);
  return r;
}

}  // namespace isorun::gateway
