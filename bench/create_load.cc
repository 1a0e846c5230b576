// Load generator of `./isorun bench create`: a throwaway cluster (real processes, simulated
// runners) on the Postgres named by ISORUN_TEST_DATABASE_URL; N gRPC clients create and destroy
// sandboxes for a fixed time. Prints key=value lines.

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "isorun/v1/sandboxes.grpc.pb.h"
#include "services/kit/flags.h"
#include "services/kit/server.h"
#include "tests/support/cluster.h"

ABSL_FLAG(int, clients, 64, "concurrent gRPC clients");
ABSL_FLAG(int, seconds, 10, "how long to run");
ABSL_FLAG(int, runners, 2, "simulated runners");
ABSL_FLAG(int, channels, 8, "gRPC channels the clients share");

namespace {

// CPU time (user + system, in seconds) used so far by each process whose parent is `parent`,
// summed by command name, plus `parent` itself under `self_name`.
std::map<std::string, double> CpuByCommand(pid_t parent, const std::string& self_name) {
  std::map<std::string, double> out;
  const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return out;
  while (dirent* e = ::readdir(proc)) {
    const pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    std::ifstream in(std::string("/proc/") + e->d_name + "/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t open = stat.find('('), close = stat.rfind(')');
    if (open == std::string::npos || close == std::string::npos) continue;
    std::string name = stat.substr(open + 1, close - open - 1);
    std::istringstream rest(stat.substr(close + 2));
    std::vector<std::string> f{std::istream_iterator<std::string>(rest), {}};
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    if (f.size() < 13) continue;
    const pid_t ppid = static_cast<pid_t>(std::atoi(f[1].c_str()));
    if (pid != parent && ppid != parent) continue;
    if (pid == parent) name = self_name;
    out[name] += (std::atof(f[11].c_str()) + std::atof(f[12].c_str())) / tick;
  }
  ::closedir(proc);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  isorun::ParseFlags(argc, argv, "create/destroy load against a throwaway cluster");
  const int clients = absl::GetFlag(FLAGS_clients);
  const int seconds = absl::GetFlag(FLAGS_seconds);
  isorun::testing::ClusterOptions options;
  options.gateway = false;
  options.runners = absl::GetFlag(FLAGS_runners);
  options.runner_slots = 1'000'000;
  std::unique_ptr<isorun::testing::Cluster> cluster;
  try {
    cluster = std::make_unique<isorun::testing::Cluster>(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cannot start the cluster: %s\n", e.what());
    return 1;
  }
  const std::string tenant = cluster->CreateTenant("bench", 1'000'000);
  std::vector<std::unique_ptr<isorun::v1::Sandboxes::Stub>> stubs;
  for (int i = 0; i < absl::GetFlag(FLAGS_channels); ++i) {
    // Distinct channel arguments give distinct connections.
    grpc::ChannelArguments args;
    args.SetInt("isorun.bench.channel", i);
    stubs.push_back(isorun::v1::Sandboxes::NewStub(grpc::CreateCustomChannel(
        cluster->grpc_addr("lifecycle"), grpc::InsecureChannelCredentials(), args)));
  }

  // Postgres: its postmaster and every process it forked (backends, WAL writer, checkpointer).
  const pid_t postmaster = static_cast<pid_t>(std::atoi(
      cluster->db().Scalar("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
          .c_str()));
  pid_t pg_parent = 0;
  {
    std::ifstream in("/proc/" + std::to_string(postmaster) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::istringstream rest(stat.substr(stat.rfind(')') + 2));
    std::string state;
    rest >> state >> pg_parent;
  }
  auto cpu_now = [&] {
    auto cpu = CpuByCommand(::getpid(), "isorun-create-load");
    for (const auto& [name, seconds] : CpuByCommand(pg_parent, "postgres")) {
      cpu["postgres"] += seconds;
    }
    return cpu;
  };
  const auto cpu_before = cpu_now();

  std::atomic<bool> stop{false};
  std::atomic<long> errors{0};
  std::mutex first_error_mu;
  std::string first_error;
  auto note_error = [&](const grpc::Status& s) {
    ++errors;
    std::lock_guard<std::mutex> lock(first_error_mu);
    if (first_error.empty()) first_error = std::to_string(s.error_code()) + " " + s.error_message();
  };
  std::vector<std::vector<double>> latencies(clients);
  std::vector<std::thread> threads;
  auto start = std::chrono::steady_clock::now();
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto& stub = *stubs[c % stubs.size()];
      while (!stop.load(std::memory_order_relaxed)) {
        isorun::v1::CreateSandboxRequest req;
        req.set_tenant_id(tenant);
        req.set_image("busybox:1.36");
        isorun::v1::Sandbox sb;
        auto t0 = std::chrono::steady_clock::now();
        grpc::ClientContext ctx;
        grpc::Status s = stub.CreateSandbox(&ctx, req, &sb);
        auto t1 = std::chrono::steady_clock::now();
        if (!s.ok()) {
          note_error(s);
          continue;
        }
        latencies[c].push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        isorun::v1::DestroySandboxRequest del;
        del.set_tenant_id(tenant);
        del.set_id(sb.id());
        isorun::v1::DestroySandboxResponse resp;
        grpc::ClientContext ctx2;
        if (grpc::Status d = stub.DestroySandbox(&ctx2, del, &resp); !d.ok()) note_error(d);
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto cpu_after = cpu_now();
  std::vector<double> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  auto pct = [&](double p) {
    return all.empty() ? 0.0 : all[std::min(all.size() - 1, static_cast<size_t>(p * all.size()))];
  };
  std::printf("clients=%d\nseconds=%.1f\ncreates=%zu\nerrors=%ld\n", clients, elapsed, all.size(),
              errors.load());
  if (!first_error.empty()) std::printf("first_error=%s\n", first_error.c_str());
  std::printf("creates_per_sec=%.0f\np50_ms=%.2f\np99_ms=%.2f\n", all.size() / elapsed, pct(0.5),
              pct(0.99));
  // Where the CPU went, per create (and its destroy), by process.
  double cpu_total = 0;
  for (const auto& [name, after] : cpu_after) {
    auto before = cpu_before.find(name);
    double used = after - (before == cpu_before.end() ? 0.0 : before->second);
    cpu_total += used;
    if (!all.empty()) {
      std::printf("cpu_ms_per_create{%s}=%.3f\n", name.c_str(), 1000.0 * used / all.size());
    }
  }
  if (!all.empty()) std::printf("cpu_ms_per_create=%.3f\n", 1000.0 * cpu_total / all.size());
  std::printf("leftover_reservations=%s\nleftover_placements=%s\n",
              cluster->db().Scalar("SELECT count(*) FROM quota.reservations").c_str(),
              cluster->db().Scalar("SELECT count(*) FROM scheduler.placements").c_str());
  std::fflush(stdout);
  return errors.load() == 0 ? 0 : 1;
}
