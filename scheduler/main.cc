// isorun-scheduler: the runner registry, placement and pre-warming (gRPC isorun.v1.Scheduler), the
// capacity view on an admin-only HTTP listener, and /metrics.

#include <atomic>
#include <cstdlib>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "scheduler/admin_http.h"
#include "scheduler/capacity_json.h"
#include "scheduler/capacity_history_store.h"
#include "scheduler/fleet.h"
#include "scheduler/fleet_metrics.h"
#include "scheduler/leader.h"
#include "scheduler/prewarmer.h"
#include "scheduler/scheduler_service.h"
#include "scheduler/scheduler_store.h"
#include "services/kit/flags.h"
#include "services/kit/json.h"
#include "services/kit/log.h"
#include "services/kit/migrate.h"
#include "services/kit/pg.h"
#include "services/kit/server.h"

ABSL_FLAG(std::string, grpc_addr, "127.0.0.1:7002", "host:port of the gRPC listener");
ABSL_FLAG(std::string, metrics_addr, "127.0.0.1:9102", "host:port of /metrics; empty: none");
ABSL_FLAG(std::string, admin_http_addr, "127.0.0.1:9202",
          "host:port of the admin HTTP listener (GET /capacity: per-runner and fleet capacity as "
          "JSON). It has no authentication: keep it on loopback or an admin-only network. Empty: "
          "none");
ABSL_FLAG(std::string, database_url, "", "PostgreSQL URL");
ABSL_FLAG(int, db_connections, 16, "size of the Postgres connection pool");
ABSL_FLAG(int, db_timeout_ms, 2000,
          "deadline of one database call (waiting for a pooled connection, connecting, its "
          "statements and commit); past it, and while the database is unreachable, calls fail "
          "with UNAVAILABLE (HTTP 503) instead of waiting");
ABSL_FLAG(int, heartbeat_interval_ms, 1000, "how often runners are told to heartbeat");
ABSL_FLAG(int, healthy_within_ms, 5000,
          "a runner whose last heartbeat is older than this is UNHEALTHY and gets no placements");
ABSL_FLAG(int, lost_after_ms, 60000,
          "a runner silent for this long is LOST: the lifecycle marks its sandboxes LOST");
ABSL_FLAG(int, sync_interval_ms, 1000,
          "how often heartbeat news is written to Postgres in one batch (last-seen, changed image "
          "lists) and draining marks are read from it");
ABSL_FLAG(int, last_seen_every_ms, 5000,
          "the stored last heartbeat of a runner is refreshed at most this often (a coarse "
          "last-seen: isorunctl and a restarted scheduler read it)");
ABSL_FLAG(int, unplaced_grace_ms, 5000,
          "a sandbox a runner reports without a placement counts against the runner after this");
ABSL_FLAG(std::string, placement_fit, "least",
          "resource fit: least (least-allocated: spread load) or most (most-allocated: pack)");
ABSL_FLAG(double, warm_skew, 0.4,
          "how much fuller (share of a runner, 0..1) a warm runner may be than the best cold "
          "candidate and still win, for a large image many runners hold");
ABSL_FLAG(int, large_image_mb, 512,
          "images this large or larger get the full warm bonus; smaller ones less, down to "
          "--min_size_factor");
ABSL_FLAG(double, min_size_factor, 0.5, "the warm bonus factor of the smallest images");
ABSL_FLAG(double, min_spread_factor, 0.5,
          "the least warm bonus factor of an image cached on fewer runners than its share of "
          "recent creates would keep busy (so one warm runner is not swamped)");
ABSL_FLAG(int, spread_window, 10000, "placements remembered to measure each image's demand share");
ABSL_FLAG(int, cold_candidates, 8, "runners sampled per placement (power of d choices)");
ABSL_FLAG(int, warm_candidates, 16,
          "runners sampled among those holding the image, when more than --scan_whole_below do");
