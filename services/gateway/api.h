#pragma once

// The public HTTP/JSON API (API.md) as a handler from HttpRequest to HttpResponse: route, auth,
// body decoding, one lifecycle RPC, rendering, metrics and an access log line. No sockets here
// (http_server.h serves it), so tests can call it directly or over real HTTP.
//
// The tenant of every lifecycle request is the authenticated key's, never the body's.
// Thread-safe: called concurrently from every connection thread.

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "isorun/v1/sandboxes.grpc.pb.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "services/gateway/auth.h"
#include "services/gateway/admin.h"
#include "services/gateway/http_types.h"
#include "services/gateway/key_admin.h"
#include "services/gateway/rate_limit.h"
#include "services/gateway/routes.h"

namespace isorun::gateway {

class GatewayApi {
 public:
  struct Options {
    std::string region = "local";
    size_t max_body_bytes = 1 << 20;
    // Create waits for the sandbox to run, a cold image pull included.
    absl::Duration create_deadline = absl::Minutes(15);
    // Every other unary call; exec gets its command timeout plus this.
    absl::Duration call_deadline = absl::Seconds(60);
    absl::Duration health_deadline = absl::Seconds(2);
    // /healthz answers from its last check for this long (0: checks every time), so probes and
    // floods of it cost no dependency calls; a fresh answer is served on the I/O thread.
    absl::Duration health_cache_ttl = absl::Seconds(1);
    // The dashboard's build output, served at /dashboard/ (empty: none).
    std::string dashboard_dir;
  };
  // One dependency check for /healthz: OK or why not.
  using HealthCheck = std::function<absl::Status(absl::Duration deadline)>;

  // `rates` may be null: no rate limits. `key_admin` may be null: the key routes answer 501.
  GatewayApi(Options options, KeyStore& keys, const std::shared_ptr<grpc::Channel>& lifecycle,
             std::vector<std::pair<std::string, HealthCheck>> health_checks,
             prometheus::Registry& registry, RateChecker* rates = nullptr,
             PgKeyAdmin* key_admin = nullptr);
  GatewayApi(const GatewayApi&) = delete;
  GatewayApi& operator=(const GatewayApi&) = delete;

  // Operator routes, the usage history and its recording; each may be null (the routes then
  // answer 503 or 501). Call before serving.
  void SetAdmin(PgOperatorTokens* operators, SchedulerAdminClient* scheduler,
                TenantUsageRecorder* usage) {
    operators_ = operators;
    scheduler_admin_ = scheduler;
    usage_ = usage;
  }

  // Never throws: an unexpected exception becomes a 500 with the error body.
  HttpResponse Handle(const HttpRequest& request);
  // For the server's I/O threads: the answer when it needs no blocking work (GET /healthz while
  // its cached result is fresh), else nullopt.
  std::optional<HttpResponse> HandleWithoutBlocking(const HttpRequest& request);

  // Shutdown: cancels every lifecycle call in flight, and fails new ones at once.
  void CancelCalls();

 private:
  struct Context;
  class CallScope;

  HttpResponse Dispatch(const HttpRequest& request, const RouteMatch& match, std::string_view query,
                        Context& ctx);
  // The operation itself, for an authenticated and rate-checked request.
  HttpResponse Serve(const HttpRequest& request, const RouteMatch& match, std::string_view query,
                     Context& ctx);
  HttpResponse Healthz();
  HttpResponse CheckHealth();
  HttpResponse Create(const HttpRequest& request, Context& ctx);
  HttpResponse List(std::string_view query, Context& ctx);
  HttpResponse ExecStream(const HttpRequest& request, const std::string& id, Context& ctx);
  // /v1/admin/*, with an operator token (checked before).
  HttpResponse Admin(const RouteMatch& match, std::string_view query);
  // GET /v1/usage/history (admin keys only; checked before).
  HttpResponse UsageHistory(std::string_view query, Context& ctx);
  // GET, POST and DELETE /v1/keys (admin keys only; checked before).
  HttpResponse Keys(const HttpRequest& request, const RouteMatch& match, Context& ctx);

  // Runs one unary lifecycle call with the request id, a deadline and shutdown cancellation.
  template <typename Req, typename Resp>
  absl::Status Call(grpc::Status (v1::Sandboxes::Stub::*method)(grpc::ClientContext*, const Req&,
                                                                Resp*),
                    const Req& request, Resp* response, absl::Duration deadline, Context& ctx);
  // A call on one sandbox of the caller's tenant (`Req` has tenant_id and id) that answers with
  // the sandbox: 200 and its JSON, or the error.
  template <typename Req>
  HttpResponse SandboxCall(grpc::Status (v1::Sandboxes::Stub::*method)(grpc::ClientContext*,
                                                                        const Req&, v1::Sandbox*),
                           Req request, const std::string& id, absl::Duration deadline,
                           Context& ctx);
  std::unique_ptr<grpc::ClientContext> NewClientContext(absl::Duration deadline,
                                                        const Context& ctx) const;
  absl::Status MapLifecycleStatus(const grpc::Status& status, absl::Duration deadline);
  bool Register(grpc::ClientContext* call);
  void Unregister(grpc::ClientContext* call);

  const Options options_;
  KeyStore& keys_;
  std::unique_ptr<v1::Sandboxes::Stub> lifecycle_;
  const std::vector<std::pair<std::string, HealthCheck>> health_checks_;
  RateChecker* const rates_;
  PgKeyAdmin* const key_admin_;
  PgOperatorTokens* operators_ = nullptr;
  SchedulerAdminClient* scheduler_admin_ = nullptr;
  TenantUsageRecorder* usage_ = nullptr;

  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& durations_;
  prometheus::Family<prometheus::Counter>& auth_failures_;
  prometheus::Counter& rate_check_failures_;
  std::atomic<int64_t> last_rate_failure_log_{0};  // unix seconds, to throttle the warning

  // /healthz: one check at a time (refresh_mu_); its answer kept under health_mu_ (never held
  // while checking, so the I/O threads never wait on a check).
  absl::Mutex refresh_mu_;
  absl::Mutex health_mu_;
  std::optional<HttpResponse> health_ ABSL_GUARDED_BY(health_mu_);
  absl::Time health_until_ ABSL_GUARDED_BY(health_mu_);

  absl::Mutex mu_;
  absl::flat_hash_set<grpc::ClientContext*> calls_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace isorun::gateway
