// Runner faults, end to end: every service as a real process, two runners, one of whose gRPC
// port black-holes (an nftables table of this test's own drops every packet to and from that
// port on loopback, so calls to it hang until their deadline while its heartbeats, sent from
// other ports, keep it HEALTHY in the scheduler's eyes).
//
// The contract: the idle reaper and the reconciler work on each runner in parallel, with
// per-runner deadlines, so while a call to the black-holed runner waits out its deadline (a
// stop's 30 s) the other runner's expired sandboxes are destroyed and its orphan containers
// stopped; a reaper or reconciler that waited for the silent runner could not finish them before
// that call's deadline. The black-holed runner's are handled once it answers again, and nothing
// leaks.

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "isorun/v1/runner.grpc.pb.h"
#include "isorun/v1/scheduler.grpc.pb.h"
#include "services/kit/server.h"
#include "tests/support/cluster.h"
#include "tests/support/eventually.h"
#include "tests/support/host_command.h"
#include "tests/support/sandboxes_client.h"

namespace isorun {
namespace {

using testing::Cluster;
using testing::ClusterOptions;
using testing::Eventually;
using Client = testing::SandboxesClient;

// The lifecycle's deadline of one call to a runner (BackendDeadlines::runner: a stop).
constexpr absl::Duration kRunnerCallDeadline = absl::Seconds(30);

int Sh(const std::string& command) {
  int status = -1;
  testing::Host(command, &status);
  return status;
}

// An nftables table that drops TCP to and from one loopback port, removed by the destructor.
class BlackHole {
 public:
  explicit BlackHole(int port) : table_(absl::StrCat("isorun_bh_", getpid(), "_", port)) {
    ok_ = Sh(absl::StrCat("nft -f - <<'EOF'\ntable inet ", table_,
                          " {\n chain out {\n  type filter hook output priority -300;\n"
                          "  oifname \"lo\" tcp dport ", port, " drop\n  oifname \"lo\" tcp sport ",
                          port, " drop\n }\n}\nEOF")) == 0;
  }
  ~BlackHole() { Lift(); }
  bool ok() const { return ok_; }
  void Lift() {
    if (!ok_) return;
    Sh("nft delete table inet " + table_);
    ok_ = false;
  }

 private:
  const std::string table_;
  bool ok_ = false;
};

int PortOf(const std::string& addr) { return std::stoi(addr.substr(addr.rfind(':') + 1)); }

std::vector<std::string> RunnerSandboxes(const Cluster& cluster, const std::string& runner,
                                         bool* answered, int deadline_sec = 3) {
  auto stub = v1::Runner::NewStub(MakeChannel(cluster.grpc_addr(runner)));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(deadline_sec));
  v1::ListRunnerSandboxesResponse resp;
  *answered = stub->ListSandboxes(&ctx, {}, &resp).ok();
  return {resp.sandbox_ids().begin(), resp.sandbox_ids().end()};
}

// A container no sandbox row owns, started on the runner directly.
bool StartOrphan(const Cluster& cluster, const std::string& runner, const std::string& id) {
  auto stub = v1::Runner::NewStub(MakeChannel(cluster.grpc_addr(runner)));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::StartSandboxRequest req;
  req.set_sandbox_id(id);
  req.set_image("busybox:1.36");
  req.set_cpu_millis(100);
  req.set_memory_mb(64);
  v1::StartSandboxResponse resp;
  return stub->StartSandbox(&ctx, req, &resp).ok();
}

std::string RunnerNameOf(const Cluster& cluster, const std::string& id) {
  return cluster.db().Scalar(
      "SELECT coalesce((SELECT r.name FROM lifecycle.sandboxes s JOIN scheduler.runners r ON "
      "r.id = s.runner_id WHERE s.id = '" + id + "'), '')");
}

TEST(RunnerFaults, ABlackHoledRunnerStallsNeitherTheReaperNorTheReconcilerForOthers) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root for nftables";
  if (Sh("nft --version >/dev/null 2>&1") != 0) GTEST_SKIP() << "needs the nft tool";
  ClusterOptions options;
  options.gateway = false;
  options.runners = 2;
  options.reaper_interval_ms = 200;
  options.reconcile_interval_ms = 300;
  options.orphan_grace_sec = 2;
  options.destroy_retry_after_sec = 1;
  options.env = {"ISORUN_ADMIN_HTTP_ADDR="};
  Cluster cluster(options);
  const std::string tenant = cluster.CreateTenant("blackhole", 100);
  Client client(cluster.grpc_addr("lifecycle"));

