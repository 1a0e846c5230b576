#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "services/gateway/json_value.h"
#include "services/gateway/openapi.h"
#include "services/gateway/routes.h"

#ifndef ISORUN_OPENAPI_JSON
#error "ISORUN_OPENAPI_JSON must name services/gateway/openapi.json"
#endif

namespace isorun::gateway {
namespace {

const JsonValue* Member(const JsonValue& object, std::string_view name) {
  for (const auto& [key, value] : object.members()) {
    if (key == name) return &value;
  }
  return nullptr;
}

TEST(OpenApi, TheEmbeddedDocumentIsTheSourceFile) {
  std::ifstream file(ISORUN_OPENAPI_JSON);
  std::stringstream source;
  source << file.rdbuf();
  ASSERT_FALSE(source.str().empty());
  EXPECT_EQ(OpenApiDocument(), source.str()) << "rebuild: the embedded copy is stale";
}

// The document names only routes the gateway serves, each at its template: a path that drifts
// from the route table fails here (the node suite checks bodies against the schemas).
TEST(OpenApi, EveryDocumentedOperationIsARoute) {
  auto doc = ParseJson(OpenApiDocument(), 64);
  ASSERT_TRUE(doc.ok()) << doc.status();
  ASSERT_NE(Member(*doc, "openapi"), nullptr);
  EXPECT_EQ(Member(*doc, "openapi")->string_value(), "3.1.0");
  const JsonValue* paths = Member(*doc, "paths");
  ASSERT_NE(paths, nullptr);
  int operations = 0;
  for (const auto& [path, item] : paths->members()) {
    for (const auto& [method, operation] : item.members()) {
      if (method == "parameters") continue;
      std::string upper;
      for (char c : method) upper.push_back(static_cast<char>(std::toupper(c)));
      std::string concrete = path;
      if (size_t at = concrete.find("{id}"); at != std::string::npos) {
        concrete.replace(at, 4, "sbx_x");
      }
      RouteMatch match = MatchRoute(upper, concrete);
      EXPECT_EQ(match.outcome, RouteMatch::Outcome::kMatched) << upper << " " << path;
      EXPECT_EQ(match.path_template, path);
      ++operations;
    }
  }
  EXPECT_GE(operations, 12);
}

}  // namespace
}  // namespace isorun::gateway
