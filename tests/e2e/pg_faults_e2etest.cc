// PostgreSQL faults under load, end to end: every service as a real process against a PostgreSQL
// server of this test's own (tests/support/private_postgres.h), which the test stops, freezes
// (SIGSTOP) and crashes (-m immediate) while clients call the public HTTP API.
//
// The contract: while the database is gone or hung, clients get 503 UNAVAILABLE (API.md's error
// body), soon, never a hung request; once it is back every service serves again by itself within
// 10 s; a DELETE's 204 survives a database crash.

#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/struct.pb.h"
#include "tests/support/cluster.h"
#include "tests/support/eventually.h"
#include "tests/support/http_client.h"
#include "tests/support/json_fields.h"
#include "tests/support/private_postgres.h"

namespace isorun {
namespace {

using testing::Cluster;
using testing::ClusterOptions;
using testing::Eventually;
using testing::HttpRequest;
using testing::HttpResponse;
using testing::Json;
using testing::Num;
using testing::Obj;
using testing::PrivatePostgres;
using testing::Str;

struct Sample {
  absl::Time start;
  absl::Time end;
  std::string op;
  int status = 0;     // -1: the connection failed
  std::string code;   // error.code of a non-2xx answer
  std::string body;
};

class PgFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    try {
      pg_ = std::make_unique<PrivatePostgres>();
    } catch (const std::exception& e) {
      FAIL() << "the test's own PostgreSQL did not start: " << e.what();
    }
    ClusterOptions options;
    options.admin_database_url = pg_->admin_url();
    options.runner_slots = 1000;
    options.stuck_after_sec = 3;
    options.destroy_retry_after_sec = 1;
    // A commit whose answer the frozen server never sent may still have happened (the server
    // reads it from its socket when thawed): a create answered 503 can leave a RUNNING row with
    // no container, which the reconciler marks LOST once it is orphan_grace_sec old.
    options.orphan_grace_sec = 3;
    options.reconcile_interval_ms = 500;
    cluster_ = std::make_unique<Cluster>(options);
    tenant_ = cluster_->CreateTenant("faults", 200);
    cluster_->db().Scalar(
        "UPDATE quota.limits SET creates_per_sec = 10000, requests_per_sec = 10000 "
        "WHERE tenant_id = '" + tenant_ + "'");
    key_ = cluster_->CreateKey(tenant_);
  }

  void TearDown() override {
    cluster_.reset();  // drops its database while the server runs
    pg_.reset();
  }

  HttpResponse Call(const std::string& method, const std::string& path,
                    const std::string& body = "", const std::string& key = "",
                    const std::string& idempotency_key = "") {
    std::map<std::string, std::string> headers = {
        {"Authorization", "Bearer " + (key.empty() ? key_ : key)}};
    if (!body.empty()) headers["Content-Type"] = "application/json";
    if (!idempotency_key.empty()) headers["Idempotency-Key"] = idempotency_key;
    return HttpRequest(method, cluster_->gateway_url() + path, body, headers);
  }

