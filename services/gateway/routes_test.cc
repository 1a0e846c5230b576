#include "services/gateway/routes.h"

#include <gtest/gtest.h>

namespace isorun::gateway {
namespace {

using Outcome = RouteMatch::Outcome;

TEST(MatchRoute, EveryRoute) {
  struct Case {
    const char* method;
    const char* path;
    Route route;
    const char* path_template;
    const char* id;
  } cases[] = {
      {"GET", "/healthz", Route::kHealthz, "/healthz", ""},
      {"GET", "/v1/openapi.json", Route::kOpenApi, "/v1/openapi.json", ""},
      {"POST", "/v1/sandboxes", Route::kCreateSandbox, "/v1/sandboxes", ""},
      {"GET", "/v1/sandboxes", Route::kListSandboxes, "/v1/sandboxes", ""},
      {"GET", "/v1/sandboxes/sbx_1", Route::kGetSandbox, "/v1/sandboxes/{id}", "sbx_1"},
      {"DELETE", "/v1/sandboxes/sbx_1", Route::kDestroySandbox, "/v1/sandboxes/{id}", "sbx_1"},
      {"POST", "/v1/sandboxes/sbx_1/timeout", Route::kSetTimeout, "/v1/sandboxes/{id}/timeout",
       "sbx_1"},
      {"POST", "/v1/sandboxes/sbx_1/hibernate", Route::kHibernate, "/v1/sandboxes/{id}/hibernate",
       "sbx_1"},
      {"POST", "/v1/sandboxes/sbx_1/resume", Route::kResume, "/v1/sandboxes/{id}/resume", "sbx_1"},
      {"POST", "/v1/sandboxes/sbx_1/exec", Route::kExec, "/v1/sandboxes/{id}/exec", "sbx_1"},
      {"POST", "/v1/sandboxes/sbx_1/exec:stream", Route::kExecStream,
       "/v1/sandboxes/{id}/exec:stream", "sbx_1"},
      {"GET", "/v1/usage", Route::kGetUsage, "/v1/usage", ""},
      {"PUT", "/v1/sandboxes/sbx_1/network", Route::kSetNetwork, "/v1/sandboxes/{id}/network",
       "sbx_1"},
      {"GET", "/v1/sandboxes/sbx_1/network/log", Route::kGetNetworkLog,
       "/v1/sandboxes/{id}/network/log", "sbx_1"},
      {"GET", "/v1/sandboxes/sbx_1/events", Route::kListSandboxEvents,
       "/v1/sandboxes/{id}/events", "sbx_1"},
  };
  for (const Case& c : cases) {
    RouteMatch m = MatchRoute(c.method, c.path);
    EXPECT_EQ(m.outcome, Outcome::kMatched) << c.method << " " << c.path;
    EXPECT_EQ(m.route, c.route) << c.path;
    EXPECT_EQ(m.path_template, c.path_template);
    EXPECT_EQ(m.sandbox_id, c.id);
  }
}

TEST(MatchRoute, UnknownPathsAreNotFound) {
  for (const char* path :
       {"/", "", "/v1", "/v1/", "/v1/sandboxes/", "/v1/sandboxes//exec", "/v2/sandboxes",
        "/v1/sandboxes/sbx_1/", "/v1/sandboxes/sbx_1/exec/x", "/v1/sandboxes/sbx_1/stop",
        "/V1/SANDBOXES", "/healthz/", "/v1/usage/x", "/metrics"}) {
    RouteMatch m = MatchRoute("GET", path);
    EXPECT_EQ(m.outcome, Outcome::kNotFound) << path;
    EXPECT_EQ(m.path_template, "other");
  }
}

TEST(MatchRoute, WrongMethodListsTheAllowedOnes) {
  RouteMatch m = MatchRoute("PUT", "/v1/sandboxes/sbx_1");
  EXPECT_EQ(m.outcome, Outcome::kMethodNotAllowed);
  EXPECT_EQ(m.allow, "GET, DELETE");
  EXPECT_EQ(m.path_template, "/v1/sandboxes/{id}");
  m = MatchRoute("DELETE", "/v1/sandboxes");
  EXPECT_EQ(m.outcome, Outcome::kMethodNotAllowed);
  EXPECT_EQ(m.allow, "POST, GET");
  m = MatchRoute("GET", "/v1/sandboxes/sbx_1/exec");
  EXPECT_EQ(m.allow, "POST");
  m = MatchRoute("get", "/v1/usage");  // methods are case-sensitive
  EXPECT_EQ(m.outcome, Outcome::kMethodNotAllowed);
}

TEST(IsPlausibleSandboxId, Characters) {
  EXPECT_TRUE(IsPlausibleSandboxId("sbx_4f8Ad0ZzQ1"));
  EXPECT_TRUE(IsPlausibleSandboxId("a-b"));
  EXPECT_FALSE(IsPlausibleSandboxId(""));
  EXPECT_FALSE(IsPlausibleSandboxId("sbx%201"));
  EXPECT_FALSE(IsPlausibleSandboxId("sbx.1"));
  EXPECT_FALSE(IsPlausibleSandboxId(std::string(65, 'a')));
}

}  // namespace
}  // namespace isorun::gateway
