// The gateway over real HTTP (Beast client) against a real in-process gRPC fake of
// isorun.v1.Sandboxes on an OS-chosen port.

#include <sys/resource.h>

#include <gtest/gtest.h>

#include <thread>

#include "prometheus/text_serializer.h"
#include "services/gateway/api.h"
#include "services/gateway/fake_key_store.h"
#include "services/gateway/fake_lifecycle.h"
#include "services/gateway/health.h"
#include "services/gateway/http_server.h"
#include "services/gateway/json_value.h"
#include "services/gateway/openapi.h"
#include "services/gateway/rate_limit.h"
#include "services/gateway/render.h"
#include "services/gateway/test_http_client.h"
#include "services/kit/server.h"
#include "services/kit/shard.h"
#include "services/kit/status.h"

namespace isorun::gateway {
namespace {

using testing::HttpResult;
using testing::TestHttpClient;

constexpr size_t kMaxBody = 4096;

// The "error" object of an error body, checked for API.md's shape.
std::map<std::string, JsonValue> ErrorOf(const HttpResult& r) {
  std::map<std::string, JsonValue> out;
  auto doc = ParseJson(r.body);
  EXPECT_TRUE(doc.ok()) << r.body;
  if (!doc.ok()) return out;
  EXPECT_EQ(doc->members().size(), 1u) << r.body;
  if (doc->members().empty() || doc->members()[0].first != "error") {
    ADD_FAILURE() << "not an error body: " << r.body;
    return out;
  }
  for (const auto& [k, v] : doc->members()[0].second.members()) out[k] = v;
  EXPECT_EQ(r.header("content-type"), "application/json");
  EXPECT_EQ(out["status"].number_lexeme(), std::to_string(r.status)) << r.body;
  EXPECT_EQ(out["code"].kind(), JsonValue::Kind::kString) << r.body;
  EXPECT_EQ(out["reason"].kind(), JsonValue::Kind::kString) << r.body;
  EXPECT_EQ(out["message"].kind(), JsonValue::Kind::kString) << r.body;
  EXPECT_FALSE(out["message"].string_value().empty()) << r.body;
  return out;
}

std::string ReasonOf(const HttpResult& r) { return ErrorOf(r)["reason"].string_value(); }

std::map<std::string, JsonValue> ObjectOf(const std::string& body) {
  std::map<std::string, JsonValue> out;
  auto doc = ParseJson(body);
  EXPECT_TRUE(doc.ok()) << body;
  if (doc.ok()) {
    for (const auto& [k, v] : doc->members()) out[k] = v;
  }
  return out;
}

// A quota replica that allows or refuses every rate check, and records them.
class FakeQuota final : public v1::Quotas::Service {
 public:
  std::atomic<bool> refuse{false};
  std::atomic<int> checks{0};
  std::atomic<int> creates{0};
  std::mutex mu;
  std::string last_tenant, last_key;

  grpc::Status CheckRate(grpc::ServerContext*, const v1::CheckRateRequest* req,
                         v1::CheckRateResponse* resp) override {
    ++checks;
    if (req->kind() == v1::CREATE) ++creates;
    {
      std::lock_guard lock(mu);
      last_tenant = req->tenant_id();
      last_key = req->key_id();
    }
    v1::RateWindow window;
    window.set_policy(req->kind() == v1::CREATE ? "creates" : "requests");
    window.set_limit_per_sec(10);
    window.set_burst(20);
    window.set_window_sec(2);
    window.set_remaining(refuse ? 0 : 19);
    window.set_reset_sec(refuse ? 0.1 : 0.1);
    if (refuse) {
      return ToGrpcStatus(Error(absl::StatusCode::kResourceExhausted, "RATE_LIMIT",
                                "rate limit of 10 requests per second exceeded", 20, 20, 1,
                                &window));
    }
    *resp->mutable_window() = window;
    return grpc::Status::OK;
  }
};

class GatewayServerTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(HttpServer::Options()); }

  void Start(HttpServer::Options http) {
    auto grpc = StartGrpcServer("127.0.0.1:0", {&lifecycle_});
    ASSERT_TRUE(grpc.ok()) << grpc.status();
    grpc_ = std::move(*grpc);
    channel_ = MakeChannel("127.0.0.1:" + std::to_string(grpc_.port));
    key_ = keys_.AddKey("tenant-a");

    std::vector<std::pair<std::string, GatewayApi::HealthCheck>> checks;
    checks.emplace_back("postgres", [this](absl::Duration) {
      ++pg_checks_;
      return pg_health_;
    });
    checks.emplace_back("lifecycle", [this](absl::Duration deadline) {
      return CheckGrpcServing(channel_, deadline);
    });
    GatewayApi::Options options;
    options.region = "local";
    options.max_body_bytes = kMaxBody;
    options.call_deadline = absl::Seconds(5);
    options.health_deadline = absl::Milliseconds(500);
    options.health_cache_ttl = health_cache_ttl_;
    api_ = std::make_unique<GatewayApi>(options, keys_, channel_, std::move(checks), registry_,
                                        rates_.get());

    http.address = "127.0.0.1:0";
    http.max_body_bytes = kMaxBody;
    auto server = HttpServer::Start(http, [this](const HttpRequest& r) { return api_->Handle(r); });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    client_ = std::make_unique<TestHttpClient>(server_->port());
  }

