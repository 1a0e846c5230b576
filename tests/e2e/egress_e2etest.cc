// Egress profiles enforced at the host, end to end: real runc sandboxes through the public HTTP
// API, against test hosts in a network namespace this test creates (198.18.0.0/15 addresses, plus
// 169.254.169.254 standing in for a metadata service) with its own DNS server (dnsmasq).
//
// Every packet of the test's sandboxes goes to that namespace or nowhere: a policy route sends
// everything from the runner's sandbox range to it (only traffic between the range's own
// addresses uses the main table), so even a broken rule could not reach another address.
//
// Skips, saying why, without root, the runc tools, `ip`, `nft` or `dnsmasq`.

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "services/runner/runc_test_env.h"
#include "tests/support/cluster.h"
#include "tests/support/host_command.h"
#include "tests/support/http_client.h"
#include "tests/support/json_fields.h"

namespace isorun {
namespace {

using testing::Cluster;
using testing::ClusterOptions;
using testing::HttpRequest;
using testing::HttpResponse;
using testing::Json;
using testing::Num;
using testing::Obj;
using testing::Str;

// Runs a shell command on the host; returns its stdout and stderr.
std::string Host(const std::string& cmd, int* status = nullptr) {
  return testing::Host(cmd + " 2>&1", status);
}

bool HostOk(const std::string& cmd) {
  int st = -1;
  std::string out = Host(cmd, &st);
  if (st != 0) std::fprintf(stderr, "host command failed: %s: %s\n", cmd.c_str(), out.c_str());
  return st == 0;
}

std::string MissingTool() {
  for (const char* tool : {"ip", "nft", "dnsmasq"}) {
    if (Host(absl::StrCat("command -v ", tool)).empty()) return tool;
  }
  return "";
}

// TCP servers inside the test namespace: each answers one line naming itself and counts hits.
class TestHosts {
 public:
  // Listens on every `addr:port` inside network namespace `netns`.
  bool Start(const std::string& netns, const std::vector<std::pair<std::string, int>>& at) {
    std::atomic<int> ready{0};
    thread_ = std::thread([this, netns, at, &ready] {
      int ns = ::open(("/run/netns/" + netns).c_str(), O_RDONLY | O_CLOEXEC);
      // Only this thread enters the namespace; its sockets stay there.
      if (ns < 0 || ::setns(ns, CLONE_NEWNET) != 0) {
        ready = -1;
        return;
      }
      ::close(ns);
      std::vector<pollfd> fds;
      std::vector<std::string> names;
      for (const auto& [addr, port] : at) {
        int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(static_cast<uint16_t>(port));
        ::inet_pton(AF_INET, addr.c_str(), &sa.sin_addr);
        if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(fd, 64) != 0) {
          ready = -1;
          return;
        }
        fds.push_back({fd, POLLIN, 0});
        names.push_back(absl::StrCat(addr, ":", port));
      }
      ready = 1;
      while (!stop_) {
        if (::poll(fds.data(), fds.size(), 100) <= 0) continue;
        for (size_t i = 0; i < fds.size(); ++i) {
          if ((fds[i].revents & POLLIN) == 0) continue;
          int c = ::accept4(fds[i].fd, nullptr, nullptr, SOCK_CLOEXEC);
          if (c < 0) continue;
          {
            std::lock_guard<std::mutex> lock(mu_);
            ++hits_[names[i]];
          }
          std::string reply =
              "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from " + names[i] + "\n";
          char buf[2048];
          pollfd p{c, POLLIN, 0};
          if (::poll(&p, 1, 1000) == 1) (void)::recv(c, buf, sizeof buf, 0);
          (void)::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
          ::close(c);
        }
      }
      for (auto& p : fds) ::close(p.fd);
    });
    while (ready == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return ready == 1;
  }
  ~TestHosts() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int Hits(const std::string& addr_port) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = hits_.find(addr_port);
    return it == hits_.end() ? 0 : it->second;
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::map<std::string, int> hits_;
};

// A TCP listener on the host bound to all addresses (0.0.0.0), counting connections.
class HostServer {
 public:
  HostServer() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    ::listen(fd_, 16);
    socklen_t len = sizeof sa;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len);
    port_ = ntohs(sa.sin_port);
    thread_ = std::thread([this] {
      while (!stop_) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, 100) != 1) continue;
        int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c >= 0) {
          ++hits_;
          ::close(c);
        }
      }
    });
  }
  ~HostServer() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  int port() const { return port_; }
  int hits() const { return hits_; }

 private:
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> hits_{0};
  std::thread thread_;
};

