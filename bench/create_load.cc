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
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "bench/figures.h"
#include "isorun/v1/sandboxes.grpc.pb.h"
#include "services/kit/flags.h"
#include "services/kit/server.h"
#include "tests/support/cluster.h"

ABSL_FLAG(int, clients, 128, "concurrent gRPC clients");
ABSL_FLAG(int, seconds, 10, "how long to run");
ABSL_FLAG(int, runners, 2, "simulated runners");
ABSL_FLAG(int, channels, 8, "gRPC channels the clients share");
ABSL_FLAG(std::string, tls_dir, "",
          "mutual TLS between every process: a folder with ca.crt and <identity>.crt/.key "
          "(./isorun bench create --tls makes one with openssl); this program calls the lifecycle "
          "as the gateway and checks readiness as admin");
ABSL_DECLARE_FLAG(std::string, tls_cert_file);
ABSL_DECLARE_FLAG(std::string, tls_key_file);
ABSL_DECLARE_FLAG(std::string, tls_ca_file);

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
  // The services' own defaults for their background loops, not the quick ones tests use.
  options.reaper_interval_ms = 500;
  options.reconcile_interval_ms = 5000;
  const std::string tls_dir = absl::GetFlag(FLAGS_tls_dir);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!tls_dir.empty()) {
    options.tls_dir = tls_dir;
    absl::SetFlag(&FLAGS_tls_cert_file, tls_dir + "/admin.crt");
    absl::SetFlag(&FLAGS_tls_key_file, tls_dir + "/admin.key");
    absl::SetFlag(&FLAGS_tls_ca_file, tls_dir + "/ca.crt");
    auto read = [](const std::string& path) {
      std::ifstream in(path);
      return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    };
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = read(tls_dir + "/ca.crt");
    ssl.pem_private_key = read(tls_dir + "/gateway.key");
    ssl.pem_cert_chain = read(tls_dir + "/gateway.crt");
    if (ssl.pem_root_certs.empty() || ssl.pem_private_key.empty() || ssl.pem_cert_chain.empty()) {
      std::fprintf(stderr, "cannot read ca.crt, gateway.crt and gateway.key in %s\n",
                   tls_dir.c_str());
      return 2;
    }
    credentials = grpc::SslCredentials(ssl);
  }
  std::printf("tls=%s\n", tls_dir.empty() ? "off" : "on");
  auto cluster = isorun::testing::Cluster::StartOrExplain(options);
  if (!cluster) return 1;
  const std::string tenant = cluster->CreateTenant("bench", 1'000'000);
  std::vector<std::unique_ptr<isorun::v1::Sandboxes::Stub>> stubs;
  for (int i = 0; i < absl::GetFlag(FLAGS_channels); ++i) {
    // Distinct channel arguments give distinct connections.
    grpc::ChannelArguments args;
    args.SetInt("isorun.bench.channel", i);
    stubs.push_back(isorun::v1::Sandboxes::NewStub(grpc::CreateCustomChannel(
        cluster->grpc_addr("lifecycle"), credentials, args)));
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
  // Each client is a chain of calls on gRPC's callback API: create, then destroy, then the next
  // create, until told to stop. No thread per client (like pgbench -j), so the load generator
  // takes little of the CPU the control plane shares with it.
  struct CreateCall {
    grpc::ClientContext ctx;
    isorun::v1::CreateSandboxRequest req;
    isorun::v1::Sandbox sandbox;
    std::chrono::steady_clock::time_point t0;
  };
  struct DestroyCall {
    grpc::ClientContext ctx;
    isorun::v1::DestroySandboxRequest req;
    isorun::v1::DestroySandboxResponse resp;
  };
  std::vector<std::vector<double>> latencies(clients);  // each written by its own chain only
  std::mutex done_mu;
  std::condition_variable done_cv;
  int running = clients;
  std::function<void(int)> next = [&](int c) {
    if (stop.load()) {
      std::lock_guard<std::mutex> lock(done_mu);
      if (--running == 0) done_cv.notify_all();
      return;
    }
    auto* stub = stubs[c % stubs.size()].get();
    auto call = std::make_shared<CreateCall>();
    call->req.set_tenant_id(tenant);
    call->req.set_image("busybox:1.36");
    call->t0 = std::chrono::steady_clock::now();
    stub->async()->CreateSandbox(
        &call->ctx, &call->req, &call->sandbox, [&, c, stub, call](grpc::Status s) {
          if (!s.ok()) {
            note_error(s);
            next(c);
            return;
          }
          latencies[c].push_back(std::chrono::duration<double, std::milli>(
                                     std::chrono::steady_clock::now() - call->t0)
                                     .count());
          auto del = std::make_shared<DestroyCall>();
          del->req.set_tenant_id(tenant);
          del->req.set_id(call->sandbox.id());
          stub->async()->DestroySandbox(&del->ctx, &del->req, &del->resp,
                                        [&, c, del](grpc::Status d) {
                                          if (!d.ok()) note_error(d);
                                          next(c);
                                        });
        });
  };
  auto start = std::chrono::steady_clock::now();
  for (int c = 0; c < clients; ++c) next(c);
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
  stop = true;
  {
    std::unique_lock<std::mutex> lock(done_mu);
    done_cv.wait(lock, [&] { return running == 0; });
  }
  double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto cpu_after = cpu_now();
  std::vector<double> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  isorun::bench::Figures f;
  f.Count("clients", clients);
  f.Value("seconds", elapsed, 1);
  f.Count("creates", static_cast<long long>(all.size()));
  f.Error(errors.load());
  if (!first_error.empty()) f.Text("first_error", first_error);
  f.Positive("creates_per_sec", static_cast<double>(all.size()) / elapsed, 0);
  f.Percentile("p50_ms", all, 0.5, 2);
  f.Percentile("p99_ms", all, 0.99, 2);
  // Where the CPU went, per create (and its destroy), by process.
  double cpu_total = 0;
  const double n = static_cast<double>(all.size());
  for (const auto& [name, after] : cpu_after) {
    auto before = cpu_before.find(name);
    double used = after - (before == cpu_before.end() ? 0.0 : before->second);
    cpu_total += used;
    f.Ratio("cpu_ms_per_create{" + name + "}", 1000.0 * used, n, 3);
  }
  f.Ratio("cpu_ms_per_create", 1000.0 * cpu_total, n, 3);
  f.Leftover("leftover_reservations",
             cluster->db().Scalar("SELECT count(*) FROM quota.reservations"));
  f.Leftover("leftover_placements",
             cluster->db().Scalar("SELECT count(*) FROM scheduler.placements"));
  return f.Finish();
}
