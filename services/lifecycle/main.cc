// isorun-lifecycle: the sandbox state machine (gRPC isorun.v1.Sandboxes), the idle reaper and the
// reconciler.

#include <atomic>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "services/kit/flags.h"
#include "services/kit/image_policy.h"
#include "services/kit/log.h"
#include "services/kit/migrate.h"
#include "services/kit/pg.h"
#include "services/kit/server.h"
#include "services/lifecycle/backends.h"
#include "services/lifecycle/lifecycle.h"
#include "services/lifecycle/keys_service.h"
#include "services/lifecycle/lifecycle_service.h"
#include "services/lifecycle/replica_session.h"
#include "services/lifecycle/sandbox_store.h"

ABSL_FLAG(std::string, grpc_addr, "127.0.0.1:7003", "host:port of the gRPC listener");
ABSL_FLAG(std::string, metrics_addr, "127.0.0.1:9103", "host:port of /metrics; empty: none");
ABSL_FLAG(std::string, database_url, "", "PostgreSQL URL");
ABSL_FLAG(int, db_connections, 32, "size of the Postgres connection pool");
ABSL_FLAG(int, db_timeout_ms, 2000,
          "deadline of one database call (waiting for a pooled connection, connecting, its "
          "statements and commit); past it, and while the database is unreachable, calls fail "
          "with UNAVAILABLE (HTTP 503) instead of waiting");
ABSL_FLAG(int, grpc_max_threads, 256,
          "most requests served at once (each waits on its backends in a thread of its own); "
          "beyond it, calls fail with RESOURCE_EXHAUSTED");
ABSL_FLAG(std::string, quota_addr, "127.0.0.1:7001",
          "host:port of the quota service; several replicas: a comma-separated list of ip:port "
          "or a gRPC target (dns:///name:port), used round-robin with retries on another "
          "replica");
ABSL_FLAG(std::string, scheduler_addr, "127.0.0.1:7002",
          "host:port of the scheduler; several replicas: a list or a gRPC target as for "
          "--quota_addr (followers refuse, the leader answers)");
ABSL_FLAG(std::string, region, "local", "region whose runners this lifecycle places on");
ABSL_FLAG(std::string, registries, "",
          "registry hosts (host:port, comma-separated) images may name; unqualified names go to "
          "the runners' configured registry and are always allowed. Any other host is refused "
          "at create with IMAGE_REGISTRY_NOT_ALLOWED");
ABSL_FLAG(int, max_execs_per_sandbox, 16,
          "most exec and exec:stream calls running at once in one sandbox, counted by its runner "
          "(beyond it: 429 EXEC_LIMIT); the per-tenant cap is the tenant's maxConcurrentExecs "
          "limit, counted by the quota service");
ABSL_FLAG(absl::Duration, exec_lease_ttl, absl::Seconds(10),
          "a running exec's lease on its tenant's exec cap (held by the quota service) lapses "
          "this long after its last renewal; renewed every third of it. Bounds how long the "
          "calls of a lifecycle that died keep their places");
ABSL_FLAG(int, reaper_interval_ms, 500, "how often the idle reaper looks for expired sandboxes");
ABSL_FLAG(int, reconcile_interval_ms, 5000, "how often the reconciler runs");
ABSL_FLAG(int, runner_pass_wait_ms, 1000,
          "the reaper and the reconciler work on each runner in parallel (a lane per runner); a "
          "pass waits this long at most for its runners, then goes on while their work continues "
          "(a runner that does not answer holds up only its own lane)");
ABSL_FLAG(int, runner_cool_off_ms, 5000,
          "after a call to a runner ran out its deadline (a black-holed or hung runner), the "
          "reaper's and reconciler's further calls to it fail at once for this long");
ABSL_FLAG(absl::Duration, ended_retention, absl::Hours(72),
          "how long an ended sandbox (DESTROYED, FAILED, LOST) stays readable before it is purged "
          "with its events and idempotency key; at least 24h (API.md's promise)");
ABSL_FLAG(int, purge_interval_ms, 60000,
          "how often ended sandboxes and idempotency keys past their retention are purged");
ABSL_FLAG(int, start_progress_interval_ms, 250,
          "while a cold start runs, how often its runner is asked what it waits for (a pull, "
          "with bytes), shown as the sandbox's startProgress; 0 turns it off");
ABSL_FLAG(int, purge_batch, 200,
          "rows deleted per purge statement (small, so creates never wait behind a purge)");
ABSL_FLAG(int, stuck_after_sec, 120,
          "PENDING/STARTING sandboxes older than this are abandoned creates and get repaired");
ABSL_FLAG(int, destroy_retry_after_sec, 10, "DESTROYING sandboxes older than this are retried");
ABSL_FLAG(std::string, public_url_template, "http://{port}-{publicId}.localhost:8081",
          "public URL of a sandbox port in the sandbox object's `urls`: {port} and {publicId} are "
          "replaced (match the gateway's --public_domain and the proxy's address); empty: no urls");
