// API keys as presented by anyone: parsing never crashes, a parsed key prints back exactly as it
// was given (so the split on '_' is unambiguous), and the constant-time comparison answers
// false for anything but the secret whose hash it holds.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz/fuzz_check.h"
#include "services/kit/api_key.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto key = isorun::ParseApiKey(text);
  if (key) {
    FUZZ_CHECK(key->ToString() == text);
    FUZZ_CHECK(isorun::IsValidRegion(key->region));
    const std::string hash = isorun::HashSecret(key->secret);
    FUZZ_CHECK(isorun::SecretMatches(key->secret, hash));
    FUZZ_CHECK(!isorun::SecretMatches(key->secret + "x", hash));
  }
  FUZZ_CHECK(!isorun::SecretMatches(text, "not a hash"));
  return 0;
}
