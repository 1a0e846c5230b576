#pragma once

// Identifiers and secrets. Everything random comes from OpenSSL's CSPRNG (RAND_bytes).

#include <string>
#include <string_view>

namespace isorun {

// `n_bytes` random bytes, base62-encoded (letters and digits only). 16 bytes give 22 characters.
std::string RandomBase62(int n_bytes);
// `n_bytes` random bytes as lowercase hex.
std::string RandomHex(int n_bytes);

// "sbx_" + 128 random bits, base62.
std::string NewSandboxId();
// 128 random bits, lowercase hex (DNS labels are case-insensitive, so no base62 here).
std::string NewPublicId();

std::string Sha256Hex(std::string_view data);
// Compares in time that depends only on the lengths.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

}  // namespace isorun
