// The public HTTP API end to end: gateway, lifecycle, quota, scheduler and a runner as processes,
// real Postgres, real HTTP. Each test checks the contract of API.md from the outside.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "services/kit/sanitizer_build.h"
#include "tests/support/cluster.h"
#include "tests/support/eventually.h"
#include "tests/support/http_client.h"
#include "tests/support/json_fields.h"

namespace isorun {
namespace {

using testing::Cluster;
using testing::ClusterOptions;
using testing::HttpRequest;
using testing::HttpResponse;
using testing::Json;
using testing::Num;
using testing::Obj;
using testing::Str;

class Api : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ClusterOptions options;
    options.runner_slots = 1000;
    // An exception here would make gtest skip the suite's tests, not fail them: keep it for SetUp.
    try {
      cluster_ = new Cluster(options);
    } catch (const std::exception& e) {
      setup_error_ = new std::string(e.what());
    }
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }

  // A fresh tenant per test, so limits and usage never leak between tests.
  void SetUp() override {
    ASSERT_EQ(setup_error_, nullptr) << "the cluster did not start: " << *setup_error_;
    static std::atomic<int> n{0};
    tenant_name_ = "t" + std::to_string(n++);
    tenant_ = cluster_->CreateTenant(tenant_name_, 5);
    // Rate limits have tests of their own; here they must not get in the way.
    cluster_->db().Scalar(
        "UPDATE quota.limits SET creates_per_sec = 1000, requests_per_sec = 1000 "
        "WHERE tenant_id = '" + tenant_ + "'");
    key_ = cluster_->CreateKey(tenant_);
  }

  HttpResponse Call(const std::string& method, const std::string& path,
                    const std::string& body = "", std::map<std::string, std::string> headers = {},
                    const std::string& key = "") {
    if (headers.count("Authorization") == 0 && headers.count("X-API-Key") == 0) {
      headers["Authorization"] = "Bearer " + (key.empty() ? key_ : key);
    }
    if (!body.empty()) headers["Content-Type"] = "application/json";
    return HttpRequest(method, cluster_->gateway_url() + path, body, headers);
  }

  std::string Usage() {
    return cluster_->db().Scalar("SELECT active FROM quota.usage WHERE tenant_id = '" + tenant_ +
                                 "'");
  }
  std::string SandboxRows() {
    return cluster_->db().Scalar("SELECT count(*) FROM lifecycle.sandboxes WHERE tenant_id = '" +
                                 tenant_ + "'");
  }

  // Every non-2xx answer has API.md's error body.
  static google::protobuf::Struct ErrorOf(const HttpResponse& r) {
    EXPECT_EQ(r.Header("Content-Type").rfind("application/json", 0), 0u) << r.body;
    auto body = Json(r.body);
    auto error = Obj(body, "error");
    EXPECT_EQ(Num(error, "status"), r.status) << r.body;
    EXPECT_FALSE(Str(error, "code").empty()) << r.body;
    EXPECT_FALSE(Str(error, "reason").empty()) << r.body;
    EXPECT_FALSE(Str(error, "message").empty()) << r.body;
    return error;
  }

  static Cluster* cluster_;
  static std::string* setup_error_;
  std::string tenant_name_, tenant_, key_;
};

Cluster* Api::cluster_ = nullptr;
std::string* Api::setup_error_ = nullptr;

