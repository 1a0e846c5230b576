// Replicas that fail over: two of every control-plane service (quota, scheduler, lifecycle,
// gateway) as real processes on one Postgres, two runners, and load from several tenants through
// both gateways (creates with idempotency keys, execs, gets, destroys) while one replica of each
// service is killed with SIGKILL in turn, and then the scheduler's leader. Clients retry as the
// SDKs do (503 and broken connections, for calls that are safe to repeat; never an exec), each
// attempt through the next gateway, as a load balancer in front of them would.
//
// Afterwards: no tenant was ever over its concurrent limit (sampled from Postgres all along),
// every acknowledged sandbox is intact, and nothing is leaked (slots, placements, containers)
// once the reconciler's bound has passed. Printed per phase: calls, retried failures, failures a
// client saw, and after the leader's death how long placements were unavailable.
//
// Runners are real runc sandboxes where the host can run them (root and the runc tools), so
// execs run real commands; elsewhere simulated, and execs are left out (said on stderr).

#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>
#include <pqxx/pqxx>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "isorun/v1/runner.grpc.pb.h"
#include "isorun/v1/scheduler.grpc.pb.h"
#include "services/kit/server.h"
#include "services/runner/runc_test_env.h"
#include "tests/support/cluster.h"
#include "tests/support/eventually.h"
#include "tests/support/http_client.h"
#include "tests/support/json_fields.h"

namespace isorun {
namespace {

using testing::Cluster;
using testing::ClusterOptions;
using testing::Eventually;
using testing::HttpRequest;
using testing::HttpResponse;
using testing::Json;
using testing::Str;

constexpr int kTenants = 4;
constexpr int kWorkersPerTenant = 2;
constexpr int kLimit = 2;  // a keeper plus two workers: the workers press against the limit

// What clients saw, counted as they go; a phase's figures are the difference of two snapshots.
struct Counters {
  std::atomic<int64_t> calls{0};         // API calls made (one per call, however many attempts)
  std::atomic<int64_t> retried{0};       // attempts that failed retryably and were repeated
  // Of the calls the SDKs repeat (all but execs): final answer a 5xx, or a lost connection.
  std::atomic<int64_t> seen_5xx{0};
  std::atomic<int64_t> seen_broken{0};
  std::atomic<int64_t> limit_429{0};     // creates refused at the concurrent limit (expected)
  std::atomic<int64_t> execs{0};
  std::atomic<int64_t> execs_failed{0};  // not retried, as the SDKs do not
  std::atomic<int64_t> creates_ok{0};
  // 201 with a sandbox that is not RUNNING (a create that failed). A create whose first attempt
  // died with its lifecycle replica is finished by its retry (same Idempotency-Key), RUNNING.
  std::atomic<int64_t> creates_failed{0};
  std::atomic<int64_t> deletes_ok{0};
};

struct Snapshot {
  int64_t calls, retried, seen_5xx, seen_broken, limit_429, execs, execs_failed, creates, deletes,
      creates_failed;
};

Snapshot Take(const Counters& c) {
  return {c.calls.load(),       c.retried.load(),    c.seen_5xx.load(),
          c.seen_broken.load(), c.limit_429.load(),  c.execs.load(),
          c.execs_failed.load(), c.creates_ok.load(), c.deletes_ok.load(),
          c.creates_failed.load()};
}

// One HTTP call as the SDKs make it, through a load balancer in front of the gateways: the
// balancer passes each attempt to the next gateway and, as any balancer does (nginx's
// proxy_next_upstream error), to the one after when a gateway refuses the connection (the
// request was never sent, so this is safe for any call). The client repeats 503, 502 and broken
// connections for idempotent calls (exponential backoff with full jitter from 0.5 s up to 8 s,
// 60 s in all), and 429 RATE_LIMIT and CAPACITY, as the SDKs do; never an exec.
class SdkLikeClient {
 public:
  SdkLikeClient(std::vector<std::string> gateways, std::string key, Counters& counters,
                uint32_t seed)
      : gateways_(std::move(gateways)), key_(std::move(key)), counters_(counters), rng_(seed) {}

