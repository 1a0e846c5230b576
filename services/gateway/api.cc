#include "services/gateway/api.h"

#include <exception>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "services/gateway/bodies.h"
#include "services/gateway/exec_stream.h"
#include "services/gateway/openapi.h"
#include "services/gateway/render.h"
#include "services/gateway/static_files.h"
#include "services/gateway/strings.h"
#include "services/kit/api_key.h"
#include "services/kit/ids.h"
#include "services/kit/json.h"
#include "services/kit/log.h"
#include "services/kit/status.h"

namespace isorun::gateway {
namespace {

constexpr absl::Duration kDefaultExecTimeout = absl::Seconds(30);

// A bounded label: the usual methods, everything else "other".
std::string MethodLabel(std::string_view method) {
  for (std::string_view known : {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}) {
    if (method == known) return std::string(known);
  }
  return "other";
}

std::string Shorten(std::string_view s, size_t max = 200) {
  if (s.size() <= max) return std::string(s);
  return Cat(s.substr(0, max), "...");
}

HttpResponse Json(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

// The reason of an error body this gateway rendered ("" if none).
std::string ReasonOfErrorBody(std::string_view body) {
  constexpr std::string_view kField = "\"reason\":\"";
  size_t at = body.find(kField);
  if (at == std::string_view::npos) return "UNKNOWN";
  at += kField.size();
  size_t end = body.find('"', at);
  if (end == std::string_view::npos || end - at > 64) return "UNKNOWN";
  return std::string(body.substr(at, end - at));
}

bool RouteHasId(Route route) {
  switch (route) {
    case Route::kGetSandbox:
    case Route::kDestroySandbox:
    case Route::kSetTimeout:
    case Route::kHibernate:
    case Route::kResume:
    case Route::kExec:
    case Route::kExecStream:
    case Route::kSetNetwork:
    case Route::kGetNetworkLog:
    case Route::kListSandboxEvents:
      return true;
    default:
      return false;
  }
}

bool IsSaneRequestId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.';
    if (!ok) return false;
  }
  return true;
}


}  // namespace

struct GatewayApi::Context {
  std::string request_id;
  Principal principal;
  std::string auth_failure;  // reason, for the log
};

// Registers a client context for shutdown cancellation for its lifetime.
class GatewayApi::CallScope {
 public:
  CallScope(GatewayApi& api, grpc::ClientContext* call) : api_(api), call_(call) {
    if (!api_.Register(call_)) call_->TryCancel();
  }
  ~CallScope() { api_.Unregister(call_); }
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;

 private:
  GatewayApi& api_;
  grpc::ClientContext* call_;
};

GatewayApi::GatewayApi(Options options, KeyStore& keys,
                       const std::shared_ptr<grpc::Channel>& lifecycle,
                       std::vector<std::pair<std::string, HealthCheck>> health_checks,
                       prometheus::Registry& registry, RateChecker* rates,
                       PgKeyAdmin* key_admin)
    : options_(std::move(options)),
      keys_(keys),
      lifecycle_(v1::Sandboxes::NewStub(lifecycle)),
      health_checks_(std::move(health_checks)),
      rates_(rates),
      key_admin_(key_admin),
      requests_(prometheus::BuildCounter()
                    .Name("isorun_gateway_http_requests_total")
                    .Help("HTTP requests answered, by route template, method and status code.")
                    .Register(registry)),
      durations_(prometheus::BuildHistogram()
                     .Name("isorun_gateway_http_request_duration_seconds")
                     .Help("Time to answer an HTTP request (to the response head for streams).")
                     .Register(registry)),
      auth_failures_(prometheus::BuildCounter()
                         .Name("isorun_gateway_auth_failures_total")
                         .Help("Requests refused with 401, by reason.")
                         .Register(registry)),
      rate_check_failures_(
          prometheus::BuildCounter()
              .Name("isorun_gateway_rate_check_failures_total")
              .Help("Rate checks the quota service could not answer (the requests were let "
                    "through).")
              .Register(registry)
              .Add({})) {}

bool GatewayApi::Register(grpc::ClientContext* call) {
  absl::MutexLock lock(&mu_);
  calls_.insert(call);
  return !cancelled_;
}

void GatewayApi::Unregister(grpc::ClientContext* call) {
  absl::MutexLock lock(&mu_);
  calls_.erase(call);
}

void GatewayApi::CancelCalls() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  for (grpc::ClientContext* call : calls_) call->TryCancel();
}