TEST_F(Api, CreateGetListTimeoutDelete) {
  auto created = Call("POST", "/v1/sandboxes",
                      R"({"image":"busybox:1.36","timeoutSec":120,"metadata":{"app":"web"}})");
  ASSERT_EQ(created.status, 201) << created.body;
  auto sb = Json(created.body);
  std::string id = Str(sb, "id");
  EXPECT_EQ(Str(sb, "state"), "RUNNING");
  EXPECT_EQ(Str(sb, "image"), "busybox:1.36");
  EXPECT_EQ(Str(sb, "imageDigest").rfind("sha256:", 0), 0u);
  EXPECT_EQ(Num(sb, "timeoutSec"), 120);
  EXPECT_EQ(Num(sb, "cpuMillis"), 1000);
  EXPECT_EQ(Num(sb, "memoryMb"), 512);
  EXPECT_EQ(Str(Obj(sb, "metadata"), "app"), "web");
  EXPECT_EQ(Str(Obj(sb, "network"), "egress"), "open");
  EXPECT_EQ(Str(sb, "publicId").size(), 32u);
  EXPECT_FALSE(Str(sb, "createdAt").empty());
  EXPECT_EQ(Str(sb, "createdAt").back(), 'Z');
  EXPECT_FALSE(Str(sb, "expiresAt").empty());
  EXPECT_EQ(sb.fields().count("tenantId"), 0u);
  EXPECT_EQ(sb.fields().count("runnerId"), 0u);

  auto got = Call("GET", "/v1/sandboxes/" + id);
  ASSERT_EQ(got.status, 200) << got.body;
  EXPECT_EQ(Str(Json(got.body), "id"), id);

  auto list = Call("GET", "/v1/sandboxes?metadata.app=web");
  ASSERT_EQ(list.status, 200) << list.body;
  auto items = Json(list.body).fields().at("sandboxes").list_value();
  ASSERT_EQ(items.values_size(), 1);
  EXPECT_EQ(Str(items.values(0).struct_value(), "id"), id);
  EXPECT_EQ(Json(Call("GET", "/v1/sandboxes?metadata.app=db").body)
                .fields()
                .at("sandboxes")
                .list_value()
                .values_size(),
            0);

  auto timeout = Call("POST", "/v1/sandboxes/" + id + "/timeout", R"({"timeoutSec":60})");
  ASSERT_EQ(timeout.status, 200) << timeout.body;
  EXPECT_EQ(Num(Json(timeout.body), "timeoutSec"), 60);

  auto usage = Call("GET", "/v1/usage");
  ASSERT_EQ(usage.status, 200) << usage.body;
  auto u = Json(usage.body);
  EXPECT_EQ(Num(u, "activeSandboxes"), 1);
  EXPECT_EQ(Num(u, "hibernatedSandboxes"), 0);
  EXPECT_EQ(Num(Obj(u, "limits"), "maxConcurrent"), 5);

  auto del = Call("DELETE", "/v1/sandboxes/" + id);
  EXPECT_EQ(del.status, 204) << del.body;
  EXPECT_TRUE(del.body.empty());
  // The slot is free when DELETE returns.
  EXPECT_EQ(Usage(), "0");
  EXPECT_EQ(Call("DELETE", "/v1/sandboxes/" + id).status, 204);
  auto ended = Json(Call("GET", "/v1/sandboxes/" + id).body);
  EXPECT_EQ(Str(ended, "state"), "DESTROYED");
  EXPECT_EQ(Str(ended, "endReason"), "DELETED");
  EXPECT_FALSE(Str(ended, "endedAt").empty());
  // Live listing no longer shows it; state= asks for it.
  EXPECT_EQ(Json(Call("GET", "/v1/sandboxes").body).fields().at("sandboxes").list_value().values_size(),
            0);
  EXPECT_EQ(Json(Call("GET", "/v1/sandboxes?state=DESTROYED").body)
                .fields()
                .at("sandboxes")
                .list_value()
                .values_size(),
            1);
  auto unknown = Call("DELETE", "/v1/sandboxes/sbx_doesnotexist");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_EQ(Str(ErrorOf(unknown), "reason"), "NOT_FOUND");
}

