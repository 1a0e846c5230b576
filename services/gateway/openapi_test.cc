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

// `path_template` with each {name} replaced by `value`.
std::string Fill(std::string_view path_template, std::string_view value) {
  std::string out;
  for (size_t i = 0; i < path_template.size(); ++i) {
    if (path_template[i] == '{') {
      size_t close = path_template.find('}', i);
      if (close == std::string_view::npos) return out + std::string(path_template.substr(i));
      out += value;
      i = close;
    } else {
      out.push_back(path_template[i]);
    }
  }
  return out;
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
      RouteMatch match = MatchRoute(upper, Fill(path, "x1"));
      EXPECT_EQ(match.outcome, RouteMatch::Outcome::kMatched)
          << upper << " " << path << " is documented but is not a route of the gateway";
      // The gateway's templates name every parameter {id}; the document may name them better.
      EXPECT_EQ(Fill(match.path_template, "{}"), Fill(path, "{}")) << path;
      ++operations;
    }
  }
  EXPECT_GE(operations, 12);
}

// And the other way round: a route added to the gateway must be added to the document.
TEST(OpenApi, EveryRouteIsDocumented) {
  auto doc = ParseJson(OpenApiDocument(), 64);
  ASSERT_TRUE(doc.ok()) << doc.status();
  const JsonValue* paths = Member(*doc, "paths");
  ASSERT_NE(paths, nullptr);
  for (const RouteTemplate& route : AllRouteTemplates()) {
    bool documented = false;
    for (const auto& [path, item] : paths->members()) {
      if (Fill(path, "{}") != Fill(route.path_template, "{}")) continue;
      std::string lower;
      for (char c : route.method) lower.push_back(static_cast<char>(std::tolower(c)));
      documented = Member(item, lower) != nullptr;
    }
    EXPECT_TRUE(documented) << route.method << " " << route.path_template
                            << " is a route of the gateway but services/gateway/openapi.json does "
                               "not describe it: add it there (paths, schemas, error answers)";
  }
}

}  // namespace
}  // namespace isorun::gateway