HttpResponse GatewayApi::Handle(const HttpRequest& request) {
  const absl::Time start = absl::Now();
  Context ctx;
  // A caller's (or an API gateway's) request id is kept when it is sane, for tracing.
  auto incoming = request.Header("x-request-id");
  ctx.request_id = incoming && IsSaneRequestId(*incoming) ? std::string(*incoming) : RandomHex(8);
  std::string_view target = request.target;
  size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  std::string_view query = q == std::string_view::npos ? "" : target.substr(q + 1);
  RouteMatch match = MatchRoute(request.method, path);
  const bool dashboard = IsDashboardPath(path);
  if (dashboard) match.path_template = "/dashboard/*";

  HttpResponse response;
  try {
    response = dashboard ? ServeDashboard(options_.dashboard_dir, request.method, path)
                         : Dispatch(request, match, query, ctx);
  } catch (const std::exception& e) {
    LogError("request failed with an exception",
             {{"request_id", ctx.request_id}, {"error", e.what()}});
    response =
        ErrorResponse(absl::InternalError("internal error; the request id is " + ctx.request_id));
  } catch (...) {
    LogError("request failed with an unknown exception", {{"request_id", ctx.request_id}});
    response =
        ErrorResponse(absl::InternalError("internal error; the request id is " + ctx.request_id));
  }
  response.headers.emplace_back("X-Request-Id", ctx.request_id);

  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const std::string route(match.path_template);
  const std::string method = MethodLabel(request.method);
  try {
    requests_.Add({{"route", route}, {"method", method}, {"code", std::to_string(response.status)}})
        .Increment();
    static const prometheus::Histogram::BucketBoundaries kBuckets = {
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
    durations_.Add({{"route", route}, {"method", method}}, kBuckets).Observe(seconds);
  } catch (const std::exception& e) {
    LogError("metrics update failed", {{"error", e.what()}});
  }
  if ((match.outcome == RouteMatch::Outcome::kMatched && match.route == Route::kHealthz &&
       response.status == 200) ||
      (dashboard && response.status < 400)) {
    return response;  // probes and static files: not worth a log line each
  }
  const LogLevel level = response.status >= 500 ? LogLevel::kWarn : LogLevel::kInfo;
  const std::string status = std::to_string(response.status);
  const std::string ms = std::to_string(static_cast<int64_t>(seconds * 1000));
  const std::string logged_method = Shorten(request.method, 16);
  if (!ctx.auth_failure.empty()) {
    Log(level, "http request",
        {{"request_id", ctx.request_id},
         {"method", logged_method},
         {"route", route},
         {"status", status},
         {"ms", ms},
         {"auth_failure", ctx.auth_failure}});
  } else if (!ctx.principal.key_id.empty()) {
    Log(level, "http request",
        {{"request_id", ctx.request_id},
         {"method", logged_method},
         {"route", route},
         {"status", status},
         {"ms", ms},
         {"key_id", ctx.principal.key_id}});
  } else {
    Log(level, "http request",
        {{"request_id", ctx.request_id},
         {"method", logged_method},
         {"route", route},
         {"status", status},
         {"ms", ms}});
  }
  return response;
}

HttpResponse GatewayApi::Dispatch(const HttpRequest& request, const RouteMatch& match,
                                  std::string_view query, Context& ctx) {
  if (request.body_too_large) {
    return ErrorResponse(Error(absl::StatusCode::kInvalidArgument, "BODY_TOO_LARGE",
                               Cat("the request body is larger than the limit of ",
                                   options_.max_body_bytes, " bytes")),
                         413);
  }
  if (match.outcome == RouteMatch::Outcome::kNotFound) {
    std::string_view path = std::string_view(request.target).substr(0, request.target.find('?'));
    return ErrorResponse(
        Error(absl::StatusCode::kNotFound, "NOT_FOUND",
              Cat("no such route: ", Shorten(request.method, 16), " ", Shorten(path))));
  }
  if (match.outcome == RouteMatch::Outcome::kMethodNotAllowed) {
    HttpResponse r =
        ErrorResponse(Error(absl::StatusCode::kUnimplemented, "METHOD_NOT_ALLOWED",
                            Cat("method ", Shorten(request.method, 16), " is not allowed on ",
                                match.path_template, "; allowed: ", match.allow)),
                      405);
    r.headers.emplace_back("Allow", match.allow);
    return r;
  }
  if (match.route == Route::kHealthz) return Healthz();
  if (match.route == Route::kOpenApi) {
    // Public: API gateways and code generators fetch the contract before they hold a key.
    HttpResponse r = Json(200, std::string(OpenApiDocument()));
    r.headers.emplace_back("Cache-Control", "public, max-age=300");
    return r;
  }
  if (IsOperatorRoute(match.route)) {
    if (operators_ == nullptr) {
      return ErrorResponse(Error(absl::StatusCode::kUnimplemented, "UNIMPLEMENTED",
                                 "this gateway serves no operator routes"));
    }
    auto token = operators_->Verify(request.Header("authorization"));
    if (!token.ok()) {
      if (auto detail = ErrorDetailOf(token.status())) ctx.auth_failure = detail->reason();
      HttpResponse r = ErrorResponse(token.status());
      if (r.status == 401) r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"isorun-admin\"");
      return r;
    }
    if (request.method == "POST" && !request.body.empty()) {
      if (absl::Status st = ParseEmptyBody(request.body); !st.ok()) return ErrorResponse(st);
    }
    return Admin(match, query);
  }

  auto principal =
      Authenticate(Credentials{request.Header("authorization"), request.Header("x-api-key")},
                   options_.region, keys_);
  if (!principal.ok()) {
    if (principal.status().code() == absl::StatusCode::kUnauthenticated) {
      auto detail = ErrorDetailOf(principal.status());
      ctx.auth_failure = detail ? detail->reason() : "UNAUTHENTICATED";
      auth_failures_.Add({{"reason", ctx.auth_failure}}).Increment();
    }
    HttpResponse r = ErrorResponse(principal.status());
    // RFC 9110: a 401 names the scheme to use.
    if (r.status == 401) r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"isorun\"");
    return r;
  }
  ctx.principal = *std::move(principal);
  if (key_admin_ != nullptr) key_admin_->Touch(ctx.principal.key_id);
  if (IsKeyAdminRoute(match.route) && !ctx.principal.is_admin()) {
    return ErrorResponse(Error(absl::StatusCode::kPermissionDenied, "PERMISSION_DENIED",
                               Cat("key ", ctx.principal.key_id, " has role \"",
                                   ctx.principal.role,
                                   "\"; only admin keys may manage API keys and read the usage history")));
  }

  std::vector<std::pair<std::string, std::string>> rate_headers;
  if (rates_ != nullptr) {
    v1::RateKind kind = match.route == Route::kCreateSandbox ? v1::CREATE : v1::REQUEST;
    auto window = rates_->Check(ctx.principal.tenant_id, ctx.principal.key_id, kind);
    if (window.ok()) {
      rate_headers = RateLimitHeaders(*window);
    } else if (window.status().code() == absl::StatusCode::kResourceExhausted) {
      if (usage_ != nullptr) {
        auto detail = ErrorDetailOf(window.status());
        usage_->RecordRefusal(ctx.principal.tenant_id, detail ? detail->reason() : "RATE_LIMIT");
      }
      return ErrorResponse(window.status());
    } else {
      rate_check_failures_.Increment();
      int64_t now = absl::ToUnixSeconds(absl::Now());
      int64_t last = last_rate_failure_log_.load();
      if (now - last >= 10 && last_rate_failure_log_.compare_exchange_strong(last, now)) {
        LogWarn("rate check failed; letting requests through",
                {{"error", std::string(window.status().message())}});
      }
    }
  }
  HttpResponse response = Serve(request, match, query, ctx);
  for (auto& header : rate_headers) response.headers.push_back(std::move(header));
  if (usage_ != nullptr) {
    usage_->Seen(ctx.principal.tenant_id);
    if (match.route == Route::kCreateSandbox && response.status == 201) {
      usage_->RecordCreate(ctx.principal.tenant_id);
    } else if (response.status == 429) {
      usage_->RecordRefusal(ctx.principal.tenant_id, ReasonOfErrorBody(response.body));
    }
  }
  return response;
}