TEST_F(Api, EveryUnauthorizedReason) {
  struct Case {
    std::map<std::string, std::string> headers;
    const char* reason;
  };
  std::string other_region = cluster_->CreateKey(tenant_, "eu-west-1");
  std::string secret(43, 'a');
  for (const Case& c : std::vector<Case>{
           {{{"X-Nothing", "1"}}, "KEY_MISSING"},
           {{{"Authorization", "Bearer not-a-key"}}, "KEY_MALFORMED"},
           {{{"Authorization", "Basic abc"}}, "KEY_MALFORMED"},
           {{{"Authorization", "Bearer isr_local_unknownkeyid_" + secret}}, "KEY_UNKNOWN"},
           // The secret's last character changed (to one it is not: it is random).
           {{{"Authorization", "Bearer " + key_.substr(0, key_.size() - 1) +
                                   (key_.back() == 'x' ? "y" : "x")}},
            "KEY_UNKNOWN"},
           {{{"Authorization", "Bearer " + other_region}}, "KEY_WRONG_REGION"}}) {
    auto headers = c.headers;
    if (headers.count("Authorization") == 0) headers["Authorization"] = "";
    HttpResponse r = HttpRequest("GET", cluster_->gateway_url() + "/v1/usage", "",
                                 c.headers.count("X-Nothing") ? std::map<std::string, std::string>{}
                                                              : c.headers);
    EXPECT_EQ(r.status, 401) << c.reason << ": " << r.body;
    auto error = ErrorOf(r);
    EXPECT_EQ(Str(error, "code"), "UNAUTHENTICATED");
    EXPECT_EQ(Str(error, "reason"), c.reason) << r.body;
  }
  // X-API-Key works as well as Authorization.
  EXPECT_EQ(HttpRequest("GET", cluster_->gateway_url() + "/v1/usage", "", {{"X-API-Key", key_}}).status,
            200);
}

TEST_F(Api, RevocationFailsTheVeryNextRequest) {
  ASSERT_EQ(Call("GET", "/v1/usage").status, 200);  // the key is cached now
  std::string key_id = key_.substr(key_.find('_', 4) + 1);
  key_id = key_id.substr(0, key_id.find('_'));
  std::string out;
  ASSERT_EQ(cluster_->Isorunctl({"keys", "revoke", key_id}, &out), 0) << out;
  auto r = Call("GET", "/v1/usage");
  EXPECT_EQ(r.status, 401) << r.body;
  EXPECT_EQ(Str(ErrorOf(r), "reason"), "KEY_REVOKED");
}

TEST_F(Api, UnpinnedImagesAre400BeforeAdmission) {
  cluster_->db().Scalar("UPDATE quota.limits SET max_concurrent = 0 WHERE tenant_id = '" +
                        tenant_ + "'");
  for (const char* image : {"busybox", "busybox:latest", "busybox:lts"}) {
    auto r = Call("POST", "/v1/sandboxes", std::string(R"({"image":")") + image + "\"}");
    EXPECT_EQ(r.status, 400) << image << ": " << r.body;
    EXPECT_EQ(Str(ErrorOf(r), "reason"), "IMAGE_NOT_PINNED") << image;
  }
  EXPECT_EQ(SandboxRows(), "0");
  // With a pinned image the same tenant meets its limit of 0: admission came after validation.
  auto limited = Call("POST", "/v1/sandboxes", R"({"image":"busybox:1.36"})");
  EXPECT_EQ(limited.status, 429) << limited.body;
}

