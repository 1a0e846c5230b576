// isorun-scheduler-bench: placement decisions per second on a simulated fleet (sim_fleet.h) with
// Zipf-popular images, for `./isorun bench scheduler`.
//
// 1. Pure policy, one thread: PlacementPolicy::Choose plus what a placement does to the fleet
//    state (reserve; a cold start pulls the image, evicting LRU; the oldest sandbox ends once the
//    fleet holds --utilization of its slots). Prints placements_per_sec (the whole loop, per second
//    of the thread's CPU time: the machine may be shared; placements_per_wall_sec too), p50_us
//    and p99_us (one decision with its effects), warm_ratio and oracle_warm_ratio (the share
//    of requests some runner that could take them had the image cached: a full scan, outside the
//    timings).
// 2. Through the gRPC service (in process, loopback, --grpc_clients threads with blocking stubs)
//    on the same fleet with an in-memory store: grpc_placements_per_sec, grpc_p50_us, grpc_p99_us.
//    Then heartbeats: fleet_heartbeats_per_sec (in process) and grpc_heartbeats_per_sec (that
//    many runners each on its own HeartbeatStream, lists unchanged, as in steady state).
// 3. With ISORUN_TEST_DATABASE_URL set: the same through gRPC with the Postgres store (a fresh
//    database; the fleet is written in bulk and loaded as a restarted scheduler would):
//    grpc_pg_load_ms, grpc_pg_placements_per_sec, grpc_pg_p50_us, grpc_pg_p99_us.
// Sandboxes placed through gRPC are released in process (not timed) to keep the load steady.

#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "bench/figures.h"
#include "scheduler/fleet.h"
#include "scheduler/scheduler_service.h"
#include "scheduler/scheduler_store.h"
#include "scheduler/sim_fleet.h"
#include "services/kit/flags.h"
#include "services/kit/server.h"
#include "tests/support/test_database.h"

ABSL_FLAG(int, runners, 10000, "simulated runners");
ABSL_FLAG(int, images, 500, "distinct images");
ABSL_FLAG(double, zipf_s, 1.1, "Zipf exponent of image popularity");
ABSL_FLAG(double, utilization, 0.6, "share of all slots in use at steady state");
ABSL_FLAG(double, cache_gb, 20, "image cache budget of every runner, in GiB");
ABSL_FLAG(int, regions, 1, "regions the runners are spread over (requests name one)");
ABSL_FLAG(int, decisions, 2000000, "timed decisions of the pure-policy throughput pass");
ABSL_FLAG(int, quality_decisions, 300000, "decisions of the latency and warm-ratio pass");
ABSL_FLAG(int, warmup, 300000, "decisions before measuring (fills the fleet to its load)");
ABSL_FLAG(double, grpc_seconds, 5, "duration of each gRPC pass; 0: skip them");
ABSL_FLAG(int, grpc_clients, 8, "client threads of the gRPC passes");
ABSL_FLAG(int, heartbeat_streams, 1000,
          "runners heartbeating on their own gRPC stream in the heartbeat pass");
ABSL_FLAG(uint64_t, seed, 1, "random seed");
ABSL_FLAG(double, warm_skew, isorun::scheduler::PolicyOptions{}.warm_skew,
          "policy knob (see placement.h)");
ABSL_FLAG(double, min_spread_factor, isorun::scheduler::PolicyOptions{}.min_spread_factor,
          "policy knob");
ABSL_FLAG(double, min_size_factor, isorun::scheduler::PolicyOptions{}.min_size_factor,
          "policy knob");
ABSL_FLAG(int64_t, large_image_mb, isorun::scheduler::PolicyOptions{}.large_image_bytes >> 20,
          "policy knob");
ABSL_FLAG(int, cold_candidates, isorun::scheduler::PolicyOptions{}.cold_candidates, "policy knob");
ABSL_FLAG(int, warm_candidates, isorun::scheduler::PolicyOptions{}.warm_candidates, "policy knob");

