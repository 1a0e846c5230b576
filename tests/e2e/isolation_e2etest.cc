// Isolation between tenants, tried as an attacker would, with real runc sandboxes through the
// public HTTP API (gateway, lifecycle, quota, scheduler and a runc runner as processes, a local
// registry, real Postgres): the syscall filter, working directories under /proc, registries, disk
// caps, exec caps and hibernation caps. Skips, saying why, where real sandboxes cannot run.

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "services/runner/runc_test_env.h"
#include "tests/support/cluster.h"
#include "tests/support/host_command.h"
#include "tests/support/http_client.h"
#include "tests/support/json_fields.h"

namespace isorun {
namespace {

using Clock = std::chrono::steady_clock;
using testing::Cluster;
using testing::ClusterOptions;
using testing::HttpRequest;
using testing::HttpResponse;
using testing::Json;
using testing::Num;
using testing::Obj;
using testing::Str;

using testing::Host;

std::string Quote(const std::string& s) {
  google::protobuf::Value v;
  v.set_string_value(s);
  std::string quoted;
  (void)google::protobuf::util::MessageToJsonString(v, &quoted);
  return quoted;
}

class Isolation : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!runner::testing::RuncUnavailableReason().empty()) return;
    auto registry = runner::testing::TestRegistryAddress();
    if (!registry.ok()) {
      setup_error_ = new std::string(registry.status().ToString());
      return;
    }
    registry_ = new std::string(*registry);
    ClusterOptions options;
    options.runner_driver = "runc";
    options.registry = *registry;
    // Small pools of threads for the short calls: exec calls must not need them (the fair
    // sharing tests hold more long commands than there are threads). Images over 16 MiB are
    // refused (fat:1.0 has a 48 MiB layer; busybox:1.36 is a few MiB).
    options.runner_args = {"--grpc_max_threads=8", "--max_image_bytes=16777216"};
    options.lifecycle_args = {"--grpc_max_threads=8"};
    // A client that stops reading an exec:stream is given up on after 3 s.
    // A client that falls silent is probed after 1 s, then every 1 s, 3 unanswered.
    options.gateway_args = {"--write_timeout=3s", "--client_keepalive=1s",
                            "--client_keepalive_interval=1s", "--client_keepalive_probes=3"};
    try {
      cluster_ = new Cluster(options);
    } catch (const std::exception& e) {
      setup_error_ = new std::string(std::string("the cluster did not start: ") + e.what());
    }
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }

  void SetUp() override {
    ISORUN_REQUIRE_RUNC();
    ASSERT_EQ(setup_error_, nullptr) << *setup_error_;
    ASSERT_NE(cluster_, nullptr);
    std::tie(tenant_, key_) = NewTenant(5);
  }

  // A tenant with `max_concurrent` slots and generous rates, and a key of it.
  static std::pair<std::string, std::string> NewTenant(int max_concurrent) {
    static std::atomic<int> n{0};
    std::string tenant = cluster_->CreateTenant("i" + std::to_string(n++), max_concurrent);
    cluster_->db().Scalar(
        "UPDATE quota.limits SET creates_per_sec = 1000, requests_per_sec = 1000 "
        "WHERE tenant_id = '" +
        tenant + "'");
    return {tenant, cluster_->CreateKey(tenant)};
  }

  static HttpResponse CallAs(const std::string& key, const std::string& method,
                             const std::string& path, const std::string& body = "") {
    std::map<std::string, std::string> headers = {{"Authorization", "Bearer " + key}};
    if (!body.empty()) headers["Content-Type"] = "application/json";
    return HttpRequest(method, cluster_->gateway_url() + path, body, headers);
  }
  HttpResponse Call(const std::string& method, const std::string& path,
                    const std::string& body = "") {
    return CallAs(key_, method, path, body);
  }

  std::string CreateAs(const std::string& key, const std::string& extra = "") {
    auto r = CallAs(key, "POST", "/v1/sandboxes", R"({"image":"busybox:1.36")" + extra + "}");
    EXPECT_EQ(r.status, 201) << r.body;
    auto sb = Json(r.body);
    EXPECT_EQ(Str(sb, "state"), "RUNNING") << r.body;
    return Str(sb, "id");
  }
  std::string Create(const std::string& extra = "") { return CreateAs(key_, extra); }

  static HttpResponse ExecAs(const std::string& key, const std::string& id, const std::string& cmd,
                             const std::string& fields = "") {
    return CallAs(key, "POST", "/v1/sandboxes/" + id + "/exec",
                  absl::StrCat(R"({"cmd":)", Quote(cmd), fields, "}"));
  }
  HttpResponse Exec(const std::string& id, const std::string& cmd, const std::string& fields = "") {
    return ExecAs(key_, id, cmd, fields);
  }

  std::string Out(const std::string& id, const std::string& cmd) {
    auto r = Exec(id, cmd);
    EXPECT_EQ(r.status, 200) << cmd << ": " << r.body;
    auto res = Json(r.body);
    EXPECT_EQ(Num(res, "exitCode"), 0) << cmd << ": " << r.body;
    return Str(res, "stdout");
  }

  static google::protobuf::Struct ErrorOf(const HttpResponse& r) {
    auto error = Obj(Json(r.body), "error");
    EXPECT_EQ(Num(error, "status"), r.status) << r.body;
    return error;
  }

  std::string Sql(const std::string& sql) { return cluster_->db().Scalar(sql); }

  static Cluster* cluster_;
  static std::string* setup_error_;
  static std::string* registry_;
  std::string tenant_, key_;
};

