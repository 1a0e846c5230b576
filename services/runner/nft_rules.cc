#include "services/runner/nft_rules.h"

#include <nftables/libnftables.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace isorun::runner {
namespace {

// New connections logged per sandbox and verdict at most this often (the rest still pass or fail,
// unlogged): a sandbox scanning ports cannot flood the runner's log reader.
constexpr char kLogLimit[] = "limit rate 50/second burst 100 packets";

std::string Obj(const RulesetSpec& spec) { return absl::StrCat("inet ", spec.table); }

std::string Cidrs(const std::vector<Ipv4Cidr>& list) {
  std::vector<std::string> parts;
  for (const auto& c : list) {
    parts.push_back(c.prefix == 32 ? Ipv4ToString(c.base) : c.ToString());
  }
  return absl::StrJoin(parts, ", ");
}

// Declares (add: a no-op when present) every object of one sandbox, so a later flush or delete
// of them cannot fail.
void DeclareSandbox(std::string& b, const RulesetSpec& spec, const std::string& h) {
  const std::string t = Obj(spec);
  absl::StrAppend(&b, "add chain ", t, " sb_", h, "\n");
  absl::StrAppend(&b, "add chain ", t, " ok_", h, "\n");
  absl::StrAppend(&b, "add chain ", t, " hb_", h, "\n");
  absl::StrAppend(&b, "add set ", t, " al_", h,
                  " { type ipv4_addr; flags interval; auto-merge; }\n");
  absl::StrAppend(&b, "add set ", t, " dn_", h, " { type ipv4_addr; flags timeout; }\n");
}

}  // namespace

std::string Hex(uint32_t addr) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", addr);
  return buf;
}

std::string TableBatch(const RulesetSpec& spec) {
  const std::string t = Obj(spec);
  std::vector<Ipv4Cidr> deny = spec.deny;
  deny.push_back({0xA9FE0000u, 16});  // 169.254.0.0/16: link-local and metadata, always
  const std::string gw = Ipv4ToString(spec.gateway);
  std::string b;
  // "add" first so that "delete" finds a table on a fresh host.
  absl::StrAppend(&b, "add table ", t, "\n", "delete table ", t, "\n");
  absl::StrAppend(&b, "table ", t, " {\n");
  absl::StrAppend(&b, "  set deny {\n    type ipv4_addr\n    flags interval\n    auto-merge\n",
                  "    elements = { ", Cidrs(deny), " }\n  }\n");
  absl::StrAppend(&b, "  set veths {\n    type ifname\n  }\n");
  absl::StrAppend(&b, "  map egress {\n    type ifname : verdict\n  }\n");
  absl::StrAppend(&b, "  map tohost {\n    type ifname : verdict\n  }\n");
  // Before the usual filter priority, so these verdicts come first; a drop or reject in any
  // table is final.
  absl::StrAppend(&b, "  chain input {\n    type filter hook input priority filter - 5\n",
                  "    policy accept\n",
                  "    iifname @veths ip daddr ", gw, " udp dport 53 accept\n",
                  "    iifname @veths ip daddr ", gw, " tcp dport 53 accept\n",
                  // Replies to connections the host opened to a sandbox's address (an operator's
                  // reverse proxy on the runner host); a sandbox still opens none to the host.
                  "    iifname @veths ct state established,related accept\n",
                  "    iifname vmap @tohost\n",
                  // A veth of ours not (or no longer) in the map: nothing reaches the host.
                  "    iifname @veths drop\n  }\n");
  absl::StrAppend(&b, "  chain forward {\n    type filter hook forward priority filter - 5\n",
                  "    policy accept\n",
                  "    iifname vmap @egress\n",
                  "    iifname @veths drop\n",
                  // Into a sandbox: only replies to what it opened itself.
                  "    oifname @veths ct state established,related accept\n",
                  "    oifname @veths drop\n  }\n");
  absl::StrAppend(&b, "  chain postrouting {\n    type nat hook postrouting priority srcnat\n",
                  "    policy accept\n",
                  "    ip saddr ", spec.range.ToString(), " ip daddr != ", spec.range.ToString(),
                  " masquerade\n  }\n");
  absl::StrAppend(&b, "}\n");
  return b;
}