  // One client: create, get, delete, again and again, recording every answer.
  void Client(int client, std::atomic<bool>& stop, std::vector<Sample>& out, std::mutex& mu) {
    auto call = [&](const std::string& op, const std::string& method, const std::string& path,
                    const std::string& body, const std::string& idempotency_key = "") {
      Sample s;
      std::string full;
      s.op = op;
      s.start = absl::Now();
      try {
        HttpResponse r = Call(method, path, body, "", idempotency_key);
        s.status = r.status;
        full = r.body;
        s.body = r.body.substr(0, 300);
        if (r.status >= 300) {
          auto error = Obj(Json(r.body), "error");
          s.code = Str(error, "code");
          if (Num(error, "status") != r.status || Str(error, "reason").empty() ||
              Str(error, "message").empty()) {
            s.code = "BAD_ERROR_BODY";
          }
        }
      } catch (const std::exception& e) {
        s.status = -1;
        s.body = e.what();
      }
      s.end = absl::Now();
      {
        std::lock_guard lock(mu);
        out.push_back(s);
      }
      // A client backs off a little after a failure, as any real one does: without it four
      // clients would send thousands of 503-answered requests a second, and the gateway's
      // per-address rate cap (429 CLIENT_RATE_LIMIT) would answer instead.
      if (s.status / 100 != 2) absl::SleepFor(absl::Milliseconds(20));
      return std::make_pair(s.status, full);
    };
    std::vector<std::string> undeleted;
    // Creates answered with an error: one whose commit the database applied after its answer
    // was lost (a frozen server reads the COMMIT from its socket when thawed) is RUNNING. As a
    // careful client does, each create carries an Idempotency-Key and failed ones are repeated
    // afterwards to learn the sandbox and delete it: nothing may be left behind.
    std::vector<std::string> unanswered;
    for (int n = 0; !stop.load(); ++n) {
      const std::string idem =
          absl::StrCat("pgf-", client, "-", n, "-", absl::ToUnixNanos(absl::Now()));
      auto [status, body] = call("create", "POST", "/v1/sandboxes",
                                 R"({"image":"busybox:1.36","timeoutSec":600})", idem);
      if (status != 201) {
        unanswered.push_back(idem);
        continue;
      }
      const std::string id = Str(Json(body), "id");
      call("get", "GET", "/v1/sandboxes/" + id, "");
      if (call("delete", "DELETE", "/v1/sandboxes/" + id, "").first != 204) {
        undeleted.push_back(id);
      }
    }
    for (const auto& idem : unanswered) {
      Eventually(
          [&] {
            HttpResponse r = Call("POST", "/v1/sandboxes",
                                  R"({"image":"busybox:1.36","timeoutSec":600})", "", idem);
            if (r.status != 200 && r.status != 201) return r.status / 100 == 4;
            undeleted.push_back(Str(Json(r.body), "id"));
            return true;
          },
          absl::Seconds(20));
    }
    for (const auto& id : undeleted) {
      Eventually([&] { return Call("DELETE", "/v1/sandboxes/" + id).status == 204; },
                 absl::Seconds(20));
    }
  }