template <typename Req>
HttpResponse GatewayApi::SandboxCall(
    grpc::Status (v1::Sandboxes::Stub::*method)(grpc::ClientContext*, const Req&, v1::Sandbox*),
    Req request, const std::string& id, absl::Duration deadline, Context& ctx) {
  request.set_tenant_id(ctx.principal.tenant_id);
  request.set_id(id);
  v1::Sandbox out;
  absl::Status st = Call(method, request, &out, deadline, ctx);
  if (!st.ok()) return ErrorResponse(st);
  return Json(200, SandboxJson(out));
}

HttpResponse GatewayApi::Serve(const HttpRequest& request, const RouteMatch& match,
                               std::string_view query, Context& ctx) {
  const std::string& id = match.sandbox_id;
  if (RouteHasId(match.route) && !IsPlausibleSandboxId(id)) {
    return ErrorResponse(Error(absl::StatusCode::kNotFound, "NOT_FOUND",
                               Cat("no sandbox with id \"", Shorten(id, 64), "\"")));
  }
  if ((request.method == "POST" || request.method == "PUT") && !request.body.empty()) {
    if (auto type = request.Header("content-type"); type && !IsJsonContentType(*type)) {
      return ErrorResponse(Error(absl::StatusCode::kInvalidArgument, "UNSUPPORTED_MEDIA_TYPE",
                                 Cat("the body must be JSON (Content-Type: "
                                     "application/json), not ",
                                     Shorten(*type, 100))),
                           415);
    }
  }

  const std::string& tenant = ctx.principal.tenant_id;
  switch (match.route) {
    case Route::kCreateSandbox:
      return Create(request, ctx);
    case Route::kListSandboxes:
      return List(query, ctx);
    case Route::kGetSandbox:
      return SandboxCall(&v1::Sandboxes::Stub::GetSandbox, v1::GetSandboxRequest(), id,
                         options_.call_deadline, ctx);
    case Route::kDestroySandbox: {
      v1::DestroySandboxRequest req;
      req.set_tenant_id(tenant);
      req.set_id(id);
      v1::DestroySandboxResponse out;
      absl::Status st =
          Call(&v1::Sandboxes::Stub::DestroySandbox, req, &out, options_.call_deadline, ctx);
      if (!st.ok()) return ErrorResponse(st);
      HttpResponse r;
      r.status = 204;
      r.content_type.clear();
      return r;
    }
    case Route::kSetTimeout: {
      auto timeout = ParseSetTimeoutBody(request.body);
      if (!timeout.ok()) return ErrorResponse(timeout.status());
      v1::SetTimeoutRequest req;
      req.set_timeout_sec(*timeout);
      return SandboxCall(&v1::Sandboxes::Stub::SetTimeout, std::move(req), id,
                         options_.call_deadline, ctx);
    }
    case Route::kHibernate: {
      if (absl::Status st = ParseEmptyBody(request.body); !st.ok()) return ErrorResponse(st);
      return SandboxCall(&v1::Sandboxes::Stub::HibernateSandbox, v1::HibernateSandboxRequest(),
                         id, options_.call_deadline, ctx);
    }
    case Route::kResume: {
      if (absl::Status st = ParseEmptyBody(request.body); !st.ok()) return ErrorResponse(st);
      // Resume is admitted like a create and may start the sandbox again: create's deadline.
      return SandboxCall(&v1::Sandboxes::Stub::ResumeSandbox, v1::ResumeSandboxRequest(), id,
                         options_.create_deadline, ctx);
    }
    case Route::kExec: {
      auto req = ParseExecBody(request.body);
      if (!req.ok()) return ErrorResponse(req.status());
      req->set_tenant_id(tenant);
      req->set_id(id);
      absl::Duration timeout =
          req->timeout_sec() > 0 ? absl::Seconds(req->timeout_sec()) : kDefaultExecTimeout;
      v1::ExecResponse out;
      absl::Status st =
          Call(&v1::Sandboxes::Stub::Exec, *req, &out, timeout + options_.call_deadline, ctx);
      if (!st.ok()) return ErrorResponse(st);
      return Json(200, ExecJson(out));
    }
    case Route::kExecStream:
      return ExecStream(request, id, ctx);
    case Route::kSetNetwork: {
      auto network = ParseNetworkBody(request.body);
      if (!network.ok()) return ErrorResponse(network.status());
      v1::SetNetworkRequest req;
      *req.mutable_network() = *std::move(network);
      return SandboxCall(&v1::Sandboxes::Stub::SetNetwork, std::move(req), id,
                         options_.call_deadline, ctx);
    }
    case Route::kGetNetworkLog: {
      v1::GetNetworkLogRequest req;
      req.set_tenant_id(tenant);
      req.set_id(id);
      v1::NetworkLog out;
      absl::Status st =
          Call(&v1::Sandboxes::Stub::GetNetworkLog, req, &out, options_.call_deadline, ctx);
      if (!st.ok()) return ErrorResponse(st);
      return Json(200, NetworkLogJson(out));
    }
    case Route::kListSandboxEvents: {
      auto req = ParseEventsQuery(query);
      if (!req.ok()) return ErrorResponse(req.status());
      req->set_tenant_id(tenant);
      req->set_id(id);
      v1::ListSandboxEventsResponse out;
      absl::Status st = Call(&v1::Sandboxes::Stub::ListSandboxEvents, *req, &out,
                             options_.call_deadline, ctx);
      if (!st.ok()) return ErrorResponse(st);
      return Json(200, EventsJson(out));
    }
    case Route::kGetUsage: {
      v1::GetUsageRequest req;
      req.set_tenant_id(tenant);
      v1::Usage out;
      absl::Status st =
          Call(&v1::Sandboxes::Stub::GetUsage, req, &out, options_.call_deadline, ctx);
      if (!st.ok()) return ErrorResponse(st);
      return Json(200, UsageJson(out));
    }
    case Route::kListKeys:
    case Route::kCreateKey:
    case Route::kRevokeKey:
      return Keys(request, match, ctx);
    case Route::kUsageHistory:
      return UsageHistory(query, ctx);
    case Route::kAdminCapacity:
    case Route::kAdminCapacityHistory:
    case Route::kAdminDrain:
    case Route::kAdminUndrain:
      break;  // served before authentication by key
    case Route::kHealthz:
    case Route::kOpenApi:
      break;
  }
  return ErrorResponse(absl::InternalError("unhandled route"));
}

