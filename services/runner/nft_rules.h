#pragma once

// The nftables ruleset that enforces sandbox network profiles, as text for `nft -f` (pure, so a
// unit test reads it), and a thin runner of such batches through libnftables.
//
// One table per runner instance, `inet <table>`: several runners (and test runs) share a host, so
// nothing here touches what another runner made. Each sandbox has chains and sets of its own,
// named after its address (`sb_<hex>`), so adding, changing or removing one sandbox is one atomic
// batch that touches only its objects. Every batch applies whole or not at all.
//
//   set deny        operator deny list and 169.254.0.0/16 (interval)
//   set veths       this runner's host-side veth names
//   map egress      veth -> jump sb_<hex>          (forward hook)
//   map tohost      veth -> goto hb_<hex>          (input hook: everything but DNS to the gateway)
//   chain sb_<hex>  anti-spoofing, established connections of the current profile, other
//                   sandboxes, deny list, then the profile: open accepts, allowlist checks
//                   al_<hex> (listed addresses and blocks) and dn_<hex> (addresses the DNS
//                   forwarder answered, with the record's TTL as timeout), none blocks.
//   chain ok_<hex>  logs new allowed connections (allowlist) and marks them with the profile's
//                   generation (conntrack mark)
//   chain hb_<hex>  logs and rejects (admin-prohibited) blocked attempts
//
// Established connections are accepted only while their conntrack mark is the sandbox's current
// generation: a profile change (new generation) re-checks every packet of older connections, so
// it takes effect at once, while a DNS pin that expires does not cut a connection made under it.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "services/kit/egress_policy.h"

struct nft_ctx;

namespace isorun::runner {

// Log prefixes carry the verdict and the sandbox's address in hex: "isr B 64600005".
inline constexpr char kLogPrefix[] = "isr ";

struct RulesetSpec {
  std::string table;
  Ipv4Cidr range;      // sandbox addresses
  uint32_t gateway;    // the host side of every veth, where the DNS forwarder listens
  std::vector<Ipv4Cidr> deny;
  int log_group = 0;
};

struct SandboxRules {
  uint32_t address = 0;
  std::string veth;
  std::string egress;  // open, none, allowlist
  std::vector<Ipv4Cidr> allow;  // listed addresses and blocks
  uint32_t generation = 1;      // conntrack mark of connections made under this profile
  bool flush_pins = true;       // forget the DNS forwarder's answers (a new profile)
};

std::string Hex(uint32_t addr);
// The table with its base chains, replacing any earlier one of the same name.
std::string TableBatch(const RulesetSpec& spec);
// Creates or replaces one sandbox's objects.
std::string SandboxBatch(const RulesetSpec& spec, const SandboxRules& sb);
// Removes one sandbox's objects; applies cleanly whether they exist or not.
std::string RemoveSandboxBatch(const RulesetSpec& spec, uint32_t address, const std::string& veth);
// Adds answered addresses to a sandbox's DNS set, each with its timeout.
std::string PinBatch(const RulesetSpec& spec, uint32_t address,
                     const std::vector<std::pair<uint32_t, int>>& addrs_ttl_sec);

// Runs batches through libnftables. Thread-safe (calls are serialized).
class Nft {
 public:
  Nft();
  ~Nft();
  Nft(const Nft&) = delete;
  Nft& operator=(const Nft&) = delete;
  // INTERNAL with nft's message when the batch is refused.
  absl::Status Run(const std::string& batch);
  // Output of a listing command (e.g. "list tables").
  absl::StatusOr<std::string> List(const std::string& command);

 private:
  absl::Mutex mu_;
  nft_ctx* ctx_ ABSL_GUARDED_BY(mu_);
};

}  // namespace isorun::runner