TEST_F(Api, OtherTenantsSandboxesAre404) {
  auto created = Call("POST", "/v1/sandboxes", R"({"image":"busybox:1.36"})");
  ASSERT_EQ(created.status, 201);
  std::string id = Str(Json(created.body), "id");
  std::string intruder = cluster_->CreateKey(cluster_->CreateTenant(tenant_name_ + "x", 5));
  for (auto [method, path, body] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"GET", "/v1/sandboxes/" + id, ""},
           {"DELETE", "/v1/sandboxes/" + id, ""},
           {"POST", "/v1/sandboxes/" + id + "/timeout", R"({"timeoutSec":10})"},
           {"POST", "/v1/sandboxes/" + id + "/hibernate", ""},
           {"POST", "/v1/sandboxes/" + id + "/exec", R"({"cmd":"true"})"}}) {
    auto r = Call(method, path, body, {}, intruder);
    EXPECT_EQ(r.status, 404) << method << " " << path << ": " << r.body;
    auto unknown = Call(method, "/v1/sandboxes/sbx_nosuchsandbox" + path.substr(path.find(id) + id.size()),
                        body, {}, intruder);
    EXPECT_EQ(unknown.status, 404);
    EXPECT_EQ(Str(ErrorOf(r), "reason"), Str(ErrorOf(unknown), "reason"));
  }
  EXPECT_EQ(Json(Call("GET", "/v1/sandboxes", "", {}, intruder).body)
                .fields()
                .at("sandboxes")
                .list_value()
                .values_size(),
            0);
  EXPECT_EQ(Str(Json(Call("GET", "/v1/sandboxes/" + id).body), "state"), "RUNNING");
}

