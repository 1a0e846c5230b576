#include "services/runner/sandbox_network.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <random>
#include <set>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "google/protobuf/util/time_util.h"
#include "services/kit/log.h"
#include "services/runner/fs_util.h"
#include "services/runner/process.h"

namespace isorun::runner {
namespace {

constexpr absl::Duration kIpTimeout = absl::Seconds(10);
// Pins last at least this long: answers with TTL 0 (or a few seconds) would otherwise expire
// before the sandbox has connected.
constexpr int kMinPinSec = 10;
constexpr int kMaxPinSec = 86400;
constexpr size_t kMaxNamesPerSandbox = 4096;

absl::Status RunIp(const std::vector<std::string>& argv, const std::string& input) {
  ProcessOptions po;
  po.argv = argv;
  po.stdin_data = input;
  po.deadline = absl::Now() + kIpTimeout;
  std::string err;
  po.on_output = [&](int, std::string_view data) {
    if (err.size() < 4000) err.append(data);
    return true;
  };
  auto r = RunProcess(po);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0 || r->timed_out) {
    return absl::InternalError(
        absl::StrCat(ShellQuote(argv), " failed: ", r->timed_out ? "timed out" : err));
  }
  return absl::OkStatus();
}

std::string DefaultUpstream() {
  std::ifstream f("/etc/resolv.conf");
  std::string line;
  while (std::getline(f, line)) {
    std::vector<std::string> w = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (w.size() >= 2 && w[0] == "nameserver" && ParseIpv4(w[1]).ok()) return w[1] + ":53";
  }
  return "off";
}

uint32_t RandomGeneration() {
  static thread_local std::mt19937 rng(std::random_device{}());
  uint32_t g = 0;
  while (g == 0) g = rng();
  return g;
}

std::string ResolvConf(const v1::NetworkPolicy& policy, uint32_t gateway) {
  if (policy.egress() == "none") return "# egress none: no network, no resolver\n";
  return absl::StrCat("nameserver ", Ipv4ToString(gateway), "\noptions timeout:2 attempts:2\n");
}

// Rewrites a file in place: the container bind-mounts it, so a new inode would not be seen.
absl::Status RewriteInPlace(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::out | std::ios::trunc);
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", path));
  f << data;
  f.close();
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace

SandboxNetwork::SandboxNetwork(NetworkOptions options) : options_(std::move(options)) {}

std::string SandboxNetwork::VethName(uint32_t address) { return absl::StrCat("isv", Hex(address)); }

absl::StatusOr<std::unique_ptr<SandboxNetwork>> SandboxNetwork::Create(NetworkOptions options) {
  if (::geteuid() != 0) {
    return absl::FailedPreconditionError("sandbox networks need root (veths, nftables)");
  }
  auto range = ParseIpv4Cidr(options.range);
  if (!range.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--sandbox_network: ", range.status().message()));
  }
  if (range->prefix > 29 || range->prefix < 8) {
    return absl::InvalidArgumentError("--sandbox_network must be a block from /8 to /29");
  }
  std::vector<Ipv4Cidr> deny;
  for (absl::string_view part : absl::StrSplit(options.deny, ',', absl::SkipWhitespace())) {
    auto c = ParseIpv4Cidr(absl::StripAsciiWhitespace(part));
    if (!c.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--egress_deny: ", c.status().message()));
    }
    deny.push_back(*c);
  }
  if (options.dns_upstream.empty()) options.dns_upstream = DefaultUpstream();
  if (options.state_dir.empty()) return absl::InvalidArgumentError("no network state folder");
  if (absl::Status s = MakeDirs(options.state_dir, 0700); !s.ok()) return s;
  for (const char* tool : {"ip", "nsenter"}) {
    auto v = RunCaptured({tool, "-V"}, absl::Seconds(5));
    if (!v.ok() || v->exit_code != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("sandbox networks need `", tool, "` (Debian: iproute2, util-linux)"));
    }
  }
  std::unique_ptr<SandboxNetwork> net(new SandboxNetwork(options));
  net->spec_.range = *range;
  net->spec_.gateway = range->base + 1;
  net->spec_.deny = deny;
  net->spec_.table = absl::StrCat("isorun_", Hex(range->base), "_", range->prefix);
  // Two runners with one range would tear down each other's rules: the second one refuses.
  if (absl::Status s = MakeDirs("/run/isorun", 0755); !s.ok()) return s;
  const std::string lock = absl::StrCat("/run/isorun/", net->spec_.table, ".lock");
  net->lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (net->lock_fd_ < 0 || ::flock(net->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("another runner on this host uses sandbox network ", range->ToString(),
                     " (", lock, "): give each runner its own --sandbox_network"));
  }
  // Sandboxes reach the world through this host. (Docker and every NAT router do the same; the
  // rules above decide what may pass.)
  auto fwd = ReadFile("/proc/sys/net/ipv4/ip_forward");
  if (!fwd.ok() || absl::StripAsciiWhitespace(*fwd) != "1") {
    if (absl::Status s = RewriteInPlace("/proc/sys/net/ipv4/ip_forward", "1\n"); !s.ok()) {
      return absl::FailedPreconditionError("cannot enable IPv4 forwarding");
    }
    LogInfo("enabled IPv4 forwarding for sandbox networks");
  }
  // The log group: derived from the range so that runners of one host tend to differ; the
  // reader moves on when one is taken.
  const int first_group = 1000 + static_cast<int>((range->base >> (32 - range->prefix)) % 30000);
  auto reader = NflogReader::Start(first_group,
                                   [p = net.get()](const LoggedPacket& pkt) { p->OnPacket(pkt); });
  if (!reader.ok()) return reader.status();
  net->nflog_ = std::move(*reader);
  net->spec_.log_group = net->nflog_->group();
  DnsForwarder::Options dns;
  dns.listen_addr = net->spec_.gateway;
  dns.port = options.dns_port;
  dns.upstream = options.dns_upstream;
  auto forwarder = DnsForwarder::Start(
      dns, [p = net.get()](uint32_t src) { return p->ProfileOf(src); },
      [p = net.get()](uint32_t src, const std::string& name, const std::vector<DnsAddress>& a) {
        return p->Pin(src, name, a);
      });
  if (!forwarder.ok()) return forwarder.status();
  net->dns_ = std::move(*forwarder);
  LogInfo("sandbox networks ready", {{"range", range->ToString()},
                                     {"table", net->spec_.table},
                                     {"dns_upstream", options.dns_upstream},
                                     {"log_group", absl::StrCat(net->spec_.log_group)}});
  return net;
}