namespace {

void WriteKeyFields(JsonWriter& w, const KeyInfo& k) {
  w.Key("keyId").String(k.key_id).Key("name").String(k.name).Key("role").String(k.role);
  w.Key("region").String(k.region).Key("createdAt").String(k.created_at);
  if (!k.last_used_at.empty()) w.Key("lastUsedAt").String(k.last_used_at);
  if (!k.revoked_at.empty()) w.Key("revokedAt").String(k.revoked_at);
}

bool IsBase62(std::string_view s) {
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) {
      return false;
    }
  }
  return !s.empty() && s.size() <= 64;
}

}  // namespace

namespace {

absl::Status BadQuery(std::string_view message) {
  return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT", message);
}

// from, to (RFC 3339 or unix seconds; default the last hour) and step (seconds; default a
// 120th of the span, at least 10), for the history routes. At most 10,000 steps.
struct Range {
  absl::Time from, to;
  absl::Duration step;
  std::string region;
};

absl::StatusOr<Range> ParseRange(std::string_view query, bool allow_region) {
  auto params = ParseQueryString(query);
  if (!params.ok()) return params.status();
  Range r;
  r.to = absl::Now();
  r.from = r.to - absl::Hours(1);
  int64_t step = 0;
  bool has_from = false;
  auto parse_time = [](const std::string& name, const std::string& v,
                       absl::Time* out) -> absl::Status {
    int64_t seconds = 0;
    if (absl::SimpleAtoi(v, &seconds)) {
      *out = absl::FromUnixSeconds(seconds);
      return absl::OkStatus();
    }
    std::string err;
    if (absl::ParseTime(absl::RFC3339_full, v, out, &err)) return absl::OkStatus();
    return BadQuery(Cat("parameter \"", name, "\" must be an RFC 3339 time or unix seconds"));
  };
  for (const auto& [k, v] : *params) {
    if (k == "from") {
      if (absl::Status st = parse_time(k, v, &r.from); !st.ok()) return st;
      has_from = true;
    } else if (k == "to") {
      if (absl::Status st = parse_time(k, v, &r.to); !st.ok()) return st;
    } else if (k == "step") {
      if (!absl::SimpleAtoi(v, &step) || step < 1 || step > 31 * 86400) {
        return BadQuery("parameter \"step\" must be a whole number of seconds, 1 to 2678400");
      }
    } else if (k == "region" && allow_region) {
      r.region = v;
    } else {
      return BadQuery(Cat("unknown parameter \"", k.substr(0, 40), "\""));
    }
  }
  if (!has_from) r.from = r.to - absl::Hours(1);
  if (r.to <= r.from) return BadQuery("\"from\" must be before \"to\"");
  const int64_t span = absl::ToInt64Seconds(r.to - r.from);
  if (step == 0) step = std::max<int64_t>(10, span / 120);
  if (span / step > 10000) {
    return BadQuery(Cat("from..to is ", span / step, " steps of ", step,
                        " s; at most 10000: choose a larger step"));
  }
  r.step = absl::Seconds(step);
  return r;
}

HttpResponse Passthrough(const absl::StatusOr<UpstreamResponse>& up) {
  if (!up.ok()) return ErrorResponse(absl::UnavailableError(up.status().message()));
  if (up->status == 404) {
    return ErrorResponse(Error(absl::StatusCode::kNotFound, "NOT_FOUND",
                               Cat("scheduler: ", up->body.substr(0, 200))));
  }
  if (up->status != 200) {
    return ErrorResponse(absl::UnavailableError(
        Cat("the scheduler answered ", up->status, ": ", up->body.substr(0, 200))));
  }
  HttpResponse r = Json(200, up->body);
  r.headers.emplace_back("Cache-Control", "no-store");
  return r;
}

}  // namespace