TEST_F(Api, ExactlyFiveOfFiftyRacingCreatesWin) {
  std::atomic<int> created{0}, limited{0}, other{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 50; ++i) {
    threads.emplace_back([&] {
      auto r = Call("POST", "/v1/sandboxes", R"({"image":"busybox:1.36"})");
      if (r.status == 201) {
        ++created;
      } else if (r.status == 429 && Str(Obj(Json(r.body), "error"), "reason") ==
                                        "CONCURRENT_SANDBOX_LIMIT") {
        ++limited;
      } else {
        ++other;
        ADD_FAILURE() << r.status << " " << r.body;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(created, 5);
  EXPECT_EQ(limited, 45);
  EXPECT_EQ(Usage(), "5");
  auto r = Call("POST", "/v1/sandboxes", R"({"image":"busybox:1.36"})");
  ASSERT_EQ(r.status, 429);
  EXPECT_GE(std::stoi(r.Header("Retry-After")), 1);
  auto error = ErrorOf(r);
  EXPECT_EQ(Str(error, "code"), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(Num(error, "limit"), 5);
  EXPECT_EQ(Num(error, "current"), 5);
  EXPECT_GE(Num(error, "retryAfterSec"), 1);
}

TEST_F(Api, BadBodiesAre4xxAndChangeNothing) {
  struct Case {
    std::string body;
    int status;
  };
  std::vector<Case> cases = {
      {"{", 400},
      {"not json", 400},
      {"[]", 400},
      {R"({"image": 5})", 400},
      {R"({"image":"busybox:1.36","timeoutSec":"soon"})", 400},
      {R"({"image":"busybox:1.36","timeoutSec":1.5})", 400},
      {R"({"image":"busybox:1.36","timeoutSec":99999999999})", 400},
      {R"({"image":"busybox:1.36","timeoutSec":0})", 400},
      {R"({"image":"busybox:1.36","timeoutSec":86401})", 400},
      {R"({"image":"busybox:1.36","cpuMillis":50})", 400},
      {R"({"image":"busybox:1.36","memoryMb":70000})", 400},
      {R"({"image":"busybox:1.36","surprise":true})", 400},
      {R"({"image":"busybox:1.36","metadata":{"a":1}})", 400},
      {R"({"image":"busybox:1.36","network":{"egress":"sometimes"}})", 400},
      {"{\"image\":\"busybox:1.36\",\"metadata\":{\"k\":\"\xff\xfe\"}}", 400},
      {R"({"image":"busybox:1.36\u0000"})", 400},
      {R"({})", 400},
  };
  for (const auto& c : cases) {
    auto r = Call("POST", "/v1/sandboxes", c.body);
    EXPECT_EQ(r.status, c.status) << c.body << " -> " << r.body;
    ErrorOf(r);
  }
  std::string huge = R"({"image":"busybox:1.36","metadata":{"k":")" + std::string(2 << 20, 'x') +
                     "\"}}";
  auto big = Call("POST", "/v1/sandboxes", huge);
  EXPECT_EQ(big.status / 100, 4) << big.body.substr(0, 200);
  EXPECT_EQ(SandboxRows(), "0");
  EXPECT_EQ(Usage(), "0");
  // Bad query parameters too.
  EXPECT_EQ(Call("GET", "/v1/sandboxes?pageSize=0").status, 400);
  EXPECT_EQ(Call("GET", "/v1/sandboxes?pageSize=abc").status, 400);
  EXPECT_EQ(Call("GET", "/v1/sandboxes?state=SLEEPY").status, 400);
  EXPECT_EQ(Call("GET", "/v1/sandboxes?pageToken=%%%").status, 400);
  // Unknown routes.
  EXPECT_EQ(Call("GET", "/v1/nothing").status, 404);
}

TEST_F(Api, HibernateAndResume) {
  cluster_->db().Scalar("UPDATE quota.limits SET max_concurrent = 1 WHERE tenant_id = '" +
                        tenant_ + "'");
  auto created = Call("POST", "/v1/sandboxes", R"({"image":"busybox:1.36"})");
  ASSERT_EQ(created.status, 201);
  std::string id = Str(Json(created.body), "id");
  auto h = Call("POST", "/v1/sandboxes/" + id + "/hibernate");
  ASSERT_EQ(h.status, 200) << h.body;
  EXPECT_EQ(Str(Json(h.body), "state"), "HIBERNATED");
  auto usage = Json(Call("GET", "/v1/usage").body);
  EXPECT_EQ(Num(usage, "activeSandboxes"), 0);
  EXPECT_EQ(Num(usage, "hibernatedSandboxes"), 1);
  auto exec = Call("POST", "/v1/sandboxes/" + id + "/exec", R"({"cmd":"true"})");
  EXPECT_EQ(exec.status, 409) << exec.body;
  EXPECT_EQ(Str(ErrorOf(exec), "reason"), "SANDBOX_NOT_RUNNING");
  // Its slot is free for another sandbox; resuming over the limit is a 429.
  auto other = Call("POST", "/v1/sandboxes", R"({"image":"busybox:1.36"})");
  ASSERT_EQ(other.status, 201) << other.body;
  auto over = Call("POST", "/v1/sandboxes/" + id + "/resume");
  EXPECT_EQ(over.status, 429) << over.body;
  EXPECT_EQ(Str(ErrorOf(over), "reason"), "CONCURRENT_SANDBOX_LIMIT");
  ASSERT_EQ(Call("DELETE", "/v1/sandboxes/" + Str(Json(other.body), "id")).status, 204);
  auto resumed = Call("POST", "/v1/sandboxes/" + id + "/resume");
  ASSERT_EQ(resumed.status, 200) << resumed.body;
  EXPECT_EQ(Str(Json(resumed.body), "state"), "RUNNING");
  auto again = Call("POST", "/v1/sandboxes/" + id + "/resume");
  EXPECT_EQ(again.status, 200);
  EXPECT_EQ(Usage(), "1");
}

// GET /v1/sandboxes/{id}/events: the rows the lifecycle wrote, as a timeline, paged like the
// sandbox list, for the tenant's own sandboxes only.
TEST_F(Api, SandboxEventsTellItsLifePagedAndOnlyToItsTenant) {
  auto created = Call("POST", "/v1/sandboxes", R"({"image":"busybox:1.36"})");
  ASSERT_EQ(created.status, 201) << created.body;
  std::string id = Str(Json(created.body), "id");
  ASSERT_EQ(Call("POST", "/v1/sandboxes/" + id + "/hibernate").status, 200);
  ASSERT_EQ(Call("POST", "/v1/sandboxes/" + id + "/resume").status, 200);
  ASSERT_EQ(Call("DELETE", "/v1/sandboxes/" + id).status, 204);

  // The kinds of every event, following nextPageToken with pages of `size`.
  auto timeline = [&](int size, int* pages) {
    std::vector<std::string> kinds;
    std::string token;
    *pages = 0;
    do {
      auto r = Call("GET", absl::StrCat("/v1/sandboxes/", id, "/events?pageSize=", size,
                                        token.empty() ? "" : "&pageToken=" + token));
      EXPECT_EQ(r.status, 200) << r.body;
      if (r.status != 200) break;
      auto body = Json(r.body);
      const auto& events = body.fields().at("events").list_value();
      EXPECT_LE(events.values_size(), size);
      for (const auto& v : events.values()) {
        const auto& e = v.struct_value();
        EXPECT_EQ(Str(e, "time").back(), 'Z');
        std::string kind = Str(e, "kind");
        if (kind == "DESTROYING" || kind == "ENDED") {
          EXPECT_EQ(Str(e, "reason"), "DELETED") << r.body;
        } else {
          EXPECT_EQ(e.fields().count("reason"), 0u) << r.body;
        }
        kinds.push_back(kind + "/" + Str(e, "state"));
      }
      token = Str(body, "nextPageToken");
      ++*pages;
    } while (!token.empty() && *pages < 20);
    return absl::StrJoin(kinds, ",");
  };
  const std::string want =
      "CREATED/PENDING,PLACED/STARTING,STARTED/RUNNING,HIBERNATED/HIBERNATED,RESUMED/RUNNING,"
      "DESTROYING/DESTROYING,ENDED/DESTROYED";
  int pages = 0;
  // DELETE answers once the slot is free; the row becomes DESTROYED right after.
  EXPECT_TRUE(testing::Eventually([&] { return timeline(50, &pages) == want; }, absl::Seconds(10)))
      << timeline(50, &pages);
  EXPECT_EQ(pages, 1);
  EXPECT_EQ(timeline(2, &pages), want);
  EXPECT_EQ(pages, 4);
  EXPECT_EQ(timeline(7, &pages), want);
  EXPECT_EQ(pages, 1);  // a full last page has no token

  // Bad paging is 400 and names the parameter.
  for (std::string q : {"pageSize=0", "pageSize=1001", "pageSize=x", "pageToken=bm90LWEtdG9rZW4",
                        "state=RUNNING"}) {
    auto r = Call("GET", "/v1/sandboxes/" + id + "/events?" + q);
    EXPECT_EQ(r.status, 400) << q << ": " << r.body;
    EXPECT_EQ(Str(ErrorOf(r), "reason"), "INVALID_ARGUMENT") << q;
  }
  // Another tenant's sandbox answers exactly as an unknown one.
  std::string intruder = cluster_->CreateKey(cluster_->CreateTenant(tenant_name_ + "ev", 5));
  auto theirs = Call("GET", "/v1/sandboxes/" + id + "/events", "", {}, intruder);
  auto unknown = Call("GET", "/v1/sandboxes/sbx_nosuchsandbox/events", "", {}, intruder);
  EXPECT_EQ(theirs.status, 404) << theirs.body;
  EXPECT_EQ(unknown.status, 404) << unknown.body;
  EXPECT_EQ(Str(ErrorOf(theirs), "reason"), "NOT_FOUND");
  EXPECT_EQ(Call("GET", "/v1/sandboxes/" + id + "/events", "", {{"Authorization", "Bearer x"}})
                .status,
            401);
}

TEST_F(Api, IdempotentCreatesReturnTheFirstSandbox) {
  std::vector<std::thread> threads;
  std::vector<std::string> ids(8);
  std::vector<int> statuses(8);
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      auto r = Call("POST", "/v1/sandboxes", R"({"image":"busybox:1.36"})",
                    {{"Idempotency-Key", "order-42"}});
      statuses[i] = r.status;
      ids[i] = Str(Json(r.body), "id");
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(statuses[i], 201);
    EXPECT_EQ(ids[i], ids[0]);
  }
  EXPECT_EQ(Usage(), "1");
  EXPECT_EQ(SandboxRows(), "1");
}

TEST_F(Api, RateLimitsRefuseBurstsWithHeadersAndRecover) {
  cluster_->db().Scalar(
      "UPDATE quota.limits SET requests_per_sec = 4, creates_per_sec = 1, max_concurrent = 10 "
      "WHERE tenant_id = '" + tenant_ + "'");
  absl::SleepFor(absl::Milliseconds(2100));  // the quota service caches limits for 2 s
  // Creates are limited on their own: the second create within a second is refused.
  auto first = Call("POST", "/v1/sandboxes", R"({"image":"busybox:1.36"})");
  ASSERT_EQ(first.status, 201) << first.body;
  auto second = Call("POST", "/v1/sandboxes", R"({"image":"busybox:1.36"})");
  ASSERT_EQ(second.status, 429) << second.body;
  auto error = ErrorOf(second);
  EXPECT_EQ(Str(error, "reason"), "RATE_LIMIT");
  EXPECT_NE(second.Header("RateLimit-Policy").find("\"creates\""), std::string::npos);
  EXPECT_FALSE(second.Header("RateLimit").empty());
  EXPECT_GE(std::stoi(second.Header("Retry-After")), 1);
  EXPECT_EQ(Usage(), "1") << "a rate-limited create must not take a slot";
  absl::SleepFor(absl::Milliseconds(2100));
  // A burst of plain requests over 4 a second: some pass, then 429s with the headers.
  int ok = 0, limited = 0;
  HttpResponse refused;
  for (int i = 0; i < 10; ++i) {
    auto r = Call("GET", "/v1/usage");
    if (r.status == 200) {
      ++ok;
      EXPECT_FALSE(r.Header("RateLimit").empty());
    } else {
      ++limited;
      refused = r;
    }
  }
  EXPECT_GE(ok, 3);
  EXPECT_LE(ok, 5);
  EXPECT_GE(limited, 5);
  EXPECT_EQ(refused.status, 429);
  EXPECT_EQ(Str(ErrorOf(refused), "reason"), "RATE_LIMIT");
  EXPECT_NE(refused.Header("RateLimit-Policy").find("\"requests\""), std::string::npos);
  int retry_after = std::stoi(refused.Header("Retry-After"));
  EXPECT_GE(retry_after, 1);
  // The allowance returns after waiting.
  absl::SleepFor(absl::Seconds(retry_after) + absl::Milliseconds(100));
  EXPECT_EQ(Call("GET", "/v1/usage").status, 200);
}

TEST_F(Api, HealthzAndMetrics) {
  auto health = HttpRequest("GET", cluster_->gateway_url() + "/healthz");
  EXPECT_EQ(health.status, 200) << health.body;
  for (const char* process : {"gateway", "quota", "scheduler", "lifecycle", "runner-1"}) {
    auto m = HttpRequest("GET", cluster_->metrics_url(process));
    EXPECT_EQ(m.status, 200) << process;
    EXPECT_NE(m.body.find("\nisorun_"), std::string::npos) << process << " has no isorun_ metrics";
  }
}

// A connection to the gateway from `from` (any 127.0.0.0/8 address reaches loopback), -1 when it
// cannot be made.
int ConnectFrom(int port, const std::string& from) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in local{};
  local.sin_family = AF_INET;
  ::inet_pton(AF_INET, from.c_str(), &local.sin_addr);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

long RssKib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "VmRSS:")) {
      long kib = 0;
      (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(6, line.size() - 9)), &kib);
      return kib;
    }
  }
  return 0;
}

