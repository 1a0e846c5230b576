// Lifecycle work that must hold with several lifecycle replicas, as real processes: two of every
// control-plane service (quota, scheduler, lifecycle, gateway) on one Postgres, a runc runner with
// real sandboxes, calls through both gateways (each spreads its calls over both lifecycles).
//
// - Exec caps hold cluster-wide: a tenant's maxConcurrentExecs (counted by exec leases in the
//   quota service) and the sandbox's --max_execs_per_sandbox (counted by its runner), whichever
//   lifecycle replica serves each call; places come back when calls end, and within the lease TTL
//   when the lifecycle holding some is killed with SIGKILL.
// - A create in flight on a lifecycle that is killed with SIGKILL is finished by the other one:
//   by its client's retry (same Idempotency-Key) or, for a create nobody retries, by the
//   reconciler (simulated runners whose starts take 2 s; runs everywhere).
//
// The exec caps need real sandboxes: they skip, saying why, without root and the runc tools.

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "isorun/v1/runner.grpc.pb.h"
#include "isorun/v1/sandboxes.grpc.pb.h"
#include "services/kit/server.h"
#include "services/runner/runc_test_env.h"
#include "tests/support/cluster.h"
#include "tests/support/eventually.h"
#include "tests/support/host_command.h"
#include "tests/support/http_client.h"
#include "tests/support/json_fields.h"

namespace isorun {
namespace {

using testing::Cluster;
using testing::ClusterOptions;
using testing::Eventually;
using testing::HttpRequest;
using testing::HttpResponse;
using testing::Json;
using testing::Num;
using testing::Obj;
using testing::Str;

constexpr int kLeaseTtlSec = 3;
constexpr int kPerSandbox = 3;
constexpr int kTenantCap = 4;

std::string Quote(const std::string& s) {
  google::protobuf::Value v;
  v.set_string_value(s);
  std::string quoted;
  (void)google::protobuf::util::MessageToJsonString(v, &quoted);
  return quoted;
}

using testing::Host;

int PortOf(const std::string& url) {
  int port = 0;
  (void)absl::SimpleAtoi(url.substr(url.rfind(':') + 1), &port);
  return port;
}

// An exec:stream request on a raw connection, read only as far as the test says; Reset() ends
// it as a crashed client's kernel would (RST).
class RawStream {
 public:
  RawStream(int port, const std::string& key, const std::string& id, const std::string& cmd) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
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
  RawStream(const RawStream&) = delete;
  RawStream& operator=(const RawStream&) = delete;

  // Reads until `text` has arrived or the connection ends (or 20 s pass); returns what was read.
  std::string ReadUntil(const std::string& text) { return ReadUntilAny({text}); }
  std::string ReadUntilAny(const std::vector<std::string>& texts) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    auto seen = [&] {
      for (const auto& t : texts) {
        if (absl::StrContains(got_, t)) return true;
      }
      return false;
    };
    while (std::chrono::steady_clock::now() < deadline && !seen()) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) break;
      got_.append(buf, static_cast<size_t>(n));
    }
    return got_;
  }

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