  // Load with `clients` clients; `fault` starts the outage, `heal` ends it. Checks the contract
  // and prints the 503 window.
  void RunOutage(const std::string& scenario, const std::function<void()>& fault,
                 const std::function<void()>& heal) {
    constexpr int kClients = 4;
    std::atomic<bool> stop{false};
    std::vector<Sample> samples;
    std::mutex mu;
    std::vector<std::thread> clients;
    for (int i = 0; i < kClients; ++i) {
      clients.emplace_back([&, i] { Client(i, stop, samples, mu); });
    }
    absl::SleepFor(absl::Seconds(2));
    const absl::Time fault_begin = absl::Now();
    fault();
    const absl::Time down = absl::Now();
    absl::SleepFor(absl::Seconds(5));
    const absl::Time heal_begin = absl::Now();
    heal();
    const absl::Time up = absl::Now();
    // Load goes on until the clients have been served for 3 s in a row (at most 15 s).
    auto served_since = [&](absl::Time t) {
      std::lock_guard lock(mu);
      bool any = false;
      for (const auto& s : samples) {
        if (s.end < t) continue;
        if (s.status == 503) return false;
        any = any || s.status / 100 == 2;
      }
      return any;
    };
    while (absl::Now() - up < absl::Seconds(15) &&
           !served_since(absl::Now() - absl::Seconds(3))) {
      absl::SleepFor(absl::Milliseconds(200));
    }
    stop = true;
    for (auto& t : clients) t.join();

    auto ms = [](absl::Duration d) { return absl::ToInt64Milliseconds(d); };
    int n503 = 0, ok_during = 0;
    absl::Time first_503 = absl::InfiniteFuture(), last_503 = absl::InfinitePast();
    absl::Duration max_latency, max_503_latency;
    std::vector<absl::Duration> outage_latencies;
    for (const auto& s : samples) {
      const absl::Duration latency = s.end - s.start;
      max_latency = std::max(max_latency, latency);
      EXPECT_TRUE(s.status == 200 || s.status == 201 || s.status == 204 ||
                  (s.status == 503 && s.code == "UNAVAILABLE"))
          << scenario << ": " << s.op << " answered " << s.status << " " << s.code << " at "
          << ms(s.start - fault_begin) << " ms after the fault: " << s.body;
      // Never a hung request: an answer well within the clients' patience.
      EXPECT_LT(latency, absl::Seconds(10))
          << scenario << ": " << s.op << " took " << ms(latency) << " ms";
      if (s.status == 503) {
        ++n503;
        first_503 = std::min(first_503, s.end);
        last_503 = std::max(last_503, s.end);
        max_503_latency = std::max(max_503_latency, latency);
      }
      // Requests made entirely while the database was down: only 503s.
      if (s.start >= down && s.end <= heal_begin) {
        outage_latencies.push_back(latency);
        if (s.status != 503) ++ok_during;
      }
    }
    EXPECT_EQ(ok_during, 0) << scenario << ": requests served while the database was down";
    ASSERT_GT(n503, 0) << scenario << ": no 503 at all";
    if (outage_latencies.empty()) {
      // Said in full, so that a run where no request fit inside the outage explains itself.
      for (const auto& s : samples) {
        if (s.end < down || s.start > heal_begin) continue;
        printf("pg_faults scenario=%s around_outage op=%s status=%d start_ms=%lld end_ms=%lld\n",
               scenario.c_str(), s.op.c_str(), s.status,
               static_cast<long long>(ms(s.start - down)), static_cast<long long>(ms(s.end - down)));
      }
    }
    ASSERT_FALSE(outage_latencies.empty())
        << scenario << ": no request began and ended within the outage (listed above)";
    std::sort(outage_latencies.begin(), outage_latencies.end());
    const absl::Duration recovery = std::max(absl::ZeroDuration(), last_503 - up);
    EXPECT_LE(recovery, absl::Seconds(10)) << scenario << ": 503s went on after the database returned";
    printf("pg_faults scenario=%s requests=%zu answers_503=%d outage_ms=%lld "
           "first_503_after_fault_ms=%lld last_503_after_return_ms=%lld "
           "outage_p50_ms=%lld outage_max_ms=%lld max_503_latency_ms=%lld max_latency_ms=%lld\n",
           scenario.c_str(), samples.size(), n503,
           static_cast<long long>(ms(heal_begin - down)),
           static_cast<long long>(ms(first_503 - fault_begin)),
           static_cast<long long>(ms(last_503 - up)),
           static_cast<long long>(ms(outage_latencies[outage_latencies.size() / 2])),
           static_cast<long long>(ms(outage_latencies.back())),
           static_cast<long long>(ms(max_503_latency)),
           static_cast<long long>(ms(max_latency)));
    fflush(stdout);
    ExpectEveryServiceServes(scenario);
  }

  // Every service answers again: a key the gateway never saw (its own lookup), a create (quota's
  // admission, the scheduler's placement, the lifecycle), usage (quota), health; and no slot or
  // sandbox is left behind by the failed calls.
  void ExpectEveryServiceServes(const std::string& scenario) {
    const std::string fresh_key = cluster_->CreateKey(tenant_);
    HttpResponse created = Call("POST", "/v1/sandboxes", R"({"image":"busybox:1.36"})", fresh_key);
    ASSERT_EQ(created.status, 201) << scenario << ": " << created.body;
    const std::string id = Str(Json(created.body), "id");
    EXPECT_EQ(Call("GET", "/v1/usage", "", fresh_key).status, 200) << scenario;
    EXPECT_EQ(HttpRequest("GET", cluster_->gateway_url() + "/healthz").status, 200) << scenario;
    EXPECT_EQ(Call("DELETE", "/v1/sandboxes/" + id, "", fresh_key).status, 204) << scenario;
    // Creates that failed half-way are repaired by the reconciler: nothing stays admitted.
    std::string active, live;
    EXPECT_TRUE(Eventually(
        [&] {
          active = cluster_->db().Scalar(
              "SELECT active FROM quota.usage WHERE tenant_id = '" + tenant_ + "'");
          live = cluster_->db().Scalar(
              "SELECT count(*) FROM lifecycle.sandboxes WHERE tenant_id = '" + tenant_ +
              "' AND state NOT IN ('DESTROYED', 'FAILED', 'LOST')");
          return (active == "0" || active.empty()) && live == "0";
        },
        absl::Seconds(30)))
        << scenario << ": slots still admitted " << active << ", sandboxes not ended " << live
        << ": "
        << cluster_->db().Scalar(
               "SELECT string_agg(id || ' ' || state || ' ' || coalesce(runner_address, '') || ' ' "
               "|| (now() - updated_at)::text, '; ') FROM lifecycle.sandboxes WHERE tenant_id = '" +
               tenant_ + "' AND state NOT IN ('DESTROYED', 'FAILED', 'LOST')");
  }

