// Network allowlists (API.md "Network profiles"): entries and whole profiles from create and
// update bodies, and the DNS name matcher the runner's forwarder asks for every query of an
// allowlist sandbox. Nothing crashes; an accepted entry matches what it names and prints back to
// itself; a wildcard matches names below its suffix, never the suffix itself.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "fuzz/fuzz_check.h"
#include "services/kit/egress_policy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  // Line 1: an egress mode; the other lines: allow entries; the last line is also a queried name.
  std::vector<std::string> lines = absl::StrSplit(absl::string_view(text.data(), text.size()), '\n');
  isorun::v1::NetworkPolicy policy;
  policy.set_egress(lines[0]);
  std::vector<isorun::AllowEntry> entries;
  for (size_t i = 1; i < lines.size(); ++i) {
    policy.add_allow(lines[i]);
    auto entry = isorun::ParseAllowEntry(lines[i]);
    if (!entry.ok()) continue;
    entries.push_back(*entry);
    switch (entry->kind) {
      case isorun::AllowEntry::Kind::kCidr: {
        auto again = isorun::ParseIpv4Cidr(entry->cidr.ToString());
        FUZZ_CHECK(again.ok());
        FUZZ_CHECK(again->base == entry->cidr.base && again->prefix == entry->cidr.prefix);
        FUZZ_CHECK(entry->cidr.Contains(entry->cidr.base));
        break;
      }
      case isorun::AllowEntry::Kind::kDomain:
        FUZZ_CHECK(!entry->domain.empty());
        FUZZ_CHECK(isorun::DomainAllowed({*entry}, entry->domain));
        FUZZ_CHECK(isorun::DomainAllowed({*entry}, absl::AsciiStrToUpper(entry->domain) + "."));
        FUZZ_CHECK(!isorun::DomainAllowed({*entry}, "x" + entry->domain));
        break;
      case isorun::AllowEntry::Kind::kWildcard:
        FUZZ_CHECK(!entry->domain.empty());
        FUZZ_CHECK(isorun::DomainAllowed({*entry}, "a." + entry->domain));
        FUZZ_CHECK(!isorun::DomainAllowed({*entry}, entry->domain));
        FUZZ_CHECK(!isorun::DomainAllowed({*entry}, "a" + entry->domain));
        break;
    }
  }
  (void)isorun::DomainAllowed(entries, lines.back());
  const bool accepted = isorun::NormalizeNetworkPolicy(policy).ok();
  if (accepted) {
    FUZZ_CHECK(policy.egress() == "open" || policy.egress() == "none" ||
               policy.egress() == "allowlist");
    FUZZ_CHECK(policy.allow_size() <= isorun::kMaxAllowEntries);
    FUZZ_CHECK(policy.egress() == "allowlist" || policy.allow_size() == 0);
    // A normalized profile is a fixed point.
    isorun::v1::NetworkPolicy again = policy;
    FUZZ_CHECK(isorun::NormalizeNetworkPolicy(again).ok());
    FUZZ_CHECK(again.SerializeAsString() == policy.SerializeAsString());
  }
  return 0;
}
