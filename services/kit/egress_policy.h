#pragma once

// Network profiles (API.md "Network profiles"): parsing and checking of `network` bodies, shared
// by the lifecycle (validation at create and update) and the runner (which enforces them).
// Pure.

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "isorun/v1/sandboxes.pb.h"

namespace isorun {

inline constexpr int kMaxAllowEntries = 256;

// An IPv4 block; an address is a /32.
struct Ipv4Cidr {
  uint32_t base = 0;  // host order, host bits zero
  int prefix = 32;
  bool Contains(uint32_t addr) const;
  bool Overlaps(const Ipv4Cidr& other) const;
  uint32_t Size() const;  // addresses (2^(32 - prefix)), saturated for /0
  std::string ToString() const;  // "a.b.c.d/n"
};

// "a.b.c.d" (a /32) or "a.b.c.d/n" with zero host bits.
absl::StatusOr<Ipv4Cidr> ParseIpv4Cidr(absl::string_view text);
// "a.b.c.d" only, in host order.
absl::StatusOr<uint32_t> ParseIpv4(absl::string_view text);
std::string Ipv4ToString(uint32_t addr);

struct AllowEntry {
  enum class Kind { kCidr, kDomain, kWildcard };
  Kind kind = Kind::kCidr;
  Ipv4Cidr cidr;       // kCidr (an address is a /32)
  std::string domain;  // kDomain: the name; kWildcard: the suffix after "*.", lowercase, no dot
};

// An entry of `allow`: an IPv4 address, a CIDR block, a host name (letters, digits, '-', labels of
// 1-63 characters, 253 at most) or "*." followed by one. A trailing dot is accepted; names are
// compared without case.
absl::StatusOr<AllowEntry> ParseAllowEntry(absl::string_view text);

// Checks a profile and fills the default egress ("open"). INVALID_ARGUMENT naming the field or
// entry: unknown egress, allow without allowlist, a malformed entry, more than kMaxAllowEntries.
absl::Status NormalizeNetworkPolicy(v1::NetworkPolicy& policy);

// Whether a queried name (any case, with or without the final dot) is allowed by `entries`.
// "*.example.com" matches names below example.com, not example.com itself.
bool DomainAllowed(const std::vector<AllowEntry>& entries, absl::string_view name);

}  // namespace isorun