  void TearDown() override {
    client_.reset();
    if (server_) server_->Stop(absl::Seconds(2), [this] { api_->CancelCalls(); });
    server_.reset();
    api_.reset();
    if (grpc_.server) grpc_.server->Shutdown(std::chrono::system_clock::now());
  }

  // An authenticated request.
  HttpResult Call(const std::string& method, const std::string& target,
                  const std::string& body = "",
                  std::vector<std::pair<std::string, std::string>> headers = {}) {
    headers.emplace_back("Authorization", "Bearer " + key_);
    return client_->Send(method, target, body, headers);
  }

  double MetricValue(const std::string& name, const std::map<std::string, std::string>& labels) {
    for (const auto& family : registry_.Collect()) {
      if (family.name != name) continue;
      for (const auto& metric : family.metric) {
        bool match = true;
        for (const auto& [k, v] : labels) {
          bool found = false;
          for (const auto& label : metric.label) found |= label.name == k && label.value == v;
          match &= found;
        }
        if (match) {
          return family.type == prometheus::MetricType::Histogram
                     ? static_cast<double>(metric.histogram.sample_count)
                     : metric.counter.value;
        }
      }
    }
    return 0;
  }

  FakeLifecycle lifecycle_;
  GrpcServer grpc_;
  std::shared_ptr<grpc::Channel> channel_;
  FakeKeyStore keys_;
  std::string key_;
  absl::Status pg_health_ = absl::OkStatus();
  std::atomic<int> pg_checks_{0};
  absl::Duration health_cache_ttl_ = absl::ZeroDuration();  // tests of the cache set it
  prometheus::Registry registry_;
  std::unique_ptr<RateChecker> rates_;  // set before Start() to rate-limit
  std::unique_ptr<GatewayApi> api_;
  std::unique_ptr<HttpServer> server_;
  std::unique_ptr<TestHttpClient> client_;
};

TEST_F(GatewayServerTest, CreateFillsTheTenantFromTheKeyAndAnswers201) {
  HttpResult r = Call("POST", "/v1/sandboxes",
                      R"({"image":"busybox:1.36","timeoutSec":60,"cpuMillis":500,"memoryMb":128,)"
                      R"("env":{"A":"1"},"metadata":{"team":"ci"},)"
                      R"("network":{"egress":"none","allow":[]}})",
                      {{"Idempotency-Key", "job-42 retry"}});
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(r.header("content-type"), "application/json");
  EXPECT_EQ(r.header("location"), "/v1/sandboxes/sbx_fake1");
  EXPECT_EQ(r.header("x-request-id").size(), 16u);
  EXPECT_EQ(r.body, SandboxJson(lifecycle_.sandbox()));
  EXPECT_EQ(r.body.find("must-not-leak"), std::string::npos);
  EXPECT_TRUE(r.keep_alive);

  v1::CreateSandboxRequest req = lifecycle_.last_create();
  EXPECT_EQ(req.tenant_id(), "tenant-a");
  EXPECT_EQ(req.image(), "busybox:1.36");
  EXPECT_EQ(req.timeout_sec(), 60);
  EXPECT_EQ(req.cpu_millis(), 500);
  EXPECT_EQ(req.memory_mb(), 128);
  EXPECT_EQ(req.env().at("A"), "1");
  EXPECT_EQ(req.metadata().at("team"), "ci");
  EXPECT_EQ(req.network().egress(), "none");
  EXPECT_EQ(req.idempotency_key(), "job-42 retry");
  EXPECT_EQ(lifecycle_.last_request_id(), r.header("x-request-id"));

  // A sane incoming request id is kept; anything else is replaced.
  r = Call("GET", "/v1/usage", "", {{"X-Request-Id", "trace-abc.123"}});
  EXPECT_EQ(r.header("x-request-id"), "trace-abc.123");
  EXPECT_EQ(lifecycle_.last_request_id(), "trace-abc.123");
  r = Call("GET", "/v1/usage", "", {{"X-Request-Id", "bad id with spaces"}});
  EXPECT_EQ(r.header("x-request-id").size(), 16u);
}

TEST_F(GatewayServerTest, BadBodiesAre400AndReachNothing) {
  const std::string bodies[] = {
      "{",
      "[]",
      R"({"image":"a:1","tenantId":"other"})",
      R"({"image":"a:1","timeoutSec":1.5})",
      R"({"image":"a:1","timeoutSec":99999999999})",
      R"({"image":"a:1","timeoutSec":-1})",
      R"({"image":"a:1","timeoutSec":"60"})",
      R"({"image":"a:1","env":{"A":{"deep":["x"]}}})",
      "{\"image\":\"\xC3\x28\"}",
      R"({"image":"a:1","image":"b:1"})",
  };
  for (const std::string& body : bodies) {
    HttpResult r = Call("POST", "/v1/sandboxes", body);
    EXPECT_EQ(r.status, 400) << body;
    auto e = ErrorOf(r);
    EXPECT_EQ(e["code"].string_value(), "INVALID_ARGUMENT");
    EXPECT_EQ(e["reason"].string_value(), "INVALID_ARGUMENT");
  }
  EXPECT_EQ(lifecycle_.calls(), 0);

  HttpResult r = Call("POST", "/v1/sandboxes", R"({"image":"a:1"})", {{"Idempotency-Key", ""}});
  EXPECT_EQ(r.status, 400);
  r = Call("POST", "/v1/sandboxes", R"({"image":"a:1"})",
           {{"Idempotency-Key", std::string(256, 'k')}});
  EXPECT_EQ(r.status, 400);
  r = Call("POST", "/v1/sandboxes", "image=a",
           {{"Content-Type", "application/x-www-form-urlencoded"}});
  EXPECT_EQ(r.status, 415);
  EXPECT_EQ(ReasonOf(r), "UNSUPPORTED_MEDIA_TYPE");
  EXPECT_EQ(lifecycle_.calls(), 0);
}