namespace {

using isorun::scheduler::Fleet;
using isorun::scheduler::PlacementPolicy;
using isorun::scheduler::PlacementRequest;
using isorun::scheduler::SimFleet;
using isorun::scheduler::SimFleetOptions;
using Clock = std::chrono::steady_clock;

// CPU time of the calling thread: on a shared machine, "per second on one core" is per second of
// this thread's CPU, whatever else runs.
double ThreadCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Every figure goes through here: one not measured fails the run instead of reading 0.
isorun::bench::Figures figures;

isorun::scheduler::PolicyOptions Policy() {
  isorun::scheduler::PolicyOptions p;
  p.warm_skew = absl::GetFlag(FLAGS_warm_skew);
  p.min_spread_factor = absl::GetFlag(FLAGS_min_spread_factor);
  p.min_size_factor = absl::GetFlag(FLAGS_min_size_factor);
  p.large_image_bytes = absl::GetFlag(FLAGS_large_image_mb) << 20;
  p.cold_candidates = absl::GetFlag(FLAGS_cold_candidates);
  p.warm_candidates = absl::GetFlag(FLAGS_warm_candidates);
  return p;
}

SimFleetOptions SimOptions() {
  SimFleetOptions o;
  o.runners = absl::GetFlag(FLAGS_runners);
  o.images = absl::GetFlag(FLAGS_images);
  o.zipf_s = absl::GetFlag(FLAGS_zipf_s);
  o.utilization = absl::GetFlag(FLAGS_utilization);
  o.cache_bytes = static_cast<int64_t>(absl::GetFlag(FLAGS_cache_gb) * (1 << 30));
  o.regions.clear();
  for (int i = 0; i < std::max(1, absl::GetFlag(FLAGS_regions)); ++i) {
    o.regions.push_back(i == 0 ? "local" : absl::StrCat("region-", i));
  }
  return o;
}

void PurePolicy(absl::Time now) {
  std::seed_seq seed{absl::GetFlag(FLAGS_seed)};
  absl::BitGen rng(seed);
  auto t0 = Clock::now();
  SimFleet sim(SimOptions(), now, rng);
  figures.Positive("fleet_build_ms",
                   std::chrono::duration<double, std::milli>(Clock::now() - t0).count(), 0);
  PlacementPolicy policy(Policy());
  int64_t refused = 0;
  auto step = [&](const PlacementRequest& req) {
    auto d = policy.Choose(sim.state(), req, sim.now(), rng);
    if (d) {
      sim.Apply(req, *d);
    } else {
      ++refused;
    }
    return d;
  };
  for (int i = 0; i < absl::GetFlag(FLAGS_warmup); ++i) step(sim.NextRequest(rng));

  // Requests are drawn ahead so that the timed loop measures placement, not the workload.
  const int n = absl::GetFlag(FLAGS_decisions);
  std::vector<PlacementRequest> reqs;
  reqs.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) reqs.push_back(sim.NextRequest(rng));
  t0 = Clock::now();
  const double cpu0 = ThreadCpuSeconds();
  for (const auto& req : reqs) step(req);
  const double cpu = ThreadCpuSeconds() - cpu0;
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  figures.Ratio("placements_per_sec", static_cast<double>(n), cpu, 0);
  figures.Ratio("placements_per_wall_sec", static_cast<double>(n), secs, 0);

  const int q = absl::GetFlag(FLAGS_quality_decisions);
  std::vector<double> latency;
  latency.reserve(static_cast<size_t>(q));
  int64_t placed = 0, warm_q = 0, oracle = 0;
  for (int i = 0; i < q; ++i) {
    PlacementRequest req = sim.NextRequest(rng);
    oracle += policy.WarmFeasible(sim.state(), req, sim.now()) ? 1 : 0;
    auto start = Clock::now();
    auto d = policy.Choose(sim.state(), req, sim.now(), rng);
    if (d) sim.Apply(req, *d);
    latency.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    if (!d) {
      ++refused;
      continue;
    }
    ++placed;
    warm_q += d->warm ? 1 : 0;
  }
  figures.Percentile("p50_us", latency, 0.50, 2);
  figures.Percentile("p99_us", latency, 0.99, 2);
  figures.Ratio("warm_ratio", static_cast<double>(warm_q), static_cast<double>(q), 4);
  figures.Ratio("oracle_warm_ratio", static_cast<double>(oracle), static_cast<double>(q), 4);
  figures.Count("active_sandboxes", static_cast<long long>(sim.active()));
  figures.Count("refused", static_cast<long long>(refused));
}

