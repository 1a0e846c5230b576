#pragma once

// Sandbox networks and their egress profiles, enforced at the host (API.md "Network profiles").
//
// Every sandbox gets an address from this runner's range (--sandbox_network; the first address
// is the gateway, the host side of every veth) for its whole life, hibernation included, and a
// resolv.conf bind-mounted at /etc/resolv.conf. With egress `open` or `allowlist` it also gets a
// veth pair (host side `isv<address in hex>`, `eth0` inside) with a default route to the gateway,
// and rules in this runner's nftables table (nft_rules.h); `none` has loopback only and no
// resolver. The DNS forwarder (dns_forwarder.h) on the gateway address is every sandbox's
// resolver. Always blocked: the host (every address, every port, except the forwarder), other
// sandboxes, 169.254.0.0/16 and the operator's deny list.
//
// State survives a runner restart: the kernel keeps veths and rules, and a file per sandbox under
// `state_dir` keeps its address and profile, so Recover() rebuilds the table, re-attaches the
// live sandboxes and removes what belonged to the others. DNS pins are not kept across a restart:
// the next lookup of a name pins it again.
//
// Thread-safe.

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "isorun/v1/sandboxes.pb.h"
#include "services/kit/egress_policy.h"
#include "services/runner/dns_forwarder.h"
#include "services/runner/nflog.h"
#include "services/runner/nft_rules.h"

namespace isorun::runner {

// The operator deny list when none is given: loopback, RFC 1918, shared address space (RFC 6598),
// link-local.
inline constexpr char kDefaultEgressDeny[] =
    "127.0.0.0/8,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,169.254.0.0/16";

struct NetworkOptions {
  std::string range;  // CIDR, at most /29
  std::string deny = kDefaultEgressDeny;  // comma-separated CIDRs
  // "ip:port"; "off" refuses every query; empty: the first IPv4 nameserver of /etc/resolv.conf.
  std::string dns_upstream;
  std::string state_dir;
  int dns_port = 53;
  size_t log_capacity = 256;  // entries kept per sandbox
  // Called for each logged connection attempt ("allowed" or "blocked"), for metrics.
  std::function<void(const std::string& verdict)> on_attempt;
};

class SandboxNetwork {
 public:
  // Checks the host (root, ip, nsenter), enables IPv4 forwarding, starts the DNS forwarder and
  // the log reader. Call Recover() next: it (re)creates the table.
  static absl::StatusOr<std::unique_ptr<SandboxNetwork>> Create(NetworkOptions options);
  ~SandboxNetwork();

  // Before the sandbox's container starts: its address and `resolv_conf` (a host file the
  // container bind-mounts at /etc/resolv.conf). `policy` must have been normalized.
  absl::Status Prepare(const std::string& id, const v1::NetworkPolicy& policy,
                       const std::string& resolv_conf);
  // Once its init runs as `pid`: the veth and the rules of its profile.
  absl::Status Attach(const std::string& id, int pid);
  // Replaces the profile at once (rules, resolver, veth made or removed).
  absl::Status Update(const std::string& id, const v1::NetworkPolicy& policy);
  // Removes the sandbox's rules, veth, forwarder entry and address. Idempotent.
  absl::Status Release(const std::string& id);
  // After a restart: keeps the sandboxes in `live` (id -> init pid), removes everything of the
  // others (and veths of this range that no sandbox owns).
  absl::Status Recover(const std::map<std::string, int>& live);
  // Recent connection attempts, oldest first. NOT_FOUND for an unknown sandbox.
  absl::StatusOr<std::vector<v1::EgressLogEntry>> Log(const std::string& id);

  std::optional<uint32_t> AddressOf(const std::string& id);
  const std::string& table() const { return spec_.table; }
  uint32_t gateway() const { return spec_.gateway; }
  static std::string VethName(uint32_t address);

 private:
  struct Sandbox {
    uint32_t address = 0;
    v1::NetworkPolicy policy;
    std::vector<AllowEntry> entries;
    uint32_t generation = 1;
    std::string resolv_conf;
    int pid = 0;
    std::deque<v1::EgressLogEntry> log;
    std::map<uint32_t, std::string> names;  // pinned address -> the name answered
  };
  explicit SandboxNetwork(NetworkOptions options);
  std::string StatePath(const std::string& id) const;
  absl::Status SaveState(const std::string& id, const Sandbox& sb);
  // Veth, rules and resolv.conf as the sandbox's profile says. Holds apply_mu_.
  absl::Status Apply(const std::string& id, const Sandbox& sb, bool flush_pins);
  SandboxRules RulesOf(const Sandbox& sb, bool flush_pins) const;
  absl::Status Link(const Sandbox& sb);
  void Unlink(uint32_t address);
  std::optional<DnsProfile> ProfileOf(uint32_t source);
  absl::Status Pin(uint32_t source, const std::string& name, const std::vector<DnsAddress>& addrs);
  void OnPacket(const LoggedPacket& packet);

  const NetworkOptions options_;
  RulesetSpec spec_;
  Nft nft_;
  // Serializes changes to rules and veths (and DNS pins against profile changes).
  absl::Mutex apply_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  absl::Mutex mu_;
  std::map<std::string, Sandbox> sandboxes_ ABSL_GUARDED_BY(mu_);
  std::map<uint32_t, std::string> by_address_ ABSL_GUARDED_BY(mu_);
  int lock_fd_ = -1;  // flock on the range: one runner per range and host
  std::unique_ptr<NflogReader> nflog_;
  std::unique_ptr<DnsForwarder> dns_;
};

}  // namespace isorun::runner