TEST_F(GatewayServerTest, ListPassesFiltersAndAnswersAPage) {
  HttpResult r = Call("GET",
                      "/v1/sandboxes?state=RUNNING,HIBERNATED&metadata.team=ci&metadata.job=a%20b"
                      "&pageSize=20&pageToken=tok");
  ASSERT_EQ(r.status, 200) << r.body;
  v1::ListSandboxesRequest req = lifecycle_.last_list();
  EXPECT_EQ(req.tenant_id(), "tenant-a");
  ASSERT_EQ(req.states_size(), 2);
  EXPECT_EQ(req.states(0), v1::RUNNING);
  EXPECT_EQ(req.states(1), v1::HIBERNATED);
  EXPECT_EQ(req.metadata().at("job"), "a b");
  EXPECT_EQ(req.page_size(), 20);
  EXPECT_EQ(req.page_token(), "tok");
  v1::ListSandboxesResponse expected;
  *expected.add_sandboxes() = lifecycle_.sandbox();
  expected.set_next_page_token("next-1");
  EXPECT_EQ(r.body, ListJson(expected));

  r = Call("GET", "/v1/sandboxes");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(lifecycle_.last_list().page_size(), 50);
  EXPECT_EQ(lifecycle_.last_list().states_size(), 0);

  int calls = lifecycle_.calls();
  EXPECT_EQ(Call("GET", "/v1/sandboxes?pageSize=1001").status, 400);
  EXPECT_EQ(Call("GET", "/v1/sandboxes?state=NAPPING").status, 400);
  EXPECT_EQ(Call("GET", "/v1/sandboxes?color=red").status, 400);
  EXPECT_EQ(lifecycle_.calls(), calls);
}

TEST_F(GatewayServerTest, SandboxRoutes) {
  HttpResult r = Call("GET", "/v1/sandboxes/sbx_fake1");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, SandboxJson(lifecycle_.sandbox()));
  EXPECT_EQ(lifecycle_.last_method(), "GetSandbox");
  EXPECT_EQ(lifecycle_.last_target(),
            std::make_pair(std::string("tenant-a"), std::string("sbx_fake1")));

  r = Call("DELETE", "/v1/sandboxes/sbx_fake1");
  EXPECT_EQ(r.status, 204);
  EXPECT_TRUE(r.body.empty());
  EXPECT_EQ(r.header("content-type"), "");
  EXPECT_EQ(r.headers.count("content-length"), 0u);  // RFC 9110: none on a 204
  EXPECT_EQ(lifecycle_.last_method(), "DestroySandbox");
  EXPECT_EQ(Call("GET", "/v1/usage").status, 200);  // and the connection stays in sync

  r = Call("POST", "/v1/sandboxes/sbx_fake1/timeout", R"({"timeoutSec":900})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(lifecycle_.last_set_timeout().timeout_sec(), 900);
  EXPECT_EQ(lifecycle_.last_set_timeout().tenant_id(), "tenant-a");
  EXPECT_EQ(Call("POST", "/v1/sandboxes/sbx_fake1/timeout", "{}").status, 400);

  r = Call("POST", "/v1/sandboxes/sbx_fake1/hibernate");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(ObjectOf(r.body)["state"].string_value(), "HIBERNATED");
  EXPECT_EQ(lifecycle_.last_method(), "HibernateSandbox");

  r = Call("POST", "/v1/sandboxes/sbx_fake1/resume", "{}");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(lifecycle_.last_method(), "ResumeSandbox");
  EXPECT_EQ(Call("POST", "/v1/sandboxes/sbx_fake1/resume", R"({"now":true})").status, 400);

  r = Call("POST", "/v1/sandboxes/sbx_fake1/exec",
           R"({"cmd":"echo hello","timeoutSec":5,"env":{"X":"1"},"cwd":"/","stdin":"in"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, R"({"exitCode":0,"stdout":"hello\n","stderr":"","durationMs":7})");
  v1::ExecRequest exec = lifecycle_.last_exec();
  EXPECT_EQ(exec.tenant_id(), "tenant-a");
  EXPECT_EQ(exec.id(), "sbx_fake1");
  EXPECT_EQ(exec.cmd(), "echo hello");
  EXPECT_EQ(exec.timeout_sec(), 5);
  EXPECT_EQ(exec.stdin(), "in");

  r = Call("GET", "/v1/usage");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, R"({"activeSandboxes":2,"hibernatedSandboxes":1,)"
                    R"("limits":{"maxConcurrent":10,"createsPerSec":2,"requestsPerSec":50,)"
            R"("maxHibernated":0,"maxConcurrentExecs":0,"hibernationRetentionSec":0}})");
  EXPECT_EQ(lifecycle_.last_target().first, "tenant-a");
}

