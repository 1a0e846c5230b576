#include "services/kit/egress_policy.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "services/kit/status.h"

namespace isorun {
namespace {

absl::Status Invalid(const std::string& message) {
  return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT", message);
}

uint32_t Mask(int prefix) { return prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix); }

bool ValidHostName(absl::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  for (absl::string_view label : absl::StrSplit(name, '.')) {
    if (label.empty() || label.size() > 63) return false;
    if (label.front() == '-' || label.back() == '-') return false;
    for (char c : label) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') return false;
    }
  }
  return true;
}

std::string CanonicalName(absl::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  return absl::AsciiStrToLower(name);
}

}  // namespace

bool Ipv4Cidr::Contains(uint32_t addr) const { return (addr & Mask(prefix)) == base; }

bool Ipv4Cidr::Overlaps(const Ipv4Cidr& other) const {
  const int p = std::min(prefix, other.prefix);
  return (base & Mask(p)) == (other.base & Mask(p));
}

uint32_t Ipv4Cidr::Size() const { return prefix == 0 ? ~uint32_t{0} : uint32_t{1} << (32 - prefix); }

std::string Ipv4Cidr::ToString() const { return absl::StrCat(Ipv4ToString(base), "/", prefix); }

std::string Ipv4ToString(uint32_t addr) {
  return absl::StrCat(addr >> 24, ".", (addr >> 16) & 255, ".", (addr >> 8) & 255, ".",
                      addr & 255);
}

absl::StatusOr<uint32_t> ParseIpv4(absl::string_view text) {
  std::vector<absl::string_view> parts =
      absl::StrSplit(text, '.');
  if (parts.size() != 4) return Invalid(absl::StrCat("'", text, "' is not an IPv4 address"));
  uint32_t addr = 0;
  for (absl::string_view p : parts) {
    int v = 0;
    // Digits only, no leading zeros (which some tools read as octal).
    if (p.empty() || p.size() > 3 || (p.size() > 1 && p[0] == '0') ||
        p.find_first_not_of("0123456789") != absl::string_view::npos || !absl::SimpleAtoi(p, &v) ||
        v > 255) {
      return Invalid(absl::StrCat("'", text, "' is not an IPv4 address"));
    }
    addr = (addr << 8) | static_cast<uint32_t>(v);
  }
  return addr;
}

absl::StatusOr<Ipv4Cidr> ParseIpv4Cidr(absl::string_view text) {
  Ipv4Cidr out;
  absl::string_view addr_text = text;
  if (auto slash = text.find('/'); slash != absl::string_view::npos) {
    addr_text = text.substr(0, slash);
    absl::string_view len = text.substr(slash + 1);
    if (len.empty() || len.size() > 2 || len.find_first_not_of("0123456789") != len.npos ||
        !absl::SimpleAtoi(len, &out.prefix) ||
        out.prefix > 32) {
      return Invalid(absl::StrCat("'", text, "' is not a CIDR block (a.b.c.d/0-32)"));
    }
  }
  auto addr = ParseIpv4(addr_text);
  if (!addr.ok()) return Invalid(absl::StrCat("'", text, "' is not an IPv4 address or CIDR block"));
  if ((*addr & ~Mask(out.prefix)) != 0) {
    return Invalid(absl::StrCat("'", text, "' has host bits set (did you mean ",
                                Ipv4ToString(*addr & Mask(out.prefix)), "/", out.prefix, "?)"));
  }
  out.base = *addr;
  return out;
}

absl::StatusOr<AllowEntry> ParseAllowEntry(absl::string_view text) {
  AllowEntry e;
  if (!text.empty() && (absl::ascii_isdigit(static_cast<unsigned char>(text.back())) ||
                        text.find('/') != absl::string_view::npos) &&
      text.find_first_not_of("0123456789./") == absl::string_view::npos) {
    auto cidr = ParseIpv4Cidr(text);
    if (!cidr.ok()) return cidr.status();
    e.kind = AllowEntry::Kind::kCidr;
    e.cidr = *cidr;
    return e;
  }
  absl::string_view name = text;
  if (name.substr(0, 2) == "*.") {
    e.kind = AllowEntry::Kind::kWildcard;
    name.remove_prefix(2);
  } else {
    e.kind = AllowEntry::Kind::kDomain;
  }
  std::string canonical = CanonicalName(name);
  if (!ValidHostName(canonical) || canonical.find('.') == std::string::npos) {
    return Invalid(absl::StrCat("'", text,
                                "' is not an IPv4 address, CIDR block, host name or *.name "
                                "(IPv6 is not supported)"));
  }
  e.domain = std::move(canonical);
  return e;
}

absl::Status NormalizeNetworkPolicy(v1::NetworkPolicy& policy) {
  if (policy.egress().empty()) policy.set_egress("open");
  if (policy.egress() != "open" && policy.egress() != "none" && policy.egress() != "allowlist") {
    return Invalid(absl::StrCat("network.egress must be open, none or allowlist, got '",
                                policy.egress().substr(0, 64), "'"));
  }
  if (policy.egress() != "allowlist" && policy.allow_size() > 0) {
    return Invalid(absl::StrCat("network.allow is only valid with egress allowlist (egress is ",
                                policy.egress(), ")"));
  }
  if (policy.allow_size() > kMaxAllowEntries) {
    return Invalid(absl::StrCat("network.allow has ", policy.allow_size(), " entries; at most ",
                                kMaxAllowEntries));
  }
  for (int i = 0; i < policy.allow_size(); ++i) {
    const std::string& entry = policy.allow(i);
    auto parsed = ParseAllowEntry(entry);
    if (!parsed.ok()) {
      return Invalid(absl::StrCat("network.allow[", i, "]: ", parsed.status().message()));
    }
  }
  return absl::OkStatus();
}

bool DomainAllowed(const std::vector<AllowEntry>& entries, absl::string_view name) {
  const std::string n = CanonicalName(name);
  for (const auto& e : entries) {
    if (e.kind == AllowEntry::Kind::kDomain && n == e.domain) return true;
    if (e.kind == AllowEntry::Kind::kWildcard && n.size() > e.domain.size() + 1 &&
        n.compare(n.size() - e.domain.size(), e.domain.size(), e.domain) == 0 &&
        n[n.size() - e.domain.size() - 1] == '.') {
      return true;
    }
  }
  return false;
}

}  // namespace isorun