  // The image on both runners first (a container started on each directly, which the
  // reconciler stops), so that placement, which strongly prefers a runner holding the image,
  // spreads the sandboxes over both.
  for (const std::string runner : {"runner-1", "runner-2"}) {
    ASSERT_TRUE(StartOrphan(cluster, runner, absl::StrCat("sb_warm_", runner)));
  }
  auto scheduler = v1::Scheduler::NewStub(MakeChannel(cluster.grpc_addr("scheduler")));
  ASSERT_TRUE(Eventually(
      [&] {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
        v1::ListRunnersResponse resp;
        if (!scheduler->ListRunners(&ctx, {}, &resp).ok()) return false;
        int warm = 0;
        for (const auto& r : resp.runners()) warm += r.images_size() > 0 ? 1 : 0;
        return warm == 2;
      },
      absl::Seconds(30)))
      << "the scheduler did not hear of the image on both runners";
  // Sandboxes on both runners (they expire only when the test says so, below).
  std::map<std::string, std::vector<std::string>> on;
  for (int i = 0; i < 60 && (on["runner-1"].size() < 3 || on["runner-2"].size() < 3); ++i) {
    auto sb = client.Create(tenant, 300);
    ASSERT_TRUE(sb.ok()) << sb.status();
    on[RunnerNameOf(cluster, sb->id())].push_back(sb->id());
  }
  ASSERT_GE(on["runner-1"].size(), 1u);
  ASSERT_GE(on["runner-2"].size(), 1u);
  auto quoted = [](const std::vector<std::string>& ids) {
    std::string out;
    for (const auto& id : ids) absl::StrAppend(&out, out.empty() ? "" : ",", "'", id, "'");
    return out;
  };

  BlackHole hole(PortOf(cluster.grpc_addr("runner-2")));
  ASSERT_TRUE(hole.ok()) << "nft could not add the test's table";
  bool answered = true;
  RunnerSandboxes(cluster, "runner-2", &answered, 1);
  ASSERT_FALSE(answered) << "runner-2 still answers through the black hole";

