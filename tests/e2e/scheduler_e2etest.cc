// The scheduler with real processes: a runner that goes away loses its sandboxes (LOST,
// RUNNER_LOST) and their slots come back; a scheduler killed with -9 and restarted places
// correctly at once (no overcommit, warm runners still known); hot images are pre-warmed onto
// runners through their PullImage call; the admin endpoint serves the capacity view.

#include <gtest/gtest.h>
#include <signal.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "isorun/v1/runner.grpc.pb.h"
#include "isorun/v1/sandboxes.grpc.pb.h"
#include "isorun/v1/scheduler.grpc.pb.h"
#include "services/kit/server.h"
#include "services/kit/status.h"
#include "tests/support/cluster.h"
#include "tests/support/eventually.h"
#include "tests/support/sandboxes_client.h"
#include "tests/support/http_client.h"

namespace isorun {
namespace {

using testing::Cluster;
using testing::ClusterOptions;
using testing::Eventually;
using Client = testing::SandboxesClient;

std::map<std::string, v1::RunnerInfo> Runners(const Cluster& cluster) {
  auto stub = v1::Scheduler::NewStub(MakeChannel(cluster.grpc_addr("scheduler")));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ListRunnersResponse resp;
  std::map<std::string, v1::RunnerInfo> out;
  if (!stub->ListRunners(&ctx, {}, &resp).ok()) return out;
  for (const auto& r : resp.runners()) out[r.name()] = r;
  return out;
}

bool AllHealthy(const Cluster& cluster, int n) {
  auto runners = Runners(cluster);
  int healthy = 0;
  for (const auto& [name, r] : runners) healthy += r.state() == "HEALTHY" ? 1 : 0;
  return healthy == n;
}

// Sandbox ids on each runner, as the scheduler's placements say.
std::map<std::string, std::set<std::string>> PlacementsByRunner(const Cluster& cluster) {
  std::string rows = cluster.db().Scalar(
      "SELECT coalesce(string_agg(r.name || '=' || p.sandbox_id, ',' ORDER BY p.sandbox_id), '') "
      "FROM scheduler.placements p JOIN scheduler.runners r ON r.id = p.runner_id");
  std::map<std::string, std::set<std::string>> out;
  size_t start = 0;
  while (start < rows.size()) {
    size_t comma = rows.find(',', start);
    if (comma == std::string::npos) comma = rows.size();
    std::string item = rows.substr(start, comma - start);
    size_t eq = item.find('=');
    out[item.substr(0, eq)].insert(item.substr(eq + 1));
    start = comma + 1;
  }
  return out;
}

// The runner's sandboxes; nullopt (with the reason on stderr) when the runner did not answer.
std::optional<std::vector<std::string>> TryRunnerSandboxes(const Cluster& cluster,
                                                           const std::string& runner) {
  auto stub = v1::Runner::NewStub(MakeChannel(cluster.grpc_addr(runner)));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ListRunnerSandboxesResponse resp;
  const grpc::Status status = stub->ListSandboxes(&ctx, {}, &resp);
  if (!status.ok()) {
    std::fprintf(stderr, "ListSandboxes of %s: %d %s\n", runner.c_str(), status.error_code(),
                 status.error_message().c_str());
    return std::nullopt;
  }
  return std::vector<std::string>{resp.sandbox_ids().begin(), resp.sandbox_ids().end()};
}

std::vector<std::string> RunnerSandboxes(const Cluster& cluster, const std::string& runner) {
  auto ids = TryRunnerSandboxes(cluster, runner);
  EXPECT_TRUE(ids.has_value());
  return ids.value_or(std::vector<std::string>{});
}

// The value of a metric line `name{labels} value`, or -1.
double Metric(const std::string& text, const std::string& series) {
  size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 2));
}

// The pid of the cluster process serving `addr` (Cluster::Kill waits for an exit, which a stopped
// process never makes).
pid_t PidServing(const std::string& addr) {
  const std::string want = "--grpc_addr=" + addr;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "cmdline", std::ios::binary);
    std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (size_t start = 0; start < cmdline.size();) {
      size_t end = cmdline.find('\0', start);
      if (end == std::string::npos) end = cmdline.size();
      if (cmdline.compare(start, end - start, want) == 0) return std::stoi(name);
      start = end + 1;
    }
  }
  return 0;
}

std::string Usage(const Cluster& cluster, const std::string& tenant) {
  return cluster.db().Scalar("SELECT active FROM quota.usage WHERE tenant_id = '" + tenant + "'");
}