HttpResponse GatewayApi::Admin(const RouteMatch& match, std::string_view query) {
  if (scheduler_admin_ == nullptr) {
    return ErrorResponse(absl::UnavailableError("this gateway has no scheduler admin address"));
  }
  switch (match.route) {
    case Route::kAdminCapacity: {
      if (!query.empty()) return ErrorResponse(BadQuery("this route takes no parameters"));
      return Passthrough(scheduler_admin_->Call("GET", "/capacity?sandboxes=0&forecast=1"));
    }
    case Route::kAdminCapacityHistory: {
      auto range = ParseRange(query, true);
      if (!range.ok()) return ErrorResponse(range.status());
      std::string target = Cat("/capacity/history?from=", absl::ToUnixSeconds(range->from),
                               "&to=", absl::ToUnixSeconds(range->to),
                               "&step=", absl::ToInt64Seconds(range->step));
      if (!range->region.empty()) {
        if (!IsValidRegion(range->region)) return ErrorResponse(BadQuery("invalid region"));
        target += "&region=" + range->region;
      }
      return Passthrough(scheduler_admin_->Call("GET", target));
    }
    case Route::kAdminDrain:
    case Route::kAdminUndrain: {
      const std::string& runner = match.sandbox_id;
      if (!IsPlausibleSandboxId(runner)) {
        return ErrorResponse(Error(absl::StatusCode::kNotFound, "NOT_FOUND", "no such runner"));
      }
      auto up = scheduler_admin_->Call(
          "POST", Cat("/runners/", runner, match.route == Route::kAdminDrain ? "/drain" : "/undrain"));
      if (up.ok() && up->status == 200) {
        HttpResponse r;
        r.status = 204;
        r.content_type.clear();
        return r;
      }
      return Passthrough(up);
    }
    default:
      return ErrorResponse(absl::InternalError("not an operator route"));
  }
}

