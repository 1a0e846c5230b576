// isorun-run-with-cluster: starts a throwaway Isorun cluster (every service as a real process on
// free loopback ports, a fresh database on the server of ISORUN_TEST_DATABASE_URL, real runc
// sandboxes from a local registry where the host can run them, simulated runners otherwise),
// runs one command against it, then stops everything and removes what it made. The SDK suites
// (node --test, python -m unittest) run under it from ctest.
//
//   isorun-run-with-cluster [--runners N] [--max-concurrent N] [--sim-exit-code N]
//                           -- COMMAND [ARGS...]
//
// The command gets ISORUN_API_URL, ISORUN_API_KEY (a key of tenant "sdk", made with isorunctl),
// ISORUN_DATABASE_URL and ISORUN_BIN_DIR (for isorunctl), ISORUN_PUBLIC_URL, ISORUN_TEST_DRIVER
// ("runc" or "sim") and, with "sim", ISORUN_TEST_SIM_REASON (why real sandboxes cannot run here).
// The exit status is the command's (128 + N when a signal ended it); SIGINT and SIGTERM are
// passed on to the command, and the cluster is stopped after it ends. With --sim-exit-code N, a
// command that succeeded on simulated runners (so its exec tests skipped) exits N instead of 0:
// ctest's SKIP_RETURN_CODE then reports the suite as skipped, with the reason, rather than as a
// pass that hides what did not run.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "services/runner/runc_test_env.h"
#include "tests/support/cluster.h"

namespace {

volatile sig_atomic_t g_child = 0;

void PassOn(int signal) {
  if (g_child > 0) ::kill(g_child, signal);
}

int Usage() {
  std::fprintf(stderr,
               "usage: isorun-run-with-cluster [--runners N] [--max-concurrent N] "
               "[--sim-exit-code N] -- COMMAND [ARGS...]\n");
  return 2;
}

std::string LastKeyLine(const std::string& out) {
  std::string key;
  size_t start = 0;
  while (start < out.size()) {
    size_t end = out.find('\n', start);
    if (end == std::string::npos) end = out.size();
    std::string line = out.substr(start, end - start);
    if (line.rfind("isr_", 0) == 0) key = line;
    start = end + 1;
  }
  return key;
}

int Run(int argc, char** argv) {
  int runners = 1;
  int max_concurrent = 50;
  int sim_exit_code = 0;
  int i = 1;
  for (; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") {
      ++i;
      break;
    }
    if (arg == "--runners" && i + 1 < argc) {
      runners = std::atoi(argv[++i]);
    } else if (arg == "--max-concurrent" && i + 1 < argc) {
      max_concurrent = std::atoi(argv[++i]);
    } else if (arg == "--sim-exit-code" && i + 1 < argc) {
      sim_exit_code = std::atoi(argv[++i]);
    } else {
      return Usage();
    }
  }
  if (i >= argc || runners < 1 || max_concurrent < 1) return Usage();
  std::vector<char*> command(argv + i, argv + argc);
  command.push_back(nullptr);

  isorun::testing::ClusterOptions options;
  options.runners = runners;
  std::string sim_reason;
  const char* forced = std::getenv("ISORUN_TEST_DRIVER");
  if (forced != nullptr && std::string(forced) == "sim") {
    sim_reason = "ISORUN_TEST_DRIVER=sim";
  } else {
    sim_reason = isorun::runner::testing::RuncUnavailableReason();
  }
  if (sim_reason.empty()) {
    auto registry = isorun::runner::testing::TestRegistryAddress();
    if (!registry.ok()) {
      std::fprintf(stderr, "the test registry did not start: %s\n",
                   std::string(registry.status().message()).c_str());
      return 1;
    }
    options.runner_driver = "runc";
    options.registry = *registry;
    // Real sandboxes cost memory and pids: a few dozen at once is plenty for the suites.
    options.runner_slots = 64;
  } else {
    std::fprintf(stderr, "isorun-run-with-cluster: simulated runners (no processes): %s\n",
                 sim_reason.c_str());
  }
  auto cluster = isorun::testing::Cluster::StartOrExplain(options);
  if (!cluster) return 1;

  std::string out;
  if (cluster->Isorunctl({"tenants", "create", "sdk", "--max-concurrent",
                          std::to_string(max_concurrent)},
                         &out) != 0) {
    std::fprintf(stderr, "isorunctl tenants create failed: %s\n", out.c_str());
    return 1;
  }
  if (cluster->Isorunctl({"keys", "create", "sdk", "--region", "local"}, &out) != 0 ||
      LastKeyLine(out).empty()) {
    std::fprintf(stderr, "isorunctl keys create failed: %s\n", out.c_str());
    return 1;
  }
  const std::string key = LastKeyLine(out);
  std::fprintf(stderr, "isorun-run-with-cluster: gateway %s, driver %s\n",
               cluster->gateway_url().c_str(), options.runner_driver.c_str());

  ::setenv("ISORUN_API_URL", cluster->gateway_url().c_str(), 1);
  ::setenv("ISORUN_API_KEY", key.c_str(), 1);
  ::setenv("ISORUN_DATABASE_URL", cluster->database_url().c_str(), 1);
  ::setenv("ISORUN_BIN_DIR", isorun::testing::Cluster::BinDir().c_str(), 1);
  ::setenv("ISORUN_TEST_DRIVER", options.runner_driver.c_str(), 1);
  // The public-URL proxy (sandbox.url(port)); its domain is `localhost`.
  const std::string public_url = "http://127.0.0.1:" + std::to_string(cluster->proxy_port());
  ::setenv("ISORUN_PUBLIC_URL", public_url.c_str(), 1);
  if (!sim_reason.empty()) ::setenv("ISORUN_TEST_SIM_REASON", sim_reason.c_str(), 1);
  ::unsetenv("ISORUN_API_KEY_FILE");

  struct sigaction pass {};
  pass.sa_handler = PassOn;
  ::sigemptyset(&pass.sa_mask);
  ::sigaction(SIGINT, &pass, nullptr);
  ::sigaction(SIGTERM, &pass, nullptr);

  pid_t child = ::fork();
  if (child < 0) {
    std::perror("fork");
    return 1;
  }
  if (child == 0) {
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    ::execvp(command[0], command.data());
    std::fprintf(stderr, "cannot run %s: %s\n", command[0], std::strerror(errno));
    ::_exit(127);
  }
  g_child = child;
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  g_child = 0;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && !sim_reason.empty() && sim_exit_code != 0) {
    std::fprintf(stderr,
                 "isorun-run-with-cluster: the suite passed, but its exec tests were skipped: "
                 "simulated runners (%s)\n",
                 sim_reason.c_str());
    return sim_exit_code;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);  // the cluster is stopped and removed before this returns
  } catch (const std::exception& e) {
    std::fprintf(stderr, "isorun-run-with-cluster: %s\n", e.what());
    return 1;
  }
}
