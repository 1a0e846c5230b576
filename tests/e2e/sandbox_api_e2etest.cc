// Real sandboxes through the public HTTP API: gateway, lifecycle, quota, scheduler and a runc
// runner as processes, a local registry with the test images, real Postgres, real HTTP. Each test
// checks from the outside what API.md promises of exec, exec:stream, hibernate, resume and delete
// when the sandbox is a real container. Skips, saying why, where real sandboxes cannot run (not
// root, no runc, skopeo, umoci, docker-registry or busybox-static).

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
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

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

using testing::Host;

// One NDJSON line of exec:stream and when it arrived.
struct StreamLine {
  double at_ms;
  google::protobuf::Struct value;
};

// Decodes as much of a chunked HTTP body as has arrived.
std::string Dechunk(absl::string_view body) {
  std::string out;
  while (true) {
    size_t eol = body.find("\r\n");
    if (eol == absl::string_view::npos) return out;
    uint64_t size = 0;
    if (!absl::SimpleHexAtoi(body.substr(0, eol), &size) || size == 0) return out;
    if (body.size() < eol + 2 + size) {  // a partial chunk: take what is there
      absl::StrAppend(&out, body.substr(eol + 2));
      return out;
    }
    absl::StrAppend(&out, body.substr(eol + 2, size));
    body.remove_prefix(std::min(body.size(), eol + 2 + size + 2));
  }
}

// POSTs to exec:stream over a raw socket and records when each line arrives (the blocking
// client only returns whole bodies). Returns the HTTP status; lines only for a 200.
int StreamExec(int port, const std::string& path, const std::string& key, const std::string& body,
               std::vector<StreamLine>* lines) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    ADD_FAILURE() << "cannot connect to the gateway";
    return 0;
  }
  const std::string request =
      absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ", key,
                   "\r\nContent-Type: application/json\r\nContent-Length: ", body.size(),
                   "\r\nConnection: close\r\n\r\n", body);
  const auto start = Clock::now();
  (void)::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string raw;
  size_t seen = 0;
  int status = 0;
  char buf[4096];
  while (true) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    raw.append(buf, static_cast<size_t>(n));
    size_t head_end = raw.find("\r\n\r\n");
    if (head_end == std::string::npos) continue;
    if (status == 0) (void)absl::SimpleAtoi(raw.substr(9, 3), &status);
    if (status != 200) continue;
    std::string text = Dechunk(absl::string_view(raw).substr(head_end + 4));
    std::vector<std::string> complete = absl::StrSplit(text, '\n');
    complete.pop_back();  // the part after the last newline is not a line yet
    for (; seen < complete.size(); ++seen) {
      lines->push_back({MsSince(start), Json(complete[seen])});
    }
  }
  ::close(fd);
  return status;
}