// The thread-per-connection gateway this replaced took at most 2,000 connections: 2,000 idle
// sockets locked every other client out. Now 10,000 (idle, a head that never ends, a body that
// never ends) are held while new clients create, read and delete sandboxes.
TEST_F(Api, HoldsTenThousandIdleAndSlowConnectionsWhileServingNewRequests) {
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &rl);
  constexpr int kHeld = 10000;
  if (rl.rlim_cur < kHeld + 500) GTEST_SKIP() << "the open-file limit is " << rl.rlim_cur;
  const pid_t gateway = cluster_->pid("gateway");
  const long before = RssKib(gateway);
  std::vector<int> fds;
  fds.reserve(kHeld);
  for (int i = 0; i < kHeld; ++i) {
    // 500 per address: under the per-address cap (1,000), as 20 busy clients would be.
    const std::string from = absl::StrCat("127.0.", 20 + i / 500, ".", 1 + (i % 500) % 250);
    int fd = ConnectFrom(cluster_->gateway_port(), from);
    ASSERT_GE(fd, 0) << "connection " << i << ": " << std::strerror(errno);
    if (i % 3 == 1) {
      const std::string head = "GET /v1/usage HTTP/1.1\r\nHost: x\r\n";
      (void)::send(fd, head.data(), head.size(), MSG_NOSIGNAL);
    } else if (i % 3 == 2) {
      const std::string part = "POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                               key_ + "\r\nContent-Type: application/json\r\nContent-Length: " +
                               "1000\r\n\r\n{\"image\":";
      (void)::send(fd, part.data(), part.size(), MSG_NOSIGNAL);
    }
    fds.push_back(fd);
  }
  // New clients are served while all of them are open.
  EXPECT_EQ(HttpRequest("GET", cluster_->gateway_url() + "/healthz").status, 200);
  HttpResponse created = Call("POST", "/v1/sandboxes", R"({"image":"busybox:1.36"})");
  ASSERT_EQ(created.status, 201) << created.body;
  const std::string id = Str(Json(created.body), "id");
  EXPECT_EQ(Call("GET", "/v1/sandboxes/" + id).status, 200);
  EXPECT_EQ(Call("DELETE", "/v1/sandboxes/" + id).status, 204);
  int closed = 0;
  for (int fd : fds) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 0) > 0) ++closed;
  }
  EXPECT_EQ(closed, 0) << "held connections the gateway closed or answered";
  const long with = RssKib(gateway);
  std::printf(
      "gateway held %d connections (a third idle, a third mid-head, a third mid-body): RSS %ld "
      "KiB before, %ld KiB with them (%.1f KiB each)\n",
      kHeld, before, with, static_cast<double>(with - before) / kHeld);
  if (kMemoryBoundsApply) {
    EXPECT_LT(with - before, 150 * 1024) << "KiB for " << kHeld << " connections";
  }
  for (int fd : fds) ::close(fd);
  // The body that never came did not create anything.
  EXPECT_EQ(SandboxRows(), "1");
}