TEST_F(GatewayServerTest, ImplausibleIdsAre404WithoutALookup) {
  HttpResult r = Call("GET", "/v1/sandboxes/sbx%2F..");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(ReasonOf(r), "NOT_FOUND");
  EXPECT_EQ(lifecycle_.calls(), 0);
}

TEST_F(GatewayServerTest, ExecStreamWritesNdjsonLines) {
  std::vector<v1::ExecChunk> chunks(4);
  chunks[0].set_stdout("line 1\n");
  chunks[1].set_stderr("warn \xFF\n");
  chunks[2].set_stdout("line 2\n");
  chunks[3].set_exit_code(3);
  lifecycle_.SetStream(chunks, grpc::Status::OK);
  HttpResult r = Call("POST", "/v1/sandboxes/sbx_fake1/exec:stream", R"({"cmd":"x"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("content-type"), "application/x-ndjson");
  EXPECT_EQ(r.header("transfer-encoding"), "chunked");
  EXPECT_EQ(r.body,
            "{\"stdout\":\"line 1\\n\"}\n{\"stderr\":\"warn \xEF\xBF\xBD\\n\"}\n"
            "{\"stdout\":\"line 2\\n\"}\n{\"exitCode\":3}\n");
  EXPECT_EQ(lifecycle_.last_exec().tenant_id(), "tenant-a");
  // The connection is still usable.
  EXPECT_EQ(Call("GET", "/v1/usage").status, 200);
}

TEST_F(GatewayServerTest, ExecStreamRefusedBeforeStartIsAPlainError) {
  lifecycle_.FailWith(ToGrpcStatus(Error(absl::StatusCode::kFailedPrecondition,
                                         "SANDBOX_NOT_RUNNING", "sandbox is hibernated")));
  HttpResult r = Call("POST", "/v1/sandboxes/sbx_fake1/exec:stream", R"({"cmd":"x"})");
  EXPECT_EQ(r.status, 409);
  EXPECT_EQ(ReasonOf(r), "SANDBOX_NOT_RUNNING");
  lifecycle_.FailWith(grpc::Status(grpc::StatusCode::NOT_FOUND, "no such sandbox"));
  r = Call("POST", "/v1/sandboxes/sbx_fake1/exec:stream", R"({"cmd":"x"})");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(ReasonOf(r), "NOT_FOUND");
}

TEST_F(GatewayServerTest, ExecStreamFailureMidwayEndsWithAnErrorLine) {
  std::vector<v1::ExecChunk> chunks(1);
  chunks[0].set_stdout("partial");
  lifecycle_.SetStream(chunks, ToGrpcStatus(Error(absl::StatusCode::kUnavailable, "RUNNER_LOST",
                                                  "the runner went away")));
  HttpResult r = Call("POST", "/v1/sandboxes/sbx_fake1/exec:stream", R"({"cmd":"x"})");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.body,
            "{\"stdout\":\"partial\"}\n"
            "{\"error\":{\"status\":503,\"code\":\"UNAVAILABLE\",\"reason\":\"RUNNER_LOST\","
            "\"message\":\"the runner went away\"}}\n");
}

