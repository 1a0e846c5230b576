#pragma once

// Page tokens of GET /v1/sandboxes: an opaque (web-safe base64) cursor of the last row served,
// its creation time as Postgres printed it and its id. A token comes back from clients, so it is
// checked strictly before any of it reaches a statement: a token this API did not make is
// INVALID_ARGUMENT, never a database error.

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace isorun::lifecycle {

struct PageCursor {
  std::string created_at;  // timestamptz as text, e.g. "2026-12-01 13:54:36.269+00"
  std::string id;
};

std::string EncodePageToken(const PageCursor& cursor);
// INVALID_ARGUMENT (reason INVALID_ARGUMENT) for anything EncodePageToken cannot have made.
absl::StatusOr<PageCursor> DecodePageToken(std::string_view token);

}  // namespace isorun::lifecycle
