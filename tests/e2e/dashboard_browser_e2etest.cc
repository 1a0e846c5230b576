// The web dashboard in real headless Chromium against a real cluster: the gateway serves the
// dashboard's build output, and dashboard/test/browser.test.mjs (node:test + playwright-core
// driving Debian's /usr/bin/chromium) signs in, watches a sandbox created through the API appear,
// runs `echo hi` in the exec console (runc runners, where this host can run real sandboxes),
// creates and revokes a key in the page, and checks the operator's charts against the history
// API. Screenshots go to <build>/dashboard-screenshots. Skips, saying why, without Chromium, node
// or the dashboard's build.

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "services/kit/api_key.h"
#include "services/runner/runc_test_env.h"
#include "tests/support/cluster.h"
#include "tests/support/eventually.h"
#include "tests/support/http_client.h"

namespace isorun {
namespace {

using testing::Cluster;
using testing::ClusterOptions;

namespace fs = std::filesystem;

// The repository (sources) and build folders, from where the test binary lives (build/bin).
fs::path BuildDir() { return fs::path(Cluster::BinDir()).parent_path(); }
fs::path SourceDir() {
  // CMake's cache names the source folder; the usual layout puts build/ inside it.
  return fs::path(ISORUN_SOURCE_DIR);
}

TEST(DashboardBrowser, TenantAndOperatorViewsInChromium) {
  const fs::path dashboard = BuildDir() / "dashboard";
  const fs::path script = SourceDir() / "dashboard" / "test" / "browser.test.mjs";
  if (::access("/usr/bin/chromium", X_OK) != 0) {
    GTEST_SKIP() << "needs /usr/bin/chromium (Debian package chromium; ./isorun deps)";
  }
  if (std::system("command -v node >/dev/null 2>&1") != 0) GTEST_SKIP() << "needs node";
  if (!fs::exists(dashboard / "index.html") ||
      !fs::exists(SourceDir() / "dashboard" / "node_modules" / "playwright-core")) {
    GTEST_SKIP() << "the dashboard is not built (./isorun build runs npm ci and its build into "
                 << dashboard << ")";
  }

  ClusterOptions options;
  options.dashboard_dir = dashboard.string();
  options.capacity_history_interval_sec = 1;
  // Real sandboxes where the host can run them, so the exec console runs a command.
  const std::string& no_runc = runner::testing::RuncUnavailableReason();
  std::string image = "busybox:1.36";
  if (no_runc.empty()) {
    auto registry = runner::testing::TestRegistryAddress();
    ASSERT_TRUE(registry.ok()) << registry.status();
    options.runner_driver = "runc";
    options.registry = *registry;
  } else {
    std::fprintf(stderr, "simulated runners (the exec console part is skipped): %s\n",
                 no_runc.c_str());
  }
  Cluster cluster(options);
  std::string tenant = cluster.CreateTenant("browser", 5);
  cluster.db().Scalar(
      "UPDATE quota.limits SET creates_per_sec = 100, requests_per_sec = 1000 WHERE tenant_id = '" +
      tenant + "'");
  std::string key = cluster.CreateKey(tenant, "local", "admin");
  std::string token = cluster.CreateOperatorToken();
  // A few snapshots for the operator's charts.
  ASSERT_TRUE(testing::Eventually(
      [&] {
        return std::stoi("0" + cluster.db().Scalar(
                                   "SELECT count(*) FROM scheduler.capacity_history "
                                   "WHERE region = ''")) >= 3;
      },
      absl::Seconds(30)));

  const fs::path shots = BuildDir() / "dashboard-screenshots";
  std::string command = "cd '" + (SourceDir() / "dashboard").string() +
                        "' && ISORUN_API_URL='" + cluster.gateway_url() + "' ISORUN_API_KEY='" +
                        key + "' ISORUN_ADMIN_TOKEN='" + token + "' ISORUN_SCREENSHOTS='" +
                        shots.string() + "' ISORUN_SANDBOX_IMAGE='" + image +
                        "' ISORUN_EXEC=" + (no_runc.empty() ? "1" : "0") +
                        " node --test --test-reporter=spec '" + script.string() + "' 2>&1";
  std::string output;
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) output.append(buf, n);
  int status = ::pclose(pipe);
  std::fprintf(stderr, "%s\n", output.c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << output;
  for (const char* name : {"sandboxes", "sandbox", "keys", "usage", "operator"}) {
    EXPECT_TRUE(fs::exists(shots / (std::string(name) + ".png"))) << name;
  }
}

}  // namespace
}  // namespace isorun