TEST_F(GatewayServerTest, ExecStreamClientDisconnectCancelsTheCommand) {
  std::vector<v1::ExecChunk> chunks(1);
  chunks[0].set_stdout("started\n");
  lifecycle_.SetStream(chunks, grpc::Status::OK, /*hang=*/true);
  {
    TestHttpClient raw(server_->port());
    std::string body = R"({"cmd":"sleep 1000"})";
    raw.WriteRaw(
        "POST /v1/sandboxes/sbx_fake1/exec:stream HTTP/1.1\r\nHost: x\r\n"
        "Authorization: Bearer " +
        key_ +
        "\r\nContent-Type: application/json\r\n"
        "Content-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body);
    // Wait for the stream to start, then hang up.
    for (int i = 0; i < 200 && lifecycle_.last_method() != "ExecStream"; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    raw.Close();
  }
  for (int i = 0; i < 300 && !lifecycle_.stream_cancelled(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(lifecycle_.stream_cancelled());
}

TEST_F(GatewayServerTest, UnauthenticatedReasons) {
  struct Case {
    std::vector<std::pair<std::string, std::string>> headers;
    std::string reason;
  };
  std::string other_region = keys_.AddKey("tenant-b", "eu-west");
  std::string revoked = keys_.AddKey("tenant-a");
  keys_.Revoke(revoked);
  ApiKey wrong_secret = *ParseApiKey(key_);
  wrong_secret.secret = NewApiKey("local").secret;
  Case cases[] = {
      {{}, "KEY_MISSING"},
      {{{"Authorization", "Bearer nope"}}, "KEY_MALFORMED"},
      {{{"Authorization", "Basic abc"}}, "KEY_MALFORMED"},
      {{{"X-API-Key", other_region}}, "KEY_WRONG_REGION"},
      {{{"Authorization", "Bearer " + NewApiKey("local").ToString()}}, "KEY_UNKNOWN"},
      {{{"Authorization", "Bearer " + wrong_secret.ToString()}}, "KEY_UNKNOWN"},
      {{{"X-API-Key", revoked}}, "KEY_REVOKED"},
  };
  for (const Case& c : cases) {
    HttpResult r = client_->Send("GET", "/v1/usage", "", c.headers);
    EXPECT_EQ(r.status, 401) << c.reason;
    auto e = ErrorOf(r);
    EXPECT_EQ(e["code"].string_value(), "UNAUTHENTICATED");
    EXPECT_EQ(e["reason"].string_value(), c.reason);
    EXPECT_EQ(r.header("www-authenticate"), "Bearer realm=\"isorun\"");
    EXPECT_EQ(MetricValue("isorun_gateway_auth_failures_total", {{"reason", c.reason}}) > 0, true)
        << c.reason;
  }
  EXPECT_EQ(lifecycle_.calls(), 0);
  // Revocation takes effect on the very next request.
  HttpResult ok = Call("GET", "/v1/usage");
  EXPECT_EQ(ok.status, 200);
  keys_.Revoke(key_);
  EXPECT_EQ(ReasonOf(Call("GET", "/v1/usage")), "KEY_REVOKED");
}

TEST_F(GatewayServerTest, KeyStoreDownIs503) {
  keys_.SetUnavailable(true);
  HttpResult r = Call("GET", "/v1/usage");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(ErrorOf(r)["code"].string_value(), "UNAVAILABLE");
}

TEST_F(GatewayServerTest, UnknownRoutesAndMethods) {
  HttpResult r = Call("GET", "/v1/nothing");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(ReasonOf(r), "NOT_FOUND");
  r = client_->Send("GET", "/nothing/at/all");  // no key needed to learn a route is unknown
  EXPECT_EQ(r.status, 404);

  r = Call("PUT", "/v1/sandboxes/sbx_fake1");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.header("allow"), "GET, DELETE");
  EXPECT_EQ(ReasonOf(r), "METHOD_NOT_ALLOWED");
  r = Call("GET", "/v1/sandboxes/sbx_fake1/exec");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.header("allow"), "POST");
  EXPECT_EQ(lifecycle_.calls(), 0);
  EXPECT_GT(MetricValue("isorun_gateway_http_requests_total",
                        {{"route", "other"}, {"method", "GET"}, {"code", "404"}}),
            0);
}

TEST_F(GatewayServerTest, LifecycleStatusesMapToHttp) {
  struct Case {
    grpc::Status status;
    int http;
    std::string code;
    std::string reason;
  } cases[] = {
      {ToGrpcStatus(Error(absl::StatusCode::kInvalidArgument, "IMAGE_NOT_PINNED", "pin it")), 400,
       "INVALID_ARGUMENT", "IMAGE_NOT_PINNED"},
      {grpc::Status(grpc::StatusCode::NOT_FOUND, "no sandbox"), 404, "NOT_FOUND", "NOT_FOUND"},
      {grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "later"), 501, "UNIMPLEMENTED",
       "UNIMPLEMENTED"},
      {grpc::Status(grpc::StatusCode::UNAVAILABLE, "db down"), 503, "UNAVAILABLE", "UNAVAILABLE"},
      {ToGrpcStatus(Error(absl::StatusCode::kDeadlineExceeded, "EXEC_TIMEOUT", "30 s")), 504,
       "DEADLINE_EXCEEDED", "EXEC_TIMEOUT"},
      {grpc::Status(grpc::StatusCode::INTERNAL, "boom"), 500, "INTERNAL", "INTERNAL"},
      {grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "dup"), 409, "ALREADY_EXISTS",
       "ALREADY_EXISTS"},
  };
  for (const Case& c : cases) {
    lifecycle_.FailWith(c.status);
    HttpResult r = Call("POST", "/v1/sandboxes", R"({"image":"a:1"})");
    EXPECT_EQ(r.status, c.http) << c.code;
    auto e = ErrorOf(r);
    EXPECT_EQ(e["code"].string_value(), c.code);
    EXPECT_EQ(e["reason"].string_value(), c.reason);
    EXPECT_EQ(e.count("retryAfterSec"), 0u);
  }
}

