// The command line in-process, without a database: help, usage errors and their exit codes.
// Validation happens before any connection, which the unreachable URL below proves.

#include "tools/isorunctl/cli.h"

#include <gtest/gtest.h>

#include <sstream>

#include "tools/isorunctl/commands.h"

namespace isorun::ctl {
namespace {

// Nothing listens there: a command that got as far as connecting would fail with exit 1.
constexpr char kNoDatabase[] = "postgresql://isorun@127.0.0.1:1/none?connect_timeout=2";

struct Result {
  int code;
  std::string out;
  std::string err;
};

Result Ctl(const std::vector<std::string>& argv, const std::string& env_url = kNoDatabase) {
  std::ostringstream out, err;
  int code = Run(argv, env_url, out, err);
  return {code, out.str(), err.str()};
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(Cli, HelpOnEveryLevelGoesToStdout) {
  const std::vector<std::vector<std::string>> levels = {
      {},
      {"tenants"},
      {"keys"},
      {"sandboxes"},
      {"runners"},
      {"migrate"},
      {"capacity"},
      {"tenants", "create"},
      {"tenants", "set-limits"},
      {"tenants", "list"},
      {"keys", "create"},
      {"keys", "list"},
      {"keys", "revoke"},
      {"sandboxes", "list"},
      {"runners", "drain"},
      {"runners", "undrain"},
  };
  for (const auto& words : levels) {
    for (const char* flag : {"--help", "-h"}) {
      std::vector<std::string> argv = words;
      argv.push_back(flag);
      Result r = Ctl(argv, "");
      std::string what = testing::PrintToString(argv);
      EXPECT_EQ(r.code, kExitOk) << what;
      EXPECT_EQ(r.err, "") << what;
      EXPECT_TRUE(Contains(r.out, "isorunctl")) << what;
      EXPECT_TRUE(Contains(r.out, "--help")) << what;
    }
  }
}

TEST(Cli, HelpSaysWhatEachLevelDoes) {
  EXPECT_TRUE(Contains(Ctl({"--help"}).out, "tenants create|set-limits|list"));
  EXPECT_TRUE(Contains(Ctl({"keys", "--help"}).out, "isorunctl keys revoke KEY_ID"));
  Result create = Ctl({"tenants", "create", "--help"});
  EXPECT_TRUE(Contains(create.out,
                       "Usage: isorunctl tenants create NAME [--max-concurrent N] "
                       "[--creates-per-sec R] [--requests-per-sec R]"));
  EXPECT_TRUE(Contains(create.out, "--database-url URL"));
  EXPECT_TRUE(Contains(Ctl({"help", "keys", "create"}).out, "--region R"));
  // Help wins over an incomplete or wrong command line.
  EXPECT_EQ(Ctl({"keys", "revoke", "--bogus", "-h"}).code, kExitOk);
  EXPECT_EQ(Ctl({"--help", "tenants", "create", "--max-concurrent"}).code, kExitOk);
}

TEST(Cli, UsageErrorsExitWith2OnStderr) {
  struct Case {
    std::vector<std::string> argv;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {{}, "missing command"},
           {{"bogus"}, "unknown command 'bogus'"},
           {{"tenants"}, "missing command after 'tenants'"},
           {{"tenants", "remove", "x"}, "unknown command 'tenants remove'"},
           {{"tenants", "create"}, "missing NAME: usage: isorunctl tenants create NAME"},
           {{"tenants", "create", "a", "b"}, "unexpected argument 'b'"},
           {{"tenants", "list", "--region", "x"},
            "flag --region is not valid for `isorunctl tenants list`"},
           {{"tenants", "list", "--frobnicate"}, "unknown flag '--frobnicate'"},
           {{"tenants", "create", "Acme"}, "invalid tenant name 'Acme'"},
           {{"tenants", "create", "a", "--max-concurrent", "-1"},
            "--max-concurrent must be an integer from 0 to 100000"},
           {{"tenants", "create", "a", "--max-concurrent=100001"},
            "--max-concurrent must be an integer from 0 to 100000"},
           {{"tenants", "create", "a", "--creates-per-sec", "0"},
            "--creates-per-sec must be a number greater than 0"},
           {{"tenants", "set-limits", "a"}, "nothing to change"},
           {{"tenants", "set-limits", "a", "--requests-per-sec", "1e9"},
            "--requests-per-sec must be a number greater than 0"},
           {{"keys", "create", "a", "--region", "EU_West"}, "invalid region 'EU_West'"},
           {{"keys", "revoke", "not a key"}, "invalid key id 'not a key'"},
           {{"sandboxes", "list", "--state", "zombie"}, "--state must be one of"},
           {{"sandboxes", "list", "--tenant="}, "--tenant needs a tenant name"},
           {{"migrate", "--json"}, "flag --json is not valid for `isorunctl migrate`"},
           {{"capacity", "extra"}, "unexpected argument 'extra'"},
       }) {
    Result r = Ctl(c.argv);
    std::string what = testing::PrintToString(c.argv);
    EXPECT_EQ(r.code, kExitUsage) << what << "\n" << r.err;
    EXPECT_EQ(r.out, "") << what;
    EXPECT_TRUE(Contains(r.err, c.message)) << what << "\n" << r.err;
    EXPECT_TRUE(Contains(r.err, "isorunctl")) << what;
  }
}

TEST(Cli, AMalformedKeyIsNeverEchoed) {
  const std::string almost = "isr_local_abc_tooshortsecret";
  Result r = Ctl({"keys", "revoke", almost});
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_FALSE(Contains(r.err, "tooshortsecret")) << r.err;
  EXPECT_TRUE(Contains(r.err, "not a well-formed key"));
}

TEST(Cli, NeedsADatabaseUrl) {
  Result r = Ctl({"tenants", "list"}, "");
  EXPECT_EQ(r.code, kExitUsage);
  EXPECT_TRUE(Contains(r.err, "set ISORUN_DATABASE_URL or pass --database-url")) << r.err;
}

TEST(Cli, DatabaseUrlFlagWinsOverTheEnvironment) {
  // The environment holds no URL at all; the flag (after the command) names port 1, and libpq's
  // error names the port it tried.
  Result r = Ctl({"tenants", "list", "--database-url", "postgresql://isorun@127.0.0.1:1/flagdb"},
                 "not-a-url");
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_TRUE(Contains(r.err, "port 1")) << r.err;
}

TEST(Cli, AnUnreachableDatabaseIsAFailure) {
  Result r = Ctl({"tenants", "list"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.out, "");
  EXPECT_TRUE(Contains(r.err, "isorunctl: database unavailable")) << r.err;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "one line: " << r.err;
}

TEST(RunnerLiveness, ByHeartbeatAge) {
  EXPECT_EQ(RunnerLiveness(0), "healthy");
  EXPECT_EQ(RunnerLiveness(10), "healthy");
  EXPECT_EQ(RunnerLiveness(10.1), "unhealthy");
  EXPECT_EQ(RunnerLiveness(60), "unhealthy");
  EXPECT_EQ(RunnerLiveness(60.5), "lost");
}

}  // namespace
}  // namespace isorun::ctl