class Egress : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!runner::testing::RuncUnavailableReason().empty() || !MissingTool().empty()) return;
    const pid_t pid = ::getpid();
    netns_ = new std::string(absl::StrCat("isrt", pid));
    host_veth_ = new std::string(absl::StrCat("ist", pid, "h"));
    // A /24 of 198.18.0.0/15 no route of this host uses yet.
    std::mt19937 rng(std::random_device{}());
    for (int attempt = 0; attempt < 50; ++attempt) {
      const int block = std::uniform_int_distribution<int>(0, 511)(rng);
      std::string net = absl::StrCat("198.", 18 + block / 256, ".", block % 256);
      if (Host("ip -4 route show " + net + ".0/24").empty() &&
          Host("ip -4 addr | grep -F ' " + net + ".'").empty()) {
        subnet_ = new std::string(net);
        break;
      }
    }
    if (subnet_ == nullptr) {
      setup_error_ = new std::string("no free /24 in 198.18.0.0/15");
      return;
    }
    const std::string& ns = *netns_;
    const std::string& hv = *host_veth_;
    const std::string nv = absl::StrCat("ist", pid, "n");
    const std::string n = *subnet_;
    bool ok = HostOk("ip netns add " + ns) &&
              HostOk("ip link add " + hv + " type veth peer name " + nv + " netns " + ns) &&
              HostOk("ip addr add " + n + ".1/24 dev " + hv) && HostOk("ip link set " + hv + " up") &&
              HostOk("ip -n " + ns + " link set lo up") &&
              HostOk("ip -n " + ns + " addr add " + n + ".2/24 dev " + nv);
    for (const char* extra : {".3/32", ".4/32", ".5/32", ".9/32"}) {
      ok = ok && HostOk("ip -n " + ns + " addr add " + n + extra + " dev " + nv);
    }
    ok = ok && HostOk("ip -n " + ns + " addr add 169.254.169.254/32 dev " + nv) &&
         HostOk("ip -n " + ns + " link set " + nv + " up") &&
         HostOk("ip -n " + ns + " route add default via " + n + ".1");
    if (!ok) {
      setup_error_ = new std::string("cannot set up the test namespace (see stderr)");
      return;
    }
    hosts_ = new TestHosts();
    if (!hosts_->Start(ns, {{n + ".3", 8080},
                            {n + ".3", 9090},
                            {n + ".4", 8080},
                            {n + ".5", 8080},
                            {n + ".9", 8080},
                            {"169.254.169.254", 80}})) {
      setup_error_ = new std::string("cannot start the test hosts");
      return;
    }
    // The test's DNS server: web.test and *.wild.test, nothing else, nothing forwarded.
    dnsmasq_ = ::fork();
    if (dnsmasq_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      int null = ::open("/dev/null", O_RDWR);
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::execlp("ip", "ip", "netns", "exec", ns.c_str(), "dnsmasq", "--keep-in-foreground",
               "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--user=root",
               "--bind-interfaces", ("--listen-address=" + n + ".2").c_str(), "--port=53",
               ("--host-record=web.test," + n + ".3").c_str(),
               ("--address=/wild.test/" + n + ".5").c_str(), "--local-ttl=60",
               "--pid-file=", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    auto registry = runner::testing::TestRegistryAddress();
    if (!registry.ok()) {
      setup_error_ = new std::string(registry.status().ToString());
      return;
    }
    ClusterOptions options;
    options.runner_driver = "runc";
    options.registry = *registry;
    options.runner_dns_upstream = n + ".2:53";
    try {
      cluster_ = new Cluster(options);
    } catch (const std::exception& e) {
      setup_error_ = new std::string(std::string("the cluster did not start: ") + e.what());
      return;
    }
    // Everything from the sandboxes goes to the test namespace (see the file comment).
    range_ = new std::string(cluster_->runner_network("runner-1"));
    route_table_ = 20000 + pid % 10000;
    const std::string pref = std::to_string(1000 + pid % 20000);
    ok = HostOk("ip route replace default via " + n + ".2 dev " + hv + " table " +
                std::to_string(route_table_)) &&
         HostOk("ip rule add from " + *range_ + " to " + *range_ + " lookup main pref " + pref) &&
         HostOk("ip rule add from " + *range_ + " lookup " + std::to_string(route_table_) +
                " pref " + pref);
    if (!ok) setup_error_ = new std::string("cannot set up the policy routes (see stderr)");
  }

  static void TearDownTestSuite() {
    // For debugging by hand: keep everything for a while.
    if (const char* pause = std::getenv("ISORUN_EGRESS_TEST_PAUSE_SEC"); pause != nullptr) {
      std::this_thread::sleep_for(std::chrono::seconds(std::atoi(pause)));
    }
    delete cluster_;
    cluster_ = nullptr;
    if (range_ != nullptr) {
      Host("ip rule del from " + *range_ + " to " + *range_ + " lookup main");
      Host("ip rule del from " + *range_ + " lookup " + std::to_string(route_table_));
      Host("ip route flush table " + std::to_string(route_table_));
    }
    if (dnsmasq_ > 0) {
      ::kill(dnsmasq_, SIGTERM);
      ::waitpid(dnsmasq_, nullptr, 0);
    }
    delete hosts_;
    hosts_ = nullptr;
    if (netns_ != nullptr) {
      Host("ip link del " + *host_veth_);
      Host("ip netns del " + *netns_);
    }
  }

  void SetUp() override {
    ISORUN_REQUIRE_RUNC();
    if (std::string tool = MissingTool(); !tool.empty()) {
      GTEST_SKIP() << "needs `" << tool << "` (./isorun deps installs it)";
    }
    ASSERT_EQ(setup_error_, nullptr) << *setup_error_;
    ASSERT_NE(cluster_, nullptr);
    static std::atomic<int> count{0};
    tenant_ = cluster_->CreateTenant("e" + std::to_string(count++), 10);
    cluster_->db().Scalar(
        "UPDATE quota.limits SET creates_per_sec = 1000, requests_per_sec = 1000 "
        "WHERE tenant_id = '" + tenant_ + "'");
    key_ = cluster_->CreateKey(tenant_);
  }

  HttpResponse Call(const std::string& method, const std::string& path,
                    const std::string& body = "") {
    std::map<std::string, std::string> headers = {{"Authorization", "Bearer " + key_}};
    if (!body.empty()) headers["Content-Type"] = "application/json";
    return HttpRequest(method, cluster_->gateway_url() + path, body, headers);
  }

  std::string Create(const std::string& network) {
    auto r = Call("POST", "/v1/sandboxes",
                  absl::StrCat(R"({"image":"busybox:1.36","network":)", network, "}"));
    EXPECT_EQ(r.status, 201) << r.body;
    return Str(Json(r.body), "id");
  }

  google::protobuf::Struct Run(const std::string& id, const std::string& cmd) {
    google::protobuf::Value v;
    v.set_string_value(cmd);
    std::string quoted;
    (void)google::protobuf::util::MessageToJsonString(v, &quoted);
    auto r = Call("POST", "/v1/sandboxes/" + id + "/exec",
                  absl::StrCat(R"({"cmd":)", quoted, R"(,"timeoutSec":20})"));
    EXPECT_EQ(r.status, 200) << cmd << ": " << r.body;
    return Json(r.body);
  }

  // An HTTP GET from inside the sandbox (busybox nc; "http://host:port/"): the body, or ""
  // when it failed.
  std::string Fetch(const std::string& id, const std::string& url) {
    std::string hostport(absl::StripSuffix(absl::StripPrefix(url, "http://"), "/"));
    std::string host = hostport, port = "80";
    if (auto colon = hostport.rfind(':'); colon != std::string::npos) {
      host = hostport.substr(0, colon);
      port = hostport.substr(colon + 1);
    }
    auto res = Run(id, absl::StrCat("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 4 ", host, " ",
                                    port, " > /tmp/fetch.out && tr -d '\\r' < /tmp/fetch.out | "
                                    "sed '1,/^$/d'"));
    if (Num(res, "exitCode") == 0) return Str(res, "stdout");
    std::fprintf(stderr, "(from %s: fetch %s: %s)\n", id.c_str(), url.c_str(),
                 Str(res, "stderr").c_str());
    return "";
  }

  // Whether a TCP connection from inside the sandbox succeeds.
  bool Connects(const std::string& id, const std::string& addr, int port) {
    auto res = Run(id, absl::StrCat("echo x | nc -w 3 ", addr, " ", port, " >/dev/null"));
    return Num(res, "exitCode") == 0;
  }

  std::string AddressOf(const std::string& id) {
    std::string out = Str(Run(id, "ip -4 -o addr show dev eth0"), "stdout");
    // "2: eth0    inet 100.80.3.2 peer 100.80.3.1/32 scope global eth0 ..."
    std::vector<std::string> words = absl::StrSplit(out, ' ', absl::SkipWhitespace());
    for (size_t i = 0; i + 1 < words.size(); ++i) {
      if (words[i] == "inet") return std::string(absl::StripSuffix(words[i + 1], "/32"));
    }
    return "";
  }

  static std::string VethOf(const std::string& address) {
    unsigned a, b, c, d;
    if (std::sscanf(address.c_str(), "%u.%u.%u.%u", &a, &b, &c, &d) != 4) return "";
    char buf[16];
    std::snprintf(buf, sizeof buf, "isv%02x%02x%02x%02x", a, b, c, d);
    return buf;
  }
  static std::string Gateway() {
    std::string r = *range_;  // a.b.c.0/24
    return r.substr(0, r.rfind('.')) + ".1";
  }
  static std::string NftTable() {
    return Host("nft list table inet " + cluster_->runner_nft_table("runner-1"));
  }
  static bool LinkExists(const std::string& veth) {
    return ::access(("/sys/class/net/" + veth).c_str(), F_OK) == 0;
  }

  // Asserts the sandbox reaches none of the places every profile blocks, and that none of them
  // saw a connection.
  void ExpectAlwaysBlocked(const std::string& id, const std::string& other_sandbox_addr) {
    const std::string n = *subnet_;
    HostServer host;
    EXPECT_EQ(Fetch(id, "http://169.254.169.254/"), "") << "metadata address reached";
    EXPECT_FALSE(Connects(id, Gateway(), host.port())) << "the host, on the gateway address";
    EXPECT_FALSE(Connects(id, n + ".1", host.port())) << "the host, on its test address";
    EXPECT_EQ(host.hits(), 0);
    EXPECT_EQ(hosts_->Hits("169.254.169.254:80"), 0);
    if (!other_sandbox_addr.empty()) {
      EXPECT_FALSE(Connects(id, other_sandbox_addr, 7000)) << "another sandbox's server";
    }
  }

  static Cluster* cluster_;
  static std::string* setup_error_;
  static std::string* netns_;
  static std::string* host_veth_;
  static std::string* subnet_;
  static std::string* range_;
  static int route_table_;
  static TestHosts* hosts_;
  static pid_t dnsmasq_;
  std::string tenant_, key_;
};

