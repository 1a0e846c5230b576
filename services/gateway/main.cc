// isorun-gateway: the public HTTP/JSON API (API.md) in front of the lifecycle service.

#include <cstdio>
#include <cstdlib>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "services/gateway/api.h"
#include "services/gateway/health.h"
#include "services/gateway/http_server.h"
#include "services/gateway/pg_key_store.h"
#include "services/gateway/public_proxy.h"
#include "services/gateway/rate_limit.h"
#include "services/kit/api_key.h"
#include "services/kit/flags.h"
#include "services/kit/http_front.h"
#include "services/kit/log.h"
#include "services/kit/migrate.h"
#include "services/kit/pg.h"
#include "services/kit/server.h"

ABSL_FLAG(std::string, http_addr, "127.0.0.1:8080", "host:port of the public HTTP API");
ABSL_FLAG(std::string, metrics_addr, "127.0.0.1:9100",
          "host:port of the Prometheus /metrics listener; empty disables it");
ABSL_FLAG(std::string, lifecycle_addr, "127.0.0.1:7003",
          "host:port of the lifecycle service (gRPC isorun.v1.Sandboxes); with several replicas "
          "a comma-separated list of ip:port or a gRPC target (dns:///name:port): calls go "
          "round-robin and are retried on another replica when one fails");
ABSL_FLAG(std::string, quota_addr, "127.0.0.1:7001",
          "host:port of the quota service (gRPC isorun.v1.Quotas) for request and create rate "
          "limits; with several replicas a comma-separated list (each tenant's checks go to the "
          "first replica of its rendezvous order that is up; every gateway needs the same list); "
          "/healthz checks them too; empty: no rate limits");
ABSL_FLAG(absl::Duration, rate_check_deadline, absl::Milliseconds(250),
          "how long a rate check may take before the request is let through");
ABSL_FLAG(std::string, region, "local", "the region this gateway serves; keys of others get 401");
ABSL_FLAG(std::string, database_url, "", "PostgreSQL URL (accounts schema: tenants, API keys)");
ABSL_FLAG(int64_t, max_body_bytes, 1048576, "largest request body accepted (413 beyond)");
ABSL_FLAG(absl::Duration, write_timeout, absl::Seconds(30),
          "longest wait for a client to take a response or a chunk of a stream (and for it to "
          "acknowledge what was sent); past it the connection is closed and a streamed command "
          "killed");
ABSL_FLAG(absl::Duration, client_keepalive, absl::Seconds(15),
          "TCP keep-alive probes after this much silence on a connection (then every "
          "--client_keepalive_interval; --client_keepalive_probes unanswered close it and kill a "
          "streamed command); 0: none");
ABSL_FLAG(absl::Duration, client_keepalive_interval, absl::Seconds(5),
          "time between TCP keep-alive probes of a silent connection (whole seconds, at least 1)");
ABSL_FLAG(int32_t, client_keepalive_probes, 3,
          "unanswered TCP keep-alive probes after which a connection is closed");
ABSL_FLAG(int32_t, max_connections, 20000,
          "open connections to the public API beyond which new ones get 503 (event-driven: idle "
          "and slow clients hold no thread; the open-file limit is raised at start)");
ABSL_FLAG(int32_t, http_threads, 2, "I/O threads of the public API's front end");
ABSL_FLAG(int32_t, max_handler_threads, 2048,
          "public API requests handled at once at most (each runs on a worker thread while it "
          "waits on the services); more wait in line");
ABSL_FLAG(int32_t, max_connections_per_client, 1000,
          "open connections from one client address to the public API, counted before "
          "authentication (429 beyond); 0: no cap");
ABSL_FLAG(double, max_requests_per_client_per_sec, 1000,
          "requests per second from one client address to the public API, before authentication "
          "(a token bucket of twice that; 429 with Retry-After beyond); 0: no cap");
ABSL_FLAG(absl::Duration, health_cache_ttl, absl::Seconds(1),
          "how long /healthz answers from its last check (0: checks every time)");