  std::unique_ptr<PrivatePostgres> pg_;
  std::unique_ptr<Cluster> cluster_;
  std::string tenant_, key_;
};

TEST_F(PgFaults, StoppedDatabaseGives503sAndServicesRecoverWithoutRestart) {
  RunOutage("stopped", [&] { pg_->Stop("fast"); }, [&] { pg_->Start(); });
}

TEST_F(PgFaults, FrozenDatabaseGives503sAndServicesRecoverWithoutRestart) {
  RunOutage("frozen", [&] { pg_->Freeze(); }, [&] { pg_->Thaw(); });
}

// A DELETE's 204 is durable: killed right after it (-m immediate: no shutdown checkpoint, WAL not
// yet flushed is lost), the database comes back without the sandbox running and with its slot
// free, whether the runner answered the stop or was down.
TEST_F(PgFaults, DeleteSurvivesAnImmediateDatabaseCrash) {
  for (bool runner_down : {false, true}) {
    SCOPED_TRACE(runner_down ? "runner down" : "runner up");
    // After the previous crash every service serves again within 10 s.
    HttpResponse created;
    Eventually(
        [&] {
          created = Call("POST", "/v1/sandboxes", R"({"image":"busybox:1.36"})");
          return created.status == 201;
        },
        absl::Seconds(10));
    ASSERT_EQ(created.status, 201) << created.body;
    const std::string id = Str(Json(created.body), "id");
    if (runner_down) cluster_->Kill("runner-1", SIGKILL);
    // PostgreSQL's background writers would flush an asynchronous commit within milliseconds,
    // usually before the crash; stopped, they leave only synchronous commits durable.
    pg_->FreezeBackgroundWriters();
    HttpResponse deleted = Call("DELETE", "/v1/sandboxes/" + id);
    ASSERT_EQ(deleted.status, 204) << deleted.body;
    pg_->Crash();
    pg_->Start();
    std::string state;
    ASSERT_TRUE(Eventually(
        [&] {
          HttpResponse r = Call("GET", "/v1/sandboxes/" + id);
          if (r.status != 200) return false;
          state = Str(Json(r.body), "state");
          return true;
        },
        absl::Seconds(15)));
    EXPECT_NE(state, "RUNNING") << "the 204 of DELETE was lost in the crash";
    EXPECT_TRUE(state == "DESTROYING" || state == "DESTROYED") << state;
    const std::string active =
        cluster_->db().Scalar("SELECT active FROM quota.usage WHERE tenant_id = '" + tenant_ + "'");
    EXPECT_TRUE(active == "0" || active.empty()) << "the deleted sandbox's slot came back: " << active;
    printf("pg_faults scenario=crash_after_delete runner_down=%d state_after_recovery=%s "
           "active_slots=%s\n",
           runner_down ? 1 : 0, state.c_str(), active.empty() ? "0" : active.c_str());
  }
  cluster_->Start("runner-1");
}

}  // namespace
}  // namespace isorun
