// isorun-scheduler: the runner registry and placement (gRPC isorun.v1.Scheduler).

#include "absl/flags/flag.h"
#include "scheduler/fleet.h"
#include "scheduler/scheduler_service.h"
#include "scheduler/scheduler_store.h"
#include "services/kit/flags.h"
#include "services/kit/log.h"
#include "services/kit/migrate.h"
#include "services/kit/pg.h"
#include "services/kit/server.h"

ABSL_FLAG(std::string, grpc_addr, "127.0.0.1:7002", "host:port of the gRPC listener");
ABSL_FLAG(std::string, metrics_addr, "127.0.0.1:9102", "host:port of /metrics; empty: none");
ABSL_FLAG(std::string, database_url, "", "PostgreSQL URL");
ABSL_FLAG(int, db_connections, 16, "size of the Postgres connection pool");
ABSL_FLAG(int, heartbeat_interval_ms, 1000, "how often runners are told to heartbeat");
ABSL_FLAG(int, healthy_within_ms, 5000,
          "a runner whose last heartbeat is older than this gets no placements");

ABSL_FLAG(int, lost_after_ms, 60000,
          "a runner silent for this long is LOST: the lifecycle marks its sandboxes LOST");

int main(int argc, char** argv) {
  isorun::ParseFlags(argc, argv, "isorun-scheduler: runner registry and placement");
  isorun::SetLogService("scheduler");
  isorun::BlockShutdownSignals();
  const std::string url = absl::GetFlag(FLAGS_database_url);
  if (url.empty()) {
    isorun::LogError("--database_url (ISORUN_DATABASE_URL) is required");
    return 2;
  }
  isorun::PgPool pool(url, absl::GetFlag(FLAGS_db_connections));
  isorun::scheduler::SchedulerStore store(pool);
  if (absl::Status s = isorun::RequireSchemaVersion(pool, isorun::LatestMigrationVersion());
      !s.ok()) {
    isorun::LogError("cannot start", {{"error", std::string(s.message())}});
    return 1;
  }
  isorun::scheduler::FleetOptions options;
  options.policy.healthy_within = absl::Milliseconds(absl::GetFlag(FLAGS_healthy_within_ms));
  options.lost_after = absl::Milliseconds(absl::GetFlag(FLAGS_lost_after_ms));
  isorun::scheduler::Fleet fleet(store, [] { return absl::Now(); }, options);
  if (absl::Status s = fleet.Load(); !s.ok()) {
    isorun::LogError("cannot load the fleet", {{"error", std::string(s.message())}});
    return 1;
  }
  isorun::Metrics metrics(absl::GetFlag(FLAGS_metrics_addr));
  isorun::scheduler::SchedulerService service(fleet, metrics.registry(),
                                              absl::GetFlag(FLAGS_heartbeat_interval_ms));
  auto server = isorun::StartGrpcServer(absl::GetFlag(FLAGS_grpc_addr), {&service});
  if (!server.ok()) {
    isorun::LogError("cannot start", {{"error", std::string(server.status().message())}});
    return 1;
  }
  isorun::LogInfo("serving", {{"grpc_port", std::to_string(server->port)},
                              {"runners", std::to_string(fleet.List().size())}});
  int sig = isorun::WaitForShutdownSignal();
  isorun::LogInfo("shutting down", {{"signal", std::to_string(sig)}});
  server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return 0;
}
