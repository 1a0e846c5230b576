#include "services/gateway/routes.h"

#include <vector>

#include "absl/strings/str_split.h"

namespace isorun::gateway {
namespace {

struct Entry {
  std::string_view method;
  std::string_view path_template;
  Route route;
};

// Templates: "{id}" matches one non-empty segment.
constexpr Entry kRoutes[] = {
    {"GET", "/healthz", Route::kHealthz},
    {"GET", "/v1/openapi.json", Route::kOpenApi},
    {"POST", "/v1/sandboxes", Route::kCreateSandbox},
    {"GET", "/v1/sandboxes", Route::kListSandboxes},
    {"GET", "/v1/sandboxes/{id}", Route::kGetSandbox},
    {"DELETE", "/v1/sandboxes/{id}", Route::kDestroySandbox},
    {"POST", "/v1/sandboxes/{id}/timeout", Route::kSetTimeout},
    {"POST", "/v1/sandboxes/{id}/hibernate", Route::kHibernate},
    {"POST", "/v1/sandboxes/{id}/resume", Route::kResume},
    {"POST", "/v1/sandboxes/{id}/exec", Route::kExec},
    {"POST", "/v1/sandboxes/{id}/exec:stream", Route::kExecStream},
    {"PUT", "/v1/sandboxes/{id}/network", Route::kSetNetwork},
    {"GET", "/v1/sandboxes/{id}/network/log", Route::kGetNetworkLog},
    {"GET", "/v1/sandboxes/{id}/events", Route::kListSandboxEvents},
    {"GET", "/v1/usage", Route::kGetUsage},
    {"GET", "/v1/keys", Route::kListKeys},
    {"POST", "/v1/keys", Route::kCreateKey},
    {"DELETE", "/v1/keys/{id}", Route::kRevokeKey},
    {"GET", "/v1/usage/history", Route::kUsageHistory},
    {"GET", "/v1/admin/capacity", Route::kAdminCapacity},
    {"GET", "/v1/admin/capacity/history", Route::kAdminCapacityHistory},
    {"POST", "/v1/admin/runners/{id}/drain", Route::kAdminDrain},
    {"POST", "/v1/admin/runners/{id}/undrain", Route::kAdminUndrain},
};

std::vector<std::string_view> Segments(std::string_view path) {
  std::vector<std::string_view> out;
  for (absl::string_view part : absl::StrSplit(absl::string_view(path.data(), path.size()), '/')) {
    out.emplace_back(part.data(), part.size());
  }
  return out;
}

// Whether `path` fits `path_template`; fills `id` from the {id} segment.
bool Fits(std::string_view path_template, std::string_view path, std::string& id) {
  auto want = Segments(path_template);
  auto got = Segments(path);
  if (want.size() != got.size()) return false;
  for (size_t i = 0; i < want.size(); ++i) {
    if (want[i] == "{id}") {
      if (got[i].empty()) return false;
      id = std::string(got[i]);
    } else if (want[i] != got[i]) {
      return false;
    }
  }
  return true;
}

}  // namespace

RouteMatch MatchRoute(std::string_view method, std::string_view path) {
  RouteMatch match;
  for (const Entry& entry : kRoutes) {
    std::string id;
    if (!Fits(entry.path_template, path, id)) continue;
    if (entry.method == method) {
      match.outcome = RouteMatch::Outcome::kMatched;
      match.route = entry.route;
      match.path_template = entry.path_template;
      match.sandbox_id = std::move(id);
      match.allow.clear();
      return match;
    }
    match.outcome = RouteMatch::Outcome::kMethodNotAllowed;
    match.path_template = entry.path_template;
    if (!match.allow.empty()) match.allow += ", ";
    match.allow += entry.method;
  }
  return match;
}

bool IsKeyAdminRoute(Route route) {
  return route == Route::kListKeys || route == Route::kCreateKey || route == Route::kRevokeKey ||
         route == Route::kUsageHistory;
}

bool IsOperatorRoute(Route route) {
  return route == Route::kAdminCapacity || route == Route::kAdminCapacityHistory ||
         route == Route::kAdminDrain || route == Route::kAdminUndrain;
}

std::vector<RouteTemplate> AllRouteTemplates() {
  std::vector<RouteTemplate> out;
  for (const Entry& entry : kRoutes) out.push_back({entry.method, entry.path_template});
  return out;
}

bool IsPlausibleSandboxId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace isorun::gateway
