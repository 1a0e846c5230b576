// The control plane as separate processes over gRPC: restarts and crashes of the lifecycle
// service lose no deadline and leak nothing. The idle-reaping and crash tests run on simulated
// runners and once more on a real runc runner (skipping, saying why, where real sandboxes cannot
// run); each asks every runner what it still holds at the end.

#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <ostream>
#include <thread>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "isorun/v1/runner.grpc.pb.h"
#include "isorun/v1/sandboxes.grpc.pb.h"
#include "services/runner/runc_test_env.h"
#include "services/kit/server.h"
#include "services/kit/status.h"
#include "tests/support/cluster.h"
#include "tests/support/eventually.h"
#include "tests/support/sandboxes_client.h"

namespace isorun {
namespace {

using testing::Cluster;
using testing::ClusterOptions;
using testing::Eventually;
using Client = testing::SandboxesClient;

// A cluster on `driver`'s runners: "sim", or "runc" with this process's test registry. Skips
// (with the reason) when real sandboxes cannot run here.
#define ISORUN_CLUSTER_OPTIONS_FOR(driver, options)                          \
  do {                                                                       \
    (options).runner_driver = (driver);                                      \
    if ((options).runner_driver == "runc") {                                 \
      ISORUN_REQUIRE_RUNC();                                                 \
      auto registry = runner::testing::TestRegistryAddress();                \
      ASSERT_TRUE(registry.ok()) << registry.status();                       \
      (options).registry = *registry;                                        \
    }                                                                        \
  } while (0)

// What runner `name` says it still holds (its ListSandboxes), sorted.
std::vector<std::string> RunnerHolds(const Cluster& cluster, const std::string& name) {
  auto stub = v1::Runner::NewStub(MakeChannel(cluster.grpc_addr(name)));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ListRunnerSandboxesRequest req;
  v1::ListRunnerSandboxesResponse resp;
  grpc::Status s = stub->ListSandboxes(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << name << ": " << s.error_message();
  std::vector<std::string> ids(resp.sandbox_ids().begin(), resp.sandbox_ids().end());
  std::sort(ids.begin(), ids.end());
  return ids;
}

// The ids of the sandboxes Postgres says are RUNNING, sorted.
std::vector<std::string> RunningIds(const Cluster& cluster) {
  std::string ids = cluster.db().Scalar(
      "SELECT coalesce(string_agg(id, ',' ORDER BY id), '') FROM lifecycle.sandboxes "
      "WHERE state = 'RUNNING'");
  std::vector<std::string> out = absl::StrSplit(ids, ',', absl::SkipEmpty());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(Processes, EveryServiceAnswersTheGrpcHealthCheck) {
  ClusterOptions options;
  options.gateway = false;
  Cluster cluster(options);
  for (const char* name : {"quota", "scheduler", "lifecycle", "runner-1"}) {
    auto channel = MakeChannel(cluster.grpc_addr(name));
    grpc::GenericStub generic(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::ByteBuffer request;  // an empty HealthCheckRequest: the server's overall health
    grpc::Slice empty("");
    request = grpc::ByteBuffer(&empty, 1);
    grpc::ByteBuffer response;
    std::atomic<bool> done{false};
    grpc::Status status;
    generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                      &response, [&](grpc::Status s) {
                        status = s;
                        done = true;
                      });
    ASSERT_TRUE(Eventually([&] { return done.load(); }, absl::Seconds(5))) << name;
    ASSERT_TRUE(status.ok()) << name << ": " << status.error_message();
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(response.Dump(&slices).ok());
    std::string bytes;
    for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    EXPECT_EQ(bytes, std::string("\x08\x01", 2)) << name << " is not SERVING";
  }
}

class IdleReaping : public ::testing::TestWithParam<const char*> {};

TEST_P(IdleReaping, SandboxesAreReapedWithinSecondsAndAcrossALifecycleRestart) {
  ClusterOptions options;
  options.gateway = false;
  ISORUN_CLUSTER_OPTIONS_FOR(GetParam(), options);
  Cluster cluster(options);
  std::string tenant = cluster.CreateTenant("reaped", 10);
  Client client(cluster.grpc_addr("lifecycle"));
  auto quick = client.Create(tenant, 1);
  ASSERT_TRUE(quick.ok()) << quick.status();
  const absl::Time created = absl::Now();
  ASSERT_TRUE(Eventually(
      [&] { return client.Get(tenant, quick->id())->state() == v1::DESTROYED; },
      absl::Seconds(20)));
  // Reaped after its 1 s of idleness, not before; the upper bound is Eventually's (the reaper
  // runs every 200 ms, so this is seconds of margin on a loaded machine).
  EXPECT_GE(absl::Now() - created, absl::Seconds(1));
  EXPECT_EQ(client.Get(tenant, quick->id())->end_reason(), v1::IDLE_TIMEOUT);
  EXPECT_EQ(RunnerHolds(cluster, "runner-1"), std::vector<std::string>{});

  // The lifecycle is down while the deadline passes; the restarted one reaps it at once.
  auto later = client.Create(tenant, 2);
  ASSERT_TRUE(later.ok()) << later.status();
  const absl::Time later_created = absl::Now();
  cluster.Kill("lifecycle", SIGKILL);
  absl::SleepFor(absl::Seconds(3));
  EXPECT_EQ(cluster.db().Scalar("SELECT state FROM lifecycle.sandboxes WHERE id = '" +
                                later->id() + "'"),
            "RUNNING");
  // Still held by the runner: nothing reaps without the lifecycle.
  EXPECT_EQ(RunnerHolds(cluster, "runner-1"), std::vector<std::string>{later->id()});
  cluster.Start("lifecycle");
  ASSERT_TRUE(Eventually(
      [&] {
        auto sb = client.Get(tenant, later->id());
        return sb.ok() && sb->state() == v1::DESTROYED;
      },
      absl::Seconds(20)));
  EXPECT_GE(absl::Now() - later_created, absl::Seconds(3));
  EXPECT_EQ(client.Get(tenant, later->id())->end_reason(), v1::IDLE_TIMEOUT);
  EXPECT_EQ(cluster.db().Scalar("SELECT active FROM quota.usage WHERE tenant_id = '" + tenant + "'"),
            "0");
  EXPECT_EQ(cluster.db().Scalar("SELECT count(*) FROM scheduler.placements"), "0");
  EXPECT_EQ(RunnerHolds(cluster, "runner-1"), std::vector<std::string>{});
}

INSTANTIATE_TEST_SUITE_P(Drivers, IdleReaping, ::testing::Values("sim", "runc"),
                         [](const auto& info) { return std::string(info.param); });

// kill -9 one service in the middle of concurrent creates, restart it, and check within the
// bounded repair time: usage equals active sandboxes, no placement or container for a dead
// sandbox, no acknowledged sandbox lost, and the runner holds exactly the RUNNING sandboxes.
// On simulated runners 200 creates (each start held 200 ms); on a runc runner 24 real ones.
struct CrashCase {
  const char* victim;
  const char* driver;
};

void PrintTo(const CrashCase& c, std::ostream* os) { *os << c.victim << " on " << c.driver; }

class CrashTest : public ::testing::TestWithParam<CrashCase> {};

TEST_P(CrashTest, KillNineMidCreateLeaksNothing) {
  const std::string victim = GetParam().victim;
  ClusterOptions options;
  options.gateway = false;
  ISORUN_CLUSTER_OPTIONS_FOR(GetParam().driver, options);
  const bool runc = options.runner_driver == "runc";
  options.sim_start_ms = 200;  // creates are in flight when the process dies
  options.stuck_after_sec = 3;
  options.orphan_grace_sec = 3;
  options.reconcile_interval_ms = 500;
  Cluster cluster(options);
  std::string tenant = cluster.CreateTenant("crashy", 1000);
  Client client(cluster.grpc_addr("lifecycle"));
  const int creates = runc ? 24 : 200;
  const absl::Duration spacing = absl::Milliseconds(runc ? 25 : 2);
  std::vector<std::string> acked(static_cast<size_t>(creates));
  // Some sandboxes acknowledged before the crash, which must survive it.
  std::vector<std::string> before;
  for (int i = 0; i < 5; ++i) {
    auto sb = client.Create(tenant);
    ASSERT_TRUE(sb.ok()) << sb.status();
    before.push_back(sb->id());
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < creates; ++i) {
    threads.emplace_back([&, i] {
      absl::SleepFor(spacing * i);
      auto sb = client.Create(tenant);
      if (sb.ok()) acked[static_cast<size_t>(i)] = sb->id();
    });
  }
  absl::SleepFor(absl::Milliseconds(300));
  cluster.Kill(victim, SIGKILL);
  absl::SleepFor(absl::Milliseconds(500));
  cluster.Start(victim);
  for (auto& t : threads) t.join();
  int acknowledged = 0;
  for (const auto& id : acked) acknowledged += id.empty() ? 0 : 1;
  EXPECT_LT(acknowledged, creates) << "the kill hit no create in flight";
  acked.insert(acked.end(), before.begin(), before.end());

  const auto& db = cluster.db();
  auto consistent = [&] {
    std::string running =
        db.Scalar("SELECT count(*) FROM lifecycle.sandboxes WHERE state IN "
                  "('PENDING', 'STARTING', 'RUNNING', 'DESTROYING')");
    std::string unsettled = db.Scalar(
        "SELECT count(*) FROM lifecycle.sandboxes WHERE state IN ('PENDING', 'STARTING', "
        "'DESTROYING')");
    std::string usage = db.Scalar("SELECT active FROM quota.usage WHERE tenant_id = '" + tenant + "'");
    std::string reservations = db.Scalar("SELECT count(*) FROM quota.reservations");
    std::string placements = db.Scalar("SELECT count(*) FROM scheduler.placements");
    std::string stray_placements = db.Scalar(
        "SELECT count(*) FROM scheduler.placements p LEFT JOIN lifecycle.sandboxes s "
        "ON s.id = p.sandbox_id WHERE s.id IS NULL OR s.state IN ('DESTROYED', 'FAILED', 'LOST')");
    return unsettled == "0" && usage == running && reservations == running &&
           stray_placements == "0" && placements == running;
  };
  // Bounded repair: stuck_after + grace + a few reconcile passes, with margin for a loaded
  // machine (Eventually returns as soon as it holds).
  EXPECT_TRUE(Eventually(consistent, absl::Seconds(60)))
      << "usage=" << db.Scalar("SELECT active FROM quota.usage")
      << " reservations=" << db.Scalar("SELECT count(*) FROM quota.reservations")
      << " placements=" << db.Scalar("SELECT count(*) FROM scheduler.placements") << " states="
      << db.Scalar("SELECT string_agg(state || ':' || n, ',') FROM (SELECT state, count(*) n "
                   "FROM lifecycle.sandboxes GROUP BY state) x")
      << " running_unplaced="
      << db.Scalar("SELECT string_agg(s.id, ',') FROM lifecycle.sandboxes s LEFT JOIN "
                   "scheduler.placements p ON p.sandbox_id = s.id WHERE s.state = 'RUNNING' "
                   "AND p.sandbox_id IS NULL");
  // No acknowledged sandbox is lost.
  for (const auto& id : acked) {
    if (id.empty()) continue;
    auto sb = client.Get(tenant, id);
    ASSERT_TRUE(sb.ok()) << sb.status();
    EXPECT_EQ(sb->state(), v1::RUNNING) << id;
  }
  // The runner holds exactly what Postgres says runs: no container of a sandbox that failed or
  // was compensated, none missing. (The reconciler stops strays after orphan_grace_sec.)
  std::vector<std::string> held;
  EXPECT_TRUE(Eventually(
      [&] {
        held = RunnerHolds(cluster, "runner-1");
        return held == RunningIds(cluster);
      },
      absl::Seconds(30)))
      << "runner holds " << held.size() << " [" << absl::StrJoin(held, ",") << "], running "
      << RunningIds(cluster).size();
  EXPECT_GE(held.size(), before.size());
}

INSTANTIATE_TEST_SUITE_P(EachService, CrashTest,
                         ::testing::Values(CrashCase{"lifecycle", "sim"}, CrashCase{"quota", "sim"},
                                           CrashCase{"scheduler", "sim"},
                                           CrashCase{"lifecycle", "runc"}),
                         [](const auto& info) {
                           return std::string(info.param.victim) + "_" + info.param.driver;
                         });

}  // namespace
}  // namespace isorun
