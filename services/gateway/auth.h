#pragma once

// Authentication of public API requests by API key (API.md "Keys and auth"). Pure decision logic
// over a KeyStore; the Postgres-backed store with its revocation-aware cache is pg_key_store.h.
//
// Failures are UNAUTHENTICATED with an ErrorDetail reason:
//   KEY_MISSING       neither `Authorization` nor `X-API-Key` was sent
//   KEY_MALFORMED     not `isr_<region>_<keyId>_<secret>`, or an Authorization scheme other than
//                     Bearer
//   KEY_WRONG_REGION  a well-formed key of another region (decided before any lookup)
//   KEY_UNKNOWN       no such key id, or the secret does not match: one message for both, so a
//                     caller never learns whether a key id exists
//   KEY_REVOKED       the secret matched but the key is revoked
// A store failure is UNAVAILABLE (the gateway answers 503, never 401, when it cannot tell).

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace isorun::gateway {

// What is stored for a key id.
struct StoredKey {
  std::string tenant_id;
  std::string region;
  std::string secret_hash;  // HashSecret(secret)
  bool revoked = false;
  // "admin" (may also manage the tenant's keys) or "sandbox" (sandboxes only).
  std::string role = "sandbox";
};

class KeyStore {
 public:
  virtual ~KeyStore() = default;
  // nullopt: no such key id. An error status: the store cannot answer now. Thread-safe.
  virtual absl::StatusOr<std::optional<StoredKey>> Find(const std::string& key_id) = 0;
};

struct Principal {
  std::string tenant_id;
  std::string key_id;  // safe to log
  std::string role;    // as StoredKey::role
  bool is_admin() const { return role == "admin"; }
};

// The credentials a request carries: header values, nullopt when the header is absent.
struct Credentials {
  std::optional<std::string_view> authorization;
  std::optional<std::string_view> x_api_key;
};

// Authenticates for a gateway serving `region`. Authorization wins when both headers are sent.
absl::StatusOr<Principal> Authenticate(const Credentials& credentials, std::string_view region,
                                       KeyStore& keys);

}  // namespace isorun::gateway