SandboxNetwork::~SandboxNetwork() {
  // Rules, veths and state stay: the sandboxes keep running and a restarted runner re-attaches.
  dns_.reset();
  nflog_.reset();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

std::string SandboxNetwork::StatePath(const std::string& id) const {
  return absl::StrCat(options_.state_dir, "/", id);
}

absl::Status SandboxNetwork::SaveState(const std::string& id, const Sandbox& sb) {
  std::string text = absl::StrCat("address ", Ipv4ToString(sb.address), "\ngeneration ",
                                  sb.generation, "\nresolv ", absl::CEscape(sb.resolv_conf),
                                  "\negress ", sb.policy.egress(), "\n");
  for (const auto& a : sb.policy.allow()) absl::StrAppend(&text, "allow ", absl::CEscape(a), "\n");
  return WriteFileAtomic(StatePath(id), text);
}

absl::Status SandboxNetwork::Prepare(const std::string& id, const v1::NetworkPolicy& policy,
                                     const std::string& resolv_conf) {
  Sandbox sb;
  sb.policy = policy;
  for (const auto& a : policy.allow()) {
    auto e = ParseAllowEntry(a);
    if (!e.ok()) return e.status();
    sb.entries.push_back(*e);
  }
  sb.generation = RandomGeneration();
  sb.resolv_conf = resolv_conf;
  {
    absl::MutexLock lock(&mu_);
    auto it = sandboxes_.find(id);
    if (it != sandboxes_.end()) {
      sb.address = it->second.address;  // a retried start keeps its address
    } else {
      const uint32_t first = spec_.range.base + 2, last = spec_.range.base + spec_.range.Size() - 2;
      for (uint32_t a = first; a <= last; ++a) {
        if (by_address_.count(a) == 0) {
          sb.address = a;
          break;
        }
      }
      if (sb.address == 0) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "no free sandbox address in ", spec_.range.ToString(), " (--sandbox_network)"));
      }
      by_address_[sb.address] = id;
    }
    sandboxes_[id] = sb;
  }
  if (absl::Status s = SaveState(id, sb); !s.ok()) return s;
  if (absl::Status s = WriteFileAtomic(resolv_conf, ResolvConf(policy, spec_.gateway)); !s.ok()) {
    return s;
  }
  // Readable by the sandbox's users (it is bind-mounted read-only).
  if (::chmod(resolv_conf.c_str(), 0644) != 0) {
    return absl::InternalError(absl::StrCat("cannot chmod ", resolv_conf));
  }
  return absl::OkStatus();
}