TEST_F(GatewayServerTest, Http429CarriesRetryAfter) {
  lifecycle_.FailWith(
      ToGrpcStatus(Error(absl::StatusCode::kResourceExhausted, "CONCURRENT_SANDBOX_LIMIT",
                         "tenant has 10 of 10 concurrent sandboxes", 10, 10, 2)));
  HttpResult r = Call("POST", "/v1/sandboxes", R"({"image":"a:1"})");
  ASSERT_EQ(r.status, 429);
  EXPECT_EQ(r.header("retry-after"), "2");
  auto e = ErrorOf(r);
  EXPECT_EQ(e["code"].string_value(), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(e["reason"].string_value(), "CONCURRENT_SANDBOX_LIMIT");
  EXPECT_EQ(e["retryAfterSec"].number_lexeme(), "2");
  EXPECT_EQ(e["limit"].number_lexeme(), "10");
  EXPECT_EQ(e["current"].number_lexeme(), "10");

  lifecycle_.FailWith(
      ToGrpcStatus(Error(absl::StatusCode::kResourceExhausted, "CAPACITY", "no runner has room")));
  r = Call("POST", "/v1/sandboxes/sbx_fake1/resume");
  ASSERT_EQ(r.status, 429);
  EXPECT_EQ(r.header("retry-after"), "1");
  EXPECT_EQ(ErrorOf(r)["retryAfterSec"].number_lexeme(), "1");
}

TEST_F(GatewayServerTest, LifecycleDownIs503) {
  grpc_.server->Shutdown(std::chrono::system_clock::now());
  grpc_.server.reset();
  HttpResult r = Call("GET", "/v1/sandboxes/sbx_fake1");
  EXPECT_EQ(r.status, 503);
  auto e = ErrorOf(r);
  EXPECT_EQ(e["code"].string_value(), "UNAVAILABLE");
  // A fixed message: the gRPC transport's text (with the peer's address) stays in the log.
  EXPECT_NE(e["message"].string_value().find("retry later"), std::string::npos);
  EXPECT_EQ(r.body.find("127.0.0.1"), std::string::npos) << r.body;
  EXPECT_EQ(r.body.find("ipv4"), std::string::npos) << r.body;

  r = client_->Send("GET", "/healthz");
  EXPECT_EQ(r.status, 503);
  EXPECT_NE(ErrorOf(r)["message"].string_value().find("lifecycle"), std::string::npos);
}

TEST_F(GatewayServerTest, Healthz) {
  HttpResult r = client_->Send("GET", "/healthz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"status":"ok"})");
  pg_health_ = absl::UnavailableError("connection refused");
  r = client_->Send("GET", "/healthz");
  EXPECT_EQ(r.status, 503);
  auto e = ErrorOf(r);
  EXPECT_EQ(e["reason"].string_value(), "UNHEALTHY");
  EXPECT_NE(e["message"].string_value().find("postgres: connection refused"), std::string::npos);
  EXPECT_EQ(e["message"].string_value().find("lifecycle"), std::string::npos);
}

TEST_F(GatewayServerTest, OpenApiIsServedWithoutAKey) {
  HttpResult r = client_->Send("GET", "/v1/openapi.json");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("content-type"), "application/json");
  EXPECT_EQ(r.body, OpenApiDocument());
  EXPECT_TRUE(ParseJson(r.body, 64).ok());
  EXPECT_EQ(client_->Send("POST", "/v1/openapi.json", "{}").status, 405);
  EXPECT_EQ(lifecycle_.calls(), 0);
}

TEST_F(GatewayServerTest, BodyTooLargeIs413AndNothingIsDone) {
  std::string big = R"({"image":"a:1","metadata":{"k":")" + std::string(kMaxBody, 'x') + "\"}}";
  HttpResult r = Call("POST", "/v1/sandboxes", big);
  EXPECT_EQ(r.status, 413);
  auto e = ErrorOf(r);
  EXPECT_EQ(e["reason"].string_value(), "BODY_TOO_LARGE");
  EXPECT_EQ(lifecycle_.calls(), 0);
  EXPECT_FALSE(r.keep_alive);

  // With Expect: 100-continue the answer comes before the body is sent.
  TestHttpClient c(server_->port());
  HttpResult early =
      c.SendRaw("POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key_ +
                "\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: "
                "10000000\r\n\r\n");
  EXPECT_EQ(early.status, 413);
  EXPECT_EQ(ReasonOf(early), "BODY_TOO_LARGE");

  // Chunked bodies are cut at the limit too.
  TestHttpClient chunked(server_->port());
  std::string chunk(kMaxBody + 10, 'x');
  char size[32];
  std::snprintf(size, sizeof(size), "%zx", chunk.size());
  HttpResult cut = chunked.SendRaw(
      "POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key_ +
      "\r\nTransfer-Encoding: chunked\r\n\r\n" + size + "\r\n" + chunk + "\r\n0\r\n\r\n");
  EXPECT_EQ(cut.status, 413);
  EXPECT_EQ(lifecycle_.calls(), 0);

  // The 413 closed that connection; on a new one, a body within the limit is fine.
  client_ = std::make_unique<TestHttpClient>(server_->port());
  std::string fits =
      R"({"image":"a:1","metadata":{"k":")" + std::string(kMaxBody - 100, 'x') + "\"}}";
  ASSERT_LE(fits.size(), kMaxBody);
  EXPECT_EQ(Call("POST", "/v1/sandboxes", fits).status, 201);
}

TEST_F(GatewayServerTest, ExpectContinueWithinTheLimit) {
  std::string body = R"({"image":"a:1"})";
  TestHttpClient c(server_->port());
  HttpResult r =
      c.SendRaw("POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key_ +
                "\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
                "Content-Length: " +
                std::to_string(body.size()) + "\r\n\r\n");
  EXPECT_EQ(r.status, 100);
  c.WriteRaw(body);
  r = c.Read();
  EXPECT_EQ(r.status, 201) << r.body;
}

