// isorun-quota: admission of concurrent sandboxes (and, later, rate limits).

#include <cstdlib>
#include <thread>

#include "absl/synchronization/notification.h"

#include "absl/flags/flag.h"
#include "quotas/quota_service.h"
#include "quotas/quota_store.h"
#include "services/kit/flags.h"
#include "services/kit/log.h"
#include "services/kit/migrate.h"
#include "services/kit/pg.h"
#include "services/kit/server.h"

ABSL_FLAG(std::string, grpc_addr, "127.0.0.1:7001", "host:port of the gRPC listener");
ABSL_FLAG(std::string, metrics_addr, "127.0.0.1:9101", "host:port of /metrics; empty: none");
ABSL_FLAG(std::string, database_url, "", "PostgreSQL URL");
ABSL_FLAG(int, db_connections, 16, "size of the Postgres connection pool");
ABSL_FLAG(int, db_timeout_ms, 2000,
          "deadline of one database call (waiting for a pooled connection, connecting, its "
          "statements and commit); past it, and while the database is unreachable, calls fail "
          "with UNAVAILABLE (HTTP 503) instead of waiting");
ABSL_FLAG(int, limits_ttl_ms, 2000, "how long tenant limits are cached for rate checks");

int main(int argc, char** argv) {
  isorun::ParseFlags(argc, argv, "isorun-quota: admission and rate limits (gRPC isorun.v1.Quotas)");
  isorun::SetLogService("quota");
  isorun::BlockShutdownSignals();
  const std::string url = absl::GetFlag(FLAGS_database_url);
  if (url.empty()) {
    isorun::LogError("--database_url (ISORUN_DATABASE_URL) is required");
    return 2;
  }
  isorun::PgPool pool(
      url, absl::GetFlag(FLAGS_db_connections), isorun::Durability::kAsync,
      isorun::PgPoolOptions{absl::Milliseconds(absl::GetFlag(FLAGS_db_timeout_ms))});
  isorun::quota::QuotaStore store(pool);
  if (absl::Status s = isorun::RequireSchemaVersion(pool, isorun::LatestMigrationVersion());
      !s.ok()) {
    isorun::LogError("cannot start", {{"error", std::string(s.message())}});
    return 1;
  }
  isorun::Metrics metrics(absl::GetFlag(FLAGS_metrics_addr));
  isorun::quota::QuotaServiceOptions options;
  options.limits_ttl = absl::Milliseconds(absl::GetFlag(FLAGS_limits_ttl_ms));
  isorun::quota::QuotaService service(store, metrics.registry(), options);
  auto server = isorun::StartGrpcServer(absl::GetFlag(FLAGS_grpc_addr), {&service});
  if (!server.ok()) {
    isorun::LogError("cannot start", {{"error", std::string(server.status().message())}});
    return 1;
  }
  isorun::LogInfo("serving", {{"grpc_port", std::to_string(server->port)},
                              {"metrics_port", std::to_string(metrics.port())}});
  absl::Notification stop;
  std::thread collector([&] {
    while (!stop.WaitForNotificationWithTimeout(absl::Seconds(10))) {
      service.CollectRateBuckets();
      service.CollectExecLeases();
    }
  });
  int sig = isorun::WaitForShutdownSignal();
  stop.Notify();
  collector.join();
  isorun::LogInfo("shutting down", {{"signal", std::to_string(sig)}});
  server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return 0;
}