  // status 0: the connection broke on the final attempt.
  HttpResponse Call(const std::string& method, const std::string& path,
                    const std::string& body = "", bool idempotent = true,
                    const std::string& idempotency_key = "") {
    counters_.calls++;
    std::map<std::string, std::string> headers = {{"Authorization", "Bearer " + key_}};
    if (!body.empty()) headers["Content-Type"] = "application/json";
    if (!idempotency_key.empty()) headers["Idempotency-Key"] = idempotency_key;
    const absl::Time give_up = absl::Now() + absl::Seconds(60);
    for (int tries = 0;; ++tries) {
      HttpResponse r;
      bool broken = false;
      for (size_t g = 0; g < gateways_.size(); ++g) {
        const std::string& gateway = gateways_[next_++ % gateways_.size()];
        try {
          r = HttpRequest(method, gateway + path, body, headers);
          broken = false;
          break;
        } catch (const std::exception& e) {
          broken = true;
          // Refused: the balancer tries the next gateway. Anything else: the request may have
          // been sent; the client decides.
          if (std::string(e.what()).find("refused") == std::string::npos) break;
        }
      }
      const bool retryable =
          broken || r.status == 502 || r.status == 503 ||
          (r.status == 429 && r.body.find("CONCURRENT_SANDBOX_LIMIT") == std::string::npos);
      double step = std::min(8.0, 0.5 * (1 << std::min(tries, 5)));
      absl::Duration delay =
          absl::Seconds(std::uniform_real_distribution<double>(0, step)(rng_));
      if (!retryable || !idempotent || tries >= 10 || absl::Now() + delay > give_up) {
        // Calls the SDKs do not repeat (execs) are counted by the caller (execs_failed).
        if (broken) {
          if (idempotent) counters_.seen_broken++;
          r.status = 0;
        } else if (r.status >= 500 && idempotent) {
          counters_.seen_5xx++;
        }
        return r;
      }
      counters_.retried++;
      absl::SleepFor(delay);
    }
  }

 private:
  const std::vector<std::string> gateways_;
  const std::string key_;
  Counters& counters_;
  std::mt19937 rng_;
  size_t next_ = 0;
};

class Failover : public ::testing::Test {
 protected:
  void SetUp() override {
    ClusterOptions options;
    options.replicas = 2;
    options.runners = 2;
    options.reconcile_interval_ms = 500;
    options.stuck_after_sec = 10;
    options.orphan_grace_sec = 5;
    options.destroy_retry_after_sec = 1;
    options.runner_slots = 50;
    const std::string& why = runner::testing::RuncUnavailableReason();
    if (why.empty()) {
      auto registry = runner::testing::TestRegistryAddress();
      ASSERT_TRUE(registry.ok()) << registry.status();
      options.runner_driver = "runc";
      options.registry = *registry;
      real_sandboxes_ = true;
    } else {
      std::fprintf(stderr, "simulated runners (no execs): %s\n", why.c_str());
    }
    cluster_ = std::make_unique<Cluster>(options);
  }

  // The scheduler replica that answers ListRunners (the followers refuse).
  std::string Leader() {
    for (const auto& name : cluster_->replica_names("scheduler")) {
      if (!cluster_->Running(name)) continue;
      auto stub = v1::Scheduler::NewStub(MakeChannel(cluster_->grpc_addr(name)));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      v1::ListRunnersResponse resp;
      if (stub->ListRunners(&ctx, {}, &resp).ok()) return name;
    }
    return "";
  }