HttpResponse GatewayApi::UsageHistory(std::string_view query, Context& ctx) {
  if (usage_ == nullptr) {
    return ErrorResponse(Error(absl::StatusCode::kUnimplemented, "UNIMPLEMENTED",
                               "this gateway records no usage history"));
  }
  auto range = ParseRange(query, false);
  if (!range.ok()) return ErrorResponse(range.status());
  auto points = usage_->Query(ctx.principal.tenant_id, range->from, range->to, range->step);
  if (!points.ok()) return ErrorResponse(points.status());
  JsonWriter w;
  auto rfc = [](absl::Time t) {
    return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
  };
  w.BeginObject();
  w.Key("from").String(rfc(range->from)).Key("to").String(rfc(range->to));
  w.Key("stepSec").Int(absl::ToInt64Seconds(range->step));
  w.Key("points").BeginArray();
  for (const auto& p : *points) {
    auto get = [&](const std::string& m) {
      auto it = p.values.find(m);
      return it == p.values.end() ? int64_t{0} : it->second;
    };
    w.BeginObject().Key("time").String(rfc(p.at));
    w.Key("activeMax").Int(get("active_max")).Key("hibernatedMax").Int(get("hibernated_max"));
    w.Key("creates").Int(get("creates"));
    w.Key("refused").BeginObject();
    std::vector<std::pair<std::string, int64_t>> refused;
    for (const auto& [m, v] : p.values) {
      if (m.rfind("refused:", 0) == 0) refused.emplace_back(m.substr(8), v);
    }
    std::sort(refused.begin(), refused.end());
    for (const auto& [reason, v] : refused) w.Key(reason).Int(v);
    w.EndObject().EndObject();
  }
  w.EndArray().EndObject();
  HttpResponse r = Json(200, w.Take());
  r.headers.emplace_back("Cache-Control", "no-store");
  return r;
}