Cluster* Isolation::cluster_ = nullptr;
std::string* Isolation::setup_error_ = nullptr;
std::string* Isolation::registry_ = nullptr;

TEST_F(Isolation, EveryProcessRunsUnderTheSyscallFilter) {
  std::string id = Create();
  ASSERT_FALSE(id.empty());
  // Mode 2: a filter. The exec'd shell and PID 1 alike.
  EXPECT_EQ(Out(id, "grep Seccomp: /proc/self/status"), "Seccomp:\t2\n");
  EXPECT_EQ(Out(id, "grep Seccomp: /proc/1/status"), "Seccomp:\t2\n");

  // New namespaces of every kind are refused, and mount with them.
  for (const char* attack :
       {"unshare -U true", "unshare -m true", "unshare -n true", "unshare -p -f true",
        "unshare -U -r true", "mount -t tmpfs none /mnt", "nsenter -t 1 -U true"}) {
    auto r = Exec(id, attack);
    ASSERT_EQ(r.status, 200) << attack << ": " << r.body;
    auto res = Json(r.body);
    EXPECT_NE(Num(res, "exitCode"), 0) << attack << " succeeded: " << r.body;
  }
  auto r = Exec(id, "unshare -U true");
  EXPECT_TRUE(absl::StrContains(Str(Json(r.body), "stderr"), "not permitted")) << r.body;

  // Ordinary work goes on: files, pipes, background jobs, signals.
  EXPECT_EQ(Out(id, "mkdir -p /tmp/w && cd /tmp/w && echo data > f && cat f | tr a-z A-Z"),
            "DATA\n");
  EXPECT_EQ(Out(id, "sleep 5 & p=$!; kill $p; wait $p; echo $?"), "143\n");
  EXPECT_EQ(Out(id, "ls / | grep -c -x -e bin -e tmp"), "2\n");
}

