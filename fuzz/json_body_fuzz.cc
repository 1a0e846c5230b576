// The gateway's strict JSON parser and the body decoders built on it: no input crashes, every
// refusal is INVALID_ARGUMENT (a 400, never a 500), and what the parser accepts is valid UTF-8
// with at most the nesting it allows.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz/fuzz_check.h"
#include "services/gateway/bodies.h"
#include "services/gateway/json_value.h"
#include "services/kit/json.h"

namespace {

using isorun::gateway::JsonValue;

int Depth(const JsonValue& v) {
  int d = 0;
  for (const auto& item : v.items()) d = std::max(d, Depth(item));
  for (const auto& [k, m] : v.members()) {
    FUZZ_CHECK(isorun::SanitizeUtf8(k) == k);
    d = std::max(d, Depth(m));
  }
  if (v.kind() == JsonValue::Kind::kString) {
    FUZZ_CHECK(isorun::SanitizeUtf8(v.string_value()) == v.string_value());
  }
  return d + 1;
}

template <typename T>
void CheckRefusal(const T& result) {
  if (!result.ok()) FUZZ_CHECK(result.status().code() == absl::StatusCode::kInvalidArgument);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = isorun::gateway::ParseJson(text, 8);
  if (parsed.ok()) FUZZ_CHECK(Depth(*parsed) <= 9);
  CheckRefusal(isorun::gateway::ParseCreateBody(text));
  CheckRefusal(isorun::gateway::ParseExecBody(text));
  CheckRefusal(isorun::gateway::ParseSetTimeoutBody(text));
  auto empty = isorun::gateway::ParseEmptyBody(text);
  if (!empty.ok()) FUZZ_CHECK(empty.code() == absl::StatusCode::kInvalidArgument);
  CheckRefusal(isorun::gateway::ParseListQuery(text));
  return 0;
}
