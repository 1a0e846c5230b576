#pragma once

// The OpenAPI 3.1 document of the public API (services/gateway/openapi.json), embedded into the
// binary at build time and served at GET /v1/openapi.json.

#include <string_view>

namespace isorun::gateway {

std::string_view OpenApiDocument();

}  // namespace isorun::gateway
