#include "services/gateway/auth.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "services/gateway/strings.h"
#include "services/kit/api_key.h"
#include "services/kit/status.h"

namespace isorun::gateway {
namespace {

absl::Status Unauthenticated(std::string_view reason, std::string_view message) {
  return Error(absl::StatusCode::kUnauthenticated, reason, message);
}

constexpr std::string_view kFormat = "expected isr_<region>_<keyId>_<secret>";

absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace

absl::StatusOr<Principal> Authenticate(const Credentials& credentials, std::string_view region,
                                       KeyStore& keys) {
  // A Bearer Authorization header wins; a key in X-API-Key is used otherwise (so a proxy's own
  // Basic Authorization header does not hide it).
  std::optional<std::string_view> presented;
  bool bad_scheme = false;
  if (credentials.authorization) {
    absl::string_view header = absl::StripAsciiWhitespace(Absl(*credentials.authorization));
    // RFC 7235: the scheme is case-insensitive, followed by one or more spaces.
    size_t space = header.find(' ');
    absl::string_view scheme = header.substr(0, space);
    if (absl::EqualsIgnoreCase(scheme, "bearer")) {
      absl::string_view token = space == absl::string_view::npos
                                    ? absl::string_view()
                                    : absl::StripLeadingAsciiWhitespace(header.substr(space));
      presented = std::string_view(token.data(), token.size());
    } else {
      bad_scheme = true;
    }
  }
  if (!presented && credentials.x_api_key) {
    absl::string_view token = absl::StripAsciiWhitespace(Absl(*credentials.x_api_key));
    presented = std::string_view(token.data(), token.size());
  }
  if (!presented && bad_scheme) {
    return Unauthenticated("KEY_MALFORMED",
                           "the Authorization header must be `Bearer <key>` (or send the key in "
                           "X-API-Key)");
  }
  if (!presented) {
    return Unauthenticated("KEY_MISSING",
                           "no API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`");
  }
  if (presented->empty()) {
    return Unauthenticated("KEY_MISSING",
                           "the API key is empty: send `Authorization: Bearer <key>` or "
                           "`X-API-Key: <key>`");
  }

  std::optional<ApiKey> key = ParseApiKey(*presented);
  if (!key) return Unauthenticated("KEY_MALFORMED", Cat("the API key is malformed: ", kFormat));
  if (key->region != region) {
    return Unauthenticated("KEY_WRONG_REGION", Cat("the API key is for region \"", key->region,
                                                   "\" but this endpoint serves region \"", region,
                                                   "\": use that region's endpoint"));
  }

  auto stored = keys.Find(key->key_id);
  if (!stored.ok()) {
    return absl::UnavailableError(
        Cat("cannot check the API key right now: ", stored.status().message()));
  }
  // One answer for "no such id" and "wrong secret": the message must not reveal which.
  if (!stored->has_value() || !SecretMatches(key->secret, (*stored)->secret_hash) ||
      (*stored)->region != key->region) {
    return Unauthenticated("KEY_UNKNOWN", "the API key is not valid");
  }
  if ((*stored)->revoked) {
    return Unauthenticated("KEY_REVOKED", Cat("the API key ", key->key_id, " has been revoked"));
  }
  return Principal{(*stored)->tenant_id, key->key_id, (*stored)->role};
}

}  // namespace isorun::gateway