Cluster* Egress::cluster_ = nullptr;
std::string* Egress::setup_error_ = nullptr;
std::string* Egress::netns_ = nullptr;
std::string* Egress::host_veth_ = nullptr;
std::string* Egress::subnet_ = nullptr;
std::string* Egress::range_ = nullptr;
int Egress::route_table_ = 0;
TestHosts* Egress::hosts_ = nullptr;
pid_t Egress::dnsmasq_ = 0;

TEST_F(Egress, OpenReachesTestHostsByAddressAndNameButNeverTheHostMetadataOrOtherSandboxes) {
  const std::string n = *subnet_;
  // A victim sandbox with a server on every address.
  std::string victim = Create(R"({"egress":"open"})");
  ASSERT_FALSE(victim.empty());
  ASSERT_EQ(Num(Run(victim, "httpd -p 7000 -h /"), "exitCode"), 0);
  const std::string victim_addr = AddressOf(victim);
  ASSERT_FALSE(victim_addr.empty());
  ASSERT_TRUE(Connects(victim, "127.0.0.1", 7000)) << "the victim's server is up";

  std::string id = Create(R"({"egress":"open"})");
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(Fetch(id, "http://" + n + ".3:8080/"), "hello from " + n + ".3:8080\n");
  EXPECT_EQ(Fetch(id, "http://web.test:9090/"), "hello from " + n + ".3:9090\n");
  EXPECT_TRUE(absl::StrContains(Str(Run(id, "cat /etc/resolv.conf"), "stdout"),
                                "nameserver " + Gateway()));
  ExpectAlwaysBlocked(id, victim_addr);
  // The sandbox's own loopback still works.
  EXPECT_TRUE(Connects(victim, "127.0.0.1", 7000));

  // Blocked attempts are in the log, with address, port and verdict.
  auto r = Call("GET", "/v1/sandboxes/" + id + "/network/log");
  ASSERT_EQ(r.status, 200) << r.body;
  bool metadata = false, other = false;
  const auto log = Json(r.body);
  for (const auto& e : log.fields().at("entries").list_value().values()) {
    const auto& f = e.struct_value();
    if (Str(f, "address") == "169.254.169.254" && Num(f, "port") == 80 &&
        Str(f, "verdict") == "blocked") {
      metadata = true;
    }
    if (Str(f, "address") == victim_addr && Num(f, "port") == 7000) other = true;
    EXPECT_NE(Str(f, "verdict"), "allowed") << "open logs blocked attempts only: " << r.body;
  }
  EXPECT_TRUE(metadata) << r.body;
  EXPECT_TRUE(other) << r.body;
}

