// Load generator of `./isorun bench create`: a throwaway cluster (real processes, simulated
// runners) on the Postgres named by ISORUN_TEST_DATABASE_URL; N gRPC clients create and destroy
// sandboxes for a fixed time. Prints key=value lines.

#include <algorithm>
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

ABSL_FLAG(int, clients, 16, "concurrent gRPC clients");
ABSL_FLAG(int, seconds, 10, "how long to run");
ABSL_FLAG(int, runners, 2, "simulated runners");
ABSL_FLAG(int, channels, 4, "gRPC channels the clients share");

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
  std::printf("leftover_reservations=%s\nleftover_placements=%s\n",
              cluster->db().Scalar("SELECT count(*) FROM quota.reservations").c_str(),
              cluster->db().Scalar("SELECT count(*) FROM scheduler.placements").c_str());
  std::fflush(stdout);
  return errors.load() == 0 ? 0 : 1;
}