std::string SandboxBatch(const RulesetSpec& spec, const SandboxRules& sb) {
  const std::string t = Obj(spec);
  const std::string h = Hex(sb.address);
  const std::string q = absl::StrCat("\"", sb.veth, "\"");
  std::string b;
  DeclareSandbox(b, spec, h);
  // The map entries go before the chains' rules are replaced: the flush below and the new rules
  // apply in the same transaction, so no packet ever sees a half-made profile.
  absl::StrAppend(&b, "add element ", t, " veths { ", q, " }\n");
  absl::StrAppend(&b, "add element ", t, " egress { ", q, " : jump sb_", h, " }\n");
  absl::StrAppend(&b, "add element ", t, " tohost { ", q, " : goto hb_", h, " }\n");
  absl::StrAppend(&b, "flush chain ", t, " sb_", h, "\n");
  absl::StrAppend(&b, "flush chain ", t, " ok_", h, "\n");
  absl::StrAppend(&b, "flush chain ", t, " hb_", h, "\n");
  absl::StrAppend(&b, "flush set ", t, " al_", h, "\n");
  if (sb.flush_pins) absl::StrAppend(&b, "flush set ", t, " dn_", h, "\n");
  if (!sb.allow.empty()) {
    absl::StrAppend(&b, "add element ", t, " al_", h, " { ", Cidrs(sb.allow), " }\n");
  }
  const std::string mark = absl::StrCat("0x", Hex(sb.generation));
  const std::string chain = absl::StrCat("add rule ", t, " sb_", h, " ");
  absl::StrAppend(&b, chain, "ip saddr != ", Ipv4ToString(sb.address), " drop\n");
  absl::StrAppend(&b, chain, "meta nfproto != ipv4 drop\n");
  absl::StrAppend(&b, chain, "ct state established,related ct mark ", mark, " accept\n");
  absl::StrAppend(&b, chain, "oifname \"isv*\" goto hb_", h, "\n");  // any runner's sandbox
  absl::StrAppend(&b, chain, "ip daddr @deny goto hb_", h, "\n");
  if (sb.egress == "open") {
    absl::StrAppend(&b, chain, "ct mark set ", mark, " accept\n");
  } else if (sb.egress == "allowlist") {
    absl::StrAppend(&b, chain, "ip daddr @al_", h, " goto ok_", h, "\n");
    absl::StrAppend(&b, chain, "ip daddr @dn_", h, " goto ok_", h, "\n");
    absl::StrAppend(&b, chain, "goto hb_", h, "\n");
  } else {
    absl::StrAppend(&b, chain, "goto hb_", h, "\n");
  }
  absl::StrAppend(&b, "add rule ", t, " ok_", h, " ct state new ", kLogLimit, " log group ",
                  spec.log_group, " prefix \"", kLogPrefix, "A ", h, "\"\n");
  absl::StrAppend(&b, "add rule ", t, " ok_", h, " ct mark set ", mark, " accept\n");
  absl::StrAppend(&b, "add rule ", t, " hb_", h, " ct state new ", kLogLimit, " log group ",
                  spec.log_group, " prefix \"", kLogPrefix, "B ", h, "\"\n");
  absl::StrAppend(&b, "add rule ", t, " hb_", h,
                  " reject with icmpx type admin-prohibited\n");
  return b;
}

std::string RemoveSandboxBatch(const RulesetSpec& spec, uint32_t address,
                               const std::string& veth) {
  const std::string t = Obj(spec);
  const std::string h = Hex(address);
  const std::string q = absl::StrCat("\"", veth, "\"");
  // On a host where the table is gone (rebooted), this still applies: it makes and removes.
  std::string b = absl::StrCat("add table ", t, "\n");
  absl::StrAppend(&b, "add set ", t, " veths { type ifname; }\n");
  absl::StrAppend(&b, "add map ", t, " egress { type ifname : verdict; }\n");
  absl::StrAppend(&b, "add map ", t, " tohost { type ifname : verdict; }\n");
  DeclareSandbox(b, spec, h);
  absl::StrAppend(&b, "add element ", t, " veths { ", q, " }\n");
  absl::StrAppend(&b, "add element ", t, " egress { ", q, " : jump sb_", h, " }\n");
  absl::StrAppend(&b, "add element ", t, " tohost { ", q, " : goto hb_", h, " }\n");
  absl::StrAppend(&b, "delete element ", t, " egress { ", q, " }\n");
  absl::StrAppend(&b, "delete element ", t, " tohost { ", q, " }\n");
  absl::StrAppend(&b, "delete element ", t, " veths { ", q, " }\n");
  for (const char* c : {"sb_", "ok_", "hb_"}) absl::StrAppend(&b, "flush chain ", t, " ", c, h, "\n");
  for (const char* c : {"sb_", "ok_", "hb_"}) absl::StrAppend(&b, "delete chain ", t, " ", c, h, "\n");
  for (const char* s : {"al_", "dn_"}) absl::StrAppend(&b, "delete set ", t, " ", s, h, "\n");
  return b;
}

std::string PinBatch(const RulesetSpec& spec, uint32_t address,
                     const std::vector<std::pair<uint32_t, int>>& addrs_ttl_sec) {
  std::vector<std::string> parts;
  for (const auto& [addr, ttl] : addrs_ttl_sec) {
    parts.push_back(absl::StrCat(Ipv4ToString(addr), " timeout ", std::max(ttl, 1), "s"));
  }
  if (parts.empty()) return "";
  // "add" of an address already there moves its timeout (Linux 6.x).
  return absl::StrCat("add element ", Obj(spec), " dn_", Hex(address), " { ",
                      absl::StrJoin(parts, ", "), " }\n");
}

Nft::Nft() : ctx_(nft_ctx_new(NFT_CTX_DEFAULT)) {
  nft_ctx_buffer_output(ctx_);
  nft_ctx_buffer_error(ctx_);
}

Nft::~Nft() { nft_ctx_free(ctx_); }

absl::Status Nft::Run(const std::string& batch) {
  if (batch.empty()) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  const int rc = nft_run_cmd_from_buffer(ctx_, batch.c_str());
  const char* e = nft_ctx_get_error_buffer(ctx_);
  std::string err = e != nullptr ? e : "";
  (void)nft_ctx_get_output_buffer(ctx_);
  if (rc != 0) {
    if (err.size() > 2000) err = err.substr(0, 2000) + "...";
    return absl::InternalError(absl::StrCat("nftables refused a batch: ", err));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Nft::List(const std::string& command) {
  absl::MutexLock lock(&mu_);
  const int rc = nft_run_cmd_from_buffer(ctx_, command.c_str());
  const char* o = nft_ctx_get_output_buffer(ctx_);
  const char* e = nft_ctx_get_error_buffer(ctx_);
  std::string out = o != nullptr ? o : "", err = e != nullptr ? e : "";
  if (rc != 0) return absl::InternalError(absl::StrCat("nft ", command, ": ", err));
  return out;
}

}  // namespace isorun::runner
