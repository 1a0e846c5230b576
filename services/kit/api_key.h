#pragma once

// API keys: `isr_<region>_<keyId>_<secret>` (API.md). `region` is [a-z0-9-]+, `keyId` and
// `secret` are base62, so the key splits unambiguously on '_'. The secret carries 256 bits from
// the CSPRNG; only its SHA-256 is stored, and it is compared in constant time.

#include <optional>
#include <string>
#include <string_view>

namespace isorun {

struct ApiKey {
  std::string region;
  std::string key_id;
  std::string secret;

  std::string ToString() const { return "isr_" + region + "_" + key_id + "_" + secret; }
};

// A new key for `region` (which must be valid: see IsValidRegion).
ApiKey NewApiKey(std::string_view region);

// Parses a presented key; nullopt when it is not of the format above.
std::optional<ApiKey> ParseApiKey(std::string_view text);

bool IsValidRegion(std::string_view region);

// What is stored for a secret: lowercase hex SHA-256.
std::string HashSecret(std::string_view secret);

// Constant-time check of a presented secret against a stored hash.
bool SecretMatches(std::string_view secret, std::string_view stored_hash);

// Operator tokens (/v1/admin/*, the dashboard's operator view): `isro_<tokenId>_<secret>`, both
// base62, the secret as strong as an API key's; stored as HashSecret(secret).
struct OperatorToken {
  std::string token_id;
  std::string secret;

  std::string ToString() const { return "isro_" + token_id + "_" + secret; }
};
OperatorToken NewOperatorToken();
std::optional<OperatorToken> ParseOperatorToken(std::string_view text);

}  // namespace isorun
