#include "services/runner/nft_rules.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace isorun::runner {
namespace {

RulesetSpec Spec() {
  RulesetSpec spec;
  spec.table = absl::StrCat("isorun_test_", ::getpid());
  spec.range = *ParseIpv4Cidr("100.127.250.0/29");
  spec.gateway = spec.range.base + 1;
  spec.deny = {*ParseIpv4Cidr("10.0.0.0/8"), *ParseIpv4Cidr("100.64.0.0/10")};
  spec.log_group = 4242;
  return spec;
}

SandboxRules Allowlist() {
  SandboxRules sb;
  sb.address = *ParseIpv4("100.127.250.2");
  sb.veth = "isv647ffa02";
  sb.egress = "allowlist";
  sb.allow = {*ParseIpv4Cidr("198.18.0.0/24"), *ParseIpv4Cidr("198.18.0.7")};
  sb.generation = 0xabcdef;
  return sb;
}

TEST(NftRules, SandboxChainChecksDenyBeforeTheProfile) {
  const std::string b = SandboxBatch(Spec(), Allowlist());
  const size_t deny = b.find("ip daddr @deny goto hb_647ffa02");
  const size_t others = b.find("oifname \"isv*\" goto hb_647ffa02");
  const size_t listed = b.find("ip daddr @al_647ffa02 goto ok_647ffa02");
  const size_t pinned = b.find("ip daddr @dn_647ffa02 goto ok_647ffa02");
  ASSERT_NE(deny, std::string::npos) << b;
  ASSERT_NE(others, std::string::npos) << b;
  ASSERT_NE(listed, std::string::npos) << b;
  ASSERT_NE(pinned, std::string::npos) << b;
  EXPECT_LT(others, listed);
  EXPECT_LT(deny, listed);
  EXPECT_TRUE(absl::StrContains(b, "ip saddr != 100.127.250.2 drop")) << b;
  EXPECT_TRUE(absl::StrContains(b, "ct state established,related ct mark 0x00abcdef accept"));
  EXPECT_TRUE(absl::StrContains(b, "flush set inet " + Spec().table + " dn_647ffa02"));
  SandboxRules keep = Allowlist();
  keep.flush_pins = false;
  EXPECT_FALSE(absl::StrContains(SandboxBatch(Spec(), keep), "dn_647ffa02\n"));
  SandboxRules open = Allowlist();
  open.egress = "open";
  open.allow.clear();
  EXPECT_TRUE(absl::StrContains(SandboxBatch(Spec(), open), "ct mark set 0x00abcdef accept"));
  EXPECT_TRUE(absl::StrContains(TableBatch(Spec()), "169.254.0.0/16"));
}

// The batches against the real kernel, in a table of this test's own.
TEST(NftRules, BatchesApplyAndRemoveCleanly) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root for nftables";
  Nft nft;
  const RulesetSpec spec = Spec();
  absl::Status s = nft.Run(TableBatch(spec));
  if (!s.ok() && absl::StrContains(s.message(), "Operation not permitted")) {
    GTEST_SKIP() << "nftables not permitted here: " << s;
  }
  ASSERT_TRUE(s.ok()) << s;
  const SandboxRules sb = Allowlist();
  ASSERT_TRUE(nft.Run(SandboxBatch(spec, sb)).ok());
  ASSERT_TRUE(nft.Run(SandboxBatch(spec, sb)).ok()) << "a second apply replaces, not fails";
  ASSERT_TRUE(nft.Run(PinBatch(spec, sb.address, {{0xC6120009, 30}})).ok());
  auto listed = nft.List("list table inet " + spec.table);
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_TRUE(absl::StrContains(*listed, "198.18.0.9")) << *listed;
  EXPECT_TRUE(absl::StrContains(*listed, "isv647ffa02")) << *listed;
  ASSERT_TRUE(nft.Run(RemoveSandboxBatch(spec, sb.address, sb.veth)).ok());
  ASSERT_TRUE(nft.Run(RemoveSandboxBatch(spec, sb.address, sb.veth)).ok()) << "idempotent";
  listed = nft.List("list table inet " + spec.table);
  ASSERT_TRUE(listed.ok());
  EXPECT_FALSE(absl::StrContains(*listed, "647ffa02")) << *listed;
  EXPECT_TRUE(nft.Run(absl::StrCat("delete table inet ", spec.table, "\n")).ok());
}

}  // namespace
}  // namespace isorun::runner