class SandboxApi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!runner::testing::RuncUnavailableReason().empty()) return;
    auto registry = runner::testing::TestRegistryAddress();
    if (!registry.ok()) {
      setup_error_ = new std::string(registry.status().ToString());
      return;
    }
    ClusterOptions options;
    options.runner_driver = "runc";
    options.registry = *registry;
    // An exception here would make gtest skip the suite's tests, not fail them: keep it for SetUp.
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
    static std::atomic<int> n{0};
    tenant_ = cluster_->CreateTenant("s" + std::to_string(n++), 5);
    cluster_->db().Scalar(
        "UPDATE quota.limits SET creates_per_sec = 1000, requests_per_sec = 1000 "
        "WHERE tenant_id = '" +
        tenant_ + "'");
    key_ = cluster_->CreateKey(tenant_);
  }

  HttpResponse Call(const std::string& method, const std::string& path,
                    const std::string& body = "") {
    std::map<std::string, std::string> headers = {{"Authorization", "Bearer " + key_}};
    if (!body.empty()) headers["Content-Type"] = "application/json";
    return HttpRequest(method, cluster_->gateway_url() + path, body, headers);
  }

  // Creates a busybox sandbox; returns its id ("" and a test failure if that fails).
  std::string Create(const std::string& extra = "") {
    auto r = Call("POST", "/v1/sandboxes", R"({"image":"busybox:1.36")" + extra + "}");
    EXPECT_EQ(r.status, 201) << r.body;
    auto sb = Json(r.body);
    EXPECT_EQ(Str(sb, "state"), "RUNNING") << r.body;
    return Str(sb, "id");
  }

  // POST .../exec with `fields` (a JSON object's members after "cmd").
  HttpResponse Exec(const std::string& id, const std::string& cmd, const std::string& fields = "") {
    google::protobuf::Value v;
    v.set_string_value(cmd);
    std::string quoted;
    (void)google::protobuf::util::MessageToJsonString(v, &quoted);
    return Call("POST", "/v1/sandboxes/" + id + "/exec",
                absl::StrCat(R"({"cmd":)", quoted, fields, "}"));
  }

  // The stdout of a command that must succeed.
  std::string Out(const std::string& id, const std::string& cmd) {
    auto r = Exec(id, cmd);
    EXPECT_EQ(r.status, 200) << cmd << ": " << r.body;
    auto res = Json(r.body);
    EXPECT_EQ(Num(res, "exitCode"), 0) << cmd << ": " << r.body;
    return Str(res, "stdout");
  }

  google::protobuf::Struct Usage() {
    auto r = Call("GET", "/v1/usage");
    EXPECT_EQ(r.status, 200) << r.body;
    return Json(r.body);
  }

  // Container ids in the runner's runc state.
  static std::string RuncList() {
    return Host("runc --root '" + cluster_->runner_data_dir("runner-1") +
                "/runc' list --quiet 2>&1");
  }

  static google::protobuf::Struct ErrorOf(const HttpResponse& r) {
    auto error = Obj(Json(r.body), "error");
    EXPECT_EQ(Num(error, "status"), r.status) << r.body;
    return error;
  }

  static Cluster* cluster_;
  static std::string* setup_error_;
  std::string tenant_, key_;
};

Cluster* SandboxApi::cluster_ = nullptr;
std::string* SandboxApi::setup_error_ = nullptr;

TEST_F(SandboxApi, ExecReturnsOutputExitCodeEnvCwdAndStdin) {
  std::string id = Create(R"(,"env":{"FROM_CREATE":"c1"})");
  ASSERT_FALSE(id.empty());

  auto r = Exec(id, "echo out; echo err >&2; exit 3");
  ASSERT_EQ(r.status, 200) << r.body;
  auto res = Json(r.body);
  EXPECT_EQ(Num(res, "exitCode"), 3);
  EXPECT_EQ(Str(res, "stdout"), "out\n");
  EXPECT_EQ(Str(res, "stderr"), "err\n");
  EXPECT_GE(Num(res, "durationMs"), 0) << r.body;

  // The sandbox's env from create, the exec's own env on top; /bin/sh -c semantics.
  r = Exec(id, "echo \"$FROM_CREATE $FROM_EXEC\" && [ \"$0\" = /bin/sh ] && echo sh",
           R"(,"env":{"FROM_EXEC":"e1"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Json(r.body), "stdout"), "c1 e1\nsh\n");

  r = Exec(id, "pwd", R"(,"cwd":"/tmp")");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Json(r.body), "stdout"), "/tmp\n");

  // stdin is the given text, then end of file.
  r = Exec(id, "tr a-z A-Z; echo; cat; echo end", R"(,"stdin":"hello stdin")");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Json(r.body), "stdout"), "HELLO STDIN\nend\n");
  // Without stdin, a command that reads it sees end of file at once.
  EXPECT_EQ(Out(id, "cat; echo eof"), "eof\n");

  // Root in the sandbox; killed by a signal: 128 + signal, as a shell reports it.
  EXPECT_EQ(Out(id, "id -u"), "0\n");
  r = Exec(id, "kill -KILL $$");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Num(Json(r.body), "exitCode"), 137) << r.body;

  // A cwd that does not exist is the caller's mistake.
  r = Exec(id, "pwd", R"(,"cwd":"/no/such/dir")");
  EXPECT_EQ(r.status, 400) << r.body;
}