absl::Status SandboxNetwork::Attach(const std::string& id, int pid) {
  Sandbox copy;
  {
    absl::MutexLock lock(&mu_);
    auto it = sandboxes_.find(id);
    if (it == sandboxes_.end()) return absl::NotFoundError(absl::StrCat("no network for ", id));
    it->second.pid = pid;
    copy = it->second;
  }
  return Apply(id, copy, true);
}

absl::Status SandboxNetwork::Link(const Sandbox& sb) {
  const std::string veth = VethName(sb.address);
  const std::string gw = Ipv4ToString(spec_.gateway), addr = Ipv4ToString(sb.address);
  if (!PathExists("/sys/class/net/" + veth)) {
    if (absl::Status s = RunIp({"ip", "-batch", "-"},
                               absl::StrCat("link add ", veth, " type veth peer name eth0 netns ",
                                            sb.pid, "\naddr add ", gw, " peer ", addr, "/32 dev ",
                                            veth, "\nlink set ", veth, " up\n"));
        !s.ok()) {
      Unlink(sb.address);
      return s;
    }
    // No IPv6 on the host side either: nothing to reach the host by.
    (void)RewriteInPlace(absl::StrCat("/proc/sys/net/ipv6/conf/", veth, "/disable_ipv6"), "1\n");
  }
  // Inside: the address, and the gateway as the default route. Idempotent ("replace").
  absl::Status s = RunIp({"nsenter", absl::StrCat("--net=/proc/", sb.pid, "/ns/net"), "ip",
                          "-batch", "-"},
                         absl::StrCat("addr replace ", addr, " peer ", gw,
                                      "/32 dev eth0\nlink set eth0 up\nroute replace default via ",
                                      gw, " dev eth0\n"));
  if (!s.ok()) Unlink(sb.address);
  return s;
}

void SandboxNetwork::Unlink(uint32_t address) {
  const std::string veth = VethName(address);
  if (!PathExists("/sys/class/net/" + veth)) return;
  if (absl::Status s = RunIp({"ip", "link", "del", veth}, ""); !s.ok()) {
    LogWarn("cannot remove a sandbox veth", {{"veth", veth}, {"error", s.ToString()}});
  }
}

SandboxRules SandboxNetwork::RulesOf(const Sandbox& sb, bool flush_pins) const {
  SandboxRules rules;
  rules.address = sb.address;
  rules.veth = VethName(sb.address);
  rules.egress = sb.policy.egress();
  rules.generation = sb.generation;
  rules.flush_pins = flush_pins;
  for (const auto& e : sb.entries) {
    if (e.kind == AllowEntry::Kind::kCidr) rules.allow.push_back(e.cidr);
  }
  return rules;
}

