#include "services/kit/ids.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

namespace isorun {
namespace {

std::vector<unsigned char> RandomBytes(int n) {
  std::vector<unsigned char> buf(static_cast<size_t>(n));
  if (RAND_bytes(buf.data(), n) != 1) throw std::runtime_error("RAND_bytes failed");
  return buf;
}

constexpr char kBase62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

}  // namespace

std::string RandomBase62(int n_bytes) {
  // Treat the bytes as a big-endian number and convert by repeated division: no modulo bias, and
  // the output carries exactly the input's entropy.
  std::vector<unsigned char> num = RandomBytes(n_bytes);
  std::string out;
  bool nonzero = true;
  while (nonzero) {
    nonzero = false;
    unsigned rem = 0;
    for (auto& byte : num) {
      unsigned cur = rem * 256 + byte;
      byte = static_cast<unsigned char>(cur / 62);
      rem = cur % 62;
      if (byte != 0) nonzero = true;
    }
    out.push_back(kBase62[rem]);
  }
  // Fixed width so that ids all look alike: ceil(8n / log2(62)) digits.
  size_t width = static_cast<size_t>((n_bytes * 8 * 1000 + 5953) / 5954);
  while (out.size() < width) out.push_back('0');
  return std::string(out.rbegin(), out.rend());
}

std::string RandomHex(int n_bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : RandomBytes(n_bytes)) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

std::string NewSandboxId() { return "sbx_" + RandomBase62(16); }
std::string NewPublicId() { return RandomHex(16); }

std::string Sha256Hex(std::string_view data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : digest) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace isorun