TEST_F(Isolation, ExecCwdUnderProcIsRefused) {
  std::string id = Create();
  ASSERT_FALSE(id.empty());
  for (const char* cwd : {"/proc", "/proc/self/fd/3", "/proc/1/cwd", "//proc/self", "/tmp/../proc",
                          "/./proc/self/root"}) {
    auto r = Exec(id, "pwd", absl::StrCat(R"(,"cwd":)", Quote(cwd)));
    ASSERT_EQ(r.status, 400) << cwd << ": " << r.body;
    EXPECT_EQ(Str(ErrorOf(r), "reason"), "INVALID_ARGUMENT") << r.body;
  }
  // A link to /proc made inside the sandbox is entered from inside it, after runc is done: the
  // command sees its own sandbox only.
  EXPECT_EQ(Out(id, "ln -s /proc/self/cwd /tmp/p && echo ok"), "ok\n");
  auto r = Exec(id, "ls /tmp/p/ | grep -c -x bin", R"(,"cwd":"/tmp/p")");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Json(r.body), "stdout"), "1\n") << r.body;
  // Ordinary directories still work, and a missing one is still the caller's mistake.
  r = Exec(id, "pwd", R"(,"cwd":"/tmp")");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Json(r.body), "stdout"), "/tmp\n");
  r = Exec(id, "pwd", R"(,"cwd":"/no/such/dir")");
  EXPECT_EQ(r.status, 400) << r.body;
}

TEST_F(Isolation, ARegistryOffTheListIsRefusedBeforeAnyQuotaWork) {
  for (const char* image : {"127.0.0.1:1/busybox:1.36", "169.254.169.254/busybox:1.36",
                            "localhost:5000/busybox:1.36", "10.1.2.3:5000/busybox:1.36",
                            "registry.example.com/team/app:1.0", "metadata.google.internal/x:1"}) {
    auto r = Call("POST", "/v1/sandboxes", absl::StrCat(R"({"image":)", Quote(image), "}"));
    ASSERT_EQ(r.status, 400) << image << ": " << r.body;
    EXPECT_EQ(Str(ErrorOf(r), "reason"), "IMAGE_REGISTRY_NOT_ALLOWED") << r.body;
  }
  // Nothing was admitted, placed or recorded.
  EXPECT_EQ(Sql("SELECT count(*) FROM lifecycle.sandboxes WHERE tenant_id = '" + tenant_ + "'"),
            "0");
  EXPECT_EQ(Sql("SELECT count(*) FROM quota.reservations WHERE tenant_id = '" + tenant_ + "'"),
            "0");
  EXPECT_EQ(Sql("SELECT active FROM quota.usage WHERE tenant_id = '" + tenant_ + "'"), "0");
  // The configured registry, named or not, is allowed.
  std::string id = Create();
  EXPECT_FALSE(id.empty());
  auto r = Call("POST", "/v1/sandboxes",
                absl::StrCat(R"({"image":")", *registry_, R"(/busybox:1.36"})"));
  EXPECT_EQ(r.status, 201) << r.body;
}

TEST_F(Isolation, PullFailuresAnswerAShortFixedReason) {
  auto r = Call("POST", "/v1/sandboxes", R"({"image":"busybox:0.0.404"})");
  ASSERT_EQ(r.status, 404) << r.body;
  auto error = ErrorOf(r);
  EXPECT_EQ(Str(error, "reason"), "IMAGE_NOT_FOUND") << r.body;
  // The fetcher's own words (and the registry's address) stay in the runner's log.
  for (const char* leak :
       {"manifest unknown", "skopeo", "docker://", "msg=", "time=", "127.0.0.1"}) {
    EXPECT_FALSE(absl::StrContains(r.body, leak)) << leak << " in " << r.body;
  }
  auto listed = Call("GET", "/v1/sandboxes?state=FAILED");
  EXPECT_FALSE(absl::StrContains(listed.body, "manifest unknown")) << listed.body;
  EXPECT_EQ(Sql("SELECT count(*) FROM quota.reservations WHERE tenant_id = '" + tenant_ + "'"),
            "0");
}