TEST_F(SandboxApi, TimeoutKillsTheWholeGroupAndAnswers504) {
  std::string id = Create();
  ASSERT_FALSE(id.empty());
  const auto start = Clock::now();
  // A background job, one that left the process group, and the foreground command.
  auto r =
      Exec(id, "sleep 3141 & setsid sleep 3142 & sleep 3143; echo never", R"(,"timeoutSec":1)");
  const double elapsed_ms = MsSince(start);
  ASSERT_EQ(r.status, 504) << r.body;
  auto error = ErrorOf(r);
  EXPECT_EQ(Str(error, "code"), "DEADLINE_EXCEEDED");
  EXPECT_EQ(Str(error, "reason"), "EXEC_TIMEOUT");
  EXPECT_TRUE(absl::StrContains(Str(error, "message"), "1 s")) << r.body;
  EXPECT_TRUE(absl::StrContains(Str(error, "message"), "exec:stream")) << r.body;
  EXPECT_GE(elapsed_ms, 950);
  EXPECT_LE(elapsed_ms, 2500) << "the timeout answer took too long";
  // Nothing of the command is left, in the sandbox or on the host.
  std::string ps = Out(id, "ps -o args");
  EXPECT_FALSE(absl::StrContains(ps, "sleep 314")) << ps;
  EXPECT_EQ(Host("pgrep -f -x 'sleep 314[123]'"), "");
  // The sandbox still works.
  EXPECT_EQ(Out(id, "echo alive"), "alive\n");
}

TEST_F(SandboxApi, StreamedOutputArrivesBeforeTheCommandEnds) {
  std::string id = Create();
  ASSERT_FALSE(id.empty());
  std::vector<StreamLine> lines;
  int status =
      StreamExec(cluster_->gateway_port(), "/v1/sandboxes/" + id + "/exec:stream", key_,
                 R"({"cmd":"echo first; echo oops >&2; sleep 1.5; echo second; exit 4"})", &lines);
  ASSERT_EQ(status, 200);
  ASSERT_GE(lines.size(), 4u);
  double first_at = -1, second_at = -1, exit_at = -1;
  std::string out, err;
  for (const auto& l : lines) {
    if (l.value.fields().count("stdout") > 0) {
      out += Str(l.value, "stdout");
      if (first_at < 0 && absl::StrContains(out, "first")) first_at = l.at_ms;
      if (second_at < 0 && absl::StrContains(out, "second")) second_at = l.at_ms;
    }
    if (l.value.fields().count("stderr") > 0) err += Str(l.value, "stderr");
    if (l.value.fields().count("exitCode") > 0) {
      EXPECT_EQ(Num(l.value, "exitCode"), 4);
      exit_at = l.at_ms;
    }
  }
  EXPECT_EQ(out, "first\nsecond\n");
  EXPECT_EQ(err, "oops\n");
  ASSERT_GE(first_at, 0);
  ASSERT_GE(exit_at, 0);
  // "first" came while the command slept; "second" and the exit code only after.
  EXPECT_LE(first_at + 1000, second_at) << "output was not flushed as it came";
  EXPECT_LE(second_at, exit_at);
  EXPECT_TRUE(lines.back().value.fields().count("exitCode") > 0) << "the exit code comes last";
}

