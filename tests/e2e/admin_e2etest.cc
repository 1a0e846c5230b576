// Operators and dashboards over HTTP: the operator token, the capacity view with its forecast,
// the capacity history the scheduler records (429 CAPACITY included), drain and undrain, a
// tenant's usage history, and the dashboard's static files. A whole cluster as processes, real
// Postgres, real HTTP.

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>

#include "absl/time/clock.h"
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

std::string Iso(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

class Admin : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dashboard_ = new std::string(std::filesystem::temp_directory_path() /
                                 ("isorun-dash-" + std::to_string(::getpid())));
    std::filesystem::create_directories(*dashboard_);
    std::ofstream(*dashboard_ + "/index.html") << "<!doctype html><title>t</title>";
    std::ofstream(*dashboard_ + "/app.js") << "console.log(1)";
    std::ofstream(*dashboard_ + "/.secret") << "hidden";
    ClusterOptions options;
    options.runners = 2;
    options.runner_slots = 3;  // 6 slots: the 7th create is refused for capacity
    options.capacity_history_interval_sec = 1;
    options.usage_sample_interval_ms = 500;
    options.dashboard_dir = *dashboard_;
    try {
      cluster_ = new Cluster(options);
    } catch (const std::exception& e) {
      setup_error_ = new std::string(e.what());
    }
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
    std::filesystem::remove_all(*dashboard_);
  }
  void SetUp() override {
    ASSERT_EQ(setup_error_, nullptr) << "the cluster did not start: " << *setup_error_;
    static std::atomic<int> n{0};
    tenant_ = cluster_->CreateTenant("a" + std::to_string(n++), 20);
    cluster_->db().Scalar(
        "UPDATE quota.limits SET creates_per_sec = 1000, requests_per_sec = 1000 "
        "WHERE tenant_id = '" + tenant_ + "'");
    key_ = cluster_->CreateKey(tenant_, "local", "admin");
    token_ = cluster_->CreateOperatorToken();
  }
  void TearDown() override {
    // Every test starts with a fleet free of sandboxes.
    auto list = Get("/v1/sandboxes", key_);
    if (list.status != 200) return;
    const auto doc = Json(list.body);
    for (const auto& v : doc.fields().at("sandboxes").list_value().values()) {
      Call("DELETE", "/v1/sandboxes/" + Str(v.struct_value(), "id"), key_);
    }
  }

  HttpResponse Call(const std::string& method, const std::string& path, const std::string& secret,
                    const std::string& body = "") {
    std::map<std::string, std::string> headers;
    if (!secret.empty()) headers["Authorization"] = "Bearer " + secret;
    if (!body.empty()) headers["Content-Type"] = "application/json";
    return HttpRequest(method, cluster_->gateway_url() + path, body, headers);
  }
  HttpResponse Get(const std::string& path, const std::string& secret) {
    return Call("GET", path, secret);
  }
  static std::string Reason(const HttpResponse& r) {
    return Str(Obj(Json(r.body), "error"), "reason");
  }
  std::string History(absl::Duration back, int step, const std::string& extra = "") {
    absl::Time now = absl::Now();
    return "/v1/admin/capacity/history?from=" + Iso(now - back) + "&to=" +
           Iso(now + absl::Seconds(2)) + "&step=" + std::to_string(step) + extra;
  }

  static Cluster* cluster_;
  static std::string* setup_error_;
  static std::string* dashboard_;
  std::string tenant_, key_, token_;
};

Cluster* Admin::cluster_ = nullptr;
std::string* Admin::setup_error_ = nullptr;
std::string* Admin::dashboard_ = nullptr;

TEST_F(Admin, OperatorRoutesNeedAValidOperatorToken) {
  auto none = Get("/v1/admin/capacity", "");
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(Reason(none), "OPERATOR_TOKEN_MISSING");
  auto api_key = Get("/v1/admin/capacity", key_);
  EXPECT_EQ(api_key.status, 401) << "an admin API key is not an operator token";
  EXPECT_EQ(Reason(api_key), "OPERATOR_TOKEN_MALFORMED");
  std::string forged = token_.substr(0, token_.size() - 4) + "AAAA";
  EXPECT_EQ(Reason(Get("/v1/admin/capacity", forged)), "OPERATOR_TOKEN_INVALID");
  EXPECT_EQ(Get("/v1/admin/capacity", token_).status, 200);
  cluster_->db().Scalar("UPDATE accounts.operator_tokens SET revoked_at = now()");
  EXPECT_EQ(Reason(Get("/v1/admin/capacity", token_)), "OPERATOR_TOKEN_INVALID");
  // An operator token is no API key either.
  EXPECT_EQ(Get("/v1/usage", cluster_->CreateOperatorToken()).status, 401);
}