absl::Status SandboxNetwork::Apply(const std::string& id, const Sandbox& sb, bool flush_pins) {
  absl::MutexLock apply(&apply_mu_);
  const std::string veth = VethName(sb.address);
  if (sb.policy.egress() == "none") {
    // Rules go with the veth; the address stays the sandbox's.
    Unlink(sb.address);
    if (absl::Status s = nft_.Run(RemoveSandboxBatch(spec_, sb.address, veth)); !s.ok()) return s;
  } else {
    // Rules first: a veth never carries a packet before its profile's rules are in place.
    if (absl::Status s = nft_.Run(SandboxBatch(spec_, RulesOf(sb, flush_pins))); !s.ok()) return s;
    if (sb.pid > 0) {
      if (absl::Status s = Link(sb); !s.ok()) return s;
    }
  }
  if (!sb.resolv_conf.empty() && PathExists(sb.resolv_conf)) {
    if (absl::Status s = RewriteInPlace(sb.resolv_conf, ResolvConf(sb.policy, spec_.gateway));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status SandboxNetwork::Update(const std::string& id, const v1::NetworkPolicy& policy) {
  std::vector<AllowEntry> entries;
  for (const auto& a : policy.allow()) {
    auto e = ParseAllowEntry(a);
    if (!e.ok()) return e.status();
    entries.push_back(*e);
  }
  Sandbox copy;
  {
    absl::MutexLock lock(&mu_);
    auto it = sandboxes_.find(id);
    if (it == sandboxes_.end()) return absl::NotFoundError(absl::StrCat("no network for ", id));
    it->second.policy = policy;
    it->second.entries = std::move(entries);
    it->second.generation = RandomGeneration();
    it->second.names.clear();
    copy = it->second;
  }
  if (absl::Status s = SaveState(id, copy); !s.ok()) return s;
  return Apply(id, copy, true);
}

absl::Status SandboxNetwork::Release(const std::string& id) {
  std::optional<uint32_t> address;
  {
    absl::MutexLock lock(&mu_);
    auto it = sandboxes_.find(id);
    if (it != sandboxes_.end()) address = it->second.address;
  }
  if (!address.has_value()) {
    // A sandbox this process never attached (a failed start before Prepare, or state of an
    // earlier process): its state file says which address it had.
    auto text = ReadFile(StatePath(id));
    if (text.ok()) {
      for (absl::string_view line : absl::StrSplit(*text, '\n')) {
        if (absl::ConsumePrefix(&line, "address ")) {
          auto a = ParseIpv4(line);
          if (a.ok()) address = *a;
        }
      }
    }
  }
  if (address.has_value()) {
    absl::MutexLock apply(&apply_mu_);
    Unlink(*address);
    if (absl::Status s = nft_.Run(RemoveSandboxBatch(spec_, *address, VethName(*address)));
        !s.ok()) {
      return s;
    }
  }
  ::unlink(StatePath(id).c_str());
  absl::MutexLock lock(&mu_);
  auto it = sandboxes_.find(id);
  if (it != sandboxes_.end()) {
    by_address_.erase(it->second.address);
    sandboxes_.erase(it);
  }
  return absl::OkStatus();
}

absl::Status SandboxNetwork::Recover(const std::map<std::string, int>& live) {
  std::vector<std::pair<std::string, Sandbox>> keep;
  for (const auto& id : ListDir(options_.state_dir)) {
    auto text = ReadFile(StatePath(id));
    Sandbox sb;
    bool ok = text.ok();
    if (ok) {
      for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
        size_t sp = line.find(' ');
        if (sp == absl::string_view::npos) continue;
        std::string key(line.substr(0, sp)), value;
        if (!absl::CUnescape(line.substr(sp + 1), &value)) continue;
        if (key == "address") {
          auto a = ParseIpv4(value);
          ok = ok && a.ok();
          if (a.ok()) sb.address = *a;
        } else if (key == "generation") {
          ok = ok && absl::SimpleAtoi(value, &sb.generation);
        } else if (key == "resolv") {
          sb.resolv_conf = value;
        } else if (key == "egress") {
          sb.policy.set_egress(value);
        } else if (key == "allow") {
          sb.policy.add_allow(value);
          auto e = ParseAllowEntry(value);
          if (e.ok()) sb.entries.push_back(*e);
        }
      }
    }
    auto it = live.find(id);
    if (ok && it != live.end() && spec_.range.Contains(sb.address)) {
      sb.pid = it->second;
      keep.emplace_back(id, std::move(sb));
    } else {
      if (ok && spec_.range.Contains(sb.address)) Unlink(sb.address);
      ::unlink(StatePath(id).c_str());
      LogInfo("removed the network of a sandbox that is gone", {{"sandbox", id}});
    }
  }
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, sb] : keep) {
      sandboxes_[id] = sb;
      by_address_[sb.address] = id;
    }
  }
  // Veths of this range that no live sandbox owns (a start interrupted by a crash).
  std::set<std::string> owned;
  for (const auto& [id, sb] : keep) owned.insert(VethName(sb.address));
  for (const auto& name : ListDir("/sys/class/net")) {
    uint32_t a = 0;
    if (name.size() != 11 || name.rfind("isv", 0) != 0 ||
        !absl::SimpleHexAtoi(name.substr(3), &a) || !spec_.range.Contains(a) ||
        owned.count(name) > 0) {
      continue;
    }
    LogInfo("removing a veth no sandbox owns", {{"veth", name}});
    Unlink(a);
  }
  // The table and every live sandbox's objects in one transaction: a veth of a live sandbox is
  // never without its rules, not even for a moment.
  std::string batch = TableBatch(spec_);
  for (const auto& [id, sb] : keep) {
    if (sb.policy.egress() == "none") continue;
    absl::StrAppend(&batch, SandboxBatch(spec_, RulesOf(sb, true)));
  }
  {
    absl::MutexLock apply(&apply_mu_);
    if (absl::Status s = nft_.Run(batch); !s.ok()) return s;
  }
  absl::Status first;
  for (const auto& [id, sb] : keep) {
    absl::Status s = Apply(id, sb, false);
    if (!s.ok()) {
      LogWarn("cannot re-attach a sandbox's network", {{"sandbox", id}, {"error", s.ToString()}});
      if (first.ok()) first = s;
    } else {
      LogInfo("re-attached a sandbox's network",
              {{"sandbox", id}, {"address", Ipv4ToString(sb.address)}, {"egress", sb.policy.egress()}});
    }
  }
  return first;
}

