// Runs the real isorunctl binary (ISORUNCTL_BIN, from CMake): help on every level on stdout with
// exit 0, and errors on stderr with exit 2 (bad command line) or 1 (failure), stdout empty.

#include <gtest/gtest.h>

#include "tools/isorunctl/run_binary_testing.h"

namespace isorun::ctl {
namespace {

using testing::RunBinary;

TEST(Binary, HelpOnEveryLevel) {
  const std::vector<std::vector<std::string>> levels = {
      {"--help"},
      {"-h"},
      {"help"},
      {"migrate", "--help"},
      {"capacity", "-h"},
      {"tenants", "--help"},
      {"tenants", "create", "--help"},
      {"tenants", "set-limits", "-h"},
      {"tenants", "list", "--help"},
      {"keys", "-h"},
      {"keys", "create", "--help"},
      {"keys", "list", "--help"},
      {"keys", "revoke", "--help"},
      {"sandboxes", "--help"},
      {"sandboxes", "list", "--help"},
      {"runners", "--help"},
      {"runners", "drain", "--help"},
      {"runners", "undrain", "--help"},
  };
  for (const auto& argv : levels) {
    auto r = RunBinary(argv);
    std::string what = ::testing::PrintToString(argv);
    EXPECT_EQ(r.code, 0) << what << "\n" << r.err;
    EXPECT_EQ(r.err, "") << what;
    EXPECT_NE(r.out.find("isorunctl"), std::string::npos) << what;
  }
  EXPECT_EQ(
      RunBinary({"tenants", "create", "--help"}).out.rfind("Usage: isorunctl tenants create", 0),
      0u);
}

TEST(Binary, UsageErrorsExitWith2) {
  for (const auto& argv : std::vector<std::vector<std::string>>{
           {}, {"nope"}, {"tenants"}, {"tenants", "create", "Bad Name"}, {"keys", "list"}}) {
    auto r = RunBinary(argv);
    std::string what = ::testing::PrintToString(argv);
    EXPECT_EQ(r.code, 2) << what;
    EXPECT_EQ(r.out, "") << what;
    EXPECT_EQ(r.err.rfind("isorunctl: ", 0), 0u) << what << "\n" << r.err;
  }
}

TEST(Binary, DatabaseUrlFromTheEnvironmentAndFailuresExitWith1) {
  auto r =
      RunBinary({"tenants", "list"},
                {{"ISORUN_DATABASE_URL", "postgresql://isorun@127.0.0.1:1/x?connect_timeout=2"}});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("isorunctl: database unavailable"), std::string::npos) << r.err;
  auto flag = RunBinary({"--database-url=postgresql://isorun@127.0.0.1:1/x", "capacity"});
  EXPECT_EQ(flag.code, 1) << flag.err;
}

}  // namespace
}  // namespace isorun::ctl