ABSL_FLAG(int, scan_whole_below, 32, "regions and holder lists this small are scanned whole");
ABSL_FLAG(int, top_k, 3, "a placement picks at random among this many near-best runners");
ABSL_FLAG(int, capacity_history_interval_sec, 10,
          "how often a fleet snapshot goes into the capacity history; 0: none");
ABSL_FLAG(int, capacity_history_raw_hours, 24,
          "snapshots older than this are folded into 5-minute averages");
ABSL_FLAG(int, capacity_history_retention_days, 30, "5-minute averages older than this go");
ABSL_FLAG(bool, prewarm, true, "pull hot images onto runners ahead of demand");
ABSL_FLAG(int, prewarm_interval_ms, 5000, "how often a pre-warm round runs");
ABSL_FLAG(int, prewarm_window_sec, 60, "the sliding window of create demand per image");
ABSL_FLAG(int, prewarm_min_creates, 5, "creates within the window that make an image hot");
ABSL_FLAG(int, prewarm_max_images, 20, "hot images considered per region");
ABSL_FLAG(double, prewarm_fraction, 0.1,
          "share of a region's runners the hottest image should be cached on (others in "
          "proportion to their creates)");
ABSL_FLAG(double, prewarm_max_fraction, 0.5, "the most any image is pre-warmed onto");
ABSL_FLAG(int, prewarm_min_holders, 2, "a hot image is pre-warmed onto at least this many runners");
ABSL_FLAG(double, prewarm_target_cold_rate, 0.05,
          "above this cold-start rate, and rising, a region's pre-warm fraction doubles");
ABSL_FLAG(double, prewarm_max_boost, 8, "the most the pre-warm fraction is multiplied by");
ABSL_FLAG(int, prewarm_max_pulls_per_round, 64, "pulls started per round, fleet-wide");
ABSL_FLAG(int, prewarm_max_pulls_per_runner, 1, "pre-warm pulls in flight per runner");
ABSL_FLAG(int, prewarm_default_cache_mb, 10240,
          "image cache budget assumed for runners that report none");
ABSL_FLAG(int, prewarm_assumed_image_mb, 256, "size assumed for images of unknown size");
ABSL_FLAG(int, prewarm_parallel_pulls, 8, "pre-warm pull calls in flight at once");
ABSL_FLAG(int, prewarm_pull_timeout_sec, 600, "deadline of one pre-warm pull call");
ABSL_FLAG(int, leader_poll_ms, 250,
          "a follower replica tries to take the leadership (a Postgres advisory lock) this often; "
          "the leader checks its lock's connection as often and, when it stops answering, stops "
          "deciding and competes for the lock again");