TEST(Scheduler, ARunnerThatGoesAwayLosesItsSandboxesAndTheirSlotsComeBack) {
  const int admin_port = testing::PickFreePort();
  ClusterOptions options;
  options.gateway = false;
  options.runners = 2;
  options.runner_slots = 8;
  options.runner_lost_after_ms = 3000;
  options.reconcile_interval_ms = 300;
  options.orphan_grace_sec = 2;
  options.env = {"ISORUN_HEALTHY_WITHIN_MS=1000",
                 "ISORUN_ADMIN_HTTP_ADDR=127.0.0.1:" + std::to_string(admin_port)};
  Cluster cluster(options);
  const std::string tenant = cluster.CreateTenant("lossy", 20);
  Client client(cluster.grpc_addr("lifecycle"));
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    auto sb = client.Create(tenant);
    ASSERT_TRUE(sb.ok()) << sb.status();
    ids.push_back(sb->id());
  }
  auto before = PlacementsByRunner(cluster);
  const std::set<std::string> doomed = before["runner-1"];
  const std::set<std::string> spared = before["runner-2"];
  ASSERT_FALSE(doomed.empty()) << "sandboxes are spread over both runners";
  ASSERT_FALSE(spared.empty());
  ASSERT_EQ(doomed.size() + spared.size(), 6u);
  EXPECT_EQ(Usage(cluster, tenant), "6");
  const int left = static_cast<int>(spared.size()) + 1;  // and the create below

  cluster.Kill("runner-1", SIGKILL);
  // Its heartbeat stream broke: no more placements there, at once.
  ASSERT_TRUE(Eventually([&] { return Runners(cluster)["runner-1"].state() != "HEALTHY"; },
                         absl::Seconds(2)));
  auto extra = client.Create(tenant);
  ASSERT_TRUE(extra.ok()) << extra.status();
  EXPECT_EQ(PlacementsByRunner(cluster)["runner-2"].count(extra->id()), 1u);

  // Past lost_after: LOST, its sandboxes LOST with RUNNER_LOST, their slots and placements freed.
  ASSERT_TRUE(Eventually(
      [&] {
        for (const auto& id : doomed) {
          auto sb = client.Get(tenant, id);
          if (!sb.ok() || sb->state() != v1::LOST) return false;
        }
        return true;
      },
      absl::Seconds(15)));
  EXPECT_EQ(Runners(cluster)["runner-1"].state(), "LOST");
  for (const auto& id : doomed) EXPECT_EQ(client.Get(tenant, id)->end_reason(), v1::RUNNER_LOST);
  for (const auto& id : spared) EXPECT_EQ(client.Get(tenant, id)->state(), v1::RUNNING);
  ASSERT_TRUE(
      Eventually([&] { return Usage(cluster, tenant) == std::to_string(left); }, absl::Seconds(5)))
      << "usage " << Usage(cluster, tenant);
  // Slots and placements are released by separate calls: the placements may trail the usage.
  ASSERT_TRUE(Eventually(
      [&] {
        return PlacementsByRunner(cluster).count("runner-1") == 0 &&
               Runners(cluster)["runner-1"].allocated().sandboxes() == 0;
      },
      absl::Seconds(10)));
  auto after = PlacementsByRunner(cluster);
  EXPECT_EQ(after.count("runner-1"), 0u);
  EXPECT_EQ(after["runner-2"].size(), static_cast<size_t>(left));
  auto lost = Runners(cluster)["runner-1"];
  EXPECT_EQ(lost.allocated().sandboxes(), 0);

  // The dashboard view on the admin listener says the same.
  auto capacity = testing::HttpRequest(
      "GET", "http://127.0.0.1:" + std::to_string(admin_port) + "/capacity?sandboxes=0");
  EXPECT_EQ(capacity.status, 200);
  EXPECT_NE(capacity.body.find(R"("runnersByState":{"DRAINING":0,"HEALTHY":1,"LOST":1,)"),
            std::string::npos)
      << capacity.body;
  EXPECT_NE(capacity.body.find(R"("name":"runner-1","address")"), std::string::npos);
  auto summary = testing::HttpRequest(
      "GET", "http://127.0.0.1:" + std::to_string(admin_port) + "/capacity?summary=1");
  EXPECT_EQ(summary.body.find("runner-1"), std::string::npos);
  EXPECT_NE(summary.body.find(absl::StrCat(R"("sandboxes":{"capacity":16,"allocated":)", left,
                                           R"(,"free":)", 16 - left, "}")),
            std::string::npos)
      << summary.body;

  // The runner comes back: it registers again and takes sandboxes once runner-2 is full (sooner
  // when runner-2 is fuller than the warm bonus allows).
  cluster.Start("runner-1");
  EXPECT_EQ(Runners(cluster)["runner-1"].state(), "HEALTHY");
  for (int i = 0; i < 8 - left + 2; ++i) {
    auto created = client.Create(tenant);
    ASSERT_TRUE(created.ok()) << created.status();
  }
  auto now_placed = PlacementsByRunner(cluster);
  EXPECT_GE(now_placed["runner-1"].size(), 2u);
  EXPECT_LE(now_placed["runner-2"].size(), 8u);
  EXPECT_EQ(now_placed["runner-1"].size() + now_placed["runner-2"].size(), 10u);
}