TEST_F(Egress, NoneHasLoopbackOnlyAndNoResolver) {
  const std::string n = *subnet_;
  std::string id = Create(R"({"egress":"none"})");
  ASSERT_FALSE(id.empty());
  const int before = hosts_->Hits(n + ".3:8080");
  EXPECT_EQ(Fetch(id, "http://" + n + ".3:8080/"), "");
  EXPECT_FALSE(Connects(id, n + ".3", 8080));
  EXPECT_EQ(Str(Run(id, "grep -c nameserver /etc/resolv.conf || true"), "stdout"), "0\n");
  // Only lo: no veth at all.
  EXPECT_EQ(Str(Run(id, "ls /sys/class/net"), "stdout"), "lo\n");
  ExpectAlwaysBlocked(id, "");
  EXPECT_EQ(hosts_->Hits(n + ".3:8080"), before);
}

TEST_F(Egress, AllowlistByNamePinsOnlyWhatTheForwarderAnswered) {
  const std::string n = *subnet_;
  std::string id = Create(R"({"egress":"allowlist","allow":["web.test","*.wild.test"]})");
  ASSERT_FALSE(id.empty());
  // The listed name, on two ports.
  EXPECT_EQ(Fetch(id, "http://web.test:8080/"), "hello from " + n + ".3:8080\n");
  EXPECT_EQ(Fetch(id, "http://web.test:9090/"), "hello from " + n + ".3:9090\n");
  EXPECT_EQ(Fetch(id, "http://a.wild.test:8080/"), "hello from " + n + ".5:8080\n");
  // An unlisted address, and an unlisted name (the forwarder does not even answer it).
  const int before = hosts_->Hits(n + ".4:8080");
  EXPECT_EQ(Fetch(id, "http://" + n + ".4:8080/"), "");
  auto lookup = Run(id, "nslookup other.test");
  EXPECT_NE(Num(lookup, "exitCode"), 0) << Str(lookup, "stdout");
  // An unlisted address under the listed name in /etc/hosts reaches nothing.
  ASSERT_EQ(Num(Run(id, "echo '" + n + ".4 web.test' > /etc/hosts"), "exitCode"), 0);
  EXPECT_EQ(Fetch(id, "http://web.test:8080/"), "");
  EXPECT_EQ(hosts_->Hits(n + ".4:8080"), before) << "the unlisted address saw a connection";
  ExpectAlwaysBlocked(id, "");

  // The log: allowed connections with the name that was answered, blocked ones.
  auto r = Call("GET", "/v1/sandboxes/" + id + "/network/log");
  ASSERT_EQ(r.status, 200) << r.body;
  bool allowed_named = false, blocked_unlisted = false;
  const auto log = Json(r.body);
  for (const auto& e : log.fields().at("entries").list_value().values()) {
    const auto& f = e.struct_value();
    if (Str(f, "verdict") == "allowed" && Str(f, "address") == n + ".3" &&
        Str(f, "domain") == "web.test" && Num(f, "port") == 9090) {
      allowed_named = true;
    }
    if (Str(f, "verdict") == "blocked" && Str(f, "address") == n + ".4" && Num(f, "port") == 8080) {
      blocked_unlisted = true;
    }
  }
  EXPECT_TRUE(allowed_named) << r.body;
  EXPECT_TRUE(blocked_unlisted) << r.body;
}