  std::unique_ptr<Cluster> cluster_;
  bool real_sandboxes_ = false;
};

TEST_F(Failover, KillingAReplicaOfEachServiceAndTheLeaderLosesNothing) {
  Cluster& cluster = *cluster_;
  const std::vector<std::string> gateways = {cluster.gateway_url("gateway"),
                                             cluster.gateway_url("gateway-2")};
  const std::string image = "busybox:1.36";
  Counters counters;
  std::vector<std::string> tenants, keys;
  for (int t = 0; t < kTenants; ++t) {
    tenants.push_back(cluster.CreateTenant("failover-" + std::to_string(t), kLimit));
    keys.push_back(cluster.CreateKey(tenants.back(), "local", "admin"));
  }

  // Invariant 1 sampled all along: admitted sandboxes (STARTING or RUNNING) and quota's count
  // per tenant never above the limit.
  std::atomic<bool> stop{false};
  std::atomic<int64_t> samples{0}, over_limit{0};
  std::string over_detail;
  std::thread monitor([&] {
    pqxx::connection conn(cluster.database_url());
    while (!stop) {
      pqxx::nontransaction tx(conn);
      pqxx::result r = tx.exec(
          "SELECT l.tenant_id, l.max_concurrent, u.active, (SELECT count(*) FROM "
          "lifecycle.sandboxes s WHERE s.tenant_id = l.tenant_id AND s.state IN ('STARTING', "
          "'RUNNING')) FROM quota.limits l JOIN quota.usage u USING (tenant_id)");
      for (const auto& row : r) {
        const int limit = row[1].as<int>();
        if (row[2].as<int>() > limit || row[3].as<int>() > limit) {
          if (over_limit++ == 0) {
            over_detail = absl::StrCat("tenant ", row[0].c_str(), " limit ", limit, " quota ",
                                       row[2].as<int>(), " admitted ", row[3].as<int>());
          }
        }
      }
      samples++;
      absl::SleepFor(absl::Milliseconds(25));
    }
  });

  // Each tenant's keeper: acknowledged at the start, must be intact at the end.
  std::vector<std::string> keepers;
  for (int t = 0; t < kTenants; ++t) {
    SdkLikeClient client(gateways, keys[t], counters, 1000 + t);
    HttpResponse r = client.Call("POST", "/v1/sandboxes", R"({"image":")" + image + R"("})", true,
                                 "keeper-" + std::to_string(t));
    ASSERT_EQ(r.status, 201) << r.body;
    keepers.push_back(Str(Json(r.body), "id"));
  }

  // Workers: create, exec, get, destroy, over and over.
  std::mutex acked_mu;
  std::set<std::string> acked_creates, acked_deletes;
  std::vector<std::string> failed_creates;
  std::vector<std::thread> workers;
  for (int t = 0; t < kTenants; ++t) {
    for (int w = 0; w < kWorkersPerTenant; ++w) {
      workers.emplace_back([&, t, w] {
        SdkLikeClient client(gateways, keys[t], counters, 7 * t + w);
        for (int n = 0; !stop; ++n) {
          const std::string idem = absl::StrCat("w", t, "-", w, "-", n);
          HttpResponse created =
              client.Call("POST", "/v1/sandboxes", R"({"image":")" + image + R"("})", true, idem);
          if (created.status == 429) {
            counters.limit_429++;
            absl::SleepFor(absl::Milliseconds(100));
            continue;
          }
          if (created.status != 201) continue;
          const std::string id = Str(Json(created.body), "id");
          if (Str(Json(created.body), "state") != "RUNNING") {
            counters.creates_failed++;
            std::lock_guard lock(acked_mu);
            failed_creates.push_back(id + " " + created.body);
            continue;
          }
          counters.creates_ok++;
          {
            std::lock_guard lock(acked_mu);
            acked_creates.insert(id);
          }
          if (real_sandboxes_) {
            counters.execs++;
            HttpResponse out = client.Call("POST", "/v1/sandboxes/" + id + "/exec",
                                           R"({"cmd":"echo ok"})", /*idempotent=*/false);
            if (out.status != 200 || Str(Json(out.body), "stdout") != "ok\n") {
              counters.execs_failed++;
            }
          }
          client.Call("GET", "/v1/sandboxes/" + id);
          HttpResponse deleted = client.Call("DELETE", "/v1/sandboxes/" + id);
          // 404 after a retry: an earlier attempt deleted it and its answer was lost.
          if (deleted.status == 204 || deleted.status == 404) {
            counters.deletes_ok++;
            std::lock_guard lock(acked_mu);
            acked_deletes.insert(id);
          }
        }
      });
    }
  }

  // Placement availability, probed every 20 ms through the scheduler replicas.
  std::mutex probe_mu;
  std::vector<std::pair<absl::Time, absl::Time>> probe_ok;  // started, finished
  std::thread prober([&] {
    auto stub = v1::Scheduler::NewStub(MakeChannel(cluster.grpc_targets("scheduler")));
    for (int n = 0; !stop; ++n) {
      v1::PlaceRequest req;
      req.set_sandbox_id(absl::StrCat("probe-", n));
      req.set_tenant_id(tenants[0]);
      req.set_image(image);
      req.set_region("local");
      req.mutable_request()->set_cpu_millis(1);
      req.mutable_request()->set_memory_mb(1);
      const absl::Time started = absl::Now();
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
      v1::Placement placement;
      if (stub->Place(&ctx, req, &placement).ok()) {
        {
          std::lock_guard lock(probe_mu);
          probe_ok.emplace_back(started, absl::Now());
        }
        // A release lost here is an orphan placement: the reconciler's to find.
        grpc::ClientContext release_ctx;
        release_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
        v1::ReleasePlacementRequest release;
        release.set_sandbox_id(req.sandbox_id());
        v1::ReleasePlacementResponse released;
        (void)stub->ReleasePlacement(&release_ctx, release, &released);
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  });

  auto print_phase = [&](const std::string& phase, const Snapshot& a, const Snapshot& b,
                         absl::Duration took) {
    const int64_t calls = b.calls - a.calls;
    const int64_t failed = (b.seen_5xx - a.seen_5xx) + (b.seen_broken - a.seen_broken) +
                           (b.creates_failed - a.creates_failed) +
                           (b.execs_failed - a.execs_failed);
    std::printf(
        "phase=%s seconds=%.1f calls=%lld creates=%lld creates_failed=%lld deletes=%lld "
        "retried_attempts=%lld client_5xx=%lld client_broken=%lld error_rate=%.4f "
        "limit_429=%lld execs=%lld execs_failed=%lld\n",
        phase.c_str(), absl::ToDoubleSeconds(took), static_cast<long long>(calls),
        static_cast<long long>(b.creates - a.creates),
        static_cast<long long>(b.creates_failed - a.creates_failed),
        static_cast<long long>(b.deletes - a.deletes),
        static_cast<long long>(b.retried - a.retried),
        static_cast<long long>(b.seen_5xx - a.seen_5xx),
        static_cast<long long>(b.seen_broken - a.seen_broken),
        calls > 0 ? static_cast<double>(failed) / static_cast<double>(calls) : 0.0,
        static_cast<long long>(b.limit_429 - a.limit_429),
        static_cast<long long>(b.execs - a.execs),
        static_cast<long long>(b.execs_failed - a.execs_failed));
    std::fflush(stdout);
  };

  // Steady load first, then each kill: SIGKILL, load for a while, restart the replica.
  const absl::Duration window = absl::Seconds(5);
  {
    Snapshot a = Take(counters);
    absl::SleepFor(absl::Seconds(3));
    print_phase("steady", a, Take(counters), absl::Seconds(3));
  }
  const std::string first_leader = Leader();
  ASSERT_FALSE(first_leader.empty()) << "no scheduler replica leads";
  const std::string follower = first_leader == "scheduler" ? "scheduler-2" : "scheduler";
  for (const std::string& victim : {std::string("quota-2"), std::string("lifecycle-2"),
                                    std::string("gateway-2"), follower}) {
    Snapshot a = Take(counters);
    cluster.Kill(victim, SIGKILL);
    absl::SleepFor(window);
    print_phase("kill_" + victim, a, Take(counters), window);
    cluster.Start(victim);
  }

  // The leader: how long until a placement succeeds again.
  {
    Snapshot a = Take(counters);
    const absl::Time killed = absl::Now();
    cluster.Kill(first_leader, SIGKILL);
    absl::SleepFor(window);
    print_phase("kill_scheduler_leader", a, Take(counters), window);
    absl::Duration gap = absl::InfiniteDuration();
    absl::Time last_before = absl::InfinitePast();
    {
      std::lock_guard lock(probe_mu);
      for (const auto& [started, finished] : probe_ok) {
        if (finished < killed) last_before = std::max(last_before, finished);
        if (started >= killed) {
          gap = finished - killed;
          break;
        }
      }
    }
    std::printf("leader_failover_placement_unavailable_ms=%lld (from the kill to the first "
                "placement that started after it; last placement before it %lld ms earlier)\n",
                static_cast<long long>(absl::ToInt64Milliseconds(gap)),
                static_cast<long long>(absl::ToInt64Milliseconds(killed - last_before)));
    std::fflush(stdout);
    EXPECT_NE(gap, absl::InfiniteDuration()) << "no placement succeeded after the leader died";
    EXPECT_EQ(Leader(), follower);
    cluster.Start(first_leader);
  }

  stop = true;
  for (auto& w : workers) w.join();
  prober.join();
  monitor.join();

  // The key cache per gateway replica: a key revoked through one gateway fails its very next
  // request on the other.
  {
    SdkLikeClient admin({gateways[0]}, keys[0], counters, 99);
    HttpResponse made = admin.Call("POST", "/v1/keys", R"({"name":"failover"})");
    ASSERT_EQ(made.status, 201) << made.body;
    const std::string key = Str(Json(made.body), "key");
    const std::string key_id = Str(Json(made.body), "keyId");
    auto with_key = [&](const std::string& gateway) {
      return HttpRequest("GET", gateway + "/v1/usage", "", {{"Authorization", "Bearer " + key}});
    };
    ASSERT_EQ(with_key(gateways[1]).status, 200);  // cached by the second gateway now
    ASSERT_EQ(admin.Call("DELETE", "/v1/keys/" + key_id).status, 204);
    EXPECT_EQ(with_key(gateways[1]).status, 401);
  }

  for (const auto& f : failed_creates) std::printf("create_failed %s\n", f.c_str());

  // Invariant 1.
  std::printf("limit_samples=%lld over_limit_samples=%lld\n", static_cast<long long>(samples),
              static_cast<long long>(over_limit.load()));
  EXPECT_GT(samples.load(), 100);
  EXPECT_EQ(over_limit.load(), 0) << over_detail;

  // What clients saw: nothing but successes and expected refusals, for the calls they retry.
  Snapshot total = Take(counters);
  EXPECT_GT(total.creates, 20) << "too little load to prove anything";
  EXPECT_EQ(total.seen_5xx, 0) << "a call the SDKs retry ended in a 5xx";
  {
    std::lock_guard lock(acked_mu);
    std::string why;
    for (const auto& f : failed_creates) absl::StrAppend(&why, f, "\n");
    EXPECT_EQ(total.creates_failed, 0) << "creates answered FAILED:\n" << why;
  }

  // Every acknowledged sandbox intact: keepers still run (and run commands); every acknowledged
  // create is either a keeper or destroyed by its worker, never FAILED or LOST.
  for (int t = 0; t < kTenants; ++t) {
    SdkLikeClient client(gateways, keys[t], counters, 500 + t);
    HttpResponse got = client.Call("GET", "/v1/sandboxes/" + keepers[t]);
    ASSERT_EQ(got.status, 200) << got.body;
    EXPECT_EQ(Str(Json(got.body), "state"), "RUNNING") << got.body;
    if (real_sandboxes_) {
      HttpResponse out =
          client.Call("POST", "/v1/sandboxes/" + keepers[t] + "/exec", R"({"cmd":"echo ok"})");
      EXPECT_EQ(out.status, 200) << out.body;
      EXPECT_EQ(Str(Json(out.body), "stdout"), "ok\n") << out.body;
    }
  }
  {
    pqxx::connection conn(cluster.database_url());
    pqxx::nontransaction tx(conn);
    std::lock_guard lock(acked_mu);
    for (const auto& id : acked_creates) {
      pqxx::result r = tx.exec_params("SELECT state FROM lifecycle.sandboxes WHERE id = $1", id);
      ASSERT_EQ(r.size(), 1u) << id;
      const std::string state = r[0][0].as<std::string>();
      EXPECT_NE(state, "FAILED") << id;
      EXPECT_NE(state, "LOST") << id;
      if (acked_deletes.count(id) > 0) {
        EXPECT_TRUE(state == "DESTROYED" || state == "DESTROYING") << id << " " << state;
      }
    }
  }

  // Nothing leaked once the reconciler's bound has passed (a create abandoned mid-way is ended
  // after --stuck_after_sec, an orphan slot or placement released after --orphan_grace_sec):
  // slots, placements and containers are exactly the sandboxes that still run.
  const absl::Duration bound = absl::Seconds(10 + 5) + absl::Seconds(5);
  const absl::Time leak_check = absl::Now();
  std::string mismatch;
  auto settled = [&]() {
    pqxx::connection conn(cluster.database_url());
    pqxx::nontransaction tx(conn);
    auto ids = [&](const std::string& sql) {
      std::set<std::string> out;
      for (const auto& row : tx.exec(sql)) out.insert(row[0].as<std::string>());
      return out;
    };
    std::set<std::string> active =
        ids("SELECT id FROM lifecycle.sandboxes WHERE state IN ('PENDING', 'STARTING', "
            "'RUNNING', 'HIBERNATED', 'DESTROYING')");
    std::set<std::string> running =
        ids("SELECT id FROM lifecycle.sandboxes WHERE state IN ('RUNNING', 'HIBERNATED')");
    std::set<std::string> slots = ids("SELECT sandbox_id FROM quota.reservations");
    std::set<std::string> placements = ids("SELECT sandbox_id FROM scheduler.placements");
    std::set<std::string> containers;
    for (int i = 1; i <= 2; ++i) {
      auto stub = v1::Runner::NewStub(MakeChannel(cluster.grpc_addr("runner-" + std::to_string(i))));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      v1::ListRunnerSandboxesResponse resp;
      if (!stub->ListSandboxes(&ctx, {}, &resp).ok()) return false;
      for (const auto& s : resp.sandbox_ids()) containers.insert(s);
    }
    int64_t usage = 0;
    for (const auto& row : tx.exec("SELECT coalesce(sum(active), 0) FROM quota.usage")) {
      usage = row[0].as<int64_t>();
    }
    mismatch = absl::StrCat("active ", active.size(), " running ", running.size(), " slots ",
                            slots.size(), " usage ", usage, " placements ", placements.size(),
                            " containers ", containers.size());
    return active == running && slots == running && placements == running &&
           containers == running && usage == static_cast<int64_t>(running.size()) &&
           running.size() == keepers.size();
  };
  const bool clean = Eventually(settled, bound);
  std::printf("leak_check_settled_after_ms=%lld bound_ms=%lld (%s)\n",
              static_cast<long long>(absl::ToInt64Milliseconds(absl::Now() - leak_check)),
              static_cast<long long>(absl::ToInt64Milliseconds(bound)), mismatch.c_str());
  EXPECT_TRUE(clean) << mismatch;
}

}  // namespace
}  // namespace isorun
