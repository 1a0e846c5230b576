// Metrics fit for dashboards: every service's /metrics passes `promtool check metrics` (Prometheus
// naming: base units, `_total` on counters, help on every family), and a real Prometheus
// (Debian's) scraping a test cluster answers a PromQL query of a capacity gauge with the fleet's
// value. Both tools must be installed (`./isorun deps`); the test skips, saying so, when not.

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "tests/support/cluster.h"
#include "tests/support/eventually.h"
#include "tests/support/http_client.h"
#include "tests/support/json_fields.h"

namespace isorun {
namespace {

using testing::Cluster;
using testing::ClusterOptions;
using testing::HttpRequest;
using testing::Json;
using testing::Str;

bool Executable(const std::string& path) { return ::access(path.c_str(), X_OK) == 0; }

// Runs `command` with `input` on its stdin; returns the exit status and what it printed.
int RunWithInput(const std::string& command, const std::string& input, std::string* output) {
  char path[] = "/tmp/isorun-metrics-XXXXXX";
  int fd = ::mkstemp(path);
  if (fd < 0) return -1;
  ::close(fd);
  {
    std::ofstream(path) << input;
  }
  std::string full = command + " < '" + path + "' 2>&1";
  FILE* pipe = ::popen(full.c_str(), "r");
  if (pipe == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) output->append(buf, n);
  int status = ::pclose(pipe);
  std::filesystem::remove(path);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

class Metrics : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ClusterOptions options;
    options.runners = 2;
    options.runner_slots = 7;
    options.runner_cpu_millis = 3000;
    options.runner_memory_mb = 2048;
    try {
      cluster_ = new Cluster(options);
    } catch (const std::exception& e) {
      setup_error_ = new std::string(e.what());
    }
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override {
    ASSERT_EQ(setup_error_, nullptr) << "the cluster did not start: " << *setup_error_;
  }

  // Traffic, so that labelled families have samples: a create, a list, a 401.
  static void MakeTraffic() {
    std::string tenant = cluster_->CreateTenant("metrics", 5);
    std::string key = cluster_->CreateKey(tenant);
    std::map<std::string, std::string> auth = {{"Authorization", "Bearer " + key},
                                               {"Content-Type", "application/json"}};
    auto created =
        HttpRequest("POST", cluster_->gateway_url() + "/v1/sandboxes", R"({"image":"a:1"})", auth);
    ASSERT_EQ(created.status, 201) << created.body;
    HttpRequest("GET", cluster_->gateway_url() + "/v1/sandboxes", "", auth);
    HttpRequest("GET", cluster_->gateway_url() + "/v1/usage", "",
                {{"Authorization", "Bearer isr_local_nope_nope"}});
  }

  static Cluster* cluster_;
  static std::string* setup_error_;
};

Cluster* Metrics::cluster_ = nullptr;
std::string* Metrics::setup_error_ = nullptr;

TEST_F(Metrics, EveryServicePassesPromtoolCheckMetrics) {
  if (!Executable("/usr/bin/promtool")) {
    GTEST_SKIP() << "promtool is not installed (Debian package prometheus; ./isorun deps)";
  }
  MakeTraffic();
  for (const std::string process :
       {"gateway", "lifecycle", "quota", "scheduler", "runner-1", "runner-2"}) {
    // The scheduler's gauges follow its sync interval: wait until they show the fleet.
    std::string text;
    ASSERT_TRUE(testing::Eventually(
        [&] {
          auto r = HttpRequest("GET", cluster_->metrics_url(process));
          text = r.body;
          return r.status == 200 && text.find("isorun_") != std::string::npos;
        },
        absl::Seconds(10)))
        << process;
    std::string out;
    int code = RunWithInput("/usr/bin/promtool check metrics", text, &out);
    EXPECT_EQ(code, 0) << process << ": promtool says:\n" << out;
    EXPECT_EQ(out, "") << process << ": promtool says:\n" << out;
    for (const char* bad : {"_mb ", "_mb{", "_millis ", "_millis{", "_ms ", "_ms{"}) {
      EXPECT_EQ(text.find(bad), std::string::npos) << process << " has a non-base unit " << bad;
    }
  }
}

TEST_F(Metrics, PrometheusScrapesTheFleetsCapacity) {
  const std::string prometheus = "/usr/bin/prometheus";
  if (!Executable(prometheus)) {
    GTEST_SKIP() << "prometheus is not installed (Debian package prometheus; ./isorun deps)";
  }
  const int port = testing::PickFreePort();
  std::string dir = std::filesystem::temp_directory_path() /
                    ("isorun-prometheus-" + std::to_string(::getpid()) + "-" + std::to_string(port));
  std::filesystem::create_directories(dir + "/data");
  std::string scheduler = cluster_->metrics_url("scheduler");
  scheduler = scheduler.substr(7, scheduler.find('/', 7) - 7);  // host:port
  {
    std::ofstream config(dir + "/prometheus.yml");
    config << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
              "scrape_configs:\n  - job_name: isorun-scheduler\n    static_configs:\n"
              "      - targets: ['"
           << scheduler << "']\n";
  }
  const std::string log = dir + "/prometheus.log";
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::freopen(log.c_str(), "w", stdout);
    std::freopen(log.c_str(), "a", stderr);
    std::string config_flag = "--config.file=" + dir + "/prometheus.yml";
    std::string data_flag = "--storage.tsdb.path=" + dir + "/data";
    std::string listen_flag = "--web.listen-address=127.0.0.1:" + std::to_string(port);
    ::execl(prometheus.c_str(), prometheus.c_str(), config_flag.c_str(), data_flag.c_str(),
            listen_flag.c_str(), "--storage.tsdb.retention.time=1h", static_cast<char*>(nullptr));
    std::_Exit(127);
  }
  struct Stop {
    pid_t pid;
    std::string dir;
    ~Stop() {
      ::kill(pid, SIGTERM);
      int status;
      ::waitpid(pid, &status, 0);
      std::filesystem::remove_all(dir);
    }
  } stop{pid, dir};

  // 2 runners x 7 slots; the value as Prometheus stores it after scraping the scheduler.
  const std::string url = "http://127.0.0.1:" + std::to_string(port) +
                          "/api/v1/query?query=isorun_scheduler_capacity_sandbox_slots";
  std::string last;
  bool got = testing::Eventually(
      [&] {
        try {
          auto r = HttpRequest("GET", url);
          last = r.body;
          return r.status == 200 && r.body.find("\"14\"") != std::string::npos;
        } catch (const std::exception& e) {
          last = e.what();
          return false;
        }
      },
      absl::Seconds(30));
  std::string log_text;
  if (!got) {
    std::ifstream in(log);
    log_text.assign(std::istreambuf_iterator<char>(in), {});
  }
  ASSERT_TRUE(got) << "last answer: " << last << "\nprometheus log:\n" << log_text;
  auto body = Json(last);
  EXPECT_EQ(Str(body, "status"), "success");
  EXPECT_NE(last.find("\"job\":\"isorun-scheduler\""), std::string::npos) << last;

  // Memory in bytes: 2 runners x 2048 MiB.
  auto memory = HttpRequest("GET", "http://127.0.0.1:" + std::to_string(port) +
                                       "/api/v1/query?query=isorun_scheduler_capacity_memory_bytes");
  EXPECT_NE(memory.body.find("\"4294967296\""), std::string::npos) << memory.body;
}

}  // namespace
}  // namespace isorun
