// Page tokens come back from clients: decoding never crashes, refuses with INVALID_ARGUMENT, and
// what it accepts re-encodes to a token that decodes to the same cursor.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz/fuzz_check.h"
#include "services/lifecycle/page_token.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto cursor = isorun::lifecycle::DecodePageToken(text);
  if (!cursor.ok()) {
    FUZZ_CHECK(cursor.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  FUZZ_CHECK(cursor->created_at.find('|') == std::string::npos);
  auto again = isorun::lifecycle::DecodePageToken(isorun::lifecycle::EncodePageToken(*cursor));
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->created_at == cursor->created_at && again->id == cursor->id);
  return 0;
}