class LifecycleReplicas : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!runner::testing::RuncUnavailableReason().empty()) return;
    auto registry = runner::testing::TestRegistryAddress();
    if (!registry.ok()) {
      setup_error_ = new std::string(registry.status().ToString());
      return;
    }
    ClusterOptions options;
    options.replicas = 2;
    options.runner_driver = "runc";
    options.registry = *registry;
    options.lifecycle_args = {absl::StrCat("--exec_lease_ttl=", kLeaseTtlSec, "s"),
                              absl::StrCat("--max_execs_per_sandbox=", kPerSandbox)};
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
    static int n = 0;
    tenant_ = cluster_->CreateTenant("lr" + std::to_string(n++), 5);
    cluster_->db().Scalar(absl::StrCat(
        "UPDATE quota.limits SET creates_per_sec = 1000, requests_per_sec = 1000, "
        "max_concurrent_execs = ",
        kTenantCap, " WHERE tenant_id = '", tenant_, "'"));
    key_ = cluster_->CreateKey(tenant_);
    gateways_ = {cluster_->gateway_url("gateway"), cluster_->gateway_url("gateway-2")};
  }

  HttpResponse Call(const std::string& gateway, const std::string& method,
                    const std::string& path, const std::string& body = "") {
    std::map<std::string, std::string> headers = {{"Authorization", "Bearer " + key_}};
    if (!body.empty()) headers["Content-Type"] = "application/json";
    return HttpRequest(method, gateway + path, body, headers);
  }
  std::string Create() {
    auto r = Call(gateways_[0], "POST", "/v1/sandboxes", R"({"image":"busybox:1.36"})");
    EXPECT_EQ(r.status, 201) << r.body;
    return Str(Json(r.body), "id");
  }
  HttpResponse Exec(const std::string& gateway, const std::string& id, const std::string& cmd) {
    return Call(gateway, "POST", "/v1/sandboxes/" + id + "/exec",
                absl::StrCat(R"({"cmd":)", Quote(cmd), "}"));
  }
  // Starts a long command through `gateway` and waits until it runs.
  std::unique_ptr<RawStream> Hold(const std::string& gateway, const std::string& id,
                                  const std::string& tag) {
    auto s = std::make_unique<RawStream>(PortOf(gateway), key_, id,
                                         absl::StrCat("echo started; exec sleep ", tag));
    const std::string got = s->ReadUntil("started");
    EXPECT_TRUE(absl::StrContains(got, "started")) << got;
    return s;
  }
  // exec and exec:stream calls a lifecycle replica serves now (its metrics).
  int InProgress(const std::string& lifecycle) {
    auto m = HttpRequest("GET", cluster_->metrics_url(lifecycle));
    for (absl::string_view line : absl::StrSplit(m.body, '\n')) {
      if (absl::StartsWith(line, "isorun_lifecycle_exec_calls_in_progress ")) {
        double v = 0;
        (void)absl::SimpleAtod(line.substr(line.find(' ') + 1), &v);
        return static_cast<int>(v);
      }
    }
    return -1;
  }
  int Sleeping(const std::string& tag) {
    return std::atoi(Host("pgrep -c -f -x 'sleep " + tag + "'").c_str());
  }

  static Cluster* cluster_;
  static std::string* setup_error_;
  std::string tenant_, key_;
  std::vector<std::string> gateways_;
};

Cluster* LifecycleReplicas::cluster_ = nullptr;
std::string* LifecycleReplicas::setup_error_ = nullptr;

