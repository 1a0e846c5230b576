#include "services/gateway/render.h"

#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>

#include "services/gateway/json_value.h"
#include "services/kit/status.h"

namespace isorun::gateway {
namespace {

using google::protobuf::util::TimeUtil;

v1::Sandbox FullSandbox() {
  v1::Sandbox s;
  s.set_id("sbx_abc");
  s.set_tenant_id("11111111-2222-3333-4444-555555555555");
  s.set_state(v1::RUNNING);
  s.set_image("busybox:1.36");
  s.set_image_digest("sha256:0123");
  s.set_cpu_millis(1000);
  s.set_memory_mb(512);
  s.set_timeout_sec(300);
  *s.mutable_created_at() = TimeUtil::SecondsToTimestamp(1700000000);
  *s.mutable_expires_at() = TimeUtil::SecondsToTimestamp(1700000300);
  (*s.mutable_metadata())["team"] = "ci";
  (*s.mutable_metadata())["a"] = "1";
  s.mutable_network()->set_egress("allowlist");
  s.mutable_network()->add_allow("example.org");
  s.set_public_id("0123456789abcdef0123456789abcdef");
  (*s.mutable_urls())["8080"] = "http://8080-0123.localhost:8081";
  s.set_runner_id("runner-1");
  (*s.mutable_env())["SECRET"] = "hunter2";
  return s;
}

TEST(SandboxJson, ExactlyTheContractsShape) {
  EXPECT_EQ(
      SandboxJson(FullSandbox()),
      R"({"id":"sbx_abc","state":"RUNNING","image":"busybox:1.36","imageDigest":"sha256:0123",)"
      R"("cpuMillis":1000,"memoryMb":512,"timeoutSec":300,"createdAt":"2023-11-14T22:13:20Z",)"
      R"("expiresAt":"2023-11-14T22:18:20Z","metadata":{"a":"1","team":"ci"},)"
      R"("network":{"egress":"allowlist","allow":["example.org"]},)"
      R"("publicId":"0123456789abcdef0123456789abcdef",)"
      R"("urls":{"8080":"http://8080-0123.localhost:8081"}})");
}

TEST(SandboxJson, AStartingSandboxShowsWhatItWaitsFor) {
  v1::Sandbox s = FullSandbox();
  s.set_state(v1::STARTING);
  s.clear_urls();
  s.mutable_start_progress()->set_phase("PULLING");
  s.mutable_start_progress()->set_pull_bytes_done(1024);
  s.mutable_start_progress()->set_pull_bytes_total(4096);
  EXPECT_NE(SandboxJson(s).find(
                R"("startProgress":{"phase":"PULLING","pullBytesDone":1024,"pullBytesTotal":4096})"),
            std::string::npos)
      << SandboxJson(s);
  s.mutable_start_progress()->set_phase("PULLING");
  s.mutable_start_progress()->set_pull_bytes_done(0);
  s.mutable_start_progress()->set_pull_bytes_total(0);
  EXPECT_NE(SandboxJson(s).find(R"("startProgress":{"phase":"PULLING"})"), std::string::npos)
      << "unknown figures are left out: " << SandboxJson(s);
  s.clear_start_progress();
  EXPECT_EQ(SandboxJson(s).find("startProgress"), std::string::npos);
}

TEST(EventsJson, TimeKindStateAndTheEndsReason) {
  v1::ListSandboxEventsResponse events;
  auto* created = events.add_events();
  *created->mutable_time() = TimeUtil::SecondsToTimestamp(1700000000);
  created->set_kind("CREATED");
  created->set_state(v1::PENDING);
  auto* ended = events.add_events();
  *ended->mutable_time() = TimeUtil::SecondsToTimestamp(1700000001);
  ended->set_kind("ENDED");
  ended->set_state(v1::FAILED);
  ended->set_reason("START_FAILED");
  ended->set_message("sandbox failed to start: image x not found");
  events.set_next_page_token("tok");
  EXPECT_EQ(EventsJson(events),
            R"({"events":[{"time":"2023-11-14T22:13:20Z","kind":"CREATED","state":"PENDING"},)"
            R"({"time":"2023-11-14T22:13:21Z","kind":"ENDED","state":"FAILED",)"
            R"("reason":"START_FAILED","message":"sandbox failed to start: image x not found"}],)"
            R"("nextPageToken":"tok"})");
}

TEST(SandboxJson, NeverExposesTenantRunnerOrEnv) {
  std::string json = SandboxJson(FullSandbox());
  EXPECT_EQ(json.find("11111111"), std::string::npos);
  EXPECT_EQ(json.find("tenant"), std::string::npos);
  EXPECT_EQ(json.find("runner"), std::string::npos);
  EXPECT_EQ(json.find("hunter2"), std::string::npos);
  EXPECT_EQ(json.find("SECRET"), std::string::npos);
  EXPECT_EQ(json.find("env"), std::string::npos);
}

TEST(SandboxJson, EndedSandboxAndDefaults) {
  v1::Sandbox s;
  s.set_id("sbx_x");
  s.set_state(v1::FAILED);
  *s.mutable_created_at() = TimeUtil::SecondsToTimestamp(1700000000);
  *s.mutable_ended_at() = TimeUtil::NanosecondsToTimestamp(1700000001500000000);
  s.set_end_reason(v1::START_FAILED);
  s.set_end_message("image pull failed: \"quoted\"\n");
  auto doc = ParseJson(SandboxJson(s));
  ASSERT_TRUE(doc.ok()) << doc.status();
  std::map<std::string, const JsonValue*> m;
  for (const auto& [k, v] : doc->members()) m[k] = &v;
  EXPECT_EQ(m["state"]->string_value(), "FAILED");
  EXPECT_EQ(m["endedAt"]->string_value(), "2023-11-14T22:13:21.500Z");
  EXPECT_EQ(m["endReason"]->string_value(), "START_FAILED");
  EXPECT_EQ(m["endMessage"]->string_value(), "image pull failed: \"quoted\"\n");
  EXPECT_TRUE(m["expiresAt"]->is_null());
  EXPECT_EQ(m["network"]->members()[0].second.string_value(), "open");
  EXPECT_EQ(m["metadata"]->kind(), JsonValue::Kind::kObject);
  EXPECT_EQ(m.count("urls"), 0u);

  // A live sandbox has no end fields at all.
  std::string live = SandboxJson(FullSandbox());
  EXPECT_EQ(live.find("endedAt"), std::string::npos);
  EXPECT_EQ(live.find("endReason"), std::string::npos);
  EXPECT_EQ(live.find("endMessage"), std::string::npos);
}

TEST(ListJson, SandboxesAndToken) {
  v1::ListSandboxesResponse list;
  EXPECT_EQ(ListJson(list), R"({"sandboxes":[],"nextPageToken":""})");
  *list.add_sandboxes() = FullSandbox();
  list.set_next_page_token("t1");
  auto doc = ParseJson(ListJson(list));
  ASSERT_TRUE(doc.ok());
  EXPECT_EQ(doc->members()[0].second.items().size(), 1u);
  EXPECT_EQ(doc->members()[1].second.string_value(), "t1");
}

TEST(ExecJson, TextOutputWithInvalidBytesReplaced) {
  v1::ExecResponse exec;
  exec.set_exit_code(3);
  exec.set_stdout("ok\n");
  exec.set_stderr("bad \xFF byte");
  exec.set_duration_ms(12);
  EXPECT_EQ(ExecJson(exec),
            "{\"exitCode\":3,\"stdout\":\"ok\\n\",\"stderr\":\"bad \xEF\xBF\xBD byte\","
            "\"durationMs\":12}");
  exec.set_stdout_truncated(true);
  EXPECT_NE(ExecJson(exec).find("\"stdoutTruncated\":true"), std::string::npos);
}

TEST(UsageJson, Shape) {
  v1::Usage usage;
  usage.set_tenant_id("t");
  usage.set_active_sandboxes(3);
  usage.set_hibernated_sandboxes(1);
  usage.mutable_limits()->set_max_concurrent(10);
  usage.mutable_limits()->set_creates_per_sec(2);
  usage.mutable_limits()->set_requests_per_sec(0.5);
  usage.mutable_limits()->set_max_hibernated(10);
  usage.mutable_limits()->set_max_concurrent_execs(32);
  usage.mutable_limits()->set_hibernation_retention_sec(604800);
  EXPECT_EQ(UsageJson(usage),
            R"({"activeSandboxes":3,"hibernatedSandboxes":1,)"
            R"("limits":{"maxConcurrent":10,"createsPerSec":2,"requestsPerSec":0.5,)"
            R"("maxHibernated":10,"maxConcurrentExecs":32,"hibernationRetentionSec":604800}})");
}

TEST(RenderError, InternalTextNeverReachesTheClient) {
  const absl::Status leaks[] = {
      absl::UnavailableError("failed to connect to all addresses; last error: UNKNOWN: "
                             "ipv4:127.0.0.1:7003: Failed to connect to remote host"),
      absl::InternalError("ERROR:  relation \"lifecycle.sandboxes\" does not exist at "
                          "character 15 (SELECT id FROM lifecycle.sandboxes)"),
      absl::UnknownError("time=\"2026\" level=fatal msg=\"dial tcp 10.0.0.1:443\""),
      absl::DeadlineExceededError("Deadline Exceeded: peer ipv6:[::1]:7101"),
  };
  for (const auto& status : leaks) {
    ErrorReply r = RenderError(status);
    for (const char* secret :
         {"127.0.0.1", "ipv4", "ipv6", "SELECT", "relation", "10.0.0.1", "msg=", "7003"}) {
      EXPECT_EQ(r.body.find(secret), std::string::npos) << r.body;
    }
    EXPECT_NE(r.body.find("retry later"), std::string::npos) << r.body;
  }
  // Our own reasons keep their messages.
  ErrorReply r = RenderError(Error(absl::StatusCode::kUnavailable, "IMAGE_PULL_FAILED",
                                   "cannot pull image busybox:9 from its registry; retry later"));
  EXPECT_NE(r.body.find("busybox:9"), std::string::npos) << r.body;
}

TEST(RenderError, BodyShapeForAPlainStatus) {
  ErrorReply r = RenderError(absl::NotFoundError("no sandbox sbx_1"));
  EXPECT_EQ(r.http_status, 404);
  EXPECT_EQ(r.reason, "NOT_FOUND");
  EXPECT_EQ(r.body, R"({"error":{"status":404,"code":"NOT_FOUND","reason":"NOT_FOUND",)"
                    R"("message":"no sandbox sbx_1"}})");
  EXPECT_TRUE(r.headers.empty());
}

TEST(RenderError, ReasonFromTheDetail) {
  ErrorReply r =
      RenderError(Error(absl::StatusCode::kInvalidArgument, "IMAGE_NOT_PINNED", "pin the image"));
  EXPECT_EQ(r.http_status, 400);
  EXPECT_EQ(r.body, R"({"error":{"status":400,"code":"INVALID_ARGUMENT",)"
                    R"("reason":"IMAGE_NOT_PINNED","message":"pin the image"}})");
}

TEST(RenderError, Http429CarriesRetryAfterLimitAndCurrent) {
  ErrorReply r = RenderError(Error(absl::StatusCode::kResourceExhausted, "CONCURRENT_SANDBOX_LIMIT",
                                   "10 of 10", 10, 10, 2));
  EXPECT_EQ(r.http_status, 429);
  EXPECT_EQ(r.body, R"({"error":{"status":429,"code":"RESOURCE_EXHAUSTED",)"
                    R"("reason":"CONCURRENT_SANDBOX_LIMIT","message":"10 of 10",)"
                    R"("retryAfterSec":2,"limit":10,"current":10}})");
  ASSERT_EQ(r.headers.size(), 1u);
  EXPECT_EQ(r.headers[0].first, "Retry-After");
  EXPECT_EQ(r.headers[0].second, "2");
}

TEST(RenderError, Http429WithoutFiguresStillSaysWhenToRetry) {
  ErrorReply r = RenderError(absl::ResourceExhaustedError("busy"));
  EXPECT_EQ(r.http_status, 429);
  EXPECT_NE(r.body.find(R"("retryAfterSec":1,"limit":0,"current":0)"), std::string::npos);
  ASSERT_EQ(r.headers.size(), 1u);
  EXPECT_EQ(r.headers[0].second, "1");
}

TEST(RenderError, RateLimitHeadersFromTheWindow) {
  v1::RateWindow window;
  window.set_policy("creates");
  window.set_limit_per_sec(2);
  window.set_burst(4);
  window.set_window_sec(2);
  window.set_remaining(0);
  window.set_reset_sec(1.2);
  ErrorReply r = RenderError(
      Error(absl::StatusCode::kResourceExhausted, "RATE_LIMIT", "slow down", 4, 4, 1, &window));
  std::map<std::string, std::string> h(r.headers.begin(), r.headers.end());
  EXPECT_EQ(h["Retry-After"], "1");
  EXPECT_EQ(h["RateLimit-Policy"], "\"creates\";q=4;w=2");
  EXPECT_EQ(h["RateLimit"], "\"creates\";r=0;t=2");
}

TEST(RenderError, RateLimitHeadersWithoutAWindow) {
  ErrorReply r =
      RenderError(Error(absl::StatusCode::kResourceExhausted, "RATE_LIMIT", "slow down", 5, 5, 3));
  std::map<std::string, std::string> h(r.headers.begin(), r.headers.end());
  EXPECT_EQ(h["Retry-After"], "3");
  EXPECT_EQ(h["RateLimit-Policy"], "\"requests\";q=5;w=1");
  EXPECT_EQ(h["RateLimit"], "\"requests\";r=0;t=3");
  // Other 429s are not rate limits: no RateLimit headers.
  ErrorReply c = RenderError(
      Error(absl::StatusCode::kResourceExhausted, "CONCURRENT_SANDBOX_LIMIT", "full", 10, 10, 2));
  EXPECT_EQ(c.headers.size(), 1u);
}

TEST(RenderError, OverridesAndOddMessages) {
  ErrorReply r =
      RenderError(Error(absl::StatusCode::kInvalidArgument, "BODY_TOO_LARGE", "too big"), 413);
  EXPECT_EQ(r.http_status, 413);
  EXPECT_NE(r.body.find(R"("status":413,"code":"INVALID_ARGUMENT","reason":"BODY_TOO_LARGE")"),
            std::string::npos);
  // Unavailable and deadline map per API.md; messages are escaped and valid UTF-8.
  EXPECT_EQ(RenderError(absl::UnavailableError("x")).http_status, 503);
  EXPECT_EQ(RenderError(absl::DeadlineExceededError("x")).http_status, 504);
  EXPECT_EQ(RenderError(absl::UnimplementedError("x")).http_status, 501);
  EXPECT_EQ(RenderError(absl::UnknownError("x")).http_status, 500);
  ErrorReply odd = RenderError(absl::InternalError("a\"b\n\xFF"));
  EXPECT_TRUE(ParseJson(odd.body).ok()) << odd.body;
  ErrorReply empty = RenderError(absl::Status(absl::StatusCode::kAborted, ""));
  EXPECT_NE(empty.body.find(R"("message":"ABORTED")"), std::string::npos);
}

TEST(FormatDouble, ShortestForm) {
  EXPECT_EQ(FormatDouble(10), "10");
  EXPECT_EQ(FormatDouble(0.1), "0.1");
  EXPECT_EQ(FormatDouble(2.5), "2.5");
  EXPECT_EQ(FormatDouble(std::numeric_limits<double>::infinity()), "null");
}

TEST(NetworkLogJson, EntriesWithOptionalDomain) {
  v1::NetworkLog log;
  auto* e = log.add_entries();
  *e->mutable_time() = google::protobuf::util::TimeUtil::SecondsToTimestamp(1700000000);
  e->set_address("198.18.0.7");
  e->set_port(8080);
  e->set_domain("web.test");
  e->set_verdict("allowed");
  e->set_protocol("tcp");
  auto* b = log.add_entries();
  *b->mutable_time() = google::protobuf::util::TimeUtil::SecondsToTimestamp(1700000001);
  b->set_address("169.254.169.254");
  b->set_port(80);
  b->set_verdict("blocked");
  b->set_protocol("tcp");
  EXPECT_EQ(NetworkLogJson(log),
            R"({"entries":[{"time":"2023-11-14T22:13:20Z","address":"198.18.0.7","port":8080,)"
            R"("domain":"web.test","verdict":"allowed","protocol":"tcp"},)"
            R"({"time":"2023-11-14T22:13:21Z","address":"169.254.169.254","port":80,)"
            R"("verdict":"blocked","protocol":"tcp"}]})");
}

}  // namespace
}  // namespace isorun::gateway