  // runner-2's sandboxes expire now: the reaper claims them and its stop on runner-2 waits out
  // its deadline (kRunnerCallDeadline), until `stall_end` at the earliest. runner-1's expire two
  // seconds later, while that stop is still waiting.
  const absl::Time expired2 = absl::Now();
  cluster.db().Scalar("UPDATE lifecycle.sandboxes SET expires_at = now() WHERE id IN (" +
                      quoted(on["runner-2"]) + ") RETURNING 1");
  const absl::Time stall_end = expired2 + kRunnerCallDeadline;
  auto all_in = [&](const std::vector<std::string>& ids, v1::SandboxState state) {
    for (const auto& id : ids) {
      auto sb = client.Get(tenant, id);
      if (!sb.ok() || sb->state() != state) return false;
    }
    return true;
  };
  ASSERT_TRUE(Eventually([&] { return all_in(on["runner-2"], v1::DESTROYING); },
                         absl::Seconds(20)))
      << "the reaper did not claim runner-2's expired sandboxes";
  const absl::Time expired1 = absl::Now() + absl::Seconds(2);
  cluster.db().Scalar(
      "UPDATE lifecycle.sandboxes SET expires_at = now() + interval '2 seconds' WHERE id IN (" +
      quoted(on["runner-1"]) + ") RETURNING 1");
  // Containers nobody owns on runner-1, for the reconciler to stop.
  const absl::Time orphaned = absl::Now();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(StartOrphan(cluster, "runner-1", absl::StrCat("sb_orphan_", i)));
  }

  // runner-1: its orphans stopped, its expired sandboxes DESTROYED, as if runner-2 were fine.
  std::vector<std::string> left;
  auto orphans_left = [&] {
    int n = 0;
    for (const auto& id : RunnerSandboxes(cluster, "runner-1", &answered)) {
      n += id.rfind("sb_orphan_", 0) == 0 ? 1 : 0;
    }
    return answered ? n : -1;
  };
  ASSERT_TRUE(Eventually([&] { return orphans_left() == 0; }, absl::Seconds(60)))
      << "the reconciler did not stop runner-1's orphans";
  const absl::Time cleaned1 = absl::Now();
  ASSERT_TRUE(Eventually([&] { return all_in(on["runner-1"], v1::DESTROYED); },
                         absl::Seconds(60)));
  const absl::Time reaped1 = absl::Now();
  ASSERT_TRUE(Eventually(
      [&] {
        left = RunnerSandboxes(cluster, "runner-1", &answered);
        return answered && left.empty();
      },
      absl::Seconds(60)))
      << left.size() << " containers left on runner-1";
  // The bound is runner-2's deadline: a reaper or a reconciler that waited for the stop it is
  // stuck in (the reconciler retries runner-2's DESTROYING rows a second after the reaper's
  // claim) would reach runner-1's work only after `stall_end`.
  EXPECT_LT(reaped1, stall_end) << "runner-1's idle sandboxes waited for runner-2's deadline";
  EXPECT_LT(cleaned1, stall_end) << "runner-1's orphans waited for runner-2's deadline";
  // runner-2's stops are still waiting: its sandboxes are not destroyed yet.
  EXPECT_TRUE(all_in(on["runner-2"], v1::DESTROYING));

  // runner-2 answers again: its sandboxes are destroyed, nothing is left on it.
  hole.Lift();
  const absl::Time lifted = absl::Now();
  EXPECT_TRUE(Eventually([&] { return all_in(on["runner-2"], v1::DESTROYED); },
                         absl::Seconds(90)));
  EXPECT_TRUE(Eventually(
      [&] {
        left = RunnerSandboxes(cluster, "runner-2", &answered);
        return answered && left.empty();
      },
      absl::Seconds(60)))
      << left.size() << " containers left on runner-2";
  const absl::Time healed = absl::Now();
  // No leaks: no slot, no placement, nothing on either runner.
  EXPECT_TRUE(Eventually(
      [&] {
        return cluster.db().Scalar("SELECT coalesce(sum(active), 0) FROM quota.usage WHERE "
                                   "tenant_id = '" + tenant + "'") == "0" &&
               cluster.db().Scalar("SELECT count(*) FROM scheduler.placements") == "0";
      },
      absl::Seconds(15)));
  EXPECT_TRUE(RunnerSandboxes(cluster, "runner-1", &answered).empty());
  std::printf("runner_faults blackhole sandboxes_runner1=%zu sandboxes_runner2=%zu "
              "runner_call_deadline_ms=%lld runner1_destroyed_after_expiry_ms=%lld "
              "runner1_orphans_stopped_after_start_ms=%lld runner2_repaired_after_lift_ms=%lld\n",
              on["runner-1"].size(), on["runner-2"].size(),
              static_cast<long long>(absl::ToInt64Milliseconds(kRunnerCallDeadline)),
              static_cast<long long>(
                  absl::ToInt64Milliseconds(std::max(absl::ZeroDuration(), reaped1 - expired1))),
              static_cast<long long>(absl::ToInt64Milliseconds(cleaned1 - orphaned)),
              static_cast<long long>(absl::ToInt64Milliseconds(healed - lifted)));
}

}  // namespace
}  // namespace isorun