TEST_F(Isolation, AnOversizedImageIsRefusedAndTheCacheIsUnchanged) {
  const std::string images = cluster_->runner_data_dir("runner-1") + "/images";
  auto listing = [&] {
    std::string out;
    if (FILE* p = ::popen(("ls -A '" + images + "' '" + images + "/tmp' 2>&1").c_str(), "r")) {
      char buf[4096];
      size_t n;
      while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
      ::pclose(p);
    }
    return out;
  };
  ASSERT_FALSE(Create().empty());  // busybox is cached and stays
  const std::string before = listing();
  auto r = Call("POST", "/v1/sandboxes", R"({"image":"fat:1.0"})");
  ASSERT_EQ(r.status, 400) << r.body;
  EXPECT_EQ(Str(ErrorOf(r), "reason"), "IMAGE_TOO_LARGE") << r.body;
  EXPECT_EQ(listing(), before);
  EXPECT_EQ(Sql("SELECT count(*) FROM quota.reservations WHERE tenant_id = '" + tenant_ + "'"),
            "1");
  EXPECT_EQ(Sql("SELECT count(*) FROM scheduler.placements p JOIN lifecycle.sandboxes s "
                "ON s.id = p.sandbox_id WHERE s.tenant_id = '" +
                tenant_ + "'"),
            "1");
}

TEST_F(Isolation, WritesPastDiskMbFailWithEnospcWhileANeighbourKeepsWriting) {
  // Out of range: refused, nothing created.
  for (const char* bad : {"63", "65537", "0.5", "\"64\""}) {
    auto r = Call("POST", "/v1/sandboxes",
                  absl::StrCat(R"({"image":"busybox:1.36","diskMb":)", bad, "}"));
    EXPECT_EQ(r.status, 400) << bad << ": " << r.body;
  }
  auto small = Call("POST", "/v1/sandboxes", R"({"image":"busybox:1.36","diskMb":64})");
  ASSERT_EQ(small.status, 201) << small.body;
  EXPECT_EQ(Num(Json(small.body), "diskMb"), 64) << small.body;
  const std::string a = Str(Json(small.body), "id");
  const std::string b = Create();  // the default, 2048
  ASSERT_FALSE(b.empty());
  EXPECT_EQ(Num(Json(Call("GET", "/v1/sandboxes/" + b).body), "diskMb"), 2048);

  auto r = Exec(a, "dd if=/dev/zero of=/big bs=1M count=100 2>&1; echo rc=$?");
  ASSERT_EQ(r.status, 200) << r.body;
  const std::string out = Str(Json(r.body), "stdout");
  EXPECT_TRUE(absl::StrContains(out, "No space left on device")) << out;
  EXPECT_FALSE(absl::StrContains(out, "rc=0")) << out;
  // The neighbour writes more than the full sandbox could. (The file's size, not `du`: the
  // blocks a file holds include its extent tree's once it has more extents than fit in its
  // inode, so `du -m` said 101 now and then.)
  EXPECT_EQ(Out(b, "dd if=/dev/zero of=/big bs=1M count=100 2>/dev/null && wc -c < /big"),
            "104857600\n");
  // What the full sandbox frees, it can use again.
  EXPECT_EQ(Out(a, "rm /big && echo hi > /small && cat /small"), "hi\n");
  // The cap is the sandbox's own filesystem, not the host's.
  EXPECT_EQ(Out(a, "df -m / | awk 'NR == 2 { print ($2 >= 48 && $2 <= 64) ? \"capped\" : $2 }'"),
            "capped\n");
}

