// The control plane as separate processes over gRPC: restarts and crashes of the lifecycle
// service lose no deadline and leak nothing.

#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <thread>

#include "isorun/v1/sandboxes.grpc.pb.h"
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

TEST(Processes, IdleSandboxesAreReapedWithinSecondsAndAcrossALifecycleRestart) {
  ClusterOptions options;
  options.gateway = false;
  Cluster cluster(options);
  std::string tenant = cluster.CreateTenant("reaped", 10);
  Client client(cluster.grpc_addr("lifecycle"));
  auto quick = client.Create(tenant, 1);
  ASSERT_TRUE(quick.ok()) << quick.status();
  auto start = absl::Now();
  ASSERT_TRUE(Eventually(
      [&] { return client.Get(tenant, quick->id())->state() == v1::DESTROYED; }, absl::Seconds(5)));
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
  EXPECT_EQ(client.Get(tenant, quick->id())->end_reason(), v1::IDLE_TIMEOUT);

  // The lifecycle is down while the deadline passes; the restarted one reaps it at once.
  auto later = client.Create(tenant, 2);
  ASSERT_TRUE(later.ok());
  cluster.Kill("lifecycle", SIGKILL);
  absl::SleepFor(absl::Seconds(3));
  EXPECT_EQ(cluster.db().Scalar("SELECT state FROM lifecycle.sandboxes WHERE id = '" +
                                later->id() + "'"),
            "RUNNING");
  cluster.Start("lifecycle");
  ASSERT_TRUE(Eventually(
      [&] {
        auto sb = client.Get(tenant, later->id());
        return sb.ok() && sb->state() == v1::DESTROYED;
      },
      absl::Seconds(5)));
  EXPECT_EQ(cluster.db().Scalar("SELECT active FROM quota.usage WHERE tenant_id = '" + tenant + "'"),
            "0");
  EXPECT_EQ(cluster.db().Scalar("SELECT count(*) FROM scheduler.placements"), "0");
}

// kill -9 one service in the middle of 200 concurrent creates, restart it, and check within the
// bounded repair time: usage equals active sandboxes, no placement or container for a dead
// sandbox, and no acknowledged sandbox lost.
class CrashTest : public ::testing::TestWithParam<const char*> {};

TEST_P(CrashTest, KillNineMidCreateLeaksNothing) {
  const std::string victim = GetParam();
  ClusterOptions options;
  options.gateway = false;
  options.sim_start_ms = 200;  // creates are in flight when the process dies
  options.stuck_after_sec = 3;
  options.orphan_grace_sec = 3;
  options.reconcile_interval_ms = 500;
  Cluster cluster(options);
  std::string tenant = cluster.CreateTenant("crashy", 1000);
  Client client(cluster.grpc_addr("lifecycle"));
  constexpr int kCreates = 200;
  std::vector<std::string> acked(kCreates);
  // Some sandboxes acknowledged before the crash, which must survive it.
  std::vector<std::string> before;
  for (int i = 0; i < 5; ++i) {
    auto sb = client.Create(tenant);
    ASSERT_TRUE(sb.ok()) << sb.status();
    before.push_back(sb->id());
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < kCreates; ++i) {
    threads.emplace_back([&, i] {
      absl::SleepFor(absl::Milliseconds(2 * i));
      auto sb = client.Create(tenant);
      if (sb.ok()) acked[i] = sb->id();
    });
  }
  absl::SleepFor(absl::Milliseconds(300));
  cluster.Kill(victim, SIGKILL);
  absl::SleepFor(absl::Milliseconds(500));
  cluster.Start(victim);
  for (auto& t : threads) t.join();
  int acknowledged = 0;
  for (const auto& id : acked) acknowledged += id.empty() ? 0 : 1;
  EXPECT_LT(acknowledged, kCreates) << "the kill hit no create in flight";
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
  // Bounded repair: stuck_after + grace + a few reconcile passes.
  EXPECT_TRUE(Eventually(consistent, absl::Seconds(20)))
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
}

INSTANTIATE_TEST_SUITE_P(EachService, CrashTest,
                         ::testing::Values("lifecycle", "quota", "scheduler"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace isorun