ABSL_FLAG(int32_t, db_pool_size, 8, "PostgreSQL connections for key lookups and health checks");
ABSL_FLAG(int, db_timeout_ms, 2000,
          "deadline of one database call (waiting for a pooled connection, connecting, its "
          "statements and commit); past it, and while the database is unreachable, calls fail "
          "with UNAVAILABLE (HTTP 503) instead of waiting");
ABSL_FLAG(std::string, scheduler_admin_url, "http://127.0.0.1:9202",
          "the scheduler's admin listener (capacity view, history, drain) behind /v1/admin/*; "
          "several replicas: a comma-separated list (the leader answers); "
          "empty: the operator routes answer 503");
ABSL_FLAG(absl::Duration, usage_history_sample_interval, absl::Minutes(1),
          "how often tenants' active and hibernated counts are sampled for /v1/usage/history");
ABSL_FLAG(std::string, dashboard_dir, "",
          "folder of the web dashboard's build output, served at /dashboard/ (empty: none)");
ABSL_FLAG(
    std::string, public_addr, "",
    "host:port of the public-URL proxy (Host: <port>-<publicId>.<public_domain>); empty: none");
ABSL_FLAG(std::string, public_domain, "localhost", "the domain of public URLs");
ABSL_FLAG(std::string, tunnel_token, "",
          "shared secret for the runners' tunnel listeners (ISORUN_TUNNEL_TOKEN; the runners get "
          "the same); required with --public_addr unless the tunnels are mutual TLS (--tls_* "
          "files), and sent as well when set");
ABSL_FLAG(std::string, forwarded_proto, "http",
          "X-Forwarded-Proto the proxy sends (https when a TLS terminator is in front)");
ABSL_FLAG(int32_t, proxy_threads, 2, "I/O threads of the public-URL proxy");
ABSL_FLAG(int32_t, proxy_max_connections, 20000,
          "open proxy connections beyond which new ones are closed");
ABSL_FLAG(int32_t, proxy_max_connections_per_sandbox, 1000,
          "tunnels open to one sandbox at once through its public URLs (429 beyond)");
ABSL_FLAG(absl::Duration, proxy_activity_interval, absl::Seconds(5),
          "how often proxied activity is reported to the lifecycle (one call for all sandboxes)");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(10),
          "on SIGINT/SIGTERM, how long requests in flight may finish before they are cancelled");