absl::StatusOr<std::vector<v1::EgressLogEntry>> SandboxNetwork::Log(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = sandboxes_.find(id);
  if (it == sandboxes_.end()) return absl::NotFoundError(absl::StrCat("no sandbox ", id));
  return std::vector<v1::EgressLogEntry>(it->second.log.begin(), it->second.log.end());
}

std::optional<uint32_t> SandboxNetwork::AddressOf(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = sandboxes_.find(id);
  if (it == sandboxes_.end()) return std::nullopt;
  return it->second.address;
}

std::optional<DnsProfile> SandboxNetwork::ProfileOf(uint32_t source) {
  absl::MutexLock lock(&mu_);
  auto a = by_address_.find(source);
  if (a == by_address_.end()) return std::nullopt;
  const Sandbox& sb = sandboxes_.at(a->second);
  if (sb.policy.egress() == "none") return std::nullopt;
  return DnsProfile{sb.policy.egress(), sb.entries};
}

absl::Status SandboxNetwork::Pin(uint32_t source, const std::string& name,
                                 const std::vector<DnsAddress>& addrs) {
  // Under apply_mu_: a profile change cannot slip between the check and the pin, so an answer
  // under the old profile never lands in the new one's set.
  absl::MutexLock apply(&apply_mu_);
  std::vector<std::pair<uint32_t, int>> pins;
  for (const auto& a : addrs) {
    pins.emplace_back(a.addr, static_cast<int>(std::clamp<uint32_t>(a.ttl, kMinPinSec, kMaxPinSec)));
  }
  {
    absl::MutexLock lock(&mu_);
    auto it = by_address_.find(source);
    if (it == by_address_.end()) return absl::NotFoundError("the sandbox is gone");
    Sandbox& sb = sandboxes_.at(it->second);
    if (sb.policy.egress() != "allowlist") return absl::OkStatus();
    if (sb.names.size() > kMaxNamesPerSandbox) sb.names.clear();
    for (const auto& a : addrs) sb.names[a.addr] = name;
  }
  return nft_.Run(PinBatch(spec_, source, pins));
}

void SandboxNetwork::OnPacket(const LoggedPacket& pkt) {
  // "isr A 64600005": verdict, then the sandbox's address.
  absl::string_view p = pkt.prefix;
  if (!absl::ConsumePrefix(&p, kLogPrefix) || p.size() < 3) return;
  const std::string verdict = p[0] == 'A' ? "allowed" : "blocked";
  uint32_t address = 0;
  if (!absl::SimpleHexAtoi(p.substr(2), &address)) return;
  v1::EgressLogEntry e;
  *e.mutable_time() = google::protobuf::util::TimeUtil::GetCurrentTime();
  e.set_address(Ipv4ToString(pkt.dst));
  e.set_port(pkt.dst_port);
  e.set_verdict(verdict);
  switch (pkt.protocol) {
    case IPPROTO_TCP:
      e.set_protocol("tcp");
      break;
    case IPPROTO_UDP:
      e.set_protocol("udp");
      break;
    case IPPROTO_ICMP:
      e.set_protocol("icmp");
      break;
    default:
      e.set_protocol(absl::StrCat(pkt.protocol));
  }
  {
    absl::MutexLock lock(&mu_);
    auto it = by_address_.find(address);
    if (it == by_address_.end()) return;
    Sandbox& sb = sandboxes_.at(it->second);
    if (auto n = sb.names.find(pkt.dst); n != sb.names.end()) e.set_domain(n->second);
    sb.log.push_back(std::move(e));
    while (sb.log.size() > options_.log_capacity) sb.log.pop_front();
  }
  if (options_.on_attempt) options_.on_attempt(verdict);
}

}  // namespace isorun::runner