TEST_F(LifecycleReplicas, ExecCapsHoldAcrossLifecycleReplicasAndFreeWhenOneDies) {
  const std::string a = Create(), b = Create();
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  const std::string tag = absl::StrCat(3000 + ::getpid() % 1000, ".", 11);

  // The sandbox's cap: three commands in A through both gateways (so both lifecycles), and a
  // fourth in A is refused, naming the sandbox's cap, though the tenant has room.
  std::vector<std::unique_ptr<RawStream>> held;
  for (int i = 0; i < kPerSandbox; ++i) held.push_back(Hold(gateways_[i % 2], a, tag));
  // "started" arrives just before the shell execs the sleep.
  ASSERT_TRUE(Eventually([&] { return Sleeping(tag) == kPerSandbox; }, absl::Seconds(10)))
      << Sleeping(tag);
  const int on_first = InProgress("lifecycle"), on_second = InProgress("lifecycle-2");
  std::fprintf(stderr, "calls in progress: lifecycle=%d lifecycle-2=%d\n", on_first, on_second);
  ASSERT_EQ(on_first + on_second, kPerSandbox);
  ASSERT_GT(on_first, 0) << "the calls did not reach both lifecycle replicas";
  ASSERT_GT(on_second, 0) << "the calls did not reach both lifecycle replicas";
  for (const auto& gateway : gateways_) {
    auto refused = Exec(gateway, a, "echo no");
    ASSERT_EQ(refused.status, 429) << refused.body;
    auto error = Obj(Json(refused.body), "error");
    EXPECT_EQ(Str(error, "reason"), "EXEC_LIMIT") << refused.body;
    EXPECT_EQ(Num(error, "limit"), kPerSandbox) << refused.body;
    EXPECT_EQ(Num(error, "current"), kPerSandbox) << refused.body;
    EXPECT_TRUE(absl::StrContains(Str(error, "message"), "sandbox")) << refused.body;
    EXPECT_FALSE(refused.Header("retry-after").empty());
  }
  // A refused stream is an ordinary 429 answer too, not a stream that fails once begun.
  {
    RawStream refused(PortOf(gateways_[1]), key_, a, "echo no");
    const std::string got = refused.ReadUntilAny({"EXEC_LIMIT", "\r\n\r\n{"});
    EXPECT_TRUE(absl::StartsWith(got, "HTTP/1.1 429")) << got;
  }
  auto ok = Exec(gateways_[0], b, "echo b");
  ASSERT_EQ(ok.status, 200) << ok.body;

  // The tenant's cap: a fourth command (in B) fills it, and then nothing more runs, through
  // either gateway, in any sandbox.
  held.push_back(Hold(gateways_[1], b, tag));
  ASSERT_TRUE(Eventually([&] { return Sleeping(tag) == kTenantCap; }, absl::Seconds(10)))
      << Sleeping(tag);
  for (const auto& gateway : gateways_) {
    for (const auto& id : {a, b}) {
      auto refused = Exec(gateway, id, "echo no");
      ASSERT_EQ(refused.status, 429) << refused.body;
      auto error = Obj(Json(refused.body), "error");
      EXPECT_EQ(Str(error, "reason"), "EXEC_LIMIT") << refused.body;
      if (id == b) {
        EXPECT_EQ(Num(error, "limit"), kTenantCap) << refused.body;
        EXPECT_EQ(Num(error, "current"), kTenantCap) << refused.body;
      }
    }
  }
  EXPECT_EQ(Sleeping(tag), kTenantCap) << "a refused command ran";

  // A call that ends frees its place at once (well within the lease TTL).
  held.back()->Reset();
  held.pop_back();
  EXPECT_TRUE(Eventually([&] { return Exec(gateways_[0], b, "true").status == 200; },
                         absl::Seconds(kLeaseTtlSec - 1)))
      << "an ended call kept its place";
  held.push_back(Hold(gateways_[0], b, tag));
  ASSERT_EQ(Exec(gateways_[1], b, "true").status, 429);

  // The lifecycle holding most of them dies with SIGKILL: its commands are killed (the runner
  // sees its calls end) and its leases lapse, so within the lease TTL (plus one renewal period:
  // a lease taken after its holder's last renewal lives that much longer) the tenant runs as
  // many commands again; the other lifecycle's calls still count.
  const std::string victim =
      InProgress("lifecycle") >= InProgress("lifecycle-2") ? "lifecycle" : "lifecycle-2";
  const int victim_calls = InProgress(victim);
  ASSERT_GT(victim_calls, 0);
  const absl::Time killed = absl::Now();
  cluster_->Kill(victim, SIGKILL);
  std::vector<std::unique_ptr<RawStream>> refill;
  absl::Time first_free = absl::InfiniteFuture();
  for (int n = 0; refill.size() < static_cast<size_t>(victim_calls) &&
                  absl::Now() - killed < absl::Seconds(kLeaseTtlSec + 10);
       ++n) {
    // Either gateway: each sends its calls to the lifecycle that is left.
    auto s = std::make_unique<RawStream>(PortOf(gateways_[n % 2]), key_, b,
                                         absl::StrCat("echo started; exec sleep ", tag, "1"));
    const std::string got = s->ReadUntilAny({"started", "EXEC_LIMIT", "\r\n\r\n{"});
    if (absl::StrContains(got, "started")) {
      if (refill.empty()) first_free = absl::Now();
      refill.push_back(std::move(s));
      continue;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  const double first_ms = absl::ToDoubleMilliseconds(first_free - killed);
  const double all_ms = absl::ToDoubleMilliseconds(absl::Now() - killed);
  std::fprintf(stderr,
               "exec_place_freed_after_lifecycle_kill_ms=%.0f all_%d_places_freed_ms=%.0f "
               "(lease ttl %d s)\n",
               first_ms, victim_calls, all_ms, kLeaseTtlSec);
  ASSERT_EQ(refill.size(), static_cast<size_t>(victim_calls))
      << "the killed lifecycle's places did not all come back";
  // The bound: TTL + a renewal period (TTL / 3), plus slack for this busy machine.
  EXPECT_LE(all_ms, (kLeaseTtlSec + kLeaseTtlSec / 3.0 + 2) * 1000.0);
  EXPECT_TRUE(Eventually([&] { return Sleeping(tag) == kTenantCap - victim_calls; },
                         absl::Seconds(10)))
      << "the killed lifecycle's commands still run: " << Sleeping(tag);
  // The survivor's calls and the new ones fill the cap again.
  for (const auto& gateway : gateways_) {
    auto refused = Exec(gateway, b, "true");
    EXPECT_EQ(refused.status, 429) << refused.body;
  }
  cluster_->Start(victim);
  held.clear();
  refill.clear();
  EXPECT_TRUE(Eventually([&] { return Sleeping(tag) == 0 && Sleeping(tag + "1") == 0; },
                         absl::Seconds(10)));
  // And the places are all free again.
  EXPECT_TRUE(Eventually([&] { return Exec(gateways_[1], b, "true").status == 200; },
                         absl::Seconds(kLeaseTtlSec)));
}

// Creates in flight on a lifecycle replica that dies are carried on by the other one. Simulated
// runners whose starts take 2 s hold the creates in flight long enough to kill their lifecycle.
class CreateTakeover : public ::testing::Test {
 protected:
  void SetUp() override {
    ClusterOptions options;
    options.replicas = 2;
    options.sim_start_ms = 2000;
    options.reconcile_interval_ms = 500;
    // The takeover, not the reconciler's abandonment of stuck creates, must save them.
    options.stuck_after_sec = 60;
    cluster_ = std::make_unique<Cluster>(options);
    tenant_ = cluster_->CreateTenant("takeover", kLimit);
    cluster_->db().Scalar("UPDATE quota.limits SET creates_per_sec = 1000, "
                          "requests_per_sec = 1000 WHERE tenant_id = '" + tenant_ + "'");
    key_ = cluster_->CreateKey(tenant_);
  }

  // A create sent straight to one lifecycle replica (as its gateway would).
  void CreateOn(const std::string& lifecycle, const std::string& idempotency_key) {
    auto stub = v1::Sandboxes::NewStub(MakeChannel(cluster_->grpc_addr(lifecycle)));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::CreateSandboxRequest req;
    req.set_tenant_id(tenant_);
    req.set_image("busybox:1.36");
    req.set_idempotency_key(idempotency_key);
    v1::Sandbox sb;
    (void)stub->CreateSandbox(&ctx, req, &sb);  // ends when its replica is killed
  }
  std::string Sql(const std::string& sql) { return cluster_->db().Scalar(sql); }
  std::string CountOf(const std::string& where) {
    return Sql("SELECT count(*) FROM lifecycle.sandboxes WHERE tenant_id = '" + tenant_ +
               "' AND " + where);
  }
  std::vector<std::string> OnRunner() {
    auto stub = v1::Runner::NewStub(MakeChannel(cluster_->grpc_addr("runner-1")));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ListRunnerSandboxesResponse resp;
    EXPECT_TRUE(stub->ListSandboxes(&ctx, {}, &resp).ok());
    std::vector<std::string> ids(resp.sandbox_ids().begin(), resp.sandbox_ids().end());
    std::sort(ids.begin(), ids.end());
    return ids;
  }

  static constexpr int kLimit = 2;
  std::unique_ptr<Cluster> cluster_;
  std::string tenant_, key_;
};

TEST_F(CreateTakeover, ACreateWhoseLifecycleDiesIsFinishedByTheRetryOrTheReconciler) {
  // The tenant's slots, sampled all along: never over its limit.
  std::atomic<bool> stop{false};
  std::atomic<int> most{0};
  std::thread sampler([&] {
    while (!stop) {
      const int n = std::atoi(
          Sql("SELECT count(*) FROM quota.reservations WHERE tenant_id = '" + tenant_ + "'")
              .c_str());
      most = std::max(most.load(), n);
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
  });
  // Two creates on lifecycle-2: one its client will retry, one nobody retries.
  std::thread retried([&] { CreateOn("lifecycle-2", "retried-1"); });
  std::thread abandoned([&] { CreateOn("lifecycle-2", "abandoned-1"); });
  ASSERT_TRUE(Eventually([&] { return CountOf("state = 'STARTING'") == "2"; }, absl::Seconds(10)))
      << "the creates did not reach their runner start";
  cluster_->Kill("lifecycle-2", SIGKILL);
  const absl::Time killed = absl::Now();
  retried.join();
  abandoned.join();

  // The retry, through the gateway (so the surviving lifecycle), answers the first sandbox,
  // RUNNING: taken over and finished, not ended FAILED after --stuck_after_sec.
  const std::string first =
      Sql("SELECT s.id FROM lifecycle.idempotency_keys k JOIN lifecycle.sandboxes s "
          "ON s.id = k.sandbox_id WHERE k.key = 'retried-1'");
  ASSERT_FALSE(first.empty());
  auto r = HttpRequest("POST", cluster_->gateway_url() + "/v1/sandboxes",
                       R"({"image":"busybox:1.36"})",
                       {{"Authorization", "Bearer " + key_},
                        {"Content-Type", "application/json"},
                        {"Idempotency-Key", "retried-1"}});
  const double retry_ms = absl::ToDoubleMilliseconds(absl::Now() - killed);
  ASSERT_EQ(r.status, 201) << r.body;
  auto sb = Json(r.body);
  EXPECT_EQ(Str(sb, "id"), first);
  EXPECT_EQ(Str(sb, "state"), "RUNNING") << r.body;
  // The one nobody retries: the reconciler of the surviving replica finishes it.
  const std::string second =
      Sql("SELECT s.id FROM lifecycle.idempotency_keys k JOIN lifecycle.sandboxes s "
          "ON s.id = k.sandbox_id WHERE k.key = 'abandoned-1'");
  ASSERT_TRUE(Eventually(
      [&] { return Sql("SELECT state FROM lifecycle.sandboxes WHERE id = '" + second + "'") ==
                   "RUNNING"; },
      absl::Seconds(15)))
      << Sql("SELECT state FROM lifecycle.sandboxes WHERE id = '" + second + "'");
  const double reconciled_ms = absl::ToDoubleMilliseconds(absl::Now() - killed);
  std::fprintf(stderr, "takeover_retry_answered_after_kill_ms=%.0f takeover_reconciled_ms=%.0f\n",
               retry_ms, reconciled_ms);

  // Nothing leaked, nothing doubled: exactly two slots, two placements, two containers.
  std::vector<std::string> both = {first, second};
  std::sort(both.begin(), both.end());
  EXPECT_EQ(Sql("SELECT count(*) FROM quota.reservations WHERE tenant_id = '" + tenant_ + "'"),
            "2");
  EXPECT_EQ(Sql("SELECT active FROM quota.usage WHERE tenant_id = '" + tenant_ + "'"), "2");
  EXPECT_EQ(Sql("SELECT count(*) FROM scheduler.placements WHERE sandbox_id IN ('" + first +
                "', '" + second + "')"),
            "2");
  EXPECT_EQ(Sql("SELECT count(*) FROM scheduler.placements"), "2");
  EXPECT_EQ(OnRunner(), both);
  EXPECT_EQ(CountOf("state NOT IN ('RUNNING')"), "0");
  // At the limit: a third create is refused.
  r = HttpRequest("POST", cluster_->gateway_url() + "/v1/sandboxes",
                  R"({"image":"busybox:1.36"})",
                  {{"Authorization", "Bearer " + key_}, {"Content-Type", "application/json"}});
  EXPECT_EQ(r.status, 429) << r.body;
  EXPECT_TRUE(absl::StrContains(r.body, "CONCURRENT_SANDBOX_LIMIT")) << r.body;
  // Destroyed, they give everything back.
  for (const auto& id : both) {
    auto d = HttpRequest("DELETE", cluster_->gateway_url() + "/v1/sandboxes/" + id, "",
                         {{"Authorization", "Bearer " + key_}});
    EXPECT_EQ(d.status, 204) << d.body;
  }
  EXPECT_TRUE(Eventually([&] { return OnRunner().empty(); }, absl::Seconds(10)));
  EXPECT_TRUE(Eventually(
      [&] { return Sql("SELECT count(*) FROM scheduler.placements") == "0"; }, absl::Seconds(10)));
  EXPECT_EQ(Sql("SELECT active FROM quota.usage WHERE tenant_id = '" + tenant_ + "'"), "0");
  stop = true;
  sampler.join();
  EXPECT_LE(most.load(), kLimit) << "the tenant was over its limit";
  cluster_->Start("lifecycle-2");
}

}  // namespace
}  // namespace isorun