// Before authentication, one address cannot hold more than its share of connections.
TEST_F(Api, OneAddressCannotTakeEveryConnection) {
  std::vector<int> fds;
  int refused = 0;
  std::string answer;
  for (int i = 0; i < 1100; ++i) {
    int fd = ConnectFrom(cluster_->gateway_port(), "127.0.9.9");
    ASSERT_GE(fd, 0);
    fds.push_back(fd);
  }
  for (size_t i = 0; i < fds.size(); ++i) {
    // The gateway accepts in order: the last ones are refused (give their answer time to come).
    pollfd p{fds[i], POLLIN, 0};
    if (::poll(&p, 1, i >= 1000 ? 5000 : 0) > 0) {
      const int fd = fds[i];
      char buf[2048];
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n > 0) answer.assign(buf, static_cast<size_t>(n));
      ++refused;
    }
  }
  // The per-address cap is 1,000 (the gateway's default): the rest got a 429 at once.
  EXPECT_EQ(refused, 100);
  EXPECT_TRUE(absl::StartsWith(answer, "HTTP/1.1 429")) << answer;
  EXPECT_NE(answer.find("CLIENT_CONNECTION_LIMIT"), std::string::npos) << answer;
  // Another address is served meanwhile.
  EXPECT_EQ(Call("GET", "/v1/usage").status, 200);
  for (int fd : fds) ::close(fd);
}

}  // namespace
}  // namespace isorun