namespace {

using isorun::scheduler::AdminRequest;
using isorun::scheduler::AdminResponse;

isorun::scheduler::FleetOptions OptionsFromFlags() {
  isorun::scheduler::FleetOptions o;
  auto& p = o.policy;
  p.healthy_within = absl::Milliseconds(absl::GetFlag(FLAGS_healthy_within_ms));
  p.fit = absl::GetFlag(FLAGS_placement_fit) == "most"
              ? isorun::scheduler::FitStrategy::kMostAllocated
              : isorun::scheduler::FitStrategy::kLeastAllocated;
  p.warm_skew = absl::GetFlag(FLAGS_warm_skew);
  p.large_image_bytes = int64_t{absl::GetFlag(FLAGS_large_image_mb)} << 20;
  p.min_size_factor = absl::GetFlag(FLAGS_min_size_factor);
  p.min_spread_factor = absl::GetFlag(FLAGS_min_spread_factor);
  p.cold_candidates = absl::GetFlag(FLAGS_cold_candidates);
  p.warm_candidates = absl::GetFlag(FLAGS_warm_candidates);
  p.scan_whole_below = absl::GetFlag(FLAGS_scan_whole_below);
  p.top_k = absl::GetFlag(FLAGS_top_k);
  o.spread_window = static_cast<size_t>(std::max(0, absl::GetFlag(FLAGS_spread_window)));
  o.lost_after = absl::Milliseconds(absl::GetFlag(FLAGS_lost_after_ms));
  o.last_seen_every = absl::Milliseconds(absl::GetFlag(FLAGS_last_seen_every_ms));
  o.unplaced_grace = absl::Milliseconds(absl::GetFlag(FLAGS_unplaced_grace_ms));
  auto& w = o.prewarm;
  w.enabled = absl::GetFlag(FLAGS_prewarm);
  w.interval = absl::Milliseconds(absl::GetFlag(FLAGS_prewarm_interval_ms));
  w.window = absl::Seconds(absl::GetFlag(FLAGS_prewarm_window_sec));
  w.min_creates = absl::GetFlag(FLAGS_prewarm_min_creates);
  w.max_images = absl::GetFlag(FLAGS_prewarm_max_images);
  w.fraction = absl::GetFlag(FLAGS_prewarm_fraction);
  w.max_fraction = absl::GetFlag(FLAGS_prewarm_max_fraction);
  w.min_holders = absl::GetFlag(FLAGS_prewarm_min_holders);
  w.target_cold_rate = absl::GetFlag(FLAGS_prewarm_target_cold_rate);
  w.max_boost = absl::GetFlag(FLAGS_prewarm_max_boost);
  w.max_pulls_per_round = absl::GetFlag(FLAGS_prewarm_max_pulls_per_round);
  w.max_pulls_per_runner = absl::GetFlag(FLAGS_prewarm_max_pulls_per_runner);
  w.default_cache_bytes = int64_t{absl::GetFlag(FLAGS_prewarm_default_cache_mb)} << 20;
  w.assumed_image_bytes = int64_t{absl::GetFlag(FLAGS_prewarm_assumed_image_mb)} << 20;
  return o;
}

// GET /capacity/history?from=UNIX&to=UNIX&step=SEC[&region=R]: the gateway checks the
// parameters for its callers; here they are only parsed, and bounded.
AdminResponse ServeHistory(isorun::scheduler::CapacityHistoryStore& history,
                           const AdminRequest& req) {
  auto number = [&](const char* name, int64_t* out) {
    auto it = req.query.find(name);
    return it != req.query.end() && absl::SimpleAtoi(it->second, out);
  };
  int64_t from = 0, to = 0, step = 0;
  if (!number("from", &from) || !number("to", &to) || !number("step", &step) || step < 1 ||
      to <= from || (to - from) / step > 20000) {
    return {400, "text/plain",
            "want from and to (unix seconds, from < to) and step (seconds), at most 20000 "
            "steps\n"};
  }
  auto it = req.query.find("region");
  std::string region = it == req.query.end() ? "" : it->second;
  auto samples = history.Query(absl::FromUnixSeconds(from), absl::FromUnixSeconds(to),
                               absl::Seconds(step), region);
  if (!samples.ok()) return {503, "text/plain", std::string(samples.status().message()) + "\n"};
  return {200, "application/json",
          isorun::scheduler::HistoryJson(*samples, absl::FromUnixSeconds(from),
                                         absl::FromUnixSeconds(to), absl::Seconds(step)) +
              "\n"};
}

// The forecast from the last hour of history (see capacity_history.h for the method).
std::string ForecastJsonNow(isorun::scheduler::CapacityHistoryStore& history) {
  const absl::Time now = absl::Now();
  isorun::scheduler::ForecastOptions options;
  // Raw snapshots within the window; a step of one second keeps them as they are.
  auto samples = history.Query(now - options.window, now + absl::Seconds(1), absl::Seconds(1));
  if (!samples.ok()) return "null";
  return isorun::scheduler::ForecastJson(isorun::scheduler::Forecast(*samples, now, options), now);
}

// {"total": N, "regions": {"name": N}}: placements refused for capacity (429 CAPACITY) since this
// scheduler started, by the region they asked for.
std::string RefusalsJson(const isorun::scheduler::SchedulerService& service) {
  isorun::JsonWriter w;
  w.BeginObject().Key("total").Int(service.capacity_refusals()).Key("regions").BeginObject();
  for (const auto& [region, n] : service.capacity_refusals_by_region()) {
    if (!region.empty()) w.Key(region).Int(n);
  }
  w.EndObject().EndObject();
  return w.Take();
}

AdminResponse ServeAdmin(const std::atomic<bool>& leading, isorun::scheduler::Fleet& fleet,
                         isorun::scheduler::CapacityHistoryStore& history,
                         isorun::scheduler::SchedulerStore& store,
                         const isorun::scheduler::SchedulerService& service,
                         const AdminRequest& req) {
  if (req.path == "/healthz" && req.method == "GET") return {200, "text/plain", "ok\n"};
  if (!leading.load()) {
    return {503, "text/plain", "this scheduler replica is not the leader; ask another replica\n"};
  }
  // POST /runners/NAME/drain and /undrain: as `isorunctl runners drain`, for the dashboard.
  if (req.method == "POST" && absl::StartsWith(req.path, "/runners/")) {
    std::vector<std::string> parts = absl::StrSplit(req.path.substr(9), '/');
    if (parts.size() != 2 || (parts[1] != "drain" && parts[1] != "undrain") || parts[0].empty()) {
      return {404, "text/plain", "not found: POST /runners/NAME/drain or /undrain\n"};
    }
    absl::Status st = store.SetDraining(parts[0], parts[1] == "drain");
    if (absl::IsNotFound(st)) return {404, "text/plain", std::string(st.message()) + "\n"};
    if (!st.ok()) return {503, "text/plain", std::string(st.message()) + "\n"};
    (void)fleet.Sync();  // picks up the mark now rather than at the next sync
    return {200, "application/json", "{}\n"};
  }
  if (req.method != "GET") return {405, "text/plain", "only GET (and POST /runners/...)\n"};
  if (req.path == "/capacity/history") return ServeHistory(history, req);
  if (req.path != "/capacity") {
    return {404, "text/plain", "not found: try GET /capacity or /healthz\n"};
  }
  isorun::scheduler::CapacityJsonOptions options;
  auto flag = [&](const char* name) {
    auto it = req.query.find(name);
    return it == req.query.end() ? std::string() : it->second;
  };
  options.runners = flag("summary") != "1" && flag("summary") != "true";
  options.runner = flag("runner");
  options.sandbox_ids = flag("sandboxes") != "0" && flag("sandboxes") != "false";
  auto totals = fleet.Totals();
  std::vector<isorun::scheduler::RunnerStatus> runners;
  if (options.runners) runners = fleet.List();
  std::string json = isorun::scheduler::CapacityJson(runners, totals, absl::Now(), options);
  // Appended as one more member of the top-level object.
  json.pop_back();
  json += ",\"capacityRefusals\":" + RefusalsJson(service) + "}";
  if (flag("forecast") == "1" || flag("forecast") == "true") {
    // Appended as one more member of the top-level object.
    json.pop_back();
    json += ",\"forecast\":" + ForecastJsonNow(history) + "}";
  }
  return {200, "application/json", json + "\n"};
}

}  // namespace