TEST_F(SandboxApi, AStreamClientThatGoesAwayKillsTheCommand) {
  std::string id = Create();
  ASSERT_FALSE(id.empty());
  // Read the first line, then hang up while the command (and a job it started) still run.
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(cluster_->gateway_port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const std::string body = R"({"cmd":"sleep 5161 & echo started; sleep 5162"})";
  const std::string request = absl::StrCat(
      "POST /v1/sandboxes/", id, "/exec:stream HTTP/1.1\r\nHost: 127.0.0.1\r\n",
      "Authorization: Bearer ", key_,
      "\r\nContent-Type: application/json\r\nContent-Length: ", body.size(), "\r\n\r\n", body);
  ASSERT_EQ(::send(fd, request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  std::string raw;
  char buf[4096];
  while (raw.find("started") == std::string::npos) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    ASSERT_GT(n, 0) << raw;
    raw.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(raw.rfind("HTTP/1.1 200", 0), 0u) << raw;
  // "started" can arrive before the shell's children have exec'd sleep: wait for them.
  std::string running;
  for (int i = 0; i < 100 && running.empty(); ++i) {
    running = Host("pgrep -f -x 'sleep 516[12]'");
    if (running.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_NE(running, "") << "the command is not running";
  ::close(fd);
  // Gone within a couple of seconds, the background job too, and the sandbox is still usable.
  std::string left = "?";
  for (int i = 0; i < 60 && !left.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    left = Host("pgrep -f -x 'sleep 516[12]'");
  }
  EXPECT_EQ(left, "") << "the command outlived its client";
  EXPECT_EQ(Out(id, "echo alive"), "alive\n");
}

TEST_F(SandboxApi, HibernateFreezesProcessesAndResumeContinuesThem) {
  std::string id = Create();
  ASSERT_FALSE(id.empty());
  // A counter whose only state is the shell's memory: 20 increments a second while it runs.
  ASSERT_EQ(Out(id,
                "sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/counter; "
                "sleep 0.05; done' "
                ">/dev/null 2>&1 &"),
            "");
  auto counter = [&] {
    int v = -1;
    EXPECT_TRUE(absl::SimpleAtoi(absl::StripAsciiWhitespace(Out(id, "cat /tmp/counter")), &v));
    return v;
  };
  // The counter's file is replaced whole (never seen half written); wait for its first value.
  for (int i = 0; i < 100 && Out(id, "cat /tmp/counter 2>/dev/null").empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const int before = counter();
  EXPECT_GE(before, 1);

  auto r = Call("POST", "/v1/sandboxes/" + id + "/hibernate");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Json(r.body), "state"), "HIBERNATED");
  auto usage = Usage();
  EXPECT_EQ(Num(usage, "activeSandboxes"), 0);
  EXPECT_EQ(Num(usage, "hibernatedSandboxes"), 1);
  // The runner's container is frozen, not stopped.
  EXPECT_TRUE(absl::StrContains(
      Host("runc --root '" + cluster_->runner_data_dir("runner-1") + "/runc' state " + id),
      "\"paused\""));

  r = Exec(id, "echo no");
  ASSERT_EQ(r.status, 409) << r.body;
  EXPECT_EQ(Str(ErrorOf(r), "reason"), "SANDBOX_NOT_RUNNING");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));

  r = Call("POST", "/v1/sandboxes/" + id + "/resume");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Json(r.body), "state"), "RUNNING");
  const int after = counter();
  // Frozen for 1.5 s: a running counter would have gained about 30.
  EXPECT_GE(after, before);
  EXPECT_LE(after - before, 12) << "the counter ran while hibernated";

  // Resuming a running sandbox is a 200 no-op.
  r = Call("POST", "/v1/sandboxes/" + id + "/resume");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Json(r.body), "state"), "RUNNING");
  usage = Usage();
  EXPECT_EQ(Num(usage, "activeSandboxes"), 1);
  EXPECT_EQ(Num(usage, "hibernatedSandboxes"), 0);

  // The same process continues from its own memory: not restarted from 1.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const int later = counter();
  EXPECT_GT(later, after + 3);
  EXPECT_LT(later, after + 40);
}

TEST_F(SandboxApi, FilesPersistBetweenExecs) {
  std::string id = Create();
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(Out(id, "echo kept > /root/note && mkdir -p /work/a && echo x > /work/a/b"), "");
  EXPECT_EQ(Out(id, "cat /root/note /work/a/b"), "kept\nx\n");
  // Changes to image files too (the sandbox's own writable layer).
  EXPECT_EQ(Out(id, "echo changed > /etc/hostname"), "");
  EXPECT_EQ(Out(id, "cat /etc/hostname"), "changed\n");
}

TEST_F(SandboxApi, SandboxesSeeNeitherEachOthersFilesNorProcesses) {
  std::string a = Create();
  std::string b = Create();
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  EXPECT_EQ(Out(a,
                "echo secret > /tmp/only-a; echo changed > /etc/hostname; "
                "sleep 2718 >/dev/null 2>&1 &"),
            "");
  EXPECT_EQ(Out(b, "sleep 2719 >/dev/null 2>&1 &"), "");

  auto r = Exec(b, "cat /tmp/only-a");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_NE(Num(Json(r.body), "exitCode"), 0) << r.body;
  EXPECT_EQ(Out(b, "cat /etc/hostname"), "sandbox\n");

  std::string ps_a = Out(a, "ps -o pid,args");
  std::string ps_b = Out(b, "ps -o pid,args");
  EXPECT_TRUE(absl::StrContains(ps_a, "sleep 2718")) << ps_a;
  EXPECT_FALSE(absl::StrContains(ps_a, "sleep 2719")) << ps_a;
  EXPECT_TRUE(absl::StrContains(ps_b, "sleep 2719")) << ps_b;
  EXPECT_FALSE(absl::StrContains(ps_b, "sleep 2718")) << ps_b;
  // Nothing of the host either: only the sandbox's init, its sleep and the exec's shells and ps.
  for (const std::string& ps : {ps_a, ps_b}) {
    EXPECT_FALSE(absl::StrContains(ps, "isorun-runner")) << ps;
    EXPECT_FALSE(absl::StrContains(ps, "postgres")) << ps;
    std::vector<std::string> rows = absl::StrSplit(ps, '\n', absl::SkipEmpty());
    EXPECT_LE(rows.size(), 7u) << ps;
  }
  // PID 1 is the sandbox's own init.
  EXPECT_TRUE(absl::StrContains(Out(b, "cat /proc/1/cmdline"), "init"));
}