TEST(Scheduler, ARunnerThatFallsSilentIsLostAndItsLeftoversAreStoppedWhenItWakes) {
  ClusterOptions options;
  options.gateway = false;
  options.runners = 2;
  options.runner_lost_after_ms = 2000;
  options.reconcile_interval_ms = 300;
  options.orphan_grace_sec = 1;
  options.env = {"ISORUN_HEALTHY_WITHIN_MS=800", "ISORUN_ADMIN_HTTP_ADDR="};
  Cluster cluster(options);
  const std::string tenant = cluster.CreateTenant("silent", 20);
  Client client(cluster.grpc_addr("lifecycle"));
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(client.Create(tenant).ok());
  // The victim is a runner holding sandboxes (warm placement may have put all six on one).
  auto placed = PlacementsByRunner(cluster);
  const std::string victim =
      placed["runner-1"].size() >= placed["runner-2"].size() ? "runner-1" : "runner-2";
  const std::set<std::string> doomed = placed[victim];
  ASSERT_FALSE(doomed.empty());
  const pid_t pid = PidServing(cluster.grpc_addr(victim));
  ASSERT_GT(pid, 0);

  // Frozen: its connection stays open, it just says nothing.
  ASSERT_EQ(::kill(pid, SIGSTOP), 0);
  ASSERT_TRUE(Eventually([&] { return Runners(cluster)[victim].state() == "UNHEALTHY"; },
                         absl::Seconds(3)));
  ASSERT_TRUE(Eventually(
      [&] {
        for (const auto& id : doomed) {
          auto sb = client.Get(tenant, id);
          if (!sb.ok() || sb->state() != v1::LOST || sb->end_reason() != v1::RUNNER_LOST) {
            return false;
          }
        }
        return true;
      },
      absl::Seconds(10)));
  EXPECT_EQ(Runners(cluster)[victim].state(), "LOST");
  ASSERT_TRUE(
      Eventually([&] { return Usage(cluster, tenant) == std::to_string(6 - doomed.size()); },
                 absl::Seconds(5)));
  EXPECT_EQ(PlacementsByRunner(cluster).count(victim), 0u);

  // It wakes up and heartbeats again on the same stream: healthy, and the containers of its lost
  // sandboxes are stopped by the reconciler.
  ASSERT_EQ(::kill(pid, SIGCONT), 0);
  ASSERT_TRUE(
      Eventually([&] { return Runners(cluster)[victim].state() == "HEALTHY"; }, absl::Seconds(5)));
  // A process that was stopped can take a few seconds to answer new connections (the first
  // attempt may time out before its SETTINGS frame): only an answer counts.
  EXPECT_TRUE(Eventually(
      [&] {
        auto ids = TryRunnerSandboxes(cluster, victim);
        return ids.has_value() && ids->empty();
      },
      absl::Seconds(15)));
  EXPECT_EQ(Runners(cluster)[victim].allocated().sandboxes(), 0);
}