HttpResponse GatewayApi::Keys(const HttpRequest& request, const RouteMatch& match, Context& ctx) {
  if (key_admin_ == nullptr) {
    return ErrorResponse(Error(absl::StatusCode::kUnimplemented, "UNIMPLEMENTED",
                               "this gateway does not manage API keys"));
  }
  const std::string& tenant = ctx.principal.tenant_id;
  switch (match.route) {
    case Route::kListKeys: {
      auto keys = key_admin_->List(tenant);
      if (!keys.ok()) return ErrorResponse(keys.status());
      JsonWriter w;
      w.BeginObject().Key("keys").BeginArray();
      for (const KeyInfo& k : *keys) {
        w.BeginObject();
        WriteKeyFields(w, k);
        w.EndObject();
      }
      w.EndArray().EndObject();
      return Json(200, w.Take());
    }
    case Route::kCreateKey: {
      auto body = ParseCreateKeyBody(request.body);
      if (!body.ok()) return ErrorResponse(body.status());
      auto created = key_admin_->Create(tenant, body->name, body->role, options_.region);
      if (!created.ok()) return ErrorResponse(created.status());
      JsonWriter w;
      w.BeginObject().Key("key").String(created->key);
      WriteKeyFields(w, created->info);
      w.EndObject();
      HttpResponse r = Json(201, w.Take());
      r.headers.emplace_back("Cache-Control", "no-store");
      return r;
    }
    case Route::kRevokeKey: {
      const std::string& key_id = match.sandbox_id;
      if (!IsBase62(key_id)) {
        return ErrorResponse(Error(absl::StatusCode::kNotFound, "NOT_FOUND",
                                   Cat("no API key with id \"", Shorten(key_id, 64), "\"")));
      }
      if (absl::Status st = key_admin_->Revoke(tenant, key_id); !st.ok()) {
        return ErrorResponse(st);
      }
      HttpResponse r;
      r.status = 204;
      r.content_type.clear();
      return r;
    }
    default:
      return ErrorResponse(absl::InternalError("not a key route"));
  }
}

std::optional<HttpResponse> GatewayApi::HandleWithoutBlocking(const HttpRequest& request) {
  if (request.method != "GET" || request.target != "/healthz") return std::nullopt;
  {
    absl::MutexLock lock(&health_mu_);
    if (!health_ || absl::Now() >= health_until_) return std::nullopt;
  }
  return Handle(request);  // answered from the cache: no blocking work
}

HttpResponse GatewayApi::Healthz() {
  const auto fresh = [this]() -> std::optional<HttpResponse> {
    absl::MutexLock lock(&health_mu_);
    if (health_ && absl::Now() < health_until_) return health_;
    return std::nullopt;
  };
  if (auto cached = fresh()) return *cached;
  // Concurrent callers wait for the one check in progress and share its answer.
  absl::MutexLock refresh(&refresh_mu_);
  if (auto cached = fresh()) return *cached;
  HttpResponse answer = CheckHealth();
  if (options_.health_cache_ttl > absl::ZeroDuration()) {
    absl::MutexLock lock(&health_mu_);
    health_ = answer;
    health_until_ = absl::Now() + options_.health_cache_ttl;
  }
  return answer;
}

HttpResponse GatewayApi::CheckHealth() {
  std::vector<std::string> failures;
  for (const auto& [name, check] : health_checks_) {
    absl::Status st;
    try {
      st = check(options_.health_deadline);
    } catch (const std::exception& e) {
      st = absl::InternalError(e.what());
    }
    if (!st.ok()) failures.push_back(Cat(name, ": ", st.message()));
  }
  if (failures.empty()) return Json(200, R"({"status":"ok"})");
  return ErrorResponse(Error(absl::StatusCode::kUnavailable, "UNHEALTHY",
                             Cat("unhealthy: ", absl::StrJoin(failures, "; "))));
}

HttpResponse GatewayApi::Create(const HttpRequest& request, Context& ctx) {
  auto req = ParseCreateBody(request.body);
  if (!req.ok()) return ErrorResponse(req.status());
  if (auto key = request.Header("idempotency-key")) {
    if (!IsValidIdempotencyKey(*key)) {
      return ErrorResponse(Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
                                 "the Idempotency-Key header must be 1 to 255 printable ASCII "
                                 "characters"));
    }
    req->set_idempotency_key(std::string(*key));
  }
  req->set_tenant_id(ctx.principal.tenant_id);
  v1::Sandbox out;
  absl::Status st =
      Call(&v1::Sandboxes::Stub::CreateSandbox, *req, &out, options_.create_deadline, ctx);
  if (!st.ok()) return ErrorResponse(st);
  HttpResponse r = Json(201, SandboxJson(out));
  if (IsPlausibleSandboxId(out.id()))
    r.headers.emplace_back("Location", "/v1/sandboxes/" + out.id());
  return r;
}