namespace isorun::gateway {
namespace {

int Run() {
  SetLogService("gateway");
  const std::string region = absl::GetFlag(FLAGS_region);
  if (!IsValidRegion(region)) {
    std::fprintf(stderr, "--region must match [a-z0-9-]+, got \"%s\"\n", region.c_str());
    return 2;
  }
  const std::string database_url = absl::GetFlag(FLAGS_database_url);
  if (database_url.empty()) {
    std::fprintf(stderr, "--database_url (or ISORUN_DATABASE_URL) is required\n");
    return 2;
  }
  const int64_t max_body = absl::GetFlag(FLAGS_max_body_bytes);
  if (max_body < 1) {
    std::fprintf(stderr, "--max_body_bytes must be positive\n");
    return 2;
  }

  // Before any thread starts, so that only WaitForShutdownSignal sees them.
  BlockShutdownSignals();
  // Thousands of proxied connections (each a client socket and a tunnel) need more than 1,024.
  http::RaiseOpenFileLimit();

  PgPool pool(database_url, absl::GetFlag(FLAGS_db_pool_size), Durability::kSync,
              PgPoolOptions{absl::Milliseconds(absl::GetFlag(FLAGS_db_timeout_ms))});
  // Registers its statement: before the pool's first query.
  PgKeyStore keys(pool);
  PgKeyAdmin key_admin(pool);
  PgOperatorTokens operators(pool);
  auto usage_stub = v1::Sandboxes::NewStub(MakeChannel(absl::GetFlag(FLAGS_lifecycle_addr)));
  TenantUsageRecorder usage(
      pool,
      [&usage_stub](const std::string& tenant)
          -> absl::StatusOr<std::pair<int64_t, int64_t>> {
        grpc::ClientContext call;
        call.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
        v1::GetUsageRequest req;
        req.set_tenant_id(tenant);
        v1::Usage out;
        grpc::Status st = usage_stub->GetUsage(&call, req, &out);
        if (!st.ok()) return absl::UnavailableError(st.error_message());
        return std::make_pair(int64_t{out.active_sandboxes()}, int64_t{out.hibernated_sandboxes()});
      },
      [] {
        TenantUsageRecorder::Options o;
        o.sample_interval = absl::GetFlag(FLAGS_usage_history_sample_interval);
        o.flush_interval = std::min(o.flush_interval, o.sample_interval);
        return o;
      }());
  SchedulerAdminClient scheduler_admin(absl::GetFlag(FLAGS_scheduler_admin_url));
  if (absl::Status st = RequireSchemaVersion(pool, LatestMigrationVersion()); !st.ok()) {
    std::fprintf(stderr, "isorun-gateway: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  keys.Start();
  key_admin.Start();

  Metrics metrics(absl::GetFlag(FLAGS_metrics_addr));
  auto lifecycle = MakeChannel(absl::GetFlag(FLAGS_lifecycle_addr));
  // Built from a list: emplace_back on an empty vector trips a false -Warray-bounds in GCC 12.
  std::vector<std::pair<std::string, GatewayApi::HealthCheck>> checks = {
      {"postgres", [&pool](absl::Duration) { return CheckPostgres(pool); }},
      {"lifecycle",
       [lifecycle](absl::Duration deadline) { return CheckGrpcServing(lifecycle, deadline); }},
  };
  std::vector<std::shared_ptr<grpc::Channel>> quota_replicas;
  std::vector<std::string> quota_names;
  for (absl::string_view addr : absl::StrSplit(absl::GetFlag(FLAGS_quota_addr), ',')) {
    addr = absl::StripAsciiWhitespace(addr);
    if (addr.empty()) continue;
    auto channel = MakeChannel(std::string(addr));
    quota_replicas.push_back(channel);
    quota_names.emplace_back(addr);
  }
  if (!quota_replicas.empty()) {
    // One replica serving is enough: the others' tenants move to it (rate_limit.h), and a
    // gateway reported unready for one lost quota replica would take the API down with it.
    checks.emplace_back("quota", [quota_replicas](absl::Duration deadline) {
      absl::Status last;
      for (const auto& channel : quota_replicas) {
        last = CheckGrpcServing(channel, deadline / static_cast<int64_t>(quota_replicas.size()));
        if (last.ok()) return last;
      }
      return last;
    });
  }
  std::unique_ptr<QuotaRateChecker> rates;
  if (!quota_replicas.empty()) {
    rates = std::make_unique<QuotaRateChecker>(quota_replicas, quota_names,
                                               absl::GetFlag(FLAGS_rate_check_deadline));
  }

  GatewayApi::Options api_options;
  api_options.region = region;
  api_options.max_body_bytes = static_cast<size_t>(max_body);
  api_options.dashboard_dir = absl::GetFlag(FLAGS_dashboard_dir);
  api_options.health_cache_ttl = absl::GetFlag(FLAGS_health_cache_ttl);
  GatewayApi api(api_options, keys, lifecycle, std::move(checks), metrics.registry(), rates.get(),
                 &key_admin);
  api.SetAdmin(&operators, &scheduler_admin, &usage);
  usage.Start();

  HttpServer::Options http_options;
  http_options.address = absl::GetFlag(FLAGS_http_addr);
  http_options.max_body_bytes = static_cast<size_t>(max_body);
  http_options.max_connections = absl::GetFlag(FLAGS_max_connections);
  http_options.write_timeout = absl::GetFlag(FLAGS_write_timeout);
  http_options.keepalive_idle = absl::GetFlag(FLAGS_client_keepalive);
  http_options.keepalive_interval = absl::GetFlag(FLAGS_client_keepalive_interval);
  http_options.keepalive_probes = absl::GetFlag(FLAGS_client_keepalive_probes);
  http_options.io_threads = absl::GetFlag(FLAGS_http_threads);
  http_options.max_handler_threads = absl::GetFlag(FLAGS_max_handler_threads);
  http_options.max_connections_per_client = absl::GetFlag(FLAGS_max_connections_per_client);
  http_options.max_requests_per_client_per_sec =
      absl::GetFlag(FLAGS_max_requests_per_client_per_sec);
  auto server = HttpServer::Start(
      http_options, [&api](const HttpRequest& request) { return api.Handle(request); },
      [&api](const HttpRequest& request) { return api.HandleWithoutBlocking(request); });
  if (!server.ok()) {
    std::fprintf(stderr, "isorun-gateway: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  std::unique_ptr<PublicProxy> proxy;
  std::unique_ptr<http::FrontEnd> proxy_front;
  if (const std::string public_addr = absl::GetFlag(FLAGS_public_addr); !public_addr.empty()) {
    PublicProxyOptions proxy_options;
    proxy_options.public_domain = absl::GetFlag(FLAGS_public_domain);
    proxy_options.tunnel_token = absl::GetFlag(FLAGS_tunnel_token);
    proxy_options.forwarded_proto = absl::GetFlag(FLAGS_forwarded_proto);
    proxy_options.max_connections_per_sandbox =
        absl::GetFlag(FLAGS_proxy_max_connections_per_sandbox);
    proxy_options.touch_interval = absl::GetFlag(FLAGS_proxy_activity_interval);
    auto tunnel_tls = http::TunnelTlsContext(/*server=*/false);
    if (!tunnel_tls.ok()) {
      std::fprintf(stderr, "isorun-gateway: %s\n",
                   std::string(tunnel_tls.status().message()).c_str());
      return 2;
    }
    proxy_options.tunnel_tls = *tunnel_tls;
    if (proxy_options.tunnel_token.empty() && !proxy_options.tunnel_tls) {
      std::fprintf(stderr,
                   "--public_addr needs mutual TLS (--tls_* files) or --tunnel_token (or "
                   "ISORUN_TUNNEL_TOKEN) for the runners' tunnels\n");
      return 2;
    }
    proxy = std::make_unique<PublicProxy>(proxy_options, lifecycle, metrics.registry());
    http::FrontEndOptions front;
    front.address = public_addr;
    front.threads = absl::GetFlag(FLAGS_proxy_threads);
    front.max_connections = absl::GetFlag(FLAGS_proxy_max_connections);
    auto started = http::FrontEnd::Start(front, proxy->Factory());
    if (!started.ok()) {
      std::fprintf(stderr, "isorun-gateway: %s\n", std::string(started.status().message()).c_str());
      return 1;
    }
    proxy_front = std::move(*started);
    LogInfo("public-URL proxy serving",
            {{"address", absl::StrCat(public_addr, " (port ", proxy_front->port(), ")")},
             {"domain", proxy_options.public_domain}});
  }
  LogInfo("gateway serving",
          {{"http", absl::StrCat(http_options.address, " (port ", (*server)->port(), ")")},
           {"metrics", absl::GetFlag(FLAGS_metrics_addr)},
           {"lifecycle", absl::GetFlag(FLAGS_lifecycle_addr)},
           {"quota", absl::GetFlag(FLAGS_quota_addr)},
           {"region", region}});

  int sig = WaitForShutdownSignal();
  LogInfo("shutting down", {{"signal", std::to_string(sig)}});
  if (proxy_front) proxy_front->Stop();
  proxy_front.reset();
  proxy.reset();
  bool clean = (*server)->Stop(absl::GetFlag(FLAGS_shutdown_grace), [&api] { api.CancelCalls(); });
  if (!clean) {
    // A connection thread still runs a handler that uses `api`: do not destroy it under them.
    LogWarn("connections still busy at exit");
    std::fflush(nullptr);
    std::_Exit(0);
  }
  keys.Stop();
  key_admin.Stop();
  usage.Stop();
  LogInfo("stopped");
  return 0;
}

}  // namespace
}  // namespace isorun::gateway

int main(int argc, char** argv) {
  isorun::ParseFlags(argc, argv,
                     "isorun-gateway: the public HTTP/JSON API of Isorun.\n"
                     "Every flag can also be set as ISORUN_<FLAG> in the environment.");
  return isorun::gateway::Run();
}