TEST_F(SandboxApi, UnknownImageFailsNamingItAndLeaksNothing) {
  auto r = Call("POST", "/v1/sandboxes", R"({"image":"no-such-image:1.0"})");
  ASSERT_TRUE(r.status == 400 || r.status == 404) << r.status << " " << r.body;
  auto error = ErrorOf(r);
  EXPECT_TRUE(absl::StrContains(Str(error, "message"), "no-such-image")) << r.body;
  EXPECT_EQ(Str(error, "reason"), "IMAGE_NOT_FOUND") << r.body;

  auto usage = Usage();
  EXPECT_EQ(Num(usage, "activeSandboxes"), 0);
  EXPECT_EQ(Num(usage, "hibernatedSandboxes"), 0);
  // Whatever sandbox row the attempt left is ended, and holds no slot and no placement.
  auto failed = Json(Call("GET",
                          "/v1/sandboxes?state=PENDING,STARTING,RUNNING,HIBERNATED,"
                          "DESTROYING,FAILED")
                         .body);
  std::string ids;
  // The attempt is recorded as one FAILED sandbox, so that "my create failed" has an answer.
  ASSERT_EQ(failed.fields().at("sandboxes").list_value().values_size(), 1);
  for (const auto& v : failed.fields().at("sandboxes").list_value().values()) {
    const auto& sb = v.struct_value();
    EXPECT_EQ(Str(sb, "state"), "FAILED");
    EXPECT_EQ(Str(sb, "endReason"), "START_FAILED");
    absl::StrAppend(&ids, ids.empty() ? "" : ",", "'", Str(sb, "id"), "'");
  }
  EXPECT_EQ(cluster_->db().Scalar("SELECT count(*) FROM quota.reservations WHERE tenant_id = '" +
                                  tenant_ + "'"),
            "0");
  EXPECT_EQ(
      cluster_->db().Scalar("SELECT active FROM quota.usage WHERE tenant_id = '" + tenant_ + "'"),
      "0");
  EXPECT_EQ(cluster_->db().Scalar(
                "SELECT count(*) FROM scheduler.placements WHERE sandbox_id IN (" + ids + ")"),
            "0");
  for (absl::string_view id : absl::StrSplit(ids, ',')) {
    std::string bare(absl::StripPrefix(absl::StripSuffix(id, "'"), "'"));
    EXPECT_FALSE(absl::StrContains(RuncList(), bare));
    struct stat st;
    EXPECT_NE(::stat((cluster_->runner_data_dir("runner-1") + "/sandboxes/" + bare).c_str(), &st),
              0)
        << "the bundle of " << bare << " is left";
  }
  // The tenant can still use its slots.
  std::string id = Create();
  EXPECT_FALSE(id.empty());
}