HttpResponse GatewayApi::List(std::string_view query, Context& ctx) {
  auto req = ParseListQuery(query);
  if (!req.ok()) return ErrorResponse(req.status());
  req->set_tenant_id(ctx.principal.tenant_id);
  v1::ListSandboxesResponse out;
  absl::Status st =
      Call(&v1::Sandboxes::Stub::ListSandboxes, *req, &out, options_.call_deadline, ctx);
  if (!st.ok()) return ErrorResponse(st);
  return Json(200, ListJson(out));
}

HttpResponse GatewayApi::ExecStream(const HttpRequest& request, const std::string& id,
                                    Context& ctx) {
  auto req = ParseExecBody(request.body);
  if (!req.ok()) return ErrorResponse(req.status());
  req->set_tenant_id(ctx.principal.tenant_id);
  req->set_id(id);
  // No default timeout for streams (API.md); a given one bounds the call.
  absl::Duration deadline = req->timeout_sec() > 0
                                ? absl::Seconds(req->timeout_sec()) + options_.call_deadline
                                : absl::InfiniteDuration();

  // Owns the call and its shutdown registration for as long as the response streams.
  struct Stream {
    Stream(GatewayApi& api, std::unique_ptr<ExecStreamCall> c)
        : call(std::move(c)), scope(api, &call->context()) {}
    std::unique_ptr<ExecStreamCall> call;
    CallScope scope;  // destroyed first: unregistered before the call goes away
  };
  auto stream = std::make_shared<Stream>(
      *this, std::make_unique<ExecStreamCall>(*lifecycle_, NewClientContext(deadline, ctx),
                                              *std::move(req)));
  absl::Status started = stream->call->WaitStarted();
  if (!started.ok()) {
    return ErrorResponse(MapLifecycleStatus(stream->call->Finish(), deadline));
  }

  HttpResponse r;
  r.status = 200;
  r.content_type = "application/x-ndjson";
  r.headers.emplace_back("Cache-Control", "no-store");
  r.on_client_gone = [stream] { stream->call->Cancel(); };
  r.stream = [this, stream, deadline](const ChunkWriter& write) {
    v1::ExecChunk chunk;
    bool client_gone = false;
    while (stream->call->Next(chunk)) {
      std::string line = ExecChunkLine(chunk);
      if (!line.empty() && !write(line)) {
        client_gone = true;  // API.md: a client that disconnects kills the command
        stream->call->Cancel();
        break;
      }
    }
    grpc::Status status = stream->call->Finish();
    if (!status.ok() && !client_gone) {
      std::string line = RenderError(MapLifecycleStatus(status, deadline)).body + "\n";
      write(line);
    }
  };
  return r;
}

std::unique_ptr<grpc::ClientContext> GatewayApi::NewClientContext(absl::Duration deadline,
                                                                  const Context& ctx) const {
  auto call = std::make_unique<grpc::ClientContext>();
  if (deadline != absl::InfiniteDuration()) {
    call->set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  }
  call->AddMetadata("x-request-id", ctx.request_id);
  return call;
}

template <typename Req, typename Resp>
absl::Status GatewayApi::Call(grpc::Status (v1::Sandboxes::Stub::*method)(grpc::ClientContext*,
                                                                          const Req&, Resp*),
                              const Req& request, Resp* response, absl::Duration deadline,
                              Context& ctx) {
  std::unique_ptr<grpc::ClientContext> call = NewClientContext(deadline, ctx);
  CallScope scope(*this, call.get());
  grpc::Status status = ((*lifecycle_).*method)(call.get(), request, response);
  return MapLifecycleStatus(status, deadline);
}

absl::Status GatewayApi::MapLifecycleStatus(const grpc::Status& status, absl::Duration deadline) {
  absl::Status st = FromGrpcStatus(status);
  if (st.ok() || ErrorDetailOf(st)) return st;
  // Failures of the call itself (not answers of the service) get messages a client can act on.
  switch (st.code()) {
    case absl::StatusCode::kUnavailable:
      return absl::UnavailableError(
          Cat("the lifecycle service is unavailable, retry later: ", st.message()));
    case absl::StatusCode::kDeadlineExceeded:
      if (status.error_message() == "Deadline Exceeded") {
        return absl::DeadlineExceededError(
            Cat("the lifecycle service did not answer within ", absl::FormatDuration(deadline)));
      }
      return st;
    case absl::StatusCode::kCancelled: {
      absl::MutexLock lock(&mu_);
      if (cancelled_) return absl::UnavailableError("the gateway is shutting down, retry");
      return st;
    }
    default:
      return st;
  }
}

}  // namespace isorun::gateway
