#include "services/kit/api_key.h"

#include <cctype>

#include "services/kit/ids.h"

namespace isorun {
namespace {

constexpr size_t kKeyIdBytes = 12;   // 16 base62 digits: unique row ids, safe to log
constexpr size_t kSecretBytes = 32;  // 43 base62 digits
constexpr size_t kMinSecretChars = 43;
constexpr size_t kMaxPartChars = 128;

bool IsBase62(std::string_view s) {
  if (s.empty() || s.size() > kMaxPartChars) return false;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

}  // namespace

bool IsValidRegion(std::string_view region) {
  if (region.empty() || region.size() > 63) return false;
  for (char c : region) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    if (!ok) return false;
  }
  return true;
}

ApiKey NewApiKey(std::string_view region) {
  return ApiKey{std::string(region), RandomBase62(kKeyIdBytes), RandomBase62(kSecretBytes)};
}

std::optional<ApiKey> ParseApiKey(std::string_view text) {
  if (text.substr(0, 4) != "isr_") return std::nullopt;
  text.remove_prefix(4);
  auto first = text.find('_');
  if (first == std::string_view::npos) return std::nullopt;
  auto second = text.find('_', first + 1);
  if (second == std::string_view::npos) return std::nullopt;
  ApiKey key{std::string(text.substr(0, first)),
             std::string(text.substr(first + 1, second - first - 1)),
             std::string(text.substr(second + 1))};
  if (!IsValidRegion(key.region) || !IsBase62(key.key_id) || !IsBase62(key.secret) ||
      key.secret.size() < kMinSecretChars) {
    return std::nullopt;
  }
  return key;
}

OperatorToken NewOperatorToken() {
  return OperatorToken{RandomBase62(kKeyIdBytes), RandomBase62(kSecretBytes)};
}

std::optional<OperatorToken> ParseOperatorToken(std::string_view text) {
  if (text.substr(0, 5) != "isro_") return std::nullopt;
  text.remove_prefix(5);
  auto sep = text.find('_');
  if (sep == std::string_view::npos) return std::nullopt;
  OperatorToken token{std::string(text.substr(0, sep)), std::string(text.substr(sep + 1))};
  if (!IsBase62(token.token_id) || !IsBase62(token.secret) ||
      token.secret.size() < kMinSecretChars) {
    return std::nullopt;
  }
  return token;
}

std::string HashSecret(std::string_view secret) { return Sha256Hex(secret); }

bool SecretMatches(std::string_view secret, std::string_view stored_hash) {
  return ConstantTimeEquals(HashSecret(secret), stored_hash);
}

}  // namespace isorun