TEST_F(GatewayServerTest, MalformedHttpIs400) {
  TestHttpClient c(server_->port());
  HttpResult r = c.SendRaw("THIS IS NOT HTTP\r\n\r\n");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(ReasonOf(r), "MALFORMED_REQUEST");

  TestHttpClient big_head(server_->port());
  r = big_head.SendRaw("GET /v1/usage HTTP/1.1\r\nHost: x\r\nX-Pad: " + std::string(20000, 'p') +
                       "\r\n\r\n");
  EXPECT_EQ(r.status, 431);
  ErrorOf(r);
}

TEST_F(GatewayServerTest, AHandlerExceptionIs500AndTheServerLivesOn) {
  keys_.SetThrow(true);
  HttpResult r = Call("GET", "/v1/usage");
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(ErrorOf(r)["code"].string_value(), "INTERNAL");
  keys_.SetThrow(false);
  EXPECT_EQ(Call("GET", "/v1/usage").status, 200);
}

TEST_F(GatewayServerTest, KeepAliveServesManyRequestsOnOneConnection) {
  for (int i = 0; i < 50; ++i) ASSERT_EQ(Call("GET", "/v1/sandboxes/sbx_fake1").status, 200);
  EXPECT_EQ(MetricValue("isorun_gateway_http_requests_total",
                        {{"route", "/v1/sandboxes/{id}"}, {"method", "GET"}, {"code", "200"}}),
            50);
  EXPECT_EQ(MetricValue("isorun_gateway_http_request_duration_seconds",
                        {{"route", "/v1/sandboxes/{id}"}, {"method", "GET"}}),
            50);
}

TEST_F(GatewayServerTest, MetricsAreExposedInPrometheusText) {
  Call("GET", "/v1/usage");
  std::string text = prometheus::TextSerializer().Serialize(registry_.Collect());
  EXPECT_NE(text.find("isorun_gateway_http_requests_total{"), std::string::npos) << text;
  EXPECT_NE(text.find("route=\"/v1/usage\""), std::string::npos);
  EXPECT_NE(text.find("isorun_gateway_http_request_duration_seconds_bucket"), std::string::npos);
}

TEST_F(GatewayServerTest, ConcurrentClients) {
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&] {
      TestHttpClient c(server_->port());
      for (int i = 0; i < 20; ++i) {
        if (c.Send("GET", "/v1/usage", "", {{"X-API-Key", key_}}).status == 200) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 16 * 20);
}

class GatewayHealthCacheTest : public GatewayServerTest {
 protected:
  void SetUp() override {
    health_cache_ttl_ = absl::Seconds(60);
    Start(HttpServer::Options());
  }
};

TEST_F(GatewayHealthCacheTest, HealthzAnswersFromItsLastCheck) {
  EXPECT_EQ(client_->Send("GET", "/healthz").status, 200);
  pg_health_ = absl::UnavailableError("connection refused");
  for (int i = 0; i < 20; ++i) EXPECT_EQ(client_->Send("GET", "/healthz").status, 200);
  EXPECT_EQ(pg_checks_.load(), 1) << "a cached /healthz ran its checks again";
}

// The gateway this replaced ran a thread per connection with a cap of 2,000: that many idle
// sockets locked everyone out.
TEST_F(GatewayServerTest, ServesWhileMoreThanTwoThousandIdleConnectionsAreOpen) {
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &rl);
  constexpr int kIdle = 2500;  // both ends live in this process
  if (rl.rlim_cur < 2 * kIdle + 200) GTEST_SKIP() << "the open-file limit is " << rl.rlim_cur;
  std::vector<std::unique_ptr<TestHttpClient>> idle;
  for (int i = 0; i < kIdle; ++i) idle.push_back(std::make_unique<TestHttpClient>(server_->port()));
  TestHttpClient fresh(server_->port());
  EXPECT_EQ(fresh.Send("GET", "/v1/usage", "", {{"X-API-Key", key_}}).status, 200);
  EXPECT_GE(server_->open_connections(), kIdle);
}

class GatewayLimitsTest : public GatewayServerTest {
 protected:
  void SetUp() override {
    HttpServer::Options http;
    http.max_connections = 3;  // the fixture's own client is one
    http.idle_timeout = absl::Milliseconds(500);
    Start(http);
  }
};

TEST_F(GatewayLimitsTest, ConnectionsBeyondTheCapGet503) {
  TestHttpClient second(server_->port());
  EXPECT_EQ(second.Send("GET", "/healthz").status, 200);
  TestHttpClient third(server_->port());
  EXPECT_EQ(third.Send("GET", "/healthz").status, 200);
  TestHttpClient fourth(server_->port());
  HttpResult r = fourth.Send("GET", "/healthz");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(ReasonOf(r), "TOO_MANY_CONNECTIONS");
}

TEST_F(GatewayLimitsTest, IdleAndSlowConnectionsAreClosed) {
  TestHttpClient idle(server_->port());
  EXPECT_TRUE(idle.ClosedByPeer(std::chrono::milliseconds(3000)));
  TestHttpClient slow(server_->port());
  slow.WriteRaw("GET /v1/usage HTTP/1.1\r\nHo");
  // A head that does not arrive in time is answered 408, then the connection ends.
  HttpResult r = slow.Read();
  EXPECT_EQ(r.status, 408);
  EXPECT_EQ(ReasonOf(r), "REQUEST_TIMEOUT");
  EXPECT_TRUE(slow.ClosedByPeer(std::chrono::milliseconds(3000)));
}

