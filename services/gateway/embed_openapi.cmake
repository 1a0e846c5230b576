# Writes OUT, a C++ file defining isorun::gateway::OpenApiDocument() from the JSON file IN.
file(READ "${IN}" doc)
string(FIND "${doc}" ")isorun_openapi\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${IN} contains the raw-string delimiter )isorun_openapi\"")
endif()
file(WRITE "${OUT}.tmp" "// Generated from services/gateway/openapi.json. Do not edit.\n#include \"services/gateway/openapi.h\"\n\nnamespace isorun::gateway {\nstd::string_view OpenApiDocument() {\n  static constexpr std::string_view kDocument = R\"isorun_openapi(${doc})isorun_openapi\";\n  return kDocument;\n}\n}  // namespace isorun::gateway\n")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