TEST_F(Admin, CapacityNowWithRunnersTotalsAndForecast) {
  auto r = Get("/v1/admin/capacity", token_);
  ASSERT_EQ(r.status, 200) << r.body;
  auto body = Json(r.body);
  const auto& runners = body.fields().at("runners").list_value().values();
  EXPECT_EQ(runners.size(), 2);
  EXPECT_EQ(Num(Obj(Obj(body, "totals"), "sandboxes"), "capacity"), 6) << r.body;
  auto forecast = Obj(body, "forecast");
  EXPECT_FALSE(Str(forecast, "method").empty()) << r.body;
  EXPECT_EQ(forecast.fields().count("fleet"), 1u) << r.body;
  EXPECT_EQ(Get("/v1/admin/capacity?x=1", token_).status, 400);
}

TEST_F(Admin, HistoryRecordsAllocationAndCapacityRefusals) {
  for (int i = 0; i < 6; ++i) {
    auto c = Call("POST", "/v1/sandboxes", key_, R"({"image":"a:1"})");
    ASSERT_EQ(c.status, 201) << c.body;
  }
  auto refused = Call("POST", "/v1/sandboxes", key_, R"({"image":"a:1"})");
  ASSERT_EQ(refused.status, 429) << refused.body;
  EXPECT_EQ(Reason(refused), "CAPACITY");

  // The snapshots catch up within a few seconds (one a second here).
  std::string last;
  ASSERT_TRUE(testing::Eventually(
      [&] {
        auto h = Get(History(absl::Minutes(2), 1), token_);
        last = h.body;
        if (h.status != 200) return false;
        const auto fleet_doc = Json(h.body);
        const auto& fleet = fleet_doc.fields().at("fleet").list_value().values();
        if (fleet.empty()) return false;
        double refusals = 0;
        for (const auto& p : fleet) refusals += Num(p.struct_value(), "capacityRefusals");
        const auto& newest = fleet[fleet.size() - 1].struct_value();
        return Num(Obj(newest, "sandboxSlots"), "allocated") == 6 &&
               Num(Obj(newest, "sandboxSlots"), "free") == 0 && refusals >= 1;
      },
      absl::Seconds(20)))
      << last;
  auto body = Json(last);
  EXPECT_EQ(Num(body, "stepSec"), 1);
  EXPECT_EQ(Obj(body, "regions").fields().count("local"), 1u) << last;

  // The region's own rows count its refusals and its sandboxes by state (from the lifecycle's
  // rows): six running, in the fleet and in region local.
  ASSERT_TRUE(testing::Eventually(
      [&] {
        auto h = Get(History(absl::Minutes(2), 1), token_);
        last = h.body;
        if (h.status != 200) return false;
        const auto doc = Json(h.body);
        const auto& fleet = doc.fields().at("fleet").list_value().values();
        const auto& regions = Obj(doc, "regions");
        if (fleet.empty() || regions.fields().count("local") == 0) return false;
        const auto& local = regions.fields().at("local").list_value().values();
        if (local.empty()) return false;
        double refused = 0;
        for (const auto& p : local) refused += Num(p.struct_value(), "capacityRefusals");
        const auto& f = fleet[fleet.size() - 1].struct_value();
        const auto& l = local[local.size() - 1].struct_value();
        return refused >= 1 && Num(Obj(f, "sandboxesByState"), "RUNNING") == 6 &&
               Num(Obj(l, "sandboxesByState"), "RUNNING") == 6 &&
               Num(Obj(l, "sandboxesByState"), "PENDING") == 0;
      },
      absl::Seconds(20)))
      << last;
  // The capacity endpoint counts them by region too (since the scheduler started).
  auto now = Get("/v1/admin/capacity", token_);
  ASSERT_EQ(now.status, 200) << now.body;
  auto refusals = Obj(Json(now.body), "capacityRefusals");
  EXPECT_GE(Num(refusals, "total"), 1) << now.body;
  EXPECT_GE(Num(Obj(refusals, "regions"), "local"), 1) << now.body;
  EXPECT_LE(Num(Obj(refusals, "regions"), "local"), Num(refusals, "total")) << now.body;

  // Coarser steps average gauges and sum counts: one bucket for two minutes.
  auto coarse = Get(History(absl::Minutes(2), 300), token_);
  ASSERT_EQ(coarse.status, 200);
  EXPECT_LE(Json(coarse.body).fields().at("fleet").list_value().values_size(), 2);
}

TEST_F(Admin, HistoryRejectsBadRanges) {
  absl::Time now = absl::Now();
  for (const std::string& q :
       {std::string("?step=0"), std::string("?step=abc"), "?from=" + Iso(now) + "&to=" + Iso(now - absl::Hours(1)),
        "?from=" + Iso(now - absl::Hours(24 * 30)) + "&to=" + Iso(now) + "&step=1",
        std::string("?from=yesterday"), std::string("?bogus=1")}) {
    auto r = Get("/v1/admin/capacity/history" + q, token_);
    EXPECT_EQ(r.status, 400) << q << ": " << r.body;
    EXPECT_EQ(Str(Obj(Json(r.body), "error"), "code"), "INVALID_ARGUMENT") << r.body;
  }
}