TEST_F(GatewayServerTest, StopClosesIdleConnectionsAndFinishesBusyOnes) {
  TestHttpClient idle(server_->port());
  EXPECT_EQ(idle.Send("GET", "/healthz").status, 200);
  absl::Time start = absl::Now();
  EXPECT_TRUE(server_->Stop(absl::Seconds(5)));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_TRUE(idle.ClosedByPeer(std::chrono::milliseconds(1000)));
}

class GatewayRateTest : public GatewayServerTest {
 protected:
  void SetUp() override {
    for (auto& q : quota_) {
      auto server = StartGrpcServer("127.0.0.1:0", {&q});
      ASSERT_TRUE(server.ok()) << server.status();
      quota_servers_.push_back(std::move(*server));
    }
    std::vector<std::shared_ptr<grpc::Channel>> replicas;
    for (auto& server : quota_servers_) {
      names_.push_back("127.0.0.1:" + std::to_string(server.port));
      replicas.push_back(MakeChannel(names_.back()));
    }
    rates_ = std::make_unique<QuotaRateChecker>(replicas, names_, absl::Milliseconds(500));
    Start(HttpServer::Options());
  }
  void TearDown() override {
    GatewayServerTest::TearDown();
    for (auto& server : quota_servers_) {
      if (server.server) server.server->Shutdown(std::chrono::system_clock::now());
    }
  }
  // tenant-a's first choice, and its second.
  int owner_index() { return RendezvousOrder("tenant-a", names_)[0]; }
  FakeQuota& owner() { return quota_[owner_index()]; }
  FakeQuota& other() { return quota_[1 - owner_index()]; }

  FakeQuota quota_[2];
  std::vector<std::string> names_;
  std::vector<GrpcServer> quota_servers_;
};

TEST_F(GatewayRateTest, ChecksTheOwningReplicaAndSendsRateLimitHeaders) {
  HttpResult r = Call("GET", "/v1/usage");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.header("ratelimit-policy"), "\"requests\";q=20;w=2");
  EXPECT_EQ(r.header("ratelimit"), "\"requests\";r=19;t=1");
  EXPECT_EQ(owner().checks.load(), 1);
  EXPECT_EQ(other().checks.load(), 0);
  {
    std::lock_guard lock(owner().mu);
    EXPECT_EQ(owner().last_tenant, "tenant-a");
    EXPECT_EQ(owner().last_key, ParseApiKey(key_)->key_id);
  }
  r = Call("POST", "/v1/sandboxes", R"({"image":"a:1"})");
  ASSERT_EQ(r.status, 201);
  EXPECT_EQ(owner().creates.load(), 1);
  EXPECT_EQ(r.header("ratelimit-policy"), "\"creates\";q=20;w=2");
  // Unauthenticated requests and health checks are not counted.
  client_->Send("GET", "/v1/usage");
  client_->Send("GET", "/healthz");
  EXPECT_EQ(owner().checks.load(), 2);
}

TEST_F(GatewayRateTest, RefusedIs429WithRetryAfterAndRateLimitHeaders) {
  owner().refuse = true;
  HttpResult r = Call("POST", "/v1/sandboxes", R"({"image":"a:1"})");
  ASSERT_EQ(r.status, 429);
  EXPECT_EQ(r.header("retry-after"), "1");
  EXPECT_EQ(r.header("ratelimit-policy"), "\"creates\";q=20;w=2");
  EXPECT_EQ(r.header("ratelimit"), "\"creates\";r=0;t=1");
  auto e = ErrorOf(r);
  EXPECT_EQ(e["reason"].string_value(), "RATE_LIMIT");
  EXPECT_EQ(e["retryAfterSec"].number_lexeme(), "1");
  EXPECT_EQ(e["limit"].number_lexeme(), "20");
  EXPECT_EQ(lifecycle_.calls(), 0);  // refused before any work
  // Bad bodies are rate-limited too (the check comes before validation).
  EXPECT_EQ(Call("POST", "/v1/sandboxes", "{").status, 429);
}

// A quota replica that leaves hands its tenants to their second choice; back, it gets them back.
TEST_F(GatewayRateTest, AReplicaThatLeftPassesItsTenantsToTheNext) {
  ASSERT_EQ(Call("GET", "/v1/usage").status, 200);
  EXPECT_EQ(owner().checks.load(), 1);
  quota_servers_[owner_index()].server->Shutdown(std::chrono::system_clock::now());
  quota_servers_[owner_index()].server.reset();
  HttpResult r = Call("GET", "/v1/usage");
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.header("ratelimit"), "");  // checked, not let through unchecked
  EXPECT_EQ(other().checks.load(), 1);
  EXPECT_EQ(MetricValue("isorun_gateway_rate_check_failures_total", {}), 0);
}

TEST_F(GatewayRateTest, QuotaDownLetsRequestsThroughAndCountsIt) {
  for (auto& server : quota_servers_) server.server->Shutdown(std::chrono::system_clock::now());
  HttpResult r = Call("GET", "/v1/usage");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("ratelimit"), "");
  EXPECT_EQ(MetricValue("isorun_gateway_rate_check_failures_total", {}), 1);
}

}  // namespace
}  // namespace isorun::gateway