ABSL_FLAG(int, orphan_grace_sec, 30,
          "slots, placements and containers whose sandbox is gone are repaired once this old");

namespace {

// Runs `pass` every `interval` until `stop` is notified.
std::thread Loop(absl::Notification& stop, absl::Duration interval, std::function<void()> pass) {
  return std::thread([&stop, interval, pass = std::move(pass)] {
    while (!stop.WaitForNotificationWithTimeout(interval)) pass();
  });
}

}  // namespace

int main(int argc, char** argv) {
  isorun::ParseFlags(argc, argv, "isorun-lifecycle: sandboxes (gRPC isorun.v1.Sandboxes)");
  isorun::SetLogService("lifecycle");
  isorun::BlockShutdownSignals();
  const std::string url = absl::GetFlag(FLAGS_database_url);
  if (url.empty()) {
    isorun::LogError("--database_url (ISORUN_DATABASE_URL) is required");
    return 2;
  }
  isorun::PgPool pool(
      url, absl::GetFlag(FLAGS_db_connections), isorun::Durability::kAsync,
      isorun::PgPoolOptions{absl::Milliseconds(absl::GetFlag(FLAGS_db_timeout_ms))});
  isorun::lifecycle::SandboxStore store(pool);
  // isorun.v1.Keys: key changes commit durably (a revocation must survive a crash), on a small
  // pool of their own, with the gateway's key code (its statements are prepared here).
  isorun::PgPool key_pool(url, 2);
  isorun::gateway::PgKeyAdmin key_admin(key_pool);
  if (absl::GetFlag(FLAGS_ended_retention) < absl::Hours(24)) {
    isorun::LogError("--ended_retention must be at least 24h: API.md promises that an ended "
                     "sandbox stays readable that long");
    return 2;
  }
  if (absl::Status s = isorun::RequireSchemaVersion(pool, isorun::LatestMigrationVersion());
      !s.ok()) {
    isorun::LogError("cannot start", {{"error", std::string(s.message())}});
    return 1;
  }
  isorun::lifecycle::BackendDeadlines deadlines;
  deadlines.start = absl::Seconds(std::max(5, absl::GetFlag(FLAGS_stuck_after_sec) - 10));
  // A list of quota replicas: exec leases go to each tenant's rendezvous choice among them (as
  // the gateways' rate checks do). A single address or a dns:/// target: every call through it.
  std::vector<std::string> quota_replicas;
  if (absl::GetFlag(FLAGS_quota_addr).find(',') != std::string::npos) {
    for (absl::string_view addr : absl::StrSplit(absl::GetFlag(FLAGS_quota_addr), ',')) {
      addr = absl::StripAsciiWhitespace(addr);
      if (!addr.empty()) quota_replicas.emplace_back(addr);
    }
  }
  isorun::lifecycle::GrpcBackends backends(isorun::MakeChannel(absl::GetFlag(FLAGS_quota_addr)),
                                           isorun::MakeChannel(absl::GetFlag(FLAGS_scheduler_addr)),
                                           deadlines, quota_replicas);
  // This replica's id and lock (owner of its creates in flight) and the notifications that wake
  // idempotent retries waiting for creates on other replicas.
  isorun::lifecycle::ReplicaSession::Options session_options;
  session_options.on_up = [&store](int32_t id) { store.SetOwner(id); };
  isorun::lifecycle::ReplicaSession session(pool, session_options);
  if (!session.WaitUp(absl::Seconds(10))) {
    isorun::LogWarn("replica session not up yet; creates record no owner until it is");
  }
  isorun::lifecycle::LifecycleOptions options;
  options.session = &session;
  options.region = absl::GetFlag(FLAGS_region);
  options.registries = isorun::ParseRegistryList(absl::GetFlag(FLAGS_registries));
  options.max_execs_per_sandbox = absl::GetFlag(FLAGS_max_execs_per_sandbox);
  options.exec_lease_ttl = std::max(absl::Seconds(1), absl::GetFlag(FLAGS_exec_lease_ttl));
  options.stuck_after_sec = absl::GetFlag(FLAGS_stuck_after_sec);
  options.destroy_retry_after_sec = absl::GetFlag(FLAGS_destroy_retry_after_sec);
  options.orphan_grace_sec = absl::GetFlag(FLAGS_orphan_grace_sec);
  options.public_url_template = absl::GetFlag(FLAGS_public_url_template);
  options.start_progress_interval =
      absl::Milliseconds(std::max(0, absl::GetFlag(FLAGS_start_progress_interval_ms)));
  options.runner_pass_wait =
      absl::Milliseconds(std::max(0, absl::GetFlag(FLAGS_runner_pass_wait_ms)));
  options.runner_cool_off =
      absl::Milliseconds(std::max(0, absl::GetFlag(FLAGS_runner_cool_off_ms)));
  isorun::lifecycle::Lifecycle lifecycle(store, backends, options);

  isorun::Metrics metrics(absl::GetFlag(FLAGS_metrics_addr));
  auto& loop_family = prometheus::BuildCounter()
                          .Name("isorun_lifecycle_background_sandboxes_total")
                          .Help("Sandboxes handled by the background loops, by action")
                          .Register(metrics.registry());
  auto& reaped = loop_family.Add({{"action", "idle_timeout"}});
  auto& destroys = loop_family.Add({{"action", "destroy_retried"}});
  auto& abandoned = loop_family.Add({{"action", "create_abandoned"}});
  auto& orphan_slots = loop_family.Add({{"action", "orphan_slot_released"}});
  auto& orphan_placements = loop_family.Add({{"action", "orphan_placement_released"}});
  auto& orphan_containers = loop_family.Add({{"action", "orphan_container_stopped"}});
  auto& lost = loop_family.Add({{"action", "marked_lost"}});
  auto& taken_over = loop_family.Add({{"action", "create_taken_over"}});
  auto& purged_sandboxes = loop_family.Add({{"action", "ended_sandbox_purged"}});
  isorun::lifecycle::LifecycleService service(lifecycle, metrics.registry());
  isorun::lifecycle::PublicUrlsService public_urls(lifecycle);
  isorun::lifecycle::KeysService keys_service(key_admin);
  auto server = isorun::StartGrpcServer(absl::GetFlag(FLAGS_grpc_addr),
                                        {&service, &public_urls, &keys_service},
                                        absl::GetFlag(FLAGS_grpc_max_threads));
  if (!server.ok()) {
    isorun::LogError("cannot start", {{"error", std::string(server.status().message())}});
    return 1;
  }

  absl::Notification stop;
  std::thread reaper = Loop(stop, absl::Milliseconds(absl::GetFlag(FLAGS_reaper_interval_ms)), [&] {
    // Drain everything that expired, a batch at a time.
    while (true) {
      auto n = lifecycle.ReapOnce();
      if (!n.ok()) {
        isorun::LogWarn("reaper pass failed", {{"error", std::string(n.status().message())}});
        return;
      }
      reaped.Increment(*n);
      if (*n < 100 || stop.HasBeenNotified()) return;
    }
  });
  // Running commands keep their sandboxes active, whatever their timeoutSec.
  std::thread exec_activity =
      Loop(stop, absl::Milliseconds(250), [&] { lifecycle.TouchActiveExecs(); });
  // Retention: small batches with a pause between them, so a backlog (a first run after an
  // upgrade, a long outage) never holds many rows, locks or the disk at once.
  const absl::Duration retention = absl::GetFlag(FLAGS_ended_retention);
  const int purge_batch = std::max(1, absl::GetFlag(FLAGS_purge_batch));
  std::thread purger =
      Loop(stop, absl::Milliseconds(absl::GetFlag(FLAGS_purge_interval_ms)), [&] {
        for (int round = 0; round < 1000 && !stop.HasBeenNotified(); ++round) {
          auto ended = store.PurgeEnded(retention, purge_batch);
          auto keys = store.PurgeIdempotencyKeys(isorun::lifecycle::kIdempotencyRetention,
                                                 purge_batch);
          if (!ended.ok() || !keys.ok()) {
            isorun::LogWarn("purge pass failed",
                            {{"error", std::string((ended.ok() ? keys.status() : ended.status())
                                                       .message())}});
            return;
          }
          purged_sandboxes.Increment(*ended);
          if (*ended < purge_batch && *keys < purge_batch) return;
          stop.WaitForNotificationWithTimeout(absl::Milliseconds(50));
        }
      });
  std::thread reconciler =
      Loop(stop, absl::Milliseconds(absl::GetFlag(FLAGS_reconcile_interval_ms)), [&] {
        auto counts = lifecycle.ReconcileOnce();
        if (!counts.ok()) {
          isorun::LogWarn("reconcile pass failed",
                          {{"error", std::string(counts.status().message())}});
          return;
        }
        destroys.Increment(counts->destroys_finished);
        abandoned.Increment(counts->creates_abandoned);
        orphan_slots.Increment(counts->reservations_released);
        orphan_placements.Increment(counts->placements_released);
        orphan_containers.Increment(counts->containers_stopped);
        lost.Increment(counts->sandboxes_lost);
        taken_over.Increment(counts->creates_taken_over);
      });

  isorun::LogInfo("serving", {{"grpc_port", std::to_string(server->port)},
                              {"metrics_port", std::to_string(metrics.port())}});
  int sig = isorun::WaitForShutdownSignal();
  isorun::LogInfo("shutting down", {{"signal", std::to_string(sig)}});
  stop.Notify();
  server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  reaper.join();
  exec_activity.join();
  reconciler.join();
  purger.join();
  return 0;
}