// A create that waits for its runner to pull a cold image (fat:1.0, a layer of random data) is
// seen by other requests as STARTING with the runner's own figures in startProgress; its events
// have a PULLING step. A second create of the image is warm: no pull, no PULLING.
TEST_F(SandboxApi, AColdPullShowsItsProgressWhileTheCreateWaits) {
  HttpResponse created;
  std::atomic<bool> done{false};
  std::thread create([&] {
    created = Call("POST", "/v1/sandboxes", R"({"image":"fat:1.0"})");
    done = true;
  });
  std::set<std::string> phases;
  int64_t max_total = 0, max_done = 0, last_done = 0;
  std::string id, seen;
  while (!done) {
    auto list = Call("GET", "/v1/sandboxes?state=STARTING");
    EXPECT_EQ(list.status, 200) << list.body;
    if (list.status != 200) break;
    const auto doc = Json(list.body);
    for (const auto& v : doc.fields().at("sandboxes").list_value().values()) {
      const auto& sb = v.struct_value();
      if (Str(sb, "image") != "fat:1.0" || sb.fields().count("startProgress") == 0) continue;
      id = Str(sb, "id");
      const auto& p = Obj(sb, "startProgress");
      const std::string phase = Str(p, "phase");
      phases.insert(phase);
      const int64_t total = p.fields().count("pullBytesTotal") ? Num(p, "pullBytesTotal") : 0;
      const int64_t so_far = p.fields().count("pullBytesDone") ? Num(p, "pullBytesDone") : 0;
      if (total > 0) {
        EXPECT_LE(so_far, total) << list.body;
      }
      if (phase == "PULLING") {
        EXPECT_GE(so_far, last_done) << "bytes only grow: " << list.body;
        last_done = so_far;
      }
      max_total = std::max(max_total, total);
      max_done = std::max(max_done, so_far);
      seen = list.body;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  create.join();
  ASSERT_EQ(created.status, 201) << created.body;
  ASSERT_FALSE(id.empty()) << "the list never showed the pull";
  EXPECT_EQ(Str(Json(created.body), "id"), id);
  EXPECT_EQ(phases.count("PULLING"), 1u) << seen;
  // The manifest's sizes: the random layer alone is ISORUN_FAT_IMAGE_MB (48) MiB.
  EXPECT_GT(max_total, 1 << 20) << seen;
  EXPECT_GT(max_done, 0) << seen;
  // Running now: no progress any more, and the events tell the pull.
  auto got = Json(Call("GET", "/v1/sandboxes/" + id).body);
  EXPECT_EQ(Str(got, "state"), "RUNNING");
  EXPECT_EQ(got.fields().count("startProgress"), 0u);
  auto kinds = [&](const std::string& sandbox) {
    std::vector<std::string> out;
    auto r = Call("GET", "/v1/sandboxes/" + sandbox + "/events");
    EXPECT_EQ(r.status, 200) << r.body;
    const auto doc = Json(r.body);
    for (const auto& e : doc.fields().at("events").list_value().values()) {
      out.push_back(Str(e.struct_value(), "kind"));
    }
    return absl::StrJoin(out, ",");
  };
  EXPECT_EQ(kinds(id), "CREATED,PLACED,PULLING,STARTED");

  auto warm = Call("POST", "/v1/sandboxes", R"({"image":"fat:1.0"})");
  ASSERT_EQ(warm.status, 201) << warm.body;
  EXPECT_EQ(kinds(Str(Json(warm.body), "id")), "CREATED,PLACED,STARTED");
  EXPECT_EQ(Call("DELETE", "/v1/sandboxes/" + id).status, 204);
  EXPECT_EQ(Call("DELETE", "/v1/sandboxes/" + Str(Json(warm.body), "id")).status, 204);
}

TEST_F(SandboxApi, DeleteRemovesTheContainer) {
  std::string id = Create();
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(Out(id, "echo hi"), "hi\n");
  EXPECT_TRUE(absl::StrContains(RuncList(), id));
  const std::string bundle = cluster_->runner_data_dir("runner-1") + "/sandboxes/" + id;
  struct stat st;
  EXPECT_EQ(::stat(bundle.c_str(), &st), 0);

  auto r = Call("DELETE", "/v1/sandboxes/" + id);
  ASSERT_EQ(r.status, 204) << r.body;
  EXPECT_FALSE(absl::StrContains(RuncList(), id)) << RuncList();
  EXPECT_NE(::stat(bundle.c_str(), &st), 0) << "the bundle is left";
  EXPECT_EQ(Host("grep -c ' " + bundle + "/rootfs ' /proc/self/mounts"), "0\n");
  r = Call("GET", "/v1/sandboxes/" + id);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Json(r.body), "state"), "DESTROYED");
  EXPECT_EQ(Num(Usage(), "activeSandboxes"), 0);
  r = Exec(id, "true");
  EXPECT_EQ(r.status, 409) << r.body;
}

}  // namespace
}  // namespace isorun
