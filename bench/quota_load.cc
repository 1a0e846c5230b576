// Load generator of `./isorun bench quota`: admissions through the quota service's gRPC API on a
// throwaway cluster, for one hot tenant (every request on one usage row) and spread over 1,000
// tenants; and the latency of the rate check the gateway makes on every request.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "bench/figures.h"
#include "isorun/v1/quotas.grpc.pb.h"
#include "services/kit/flags.h"
#include "services/kit/server.h"
#include "tests/support/cluster.h"

ABSL_FLAG(int, clients, 16, "concurrent gRPC clients");
ABSL_FLAG(int, seconds, 5, "how long each phase runs");
ABSL_FLAG(int, tenants, 1000, "tenants of the spread phase");

namespace {

using Clock = std::chrono::steady_clock;

struct Result {
  double per_sec = 0;
  std::vector<double> latencies_ms;
  long errors = 0;
};

// Each client admits then releases a sandbox of its own, for `seconds`.
Result Run(isorun::v1::Quotas::Stub& stub, const std::vector<std::string>& tenants, int clients,
           int seconds) {
  std::atomic<bool> stop{false};
  std::atomic<long> errors{0};
  std::vector<std::vector<double>> lat(clients);
  std::vector<std::thread> threads;
  auto start = Clock::now();
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      long n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        isorun::v1::AdmitRequest req;
        req.set_tenant_id(tenants[(c + n * clients) % tenants.size()]);
        req.set_sandbox_id("sbx_bench_" + std::to_string(c) + "_" + std::to_string(n++));
        isorun::v1::AdmitResponse resp;
        grpc::ClientContext ctx;
        auto t0 = Clock::now();
        grpc::Status s = stub.Admit(&ctx, req, &resp);
        // A failed admission is an error, not a fast admission.
        if (s.ok()) {
          lat[c].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        } else {
          ++errors;
        }
        isorun::v1::ReleaseRequest rel;
        rel.set_tenant_id(req.tenant_id());
        rel.set_sandbox_id(req.sandbox_id());
        isorun::v1::ReleaseResponse rr;
        grpc::ClientContext ctx2;
        if (!stub.Release(&ctx2, rel, &rr).ok()) ++errors;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  Result r;
  for (auto& l : lat) r.latencies_ms.insert(r.latencies_ms.end(), l.begin(), l.end());
  r.errors = errors;
  r.per_sec = static_cast<double>(r.latencies_ms.size()) / elapsed;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  isorun::ParseFlags(argc, argv, "admission and rate-check load against a throwaway cluster");
  isorun::testing::ClusterOptions options;
  options.gateway = false;
  options.runners = 0;
  auto cluster = isorun::testing::Cluster::StartOrExplain(options);
  if (!cluster) return 1;
  const int clients = absl::GetFlag(FLAGS_clients);
  const int seconds = absl::GetFlag(FLAGS_seconds);
  std::vector<std::string> spread;
  cluster->db().Scalar(
      "WITH t AS (INSERT INTO accounts.tenants (name) SELECT 'spread' || g FROM generate_series(1, " +
      std::to_string(absl::GetFlag(FLAGS_tenants)) +
      ") g RETURNING id), l AS (INSERT INTO quota.limits (tenant_id, max_concurrent, "
      "requests_per_sec) SELECT id, 1000000, 1000000 FROM t RETURNING tenant_id) "
      "INSERT INTO quota.usage (tenant_id) SELECT tenant_id FROM l");
  std::string ids = cluster->db().Scalar(
      "SELECT string_agg(tenant_id::text, ',') FROM quota.limits");
  for (size_t pos = 0; pos < ids.size();) {
    size_t comma = ids.find(',', pos);
    if (comma == std::string::npos) comma = ids.size();
    spread.push_back(ids.substr(pos, comma - pos));
    pos = comma + 1;
  }
  std::vector<std::string> hot = {spread.front()};
  auto stub = isorun::v1::Quotas::NewStub(isorun::MakeChannel(cluster->grpc_addr("quota")));

  Result h = Run(*stub, hot, clients, seconds);
  Result s = Run(*stub, spread, clients, seconds);

  // The gateway's added cost: one CheckRate round trip per request (sequential, warm).
  std::vector<double> rate;
  long rate_errors = 0;
  for (int i = 0; i < 3000; ++i) {
    isorun::v1::CheckRateRequest req;
    req.set_tenant_id(hot[0]);
    req.set_key_id("benchkey");
    req.set_kind(isorun::v1::REQUEST);
    isorun::v1::CheckRateResponse resp;
    grpc::ClientContext ctx;
    auto t0 = Clock::now();
    const grpc::Status st = stub->CheckRate(&ctx, req, &resp);
    if (!st.ok()) {
      ++rate_errors;
      continue;
    }
    if (i >= 100) rate.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  isorun::bench::Figures f;
  f.Count("clients", clients);
  f.Count("seconds_per_phase", seconds);
  f.Positive("admits_per_sec_hot", h.per_sec, 0);
  f.Percentile("p50_ms_hot", h.latencies_ms, 0.5, 2);
  f.Percentile("p99_ms_hot", h.latencies_ms, 0.99, 2);
  f.Count("errors_hot", h.errors);
  f.Positive("admits_per_sec_spread", s.per_sec, 0);
  f.Percentile("p99_ms_spread", s.latencies_ms, 0.99, 2);
  f.Count("errors_spread", s.errors);
  f.Percentile("ratecheck_p50_us", rate, 0.5, 0);
  f.Percentile("ratecheck_p99_us", rate, 0.99, 0);
  f.Count("errors_ratecheck", rate_errors);
  f.Error(h.errors + s.errors + rate_errors);
  f.Leftover("leftover_reservations",
             cluster->db().Scalar("SELECT count(*) FROM quota.reservations"));
  return f.Finish();
}
