#include "services/kit/egress_policy.h"

#include <gtest/gtest.h>

#include <string>

namespace isorun {
namespace {

TEST(EgressPolicy, ParsesAddressesAndBlocks) {
  auto a = ParseAllowEntry("203.0.113.7");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->kind, AllowEntry::Kind::kCidr);
  EXPECT_EQ(a->cidr.ToString(), "203.0.113.7/32");
  auto b = ParseAllowEntry("198.51.100.0/24");
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(b->cidr.Contains(*ParseIpv4("198.51.100.200")));
  EXPECT_FALSE(b->cidr.Contains(*ParseIpv4("198.51.101.1")));
  EXPECT_TRUE(ParseAllowEntry("0.0.0.0/0").ok());
  for (const char* bad : {"198.51.100.1/24", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.4/33",
                          "01.2.3.4", "1.2.3.4/", "1.2.3.4/x", "::1", "2001:db8::/32"}) {
    auto r = ParseAllowEntry(bad);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find(bad), std::string::npos) << r.status();
  }
}

TEST(EgressPolicy, ParsesNamesAndWildcards) {
  auto d = ParseAllowEntry("Example.ORG.");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->kind, AllowEntry::Kind::kDomain);
  EXPECT_EQ(d->domain, "example.org");
  auto w = ParseAllowEntry("*.example.com");
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->kind, AllowEntry::Kind::kWildcard);
  EXPECT_EQ(w->domain, "example.com");
  // A label over 63 characters; a named string, since a temporary's c_str() in the list below
  // would dangle before the loop reads it.
  const std::string long_label = std::string(64, 'a') + ".com";
  for (const char* bad : {"", "bad host", "a..b", "-a.com", "a-.com", "*.", "*", "*.*.a.com",
                          "a.*.com", "localhost", "x.com/24", long_label.c_str()}) {
    EXPECT_FALSE(ParseAllowEntry(bad).ok()) << bad;
  }
}

TEST(EgressPolicy, DomainMatching) {
  std::vector<AllowEntry> entries = {*ParseAllowEntry("api.example.org"),
                                     *ParseAllowEntry("*.example.com")};
  EXPECT_TRUE(DomainAllowed(entries, "api.example.org"));
  EXPECT_TRUE(DomainAllowed(entries, "API.Example.org."));
  EXPECT_FALSE(DomainAllowed(entries, "example.org"));
  EXPECT_FALSE(DomainAllowed(entries, "x.api.example.org"));
  EXPECT_TRUE(DomainAllowed(entries, "a.example.com"));
  EXPECT_TRUE(DomainAllowed(entries, "a.b.example.com"));
  EXPECT_FALSE(DomainAllowed(entries, "example.com"));
  EXPECT_FALSE(DomainAllowed(entries, "badexample.com"));
}

TEST(EgressPolicy, NormalizeNamesTheEntry) {
  v1::NetworkPolicy p;
  ASSERT_TRUE(NormalizeNetworkPolicy(p).ok());
  EXPECT_EQ(p.egress(), "open");
  p.set_egress("sometimes");
  EXPECT_FALSE(NormalizeNetworkPolicy(p).ok());
  p.set_egress("none");
  p.add_allow("example.org");
  auto s = NormalizeNetworkPolicy(p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("only valid with egress allowlist"), std::string::npos) << s;
  p.set_egress("allowlist");
  p.add_allow("10.0.0.0/8");
  p.add_allow("bad_entry!");
  s = NormalizeNetworkPolicy(p);
  EXPECT_NE(s.message().find("network.allow[2]"), std::string::npos) << s;
  EXPECT_NE(s.message().find("bad_entry!"), std::string::npos) << s;
  p.clear_allow();
  for (int i = 0; i < kMaxAllowEntries; ++i) p.add_allow("198.18.0.1");
  EXPECT_TRUE(NormalizeNetworkPolicy(p).ok());
  p.add_allow("198.18.0.2");
  s = NormalizeNetworkPolicy(p);
  EXPECT_NE(s.message().find("257 entries; at most 256"), std::string::npos) << s;
}

TEST(EgressPolicy, CidrOverlap) {
  auto a = *ParseIpv4Cidr("100.96.0.0/16");
  EXPECT_TRUE(a.Overlaps(*ParseIpv4Cidr("100.64.0.0/10")));
  EXPECT_TRUE(a.Overlaps(*ParseIpv4Cidr("100.96.3.0/24")));
  EXPECT_FALSE(a.Overlaps(*ParseIpv4Cidr("100.97.0.0/16")));
  EXPECT_EQ(a.Size(), 65536u);
}

}  // namespace
}  // namespace isorun