// Drives Place over gRPC from several threads for a while; returns false when nothing worked.
void GrpcPass(const std::string& prefix, Fleet& fleet, const SimFleet& shape) {
  prometheus::Registry registry;
  isorun::scheduler::SchedulerService service(fleet, registry, 1000);
  auto server = isorun::StartGrpcServer("127.0.0.1:0", {&service});
  if (!server.ok()) {
    std::fprintf(stderr, "cannot start the gRPC server: %s\n",
                 std::string(server.status().message()).c_str());
    figures.Missing(prefix + "placements_per_sec", "no gRPC server");
    return;
  }
  const std::string addr = "127.0.0.1:" + std::to_string(server->port);
  const int clients = std::max(1, absl::GetFlag(FLAGS_grpc_clients));
  int64_t slots = 0;
  for (const auto& r : fleet.List()) slots += r.view.capacity.sandboxes;
  const int64_t keep_per_client =
      static_cast<int64_t>(static_cast<double>(slots) * absl::GetFlag(FLAGS_utilization) / clients);
  const auto duration = std::chrono::duration<double>(absl::GetFlag(FLAGS_grpc_seconds));
  // A refusal (no runner has room) is the policy's answer; any other failure is an error.
  std::atomic<int64_t> placed{0}, refused{0}, failed{0};
  std::vector<std::vector<double>> latencies(static_cast<size_t>(clients));
  std::vector<std::thread> threads;
  const auto start = Clock::now();
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      std::seed_seq seed{absl::GetFlag(FLAGS_seed) + 100 + static_cast<uint64_t>(c)};
      absl::BitGen rng(seed);
      isorun::scheduler::ZipfSampler zipf(shape.options().images, shape.options().zipf_s);
      auto stub = isorun::v1::Scheduler::NewStub(isorun::MakeChannel(addr));
      std::deque<std::string> live;
      auto& lat = latencies[static_cast<size_t>(c)];
      for (int64_t i = 0; Clock::now() - start < duration; ++i) {
        isorun::v1::PlaceRequest req;
        req.set_sandbox_id(absl::StrCat(prefix, "c", c, "-", i));
        req.set_image(SimFleet::ImageRef(zipf.Sample(rng)));
        req.set_region(
            shape.options().regions[static_cast<size_t>(i) % shape.options().regions.size()]);
        req.mutable_request()->set_cpu_millis(250 << absl::Uniform<int>(rng, 0, 4));
        req.mutable_request()->set_memory_mb(256 << absl::Uniform<int>(rng, 0, 4));
        grpc::ClientContext ctx;
        isorun::v1::Placement resp;
        auto t = Clock::now();
        grpc::Status s = stub->Place(&ctx, req, &resp);
        if (!s.ok()) {
          ++(s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ? refused : failed);
          continue;
        }
        lat.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t).count());
        ++placed;
        live.push_back(req.sandbox_id());
        while (static_cast<int64_t>(live.size()) > keep_per_client) {
          (void)fleet.Release(live.front());
          live.pop_front();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  figures.Positive(prefix + "placements_per_sec", static_cast<double>(placed) / secs, 0);
  figures.Percentile(prefix + "p50_us", all, 0.50, 0);
  figures.Percentile(prefix + "p99_us", all, 0.99, 0);
  figures.Count(prefix + "refused", refused.load());
  figures.Count(prefix + "failed", failed.load());
  figures.Error(failed.load());
  server->server->Shutdown(std::chrono::system_clock::now());
}