TEST_F(Admin, DrainAndUndrainARunner) {
  EXPECT_EQ(Call("POST", "/v1/admin/runners/runner-1/drain", token_).status, 204);
  auto draining = [&](bool want) {
    return testing::Eventually(
        [&] {
          auto r = Get("/v1/admin/capacity", token_);
          const auto doc = Json(r.body);
          for (const auto& v : doc.fields().at("runners").list_value().values()) {
            const auto& runner = v.struct_value();
            if (Str(runner, "name") == "runner-1") {
              return runner.fields().at("draining").bool_value() == want;
            }
          }
          return false;
        },
        absl::Seconds(10));
  };
  EXPECT_TRUE(draining(true));
  EXPECT_EQ(Call("POST", "/v1/admin/runners/runner-1/undrain", token_).status, 204);
  EXPECT_TRUE(draining(false));
  EXPECT_EQ(Call("POST", "/v1/admin/runners/nope/drain", token_).status, 404);
  EXPECT_EQ(Call("POST", "/v1/admin/runners/runner-1/drain", key_).status, 401);
}

TEST_F(Admin, TenantUsageHistoryForAdminKeysOnly) {
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(Call("POST", "/v1/sandboxes", key_, R"({"image":"a:1"})").status, 201);
  }
  // A rate limit refusal too.
  cluster_->db().Scalar("UPDATE quota.limits SET creates_per_sec = 0.01 WHERE tenant_id = '" +
                        tenant_ + "'");
  int limited = 0;
  ASSERT_TRUE(testing::Eventually(
      [&] {
        auto r = Call("POST", "/v1/sandboxes", key_, R"({"image":"a:1"})");
        if (r.status == 429 && Reason(r) == "RATE_LIMIT") ++limited;
        return limited > 0;
      },
      absl::Seconds(10)));
  std::string last;
  ASSERT_TRUE(testing::Eventually(
      [&] {
        auto h = Get("/v1/usage/history?step=3600", key_);
        last = h.body;
        if (h.status != 200) return false;
        const auto points_doc = Json(h.body);
        const auto& points = points_doc.fields().at("points").list_value().values();
        double creates = 0, active = 0, rate = 0;
        for (const auto& p : points) {
          creates += Num(p.struct_value(), "creates");
          active = std::max(active, Num(p.struct_value(), "activeMax"));
          rate += Num(Obj(p.struct_value(), "refused"), "RATE_LIMIT");
        }
        return creates >= 3 && active >= 3 && rate >= 1;
      },
      absl::Seconds(20)))
      << last;
  std::string sandbox_key = cluster_->CreateKey(tenant_, "local", "sandbox");
  auto denied = Get("/v1/usage/history", sandbox_key);
  EXPECT_EQ(denied.status, 403) << denied.body;
  EXPECT_EQ(Get("/v1/usage/history?step=0", key_).status, 400);
}

TEST_F(Admin, DashboardFilesAreServedAndNothingElse) {
  auto redirect = HttpRequest("GET", cluster_->gateway_url() + "/dashboard");
  EXPECT_EQ(redirect.status, 301);
  EXPECT_EQ(redirect.Header("Location"), "/dashboard/");
  auto index = HttpRequest("GET", cluster_->gateway_url() + "/dashboard/");
  ASSERT_EQ(index.status, 200);
  EXPECT_EQ(index.body, "<!doctype html><title>t</title>");
  EXPECT_EQ(index.Header("Content-Type").rfind("text/html", 0), 0u);
  EXPECT_NE(index.Header("Content-Security-Policy").find("default-src 'self'"), std::string::npos);
  EXPECT_EQ(HttpRequest("GET", cluster_->gateway_url() + "/dashboard/app.js").Header("Content-Type")
                .rfind("text/javascript", 0),
            0u);
  for (const char* path : {"/dashboard/.secret", "/dashboard/../etc/passwd",
                           "/dashboard/%2e%2e/etc/passwd", "/dashboard/nope.js",
                           "/dashboard/..%2f..%2fetc%2fpasswd"}) {
    auto r = HttpRequest("GET", cluster_->gateway_url() + path);
    EXPECT_EQ(r.status, 404) << path << ": " << r.body;
    EXPECT_EQ(r.body.find("hidden"), std::string::npos);
  }
  EXPECT_EQ(HttpRequest("POST", cluster_->gateway_url() + "/dashboard/", "{}",
                        {{"Content-Type", "application/json"}})
                .status,
            405);
}

}  // namespace
}  // namespace isorun