TEST_F(Isolation, ATenantAtItsExecCapDoesNotDelayAnotherTenant) {
  // Tenant A may run 12 commands at once: more than the runner's and the lifecycle's pools
  // of threads for short calls (8 each, see SetUpTestSuite).
  std::string out;
  ASSERT_EQ(cluster_->Isorunctl({"tenants", "set-limits",
                                 Sql("SELECT name FROM accounts.tenants "
                                     "WHERE id = '" +
                                     tenant_ + "'"),
                                 "--max-concurrent-execs", "12"},
                                &out),
            0)
      << out;
  EXPECT_TRUE(absl::StrContains(out, "max_concurrent_execs=12")) << out;
  auto usage = Json(Call("GET", "/v1/usage").body);
  EXPECT_EQ(Num(Obj(usage, "limits"), "maxConcurrentExecs"), 12) << usage.DebugString();

  std::string a = Create();
  ASSERT_FALSE(a.empty());
  auto [tenant_b, key_b] = NewTenant(2);
  std::string b = CreateAs(key_b);
  ASSERT_FALSE(b.empty());

  std::atomic<int> finished{0};
  std::vector<std::thread> holders;
  for (int i = 0; i < 12; ++i) {
    holders.emplace_back([&, i] {
      auto r = Exec(a, absl::StrCat("sleep 25.31; echo ", i), R"(,"timeoutSec":60)");
      EXPECT_EQ(r.status, 200) << r.body;
      ++finished;
    });
  }
  // Wait until all twelve run in the sandbox; B's commands keep working meanwhile.
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  int running = 0;
  while (Clock::now() < deadline) {
    auto r = ExecAs(key_b, b, "true");
    EXPECT_EQ(r.status, 200) << r.body;
    running = std::atoi(Host("pgrep -c -f -x 'sleep 25.31'").c_str());
    if (running >= 12) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_GE(running, 12) << "A's commands did not all start";
  // A is at its cap: one more is refused with 429 EXEC_LIMIT, at once.
  auto refused = Exec(a, "echo no");
  ASSERT_EQ(refused.status, 429) << refused.body;
  auto error = ErrorOf(refused);
  EXPECT_EQ(Str(error, "reason"), "EXEC_LIMIT");
  EXPECT_EQ(Num(error, "limit"), 12);
  EXPECT_EQ(Num(error, "current"), 12);
  EXPECT_FALSE(refused.headers["retry-after"].empty());
  // B is not held up: its commands answer while all of A's still run.
  for (int i = 0; i < 3; ++i) {
    auto r = ExecAs(key_b, b, "echo b");
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(Str(Json(r.body), "stdout"), "b\n");
  }
  EXPECT_EQ(finished.load(), 0) << "B's exec waited for A's commands";
  // Other calls too (they use the small pools).
  EXPECT_EQ(CallAs(key_b, "GET", "/v1/sandboxes/" + b).status, 200);
  for (auto& t : holders) t.join();
  EXPECT_EQ(finished.load(), 12);
  // The cap frees as the commands end.
  EXPECT_EQ(Out(a, "echo again"), "again\n");
}

TEST_F(Isolation, ARunningCommandIsActivityForItsWholeRun) {
  std::string id = Create(R"(,"timeoutSec":3)");
  ASSERT_FALSE(id.empty());
  auto r = Exec(id, "sleep 6; echo done", R"(,"timeoutSec":20)");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Json(r.body), "stdout"), "done\n");
  auto sb = Json(Call("GET", "/v1/sandboxes/" + id).body);
  EXPECT_EQ(Str(sb, "state"), "RUNNING") << sb.DebugString();
  // Once idle, the timeout applies again.
  const auto deadline = Clock::now() + std::chrono::seconds(15);
  while (Clock::now() < deadline &&
         Str(Json(Call("GET", "/v1/sandboxes/" + id).body), "state") == "RUNNING") {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  sb = Json(Call("GET", "/v1/sandboxes/" + id).body);
  EXPECT_EQ(Str(sb, "endReason"), "IDLE_TIMEOUT") << sb.DebugString();
}

