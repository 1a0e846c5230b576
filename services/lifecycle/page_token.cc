#include "services/lifecycle/page_token.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "services/kit/status.h"

namespace isorun::lifecycle {
namespace {

constexpr size_t kMaxToken = 512;

bool IsTimeChar(char c) {
  return (c >= '0' && c <= '9') || c == '-' || c == ':' || c == '.' || c == '+' || c == ' ' ||
         c == 'T';
}

bool IsIdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '-' || c == '_' || c == '.';
}

bool AllOf(std::string_view s, bool (*pred)(char)) {
  for (char c : s) {
    if (!pred(c)) return false;
  }
  return true;
}

absl::Status NotOurs() {
  return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
               "pageToken is not a token this API returned");
}

}  // namespace

std::string EncodePageToken(const PageCursor& cursor) {
  return absl::WebSafeBase64Escape(absl::StrCat(cursor.created_at, "|", cursor.id));
}

absl::StatusOr<PageCursor> DecodePageToken(std::string_view token) {
  std::string raw;
  if (token.empty() || token.size() > kMaxToken ||
      !absl::WebSafeBase64Unescape(absl::string_view(token.data(), token.size()), &raw)) {
    return NotOurs();
  }
  const size_t bar = raw.find('|');
  if (bar == std::string::npos) return NotOurs();
  PageCursor cursor{raw.substr(0, bar), raw.substr(bar + 1)};
  if (cursor.created_at.empty() || cursor.created_at.size() > 64 ||
      !AllOf(cursor.created_at, IsTimeChar) || cursor.id.empty() || cursor.id.size() > 128 ||
      !AllOf(cursor.id, IsIdChar)) {
    return NotOurs();
  }
  return cursor;
}

}  // namespace isorun::lifecycle
