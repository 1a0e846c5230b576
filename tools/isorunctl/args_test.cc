#include "tools/isorunctl/args.h"

#include <gtest/gtest.h>

namespace isorun::ctl {
namespace {

TEST(ParseArgs, FlagsInBothFormsAnywhere) {
  auto args = ParseArgs({"--database-url", "postgresql://a", "tenants", "create", "acme",
                         "--max-concurrent=3", "--creates-per-sec", "0.5"});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->positionals, (std::vector<std::string>{"tenants", "create", "acme"}));
  EXPECT_EQ(args->Get("database-url"), "postgresql://a");
  EXPECT_EQ(args->Get("max-concurrent"), "3");
  EXPECT_EQ(args->Get("creates-per-sec"), "0.5");
  EXPECT_FALSE(args->Get("requests-per-sec").has_value());
  EXPECT_FALSE(args->help);
}

TEST(ParseArgs, BooleanFlagsTakeNoValue) {
  auto args = ParseArgs({"tenants", "list", "--json"});
  ASSERT_TRUE(args.ok());
  EXPECT_TRUE(args->Has("json"));
  EXPECT_EQ(args->positionals.size(), 2u);
  auto bad = ParseArgs({"tenants", "list", "--json=yes"});
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(IsUsageError(bad.status()));
  EXPECT_EQ(bad.status().message(), "flag --json takes no value");
}

TEST(ParseArgs, ValueFlagTakesTheNextWordEvenWithADash) {
  auto args = ParseArgs({"tenants", "create", "x", "--max-concurrent", "-1"});
  ASSERT_TRUE(args.ok());
  EXPECT_EQ(args->Get("max-concurrent"), "-1");
  EXPECT_EQ(args->positionals.size(), 3u);
}

TEST(ParseArgs, EmptyInlineValueIsAValue) {
  auto args = ParseArgs({"keys", "create", "x", "--region="});
  ASSERT_TRUE(args.ok());
  EXPECT_EQ(args->Get("region"), "");
}

TEST(ParseArgs, Errors) {
  struct Case {
    std::vector<std::string> argv;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {{"tenants", "list", "--bogus"}, "unknown flag '--bogus'"},
           {{"tenants", "list", "--bogus=1"}, "unknown flag '--bogus'"},
           {{"-x"}, "unknown flag '-x' (flags are spelled --name)"},
           {{"keys", "create", "t", "--region"}, "flag --region needs a value"},
           {{"--region", "a", "--region=b"}, "flag --region is given more than once"},
       }) {
    auto args = ParseArgs(c.argv);
    ASSERT_FALSE(args.ok()) << c.message;
    EXPECT_TRUE(IsUsageError(args.status()));
    EXPECT_EQ(args.status().message(), c.message);
  }
}

TEST(ParseArgs, HelpAnywhereWinsOverUnknownFlags) {
  for (const auto& argv :
       std::vector<std::vector<std::string>>{{"--help", "tenants"},
                                             {"tenants", "-h"},
                                             {"tenants", "--bogus", "--help"},
                                             {"tenants", "--region", "--help"}}) {
    auto args = ParseArgs(argv);
    ASSERT_TRUE(args.ok()) << args.status();
    EXPECT_TRUE(args->help);
    EXPECT_EQ(args->positionals, std::vector<std::string>{"tenants"});
  }
}

TEST(ParseArgs, DoubleDashEndsFlags) {
  auto args = ParseArgs({"keys", "revoke", "--", "--help"});
  ASSERT_TRUE(args.ok());
  EXPECT_FALSE(args->help);
  EXPECT_EQ(args->positionals, (std::vector<std::string>{"keys", "revoke", "--help"}));
}

TEST(TenantName, FollowsTheSchemaCheck) {
  for (const char* ok : {"a", "acme", "0day", "a_b-c", "x-"}) {
    EXPECT_TRUE(IsValidTenantName(ok)) << ok;
  }
  EXPECT_TRUE(IsValidTenantName(std::string(63, 'z')));
  EXPECT_FALSE(IsValidTenantName(std::string(64, 'z')));
  for (const char* bad : {"", "Acme", "-a", "_a", "a b", "a.b", "ä", "a/b", "a\n"}) {
    EXPECT_FALSE(IsValidTenantName(bad)) << bad;
  }
}

TEST(MaxConcurrent, IntegersFromZeroTo100000Only) {
  EXPECT_EQ(*ParseMaxConcurrent("0"), 0);
  EXPECT_EQ(*ParseMaxConcurrent("10"), 10);
  EXPECT_EQ(*ParseMaxConcurrent("100000"), 100000);
  EXPECT_EQ(*ParseMaxConcurrent("007"), 7);
  for (const char* bad : {"", "-1", "+1", "100001", "1000000", "99999999999", "1.5", "1e3", " 5",
                          "5 ", "0x10", "abc"}) {
    auto n = ParseMaxConcurrent(bad);
    ASSERT_FALSE(n.ok()) << bad;
    EXPECT_TRUE(IsUsageError(n.status()));
    EXPECT_EQ(n.status().message(), "--max-concurrent must be an integer from 0 to 100000");
  }
}

TEST(Rate, PositiveDecimalsOnly) {
  EXPECT_EQ(*ParseRate("creates-per-sec", "5"), 5);
  EXPECT_EQ(*ParseRate("creates-per-sec", "0.5"), 0.5);
  EXPECT_EQ(*ParseRate("creates-per-sec", ".25"), 0.25);
  EXPECT_EQ(*ParseRate("creates-per-sec", "1000000"), 1000000);
  for (const char* bad :
       {"", "0", "0.0", "-1", "+1", ".", "1.2.3", "1e3", "inf", "nan", "1000000.5", "5 ", "five"}) {
    auto rate = ParseRate("requests-per-sec", bad);
    ASSERT_FALSE(rate.ok()) << bad;
    EXPECT_TRUE(IsUsageError(rate.status()));
    EXPECT_EQ(rate.status().message(),
              "--requests-per-sec must be a number greater than 0 and at most 1000000 (e.g. 5 "
              "or 0.5)");
  }
}

TEST(StateFilter, AnyCaseOrAll) {
  EXPECT_EQ(*ParseStateFilter("running"), "RUNNING");
  EXPECT_EQ(*ParseStateFilter("Hibernated"), "HIBERNATED");
  EXPECT_EQ(*ParseStateFilter("ALL"), "all");
  auto bad = ParseStateFilter("gone");
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(IsUsageError(bad.status()));
  EXPECT_NE(bad.status().message().find("PENDING, STARTING"), std::string::npos);
  EXPECT_NE(bad.status().message().find("'gone'"), std::string::npos);
}

TEST(FormatNumber, ShortestWithoutExponent) {
  EXPECT_EQ(FormatNumber(5), "5");
  EXPECT_EQ(FormatNumber(0.5), "0.5");
  EXPECT_EQ(FormatNumber(0.1), "0.1");
  EXPECT_EQ(FormatNumber(1000000), "1000000");
  EXPECT_EQ(FormatNumber(2.25), "2.25");
}

TEST(UsageError, IsMarked) {
  EXPECT_TRUE(IsUsageError(UsageError("x")));
  EXPECT_FALSE(IsUsageError(absl::InvalidArgumentError("x")));
  EXPECT_FALSE(IsUsageError(absl::OkStatus()));
}

}  // namespace
}  // namespace isorun::ctl