TEST_F(Isolation, TheHibernatedCapAndRetentionHold) {
  cluster_->db().Scalar(
      "UPDATE quota.limits SET max_hibernated = 1, "
      "hibernation_retention_sec = 2 WHERE tenant_id = '" +
      tenant_ + "'");
  auto usage = Json(Call("GET", "/v1/usage").body);
  EXPECT_EQ(Num(Obj(usage, "limits"), "maxHibernated"), 1) << usage.DebugString();
  std::string a = Create(), b = Create();
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  auto r = Call("POST", "/v1/sandboxes/" + a + "/hibernate");
  ASSERT_EQ(r.status, 200) << r.body;
  r = Call("POST", "/v1/sandboxes/" + b + "/hibernate");
  ASSERT_EQ(r.status, 429) << r.body;
  auto error = ErrorOf(r);
  EXPECT_EQ(Str(error, "reason"), "HIBERNATED_SANDBOX_LIMIT");
  EXPECT_EQ(Num(error, "limit"), 1);
  EXPECT_EQ(Out(b, "echo still running"), "still running\n");
  // Past the retention, the hibernated one is destroyed.
  const auto deadline = Clock::now() + std::chrono::seconds(15);
  google::protobuf::Struct sb;
  while (Clock::now() < deadline) {
    sb = Json(Call("GET", "/v1/sandboxes/" + a).body);
    if (Str(sb, "state") == "DESTROYED") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(Str(sb, "state"), "DESTROYED") << sb.DebugString();
  EXPECT_EQ(Str(sb, "endReason"), "HIBERNATION_EXPIRED") << sb.DebugString();
  EXPECT_EQ(Host("runc --root '" + cluster_->runner_data_dir("runner-1") +
                 "/runc' list -q | grep -c " + a),
            "0\n");
  r = Call("POST", "/v1/sandboxes/" + b + "/hibernate");
  EXPECT_EQ(r.status, 200) << r.body;
}

// A raw HTTP/1.1 connection to the gateway that sends an exec:stream request and reads its answer
// only as far as the test says: a client that can vanish mid-stream.
class RawStream {
 public:
  RawStream(int port, const std::string& key, const std::string& id, const std::string& cmd) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    // A small receive buffer: a client that stops reading stops the stream soon.
    int small = 4096;
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return;
    const std::string body = absl::StrCat(R"({"cmd":)", Quote(cmd), "}");
    const std::string req = absl::StrCat(
        "POST /v1/sandboxes/", id, "/exec:stream HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        "Authorization: Bearer ", key, "\r\nContent-Type: application/json\r\n",
        "Content-Length: ", body.size(), "\r\n\r\n", body);
    (void)::send(fd_, req.data(), req.size(), MSG_NOSIGNAL);
  }
  ~RawStream() { Reset(); }

  // Reads until `text` has arrived (or 20 s pass); returns what was read.
  std::string ReadUntil(const std::string& text) {
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    while (Clock::now() < deadline && !absl::StrContains(got_, text)) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) break;
      got_.append(buf, static_cast<size_t>(n));
    }
    return got_;
  }

  // The client's own port (its end of the connection).
  int LocalPort() const {
    sockaddr_in addr{};
    socklen_t len = sizeof addr;
    if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return 0;
    return ntohs(addr.sin_port);
  }

  // Closes with a RST (SO_LINGER 0), as a crashed client's kernel would.
  void Reset() {
    if (fd_ < 0) return;
    linger l{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  std::string got_;
};

// Waits up to 20 s until no host process matches `pattern` (pgrep -f) and sandbox `id` takes an
// exec again (the tenant's cap of one is free).
bool GoneAndCapFree(const std::function<HttpResponse()>& exec, const std::string& pattern) {
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (Clock::now() < deadline) {
    if (Host("pgrep -c -f '" + pattern + "'") == "0\n" && exec().status == 200) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  return false;
}

TEST_F(Isolation, AStreamWhoseClientVanishesHasItsCommandKilled) {
  // One exec at a time: while the stream's command runs, nothing else may; once the command is
  // killed, the cap is free again.
  Sql("UPDATE quota.limits SET max_concurrent_execs = 1 WHERE tenant_id = '" + tenant_ + "'");
  std::string id = Create();
  ASSERT_FALSE(id.empty());
  {
    RawStream stream(cluster_->gateway_port(), key_, id, "echo started; sleep 3001");
    ASSERT_TRUE(absl::StrContains(stream.ReadUntil("started"), "started"));
    auto refused = Exec(id, "true");
    EXPECT_EQ(refused.status, 429) << refused.body;
    EXPECT_EQ(Str(ErrorOf(refused), "reason"), "EXEC_LIMIT");
    EXPECT_EQ(Host("pgrep -c -f -x 'sleep 3001'"), "1\n");  // the command runs
    stream.Reset();  // the client's process died: its kernel resets the connection
  }
  // (The brackets keep the pattern from matching the shell that runs pgrep.)
  EXPECT_TRUE(GoneAndCapFree([&] { return Exec(id, "true"); }, "[s]leep 3001"))
      << "the command outlived its client";
}

TEST_F(Isolation, AStreamWhoseClientStopsReadingHasItsCommandKilled) {
  Sql("UPDATE quota.limits SET max_concurrent_execs = 1 WHERE tenant_id = '" + tenant_ + "'");
  std::string id = Create();
  ASSERT_FALSE(id.empty());
  // The client reads the start and then nothing more, while the command writes without end:
  // once the buffers are full, the gateway's write deadline (3 s here) ends the stream.
  RawStream stream(cluster_->gateway_port(), key_, id, "echo started; exec yes isorun-flood-4417");
  ASSERT_TRUE(absl::StrContains(stream.ReadUntil("started"), "started"));
  EXPECT_EQ(Exec(id, "true").status, 429);  // the command holds the cap
  EXPECT_TRUE(GoneAndCapFree([&] { return Exec(id, "true"); }, "[i]sorun-flood-4417"))
      << "the command outlived the stream its client stopped reading";
}

TEST_F(Isolation, AStreamWhoseClientFallsSilentIsKilledByKeepAlive) {
  // A client whose machine vanished: no FIN, no RST, nothing at all. An nftables table of this
  // test's own drops every packet to and from the client's port (loopback, a connection to the
  // gateway this test started), so only the gateway's TCP keep-alive (1 s of silence here, then
  // probes) can notice. Its command must then be killed and its exec place freed.
  if (Host("command -v nft").empty()) GTEST_SKIP() << "nft is not installed";
  Sql("UPDATE quota.limits SET max_concurrent_execs = 1 WHERE tenant_id = '" + tenant_ + "'");
  std::string id = Create();
  ASSERT_FALSE(id.empty());
  const std::string tag = absl::StrCat("30", ::getpid() % 100, ".7");
  RawStream stream(cluster_->gateway_port(), key_, id, "echo started; exec sleep " + tag);
  ASSERT_TRUE(absl::StrContains(stream.ReadUntil("started"), "started"));
  ASSERT_EQ(Exec(id, "true").status, 429);  // the command holds the tenant's one place
  const int port = stream.LocalPort();
  ASSERT_GT(port, 0);
  const std::string table = absl::StrCat("isorun_silent_", ::getpid(), "_", port);
  struct Table {
    std::string name;
    ~Table() { Host("nft delete table ip " + name + " 2>/dev/null"); }
  } cleanup{table};
  const std::string out = Host(absl::StrCat(
      "nft add table ip ", table, " && nft add chain ip ", table,
      " out '{ type filter hook output priority -10; policy accept; }' && nft add rule ip ",
      table, " out ip daddr 127.0.0.1 tcp dport ", port, " drop && nft add rule ip ", table,
      " out ip saddr 127.0.0.1 tcp sport ", port, " drop && echo ok 2>&1"));
  ASSERT_EQ(out, "ok\n") << "could not add the nftables table";
  const auto silent = Clock::now();
  // Keep-alive after 1 s of silence (--client_keepalive), then probes every 1 s, 3 unanswered
  // (--client_keepalive_interval, --client_keepalive_probes): the gateway gives up about 4 s
  // after the client fell silent.
  bool gone = false;
  while (Clock::now() - silent < std::chrono::seconds(30)) {
    if (Host("pgrep -c -f -x 'sleep " + tag + "'") == "0\n" && Exec(id, "true").status == 200) {
      gone = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  const double ms =
      std::chrono::duration<double, std::milli>(Clock::now() - silent).count();
  std::fprintf(stderr, "silent_client_stream_killed_after_ms=%.0f\n", ms);
  ASSERT_TRUE(gone) << "the command outlived its silent client";
  // The bound: keep-alive idle (1 s) + 3 probes 1 s apart, plus the kill and the check's period.
  EXPECT_LE(ms, 10000.0);
}

}  // namespace
}  // namespace isorun