TEST(Scheduler, ARestartedSchedulerPlacesCorrectlyAtOnce) {
  ClusterOptions options;
  options.gateway = false;
  options.runners = 2;
  options.runner_slots = 3;
  options.env = {"ISORUN_ADMIN_HTTP_ADDR="};
  Cluster cluster(options);
  const std::string tenant = cluster.CreateTenant("steady", 100);
  Client client(cluster.grpc_addr("lifecycle"));
  for (int i = 0; i < 4; ++i) {
    auto sb = client.Create(tenant);
    ASSERT_TRUE(sb.ok()) << sb.status();
  }
  // Let the image lists reach Postgres (the batched sync runs every second).
  absl::SleepFor(absl::Milliseconds(1500));

  cluster.Kill("scheduler", SIGKILL);
  cluster.Start("scheduler");
  // The runners' streams broke; they reconnect within a heartbeat or two.
  ASSERT_TRUE(Eventually([&] { return AllHealthy(cluster, 2); }, absl::Seconds(5)));
  auto runners = Runners(cluster);
  EXPECT_EQ(
      runners["runner-1"].allocated().sandboxes() + runners["runner-2"].allocated().sandboxes(), 4)
      << "the reservations came back from Postgres";

  // Two slots are left: two creates succeed, warm, and the third is refused for capacity. (The
  // lifecycle's channel to the scheduler may still be in its reconnect backoff: UNAVAILABLE is
  // retried, as a client retries a 503.)
  auto create = [&] {
    absl::StatusOr<v1::Sandbox> sb;
    Eventually(
        [&] {
          sb = client.Create(tenant);
          return sb.status().code() != absl::StatusCode::kUnavailable;
        },
        absl::Seconds(10));
    return sb;
  };
  for (int i = 0; i < 2; ++i) {
    auto sb = create();
    ASSERT_TRUE(sb.ok()) << sb.status();
    EXPECT_EQ(cluster.db().Scalar("SELECT warm FROM scheduler.placements WHERE sandbox_id = '" +
                                  sb->id() + "'"),
              "t")
        << "both runners cached busybox:1.36 before the restart";
  }
  auto refused = create();
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  for (const char* runner : {"runner-1", "runner-2"}) {
    EXPECT_EQ(RunnerSandboxes(cluster, runner).size(), 3u) << runner << " is not exactly full";
    EXPECT_EQ(PlacementsByRunner(cluster)[runner].size(), 3u) << runner;
  }
  EXPECT_EQ(Usage(cluster, tenant), "6");
}

TEST(Scheduler, HotImagesArePreWarmedOntoRunners) {
  ClusterOptions options;
  options.gateway = false;
  options.runners = 3;
  options.runner_slots = 20;
  options.env = {"ISORUN_PREWARM_INTERVAL_MS=300", "ISORUN_PREWARM_MIN_CREATES=3",
                 "ISORUN_PREWARM_FRACTION=1", "ISORUN_PREWARM_MAX_FRACTION=1",
                 "ISORUN_ADMIN_HTTP_ADDR="};
  Cluster cluster(options);
  const std::string tenant = cluster.CreateTenant("hot", 100);
  Client client(cluster.grpc_addr("lifecycle"));
  // The first create pulls the image onto one runner; once its heartbeat says so, the next ones go
  // there too (warm), so the other two runners only get the image by pre-warming.
  ASSERT_TRUE(client.Create(tenant, 600, "team/hot:7").ok());
  ASSERT_TRUE(Eventually(
      [&] {
        for (const auto& [name, r] : Runners(cluster)) {
          if (r.images_size() > 0) return true;
        }
        return false;
      },
      absl::Seconds(5)));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(client.Create(tenant, 600, "team/hot:7").ok());
  EXPECT_EQ(cluster.db().Scalar("SELECT count(DISTINCT runner_id) FROM scheduler.placements"), "1");
  auto cached_everywhere = [&] {
    auto runners = Runners(cluster);
    if (runners.size() != 3) return false;
    for (const auto& [name, r] : runners) {
      bool has = false;
      for (const auto& img : r.images()) {
        for (const auto& ref : img.refs()) has = has || ref == "team/hot:7";
      }
      if (!has) return false;
    }
    return true;
  };
  ASSERT_TRUE(Eventually(cached_everywhere, absl::Seconds(10)))
      << "every runner should hold the hot image (fraction 1)";
  ASSERT_TRUE(Eventually(
      [&] {
        auto m = testing::HttpRequest("GET", cluster.metrics_url("scheduler")).body;
        return Metric(m, "isorun_scheduler_prewarm_pulls_total{outcome=\"ok\"}") == 2 &&
               Metric(m, "isorun_scheduler_runners{state=\"HEALTHY\"}") == 3;
      },
      absl::Seconds(5)))
      << testing::HttpRequest("GET", cluster.metrics_url("scheduler")).body;
  // Creates after the warm-up start warm wherever they land.
  for (int i = 0; i < 6; ++i) {
    auto sb = client.Create(tenant, 600, "team/hot:7");
    ASSERT_TRUE(sb.ok());
    EXPECT_EQ(cluster.db().Scalar("SELECT warm FROM scheduler.placements WHERE sandbox_id = '" +
                                  sb->id() + "'"),
              "t");
  }
}

}  // namespace
}  // namespace isorun