int main(int argc, char** argv) {
  isorun::ParseFlags(argc, argv, "isorun-scheduler: runner registry, placement and pre-warming");
  isorun::SetLogService("scheduler");
  isorun::BlockShutdownSignals();
  const std::string url = absl::GetFlag(FLAGS_database_url);
  if (url.empty()) {
    isorun::LogError("--database_url (ISORUN_DATABASE_URL) is required");
    return 2;
  }
  if (absl::GetFlag(FLAGS_placement_fit) != "least" &&
      absl::GetFlag(FLAGS_placement_fit) != "most") {
    isorun::LogError("--placement_fit must be least or most");
    return 2;
  }
  isorun::PgPool pool(
      url, absl::GetFlag(FLAGS_db_connections), isorun::Durability::kSync,
      isorun::PgPoolOptions{absl::Milliseconds(absl::GetFlag(FLAGS_db_timeout_ms))});
  isorun::scheduler::SchedulerStore store(pool);
  isorun::scheduler::CapacityHistoryStore history(pool);
  if (absl::Status s = isorun::RequireSchemaVersion(pool, isorun::LatestMigrationVersion());
      !s.ok()) {
    isorun::LogError("cannot start", {{"error", std::string(s.message())}});
    return 1;
  }
  const isorun::scheduler::FleetOptions options = OptionsFromFlags();
  isorun::scheduler::Fleet fleet(
      store, [] { return absl::Now(); }, options);
  // Leadership first, before serving: a lone scheduler is the leader from its first call on.
  isorun::scheduler::LeaderLock leader_lock(url);
  std::atomic<bool> leading{false};
  // Set while another replica holds the lock (a follower knows it when its try fails without an
  // error): runners' heartbeat streams still open to this replica are then ended, so they move
  // to the leader. During a database outage nobody can be known to lead, and the streams stay:
  // what they say keeps the fleet's view live for when the lock is won again.
  std::atomic<bool> other_leads{false};
  bool load_failing = false;
  auto take_lead = [&]() -> bool {
    auto got = leader_lock.TryAcquire();
    other_leads = got.ok() && !*got;
    if (!got.ok() || !*got) return false;
    // The lock stays held while the load is retried at the next poll: a database that answers
    // the lock's connection but fails the load (a moment after its return) must not end the
    // process, nor let the leadership pass to a replica that would fail the same way.
    if (absl::Status s = fleet.Load(); !s.ok()) {
      if (!load_failing) {
        isorun::LogError("cannot load the fleet; retrying", {{"error", std::string(s.message())}});
      }
      load_failing = true;
      return false;
    }
    load_failing = false;
    leading = true;
    return true;
  };
  const absl::Time started = absl::Now();
  if (take_lead()) {
    isorun::LogInfo("leading from the start");
  }
  isorun::Metrics metrics(absl::GetFlag(FLAGS_metrics_addr));
  isorun::scheduler::FleetMetrics fleet_metrics(metrics.registry());
  isorun::scheduler::SchedulerService service(fleet, metrics.registry(),
                                              absl::GetFlag(FLAGS_heartbeat_interval_ms), &leading,
                                              &other_leads);
  auto server = isorun::StartGrpcServer(absl::GetFlag(FLAGS_grpc_addr), {&service});
  if (!server.ok()) {
    isorun::LogError("cannot start", {{"error", std::string(server.status().message())}});
    return 1;
  }

  std::unique_ptr<isorun::scheduler::AdminHttpServer> admin;
  if (const std::string addr = absl::GetFlag(FLAGS_admin_http_addr); !addr.empty()) {
    auto started_admin = isorun::scheduler::AdminHttpServer::Start(
        addr, [&leading, &fleet, &history, &store, &service](const AdminRequest& req) {
          return ServeAdmin(leading, fleet, history, store, service, req);
        });
    if (started_admin.ok()) {
      admin = std::move(*started_admin);
    } else {
      // Not fatal: placement matters more than the dashboard view (and several local clusters
      // may want the default port).
      isorun::LogError("no admin HTTP listener",
                       {{"error", std::string(started_admin.status().message())}});
    }
  }

  // A follower waits for the lock; the leader watches its lock's connection. Only the leader
  // syncs, pre-warms and records capacity (its background work starts below once it leads).
  absl::Notification stop;
  absl::Notification became_leader;
  if (leading) became_leader.Notify();
  const absl::Duration poll = absl::Milliseconds(std::max(20, absl::GetFlag(FLAGS_leader_poll_ms)));
  std::thread election([&] {
    while (!stop.HasBeenNotified()) {
      while (!leading && !stop.WaitForNotificationWithTimeout(poll)) {
        if (take_lead()) {
          isorun::LogInfo("took the leadership",
                          {{"after_ms", std::to_string(absl::ToInt64Milliseconds(absl::Now() - started))},
                           {"runners", std::to_string(fleet.List().size())}});
          if (!became_leader.HasBeenNotified()) became_leader.Notify();
        }
      }
      while (!stop.WaitForNotificationWithTimeout(poll)) {
        if (absl::Status s = leader_lock.Check(); !s.ok()) {
          // Another replica may hold the lock by now: two deciders could overcommit runners. Stop
          // deciding at once and compete for the lock again (a database that restarted dropped
          // it): the winner loads the fleet from Postgres, so no restart is needed to serve.
          leading = false;
          isorun::LogError("lost the leader lock's connection; following until the lock is taken "
                           "again",
                           {{"error", std::string(s.message())}});
          break;
        }
      }
    }
  });

  // Heartbeat news to Postgres and gauges, every sync interval (leader only).
  std::thread syncer([&] {
    const absl::Duration every =
        absl::Milliseconds(std::max(50, absl::GetFlag(FLAGS_sync_interval_ms)));
    bool failing = false;
    while (!stop.WaitForNotificationWithTimeout(every)) {
      if (!leading) continue;
      absl::Status s = fleet.Sync();
      if (!s.ok() && !failing) {
        isorun::LogWarn("cannot sync the fleet to Postgres; will retry",
                        {{"error", std::string(s.message())}});
      }
      failing = !s.ok();
      fleet_metrics.Update(fleet.Totals());
    }
  });

  isorun::scheduler::GrpcImagePuller puller(
      absl::Seconds(absl::GetFlag(FLAGS_prewarm_pull_timeout_sec)));
  isorun::scheduler::Prewarmer prewarmer(fleet, puller, absl::GetFlag(FLAGS_prewarm_parallel_pulls),
                                         &fleet_metrics.pulls_ok(), &fleet_metrics.pulls_failed());

  isorun::scheduler::CapacityRecorder::Options recorder_options;
  recorder_options.interval = absl::Seconds(absl::GetFlag(FLAGS_capacity_history_interval_sec));
  recorder_options.raw_retention = absl::Hours(absl::GetFlag(FLAGS_capacity_history_raw_hours));
  recorder_options.downsampled_retention =
      absl::Hours(24 * absl::GetFlag(FLAGS_capacity_history_retention_days));
  isorun::scheduler::CapacityRecorder recorder(
      history, [&fleet] { return fleet.List(); },
      [&service, &fleet_metrics] {
        return isorun::scheduler::CapacityCounters{
            service.placements_warm(), service.placements_cold(), service.capacity_refusals(),
            static_cast<int64_t>(fleet_metrics.pulls_ok().Value() +
                                 fleet_metrics.pulls_failed().Value()),
            service.capacity_refusals_by_region()};
      },
      recorder_options, [&history] { return history.CountSandboxes(); });
  // Started by whichever thread sees the leadership first; stopped at shutdown if started.
  std::atomic<bool> workers_started{false};
  std::thread workers([&] {
    while (!became_leader.WaitForNotificationWithTimeout(absl::Milliseconds(100))) {
      if (stop.HasBeenNotified()) return;
    }
    if (options.prewarm.enabled) prewarmer.Start(options.prewarm.interval);
    if (absl::GetFlag(FLAGS_capacity_history_interval_sec) > 0) recorder.Start();
    workers_started = true;
  });

  isorun::LogInfo("serving", {{"grpc_port", std::to_string(server->port)},
                              {"admin_port", std::to_string(admin ? admin->port() : 0)},
                              {"runners", std::to_string(fleet.List().size())},
                              {"leader", leading ? "true" : "false"}});
  int sig = isorun::WaitForShutdownSignal();
  isorun::LogInfo("shutting down", {{"signal", std::to_string(sig)}});
  stop.Notify();
  workers.join();
  if (workers_started) {
    prewarmer.Stop();
    recorder.Stop();
  }
  if (admin) admin->Stop();
  server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  syncer.join();
  election.join();
  if (leading) (void)fleet.Sync();
  return 0;
}