std::vector<isorun::scheduler::RunnerImages> ImagesOf(SimFleet& sim) {
  std::vector<isorun::scheduler::RunnerImages> out;
  for (isorun::scheduler::RunnerIndex r = 0; r < sim.state().size(); ++r) {
    const auto& rec = sim.state().record(r);
    out.push_back({rec.id, rec.images, rec.image_cache_used_bytes});
  }
  return out;
}

// Heartbeats: in process (Fleet::Heartbeat for every runner, lists unchanged), then over gRPC
// with --heartbeat_streams runners each on its own HeartbeatStream, written as fast as they go.
void Heartbeats(Fleet& fleet) {
  std::vector<std::string> ids;
  for (const auto& r : fleet.List()) ids.push_back(r.view.id);
  auto t0 = Clock::now();
  const int rounds = 20;
  for (int i = 0; i < rounds; ++i) {
    for (const auto& id : ids) {
      isorun::scheduler::HeartbeatReport hb;
      hb.runner_id = id;
      hb.allocated.sandboxes = 3;
      (void)fleet.Heartbeat(std::move(hb));
    }
  }
  figures.Positive("fleet_heartbeats_per_sec",
                   static_cast<double>(rounds * ids.size()) /
                       std::chrono::duration<double>(Clock::now() - t0).count(),
                   0);

  prometheus::Registry registry;
  isorun::scheduler::SchedulerService service(fleet, registry, 1000);
  auto server = isorun::StartGrpcServer("127.0.0.1:0", {&service});
  if (!server.ok()) return figures.Missing("grpc_heartbeats_per_sec", "no gRPC server");
  const std::string addr = "127.0.0.1:" + std::to_string(server->port);
  const int streams =
      std::min<int>(absl::GetFlag(FLAGS_heartbeat_streams), static_cast<int>(ids.size()));
  const int threads_n = 4;
  const auto duration = std::chrono::duration<double>(absl::GetFlag(FLAGS_grpc_seconds));
  std::atomic<int64_t> sent{0};
  std::vector<std::thread> threads;
  auto channel = isorun::MakeChannel(addr);
  auto stub = isorun::v1::Scheduler::NewStub(channel);
  const auto start = Clock::now();
  for (int t = 0; t < threads_n; ++t) {
    threads.emplace_back([&, t] {
      struct Stream {
        grpc::ClientContext ctx;
        isorun::v1::HeartbeatResponse resp;
        std::unique_ptr<grpc::ClientWriter<isorun::v1::HeartbeatRequest>> writer;
        std::string id;
      };
      std::vector<std::unique_ptr<Stream>> mine;
      for (int s = t; s < streams; s += threads_n) {
        auto st = std::make_unique<Stream>();
        st->id = ids[static_cast<size_t>(s)];
        st->writer = stub->HeartbeatStream(&st->ctx, &st->resp);
        mine.push_back(std::move(st));
      }
      int64_t n = 0;
      while (Clock::now() - start < duration) {
        for (auto& st : mine) {
          isorun::v1::HeartbeatRequest hb;
          hb.set_runner_id(st->id);
          hb.mutable_allocated()->set_sandboxes(3);
          hb.set_images_unchanged(true);
          hb.set_sandboxes_unchanged(true);
          if (st->writer->Write(hb)) ++n;
        }
      }
      for (auto& st : mine) {
        st->writer->WritesDone();
        (void)st->writer->Finish();
      }
      sent += n;
    });
  }
  for (auto& t : threads) t.join();
  figures.Count("grpc_heartbeat_streams", streams);
  figures.Positive(
      "grpc_heartbeats_per_sec",
      static_cast<double>(sent) / std::chrono::duration<double>(Clock::now() - start).count(), 0);
  server->server->Shutdown(std::chrono::system_clock::now());
}

