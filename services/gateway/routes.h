#pragma once

// The route table of the public API: which operation a method and path name, with the sandbox id
// taken from the path. Pure; the metrics label of a route is its template.

#include <string>
#include <string_view>
#include <vector>

namespace isorun::gateway {

enum class Route {
  kHealthz,
  kOpenApi,
  kCreateSandbox,
  kListSandboxes,
  kGetSandbox,
  kDestroySandbox,
  kSetTimeout,
  kHibernate,
  kResume,
  kExec,
  kExecStream,
  kGetUsage,
  kListKeys,
  kCreateKey,
  kRevokeKey,
  kUsageHistory,
  kAdminCapacity,
  kAdminCapacityHistory,
  kAdminDrain,
  kAdminUndrain,
  kSetNetwork,
  kGetNetworkLog,
  kListSandboxEvents,
};

// Routes of operators: an operator token instead of an API key.
bool IsOperatorRoute(Route route);

// Routes only admin keys may call (403 PERMISSION_DENIED for sandbox keys): the key routes and
// the tenant's usage history.
bool IsKeyAdminRoute(Route route);

struct RouteMatch {
  enum class Outcome { kMatched, kNotFound, kMethodNotAllowed };
  Outcome outcome = Outcome::kNotFound;
  Route route = Route::kHealthz;
  // "/v1/sandboxes/{id}"; "other" when nothing matched (a bounded label for metrics).
  std::string_view path_template = "other";
  // The {id} segment, as sent (not decoded): a sandbox id, or a key id on /v1/keys/{id}.
  std::string sandbox_id;
  // For kMethodNotAllowed: the methods the path accepts ("GET, DELETE").
  std::string allow;
};

// `path` excludes the query string.
RouteMatch MatchRoute(std::string_view method, std::string_view path);

// Every route of the table as method and template, in table order: the OpenAPI document must
// describe each (openapi_test.cc).
struct RouteTemplate {
  std::string_view method;
  std::string_view path_template;
};
std::vector<RouteTemplate> AllRouteTemplates();

// Sandbox ids are "sbx_" plus base62; anything else outside [A-Za-z0-9_-] (or too long) cannot
// name a sandbox, and is answered 404 without asking the lifecycle service.
bool IsPlausibleSandboxId(std::string_view id);

}  // namespace isorun::gateway