TEST_F(Egress, AllowlistByCidrAndRuntimeChangesTakeEffectAtOnce) {
  const std::string n = *subnet_;
  std::string id = Create(absl::StrCat(R"({"egress":"allowlist","allow":[")", n, R"(.8/29"]})"));
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(Fetch(id, "http://" + n + ".9:8080/"), "hello from " + n + ".9:8080\n");
  EXPECT_EQ(Fetch(id, "http://" + n + ".3:8080/"), "");
  const std::string address = AddressOf(id);

  // Open: the test host answers at once.
  auto r = Call("PUT", "/v1/sandboxes/" + id + "/network", R"({"egress":"open"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Obj(Json(r.body), "network"), "egress"), "open");
  EXPECT_EQ(Fetch(id, "http://" + n + ".3:8080/"), "hello from " + n + ".3:8080\n");

  // None: nothing, and the veth is gone.
  r = Call("PUT", "/v1/sandboxes/" + id + "/network", R"({"egress":"none"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Fetch(id, "http://" + n + ".3:8080/"), "");
  EXPECT_FALSE(LinkExists(VethOf(address)));

  // Back to an allowlist: same address (the sandbox keeps it), only the listed block.
  r = Call("PUT", "/v1/sandboxes/" + id + "/network",
           absl::StrCat(R"({"egress":"allowlist","allow":[")", n, R"(.3"]})"));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Fetch(id, "http://" + n + ".3:9090/"), "hello from " + n + ".3:9090\n");
  EXPECT_EQ(Fetch(id, "http://" + n + ".9:8080/"), "");
  EXPECT_EQ(AddressOf(id), address);
  r = Call("GET", "/v1/sandboxes/" + id);
  ASSERT_EQ(r.status, 200);
  auto net = Obj(Json(r.body), "network");
  EXPECT_EQ(Str(net, "egress"), "allowlist");

  // Bad profiles: 400 naming the entry, and nothing changes.
  struct Bad {
    std::string body;
    std::string names;
  };
  for (const Bad& bad : std::vector<Bad>{
           {R"({"egress":"sometimes"})", "sometimes"},
           {R"({"egress":"open","allow":["web.test"]})", "only valid with egress allowlist"},
           {R"({"egress":"allowlist","allow":["web.test","198.18.0.1/33"]})", "198.18.0.1/33"},
           {R"({"egress":"allowlist","allow":["bad host!"]})", "bad host!"},
           {R"({"allow":[]})", "egress"}}) {
    r = Call("PUT", "/v1/sandboxes/" + id + "/network", bad.body);
    EXPECT_EQ(r.status, 400) << bad.body << ": " << r.body;
    EXPECT_EQ(Str(Obj(Json(r.body), "error"), "code"), "INVALID_ARGUMENT") << r.body;
    EXPECT_TRUE(absl::StrContains(r.body, bad.names)) << r.body;
  }
  std::string many = R"({"egress":"allowlist","allow":[)";
  for (int i = 0; i < 257; ++i) absl::StrAppend(&many, i ? "," : "", "\"198.18.0.1\"");
  r = Call("PUT", "/v1/sandboxes/" + id + "/network", many + "]}");
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_TRUE(absl::StrContains(r.body, "at most 256")) << r.body;
  EXPECT_EQ(Fetch(id, "http://" + n + ".3:8080/"), "hello from " + n + ".3:8080\n");
  r = Call("GET", "/v1/sandboxes/" + id);
  EXPECT_EQ(Str(Obj(Json(r.body), "network"), "egress"), "allowlist") << r.body;

  // The operator's CLI does the same.
  std::string out;
  EXPECT_EQ(cluster_->Isorunctl({"sandboxes", "set-network", id, "--egress", "allowlist",
                                 "--allow", n + ".9", "--lifecycle-addr",
                                 cluster_->grpc_addr("lifecycle")},
                                &out),
            0)
      << out;
  EXPECT_TRUE(absl::StrContains(out, "egress allowlist allow " + n + ".9")) << out;
  EXPECT_EQ(Fetch(id, "http://" + n + ".9:8080/"), "hello from " + n + ".9:8080\n");
  EXPECT_EQ(Fetch(id, "http://" + n + ".3:8080/"), "");
}

TEST_F(Egress, InvalidProfilesAtCreateCreateNothing) {
  auto before = Call("GET", "/v1/sandboxes?state=PENDING,STARTING,RUNNING,FAILED");
  // This runner's veths only (other tests' sandboxes come and go meanwhile).
  const std::string mine = "ls /sys/class/net | grep -c '^" + VethOf(Gateway()).substr(0, 9) +
                           "' || true";
  const std::string veths_before = Host(mine);
  for (const char* network :
       {R"({"egress":"allowlist","allow":["10.0.0.0/8","x..y"]})",
        R"({"egress":"none","allow":["web.test"]})", R"({"egress":"closed"})"}) {
    auto r = Call("POST", "/v1/sandboxes",
                  absl::StrCat(R"({"image":"busybox:1.36","network":)", network, "}"));
    EXPECT_EQ(r.status, 400) << r.body;
  }
  auto r = Call("POST", "/v1/sandboxes",
                R"({"image":"busybox:1.36","network":{"egress":"allowlist","allow":["ok.test","bad_/x"]}})");
  EXPECT_EQ(r.status, 400);
  EXPECT_TRUE(absl::StrContains(r.body, "network.allow[1]")) << r.body;
  EXPECT_EQ(Call("GET", "/v1/sandboxes?state=PENDING,STARTING,RUNNING,FAILED").body, before.body);
  EXPECT_EQ(Host(mine), veths_before);
}

TEST_F(Egress, DestroyAndRunnerRestartLeaveNothingBehind) {
  const std::string n = *subnet_;
  std::string keep = Create(R"({"egress":"allowlist","allow":["web.test"]})");
  std::string gone = Create(R"({"egress":"open"})");
  std::string dies = Create(R"({"egress":"open"})");
  ASSERT_FALSE(keep.empty() || gone.empty() || dies.empty());
  const std::string keep_addr = AddressOf(keep), gone_addr = AddressOf(gone),
                    dies_addr = AddressOf(dies);
  const std::string state = cluster_->runner_data_dir("runner-1") + "/network/";
  for (const auto& a : {keep_addr, gone_addr, dies_addr}) {
    EXPECT_TRUE(LinkExists(VethOf(a))) << a;
    EXPECT_TRUE(absl::StrContains(NftTable(), VethOf(a))) << a;
  }

  // Destroy: veth, rules, DNS entry, address and state all go.
  ASSERT_EQ(Call("DELETE", "/v1/sandboxes/" + gone).status, 204);
  const std::string gone_hex = VethOf(gone_addr).substr(3);
  EXPECT_FALSE(LinkExists(VethOf(gone_addr)));
  EXPECT_FALSE(absl::StrContains(NftTable(), gone_hex)) << NftTable();
  EXPECT_FALSE(absl::StrContains(Host("ip -4 route"), gone_addr + " "));
  EXPECT_NE(::access((state + gone).c_str(), F_OK), 0);

  // A runner restart: one sandbox dies while the runner is down.
  cluster_->Kill("runner-1", SIGKILL);
  Host("runc --root '" + cluster_->runner_data_dir("runner-1") + "/runc' delete --force " + dies);
  cluster_->Start("runner-1");
  const std::string dies_hex = VethOf(dies_addr).substr(3);
  EXPECT_FALSE(LinkExists(VethOf(dies_addr)));
  const std::string table = NftTable();
  EXPECT_FALSE(absl::StrContains(table, dies_hex)) << table;
  EXPECT_NE(::access((state + dies).c_str(), F_OK), 0);
  // The live one is re-attached with its profile: its name resolves and is reachable again,
  // unlisted addresses are still blocked.
  EXPECT_TRUE(absl::StrContains(table, VethOf(keep_addr))) << table;
  EXPECT_EQ(Fetch(keep, "http://web.test:8080/"), "hello from " + n + ".3:8080\n");
  EXPECT_EQ(Fetch(keep, "http://" + n + ".4:8080/"), "");
  EXPECT_EQ(AddressOf(keep), keep_addr);

  // Hibernate and resume keep the address and the profile.
  ASSERT_EQ(Call("POST", "/v1/sandboxes/" + keep + "/hibernate").status, 200);
  ASSERT_EQ(Call("POST", "/v1/sandboxes/" + keep + "/resume").status, 200);
  EXPECT_EQ(AddressOf(keep), keep_addr);
  EXPECT_EQ(Fetch(keep, "http://web.test:9090/"), "hello from " + n + ".3:9090\n");

  ASSERT_EQ(Call("DELETE", "/v1/sandboxes/" + keep).status, 204);
  EXPECT_FALSE(LinkExists(VethOf(keep_addr)));
  EXPECT_FALSE(absl::StrContains(NftTable(), VethOf(keep_addr).substr(3)));
  EXPECT_NE(::access((state + keep).c_str(), F_OK), 0);
}

}  // namespace
}  // namespace isorun