void GrpcMemory(absl::Time now) {
  std::seed_seq seed{absl::GetFlag(FLAGS_seed)};
  absl::BitGen rng(seed);
  SimFleet sim(SimOptions(), now, rng);
  isorun::scheduler::MemoryFleetStore store;
  isorun::scheduler::FleetOptions options;
  options.policy = Policy();
  Fleet fleet(
      store, [] { return absl::Now(); }, options);
  for (isorun::scheduler::RunnerIndex r = 0; r < sim.state().size(); ++r) {
    const auto& rec = sim.state().record(r);
    isorun::scheduler::RunnerView v;
    v.name = rec.name;
    v.address = rec.address;
    v.region = rec.region;
    v.capacity = sim.state().slot(r).capacity;
    v.images = rec.images;
    v.image_cache_bytes = rec.image_cache_bytes;
    v.image_cache_used_bytes = rec.image_cache_used_bytes;
    (void)fleet.Register(v);
  }
  GrpcPass("grpc_", fleet, sim);
  std::fflush(stdout);
  Heartbeats(fleet);
}

void GrpcPostgres(absl::Time now) {
  isorun::testing::TestDatabase db;
  std::seed_seq seed{absl::GetFlag(FLAGS_seed)};
  absl::BitGen rng(seed);
  SimFleet sim(SimOptions(), now, rng);
  // The fleet as a previous scheduler left it: runner rows and their images.
  const auto& o = sim.options();
  db.Scalar(absl::StrCat(
      "INSERT INTO scheduler.runners (id, name, address, region, cpu_millis, memory_mb, "
      "max_sandboxes, image_cache_bytes) SELECT 'sim-' || i, 'sim-' || i, '10.0.0.1:7101', ",
      o.regions.size() == 1 ? "'local'"
                            : "CASE WHEN i % " + std::to_string(o.regions.size()) +
                                  " = 0 THEN 'local' ELSE 'region-' || (i % " +
                                  std::to_string(o.regions.size()) + ") END",
      ", ", o.runner_capacity.cpu_millis, ", ", o.runner_capacity.memory_mb, ", ",
      o.runner_capacity.sandboxes, ", ", o.cache_bytes, " FROM generate_series(0, ", o.runners - 1,
      ") i"));
  isorun::PgPool pool(db.url(), absl::GetFlag(FLAGS_grpc_clients) + 2);
  isorun::scheduler::SchedulerStore store(pool);
  if (absl::Status s = store.ReplaceImages(ImagesOf(sim)); !s.ok()) {
    std::fprintf(stderr, "cannot write images: %s\n", std::string(s.message()).c_str());
    return figures.Missing("grpc_pg_placements_per_sec", "the images could not be written");
  }
  isorun::scheduler::FleetOptions options;
  options.policy = Policy();
  Fleet fleet(
      store, [] { return absl::Now(); }, options);
  auto t0 = Clock::now();
  if (absl::Status s = fleet.Load(); !s.ok()) {
    std::fprintf(stderr, "cannot load: %s\n", std::string(s.message()).c_str());
    return figures.Missing("grpc_pg_placements_per_sec", "the fleet could not be loaded");
  }
  figures.Positive("grpc_pg_load_ms",
                   std::chrono::duration<double, std::milli>(Clock::now() - t0).count(), 0);
  // Every runner heartbeats once (a restarted scheduler's first second).
  for (const auto& r : fleet.List()) (void)fleet.Heartbeat({r.view.id});
  GrpcPass("grpc_pg_", fleet, sim);
}

}  // namespace

int main(int argc, char** argv) {
  isorun::ParseFlags(argc, argv, "isorun-scheduler-bench: placement decisions per second");
  const absl::Time now = absl::Now();
  std::printf("runners=%d\nimages=%d\nzipf_s=%.2f\nutilization=%.2f\n",
              absl::GetFlag(FLAGS_runners), absl::GetFlag(FLAGS_images),
              absl::GetFlag(FLAGS_zipf_s), absl::GetFlag(FLAGS_utilization));
  std::fflush(stdout);
  PurePolicy(now);
  std::fflush(stdout);
  if (absl::GetFlag(FLAGS_grpc_seconds) > 0) {
    GrpcMemory(now);
    std::fflush(stdout);
    const char* url = std::getenv("ISORUN_TEST_DATABASE_URL");
    if (url != nullptr && *url != '\0') GrpcPostgres(now);
  }
  return figures.Finish();
}
