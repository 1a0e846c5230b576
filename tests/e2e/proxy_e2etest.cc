// The public-URL proxy end to end: gateway (proxy on its public address), lifecycle, quota,
// scheduler and a runc runner (tunnel listener) as processes; real sandboxes from the local
// registry; servers started inside them with busybox (httpd on the sandbox's 127.0.0.1 only, CGI
// scripts for streaming and uploads, nc for an Upgrade). All traffic goes to loopback: the proxy,
// the runner's tunnel, and the sandbox's own loopback behind it. Skips, saying why, where real
// sandboxes cannot run.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "services/kit/ids.h"
#include "services/runner/runc_test_env.h"
#include "tests/support/cluster.h"
#include "tests/support/eventually.h"
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

constexpr int kCap = 20;  // the suite's per-sandbox connection cap

int Connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Reads until `needle` has arrived (true), the peer closes or `timeout_ms` pass (false).
bool ReadUntil(int fd, std::string& got, std::string_view needle, int timeout_ms = 30000) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  char buf[65536];
  while (got.find(needle) == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          end - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) return false;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    got.append(buf, static_cast<size_t>(n));
  }
  return true;
}

// Reads exactly `n` more bytes after what `got` holds beyond `from`.
bool ReadBytes(int fd, std::string& got, size_t total, int timeout_ms = 120000) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string buf(1 << 20, '\0');
  while (got.size() < total) {
    if (std::chrono::steady_clock::now() > end) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 1000) <= 0) continue;
    ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n <= 0) return false;
    got.append(buf.data(), static_cast<size_t>(n));
  }
  return true;
}

class Proxy : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!runner::testing::RuncUnavailableReason().empty()) return;
    // The 10,000-connection test holds that many sockets here and as many in the gateway.
    rlimit rl{};
    ::getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
    auto registry = runner::testing::TestRegistryAddress();
    if (!registry.ok()) {
      setup_error_ = new std::string(registry.status().ToString());
      return;
    }
    ClusterOptions options;
    options.runner_driver = "runc";
    options.registry = *registry;
    options.proxy_max_connections_per_sandbox = kCap;
    options.proxy_activity_interval_ms = 500;
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
    tenant_ = cluster_->CreateTenant("p" + std::to_string(n++), 5);
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

  struct Sandbox {
    std::string id;
    std::string public_id;
  };

  Sandbox Create(const std::string& extra = "") {
    auto r = Call("POST", "/v1/sandboxes", R"({"image":"busybox:1.36")" + extra + "}");
    EXPECT_EQ(r.status, 201) << r.body;
    auto sb = Json(r.body);
    return {Str(sb, "id"), Str(sb, "publicId")};
  }

  std::string Sh(const std::string& id, const std::string& cmd) {
    google::protobuf::Value v;
    v.set_string_value(cmd);
    std::string quoted;
    (void)google::protobuf::util::MessageToJsonString(v, &quoted);
    auto r = Call("POST", "/v1/sandboxes/" + id + "/exec", absl::StrCat(R"({"cmd":)", quoted, "}"));
    EXPECT_EQ(r.status, 200) << cmd << ": " << r.body;
    auto res = Json(r.body);
    EXPECT_EQ(Num(res, "exitCode"), 0) << cmd << ": " << r.body;
    return Str(res, "stdout");
  }

  // busybox httpd on the sandbox's 127.0.0.1:8000 only, with CGI scripts:
  //   /cgi-bin/stream  an event stream: "first", then "second" once /tmp/go exists
  //   /cgi-bin/hold    answers once /tmp/release exists
  //   /cgi-bin/sum     the sha256 of the request body
  //   /cgi-bin/fwd     the X-Forwarded-* headers it got
  void StartHttpd(const std::string& id) {
    Sh(id,
       "mkdir -p /www/cgi-bin && echo hello from the sandbox > /www/index.html && cd /www/cgi-bin"
       " && printf '#!/bin/sh\\nprintf \"Content-Type: text/event-stream\\\\r\\\\n\\\\r\\\\n\"\\n"
       "echo \"data: first\"; echo\\nwhile [ ! -e /tmp/go ]; do sleep 0.1; done\\n"
       "echo \"data: second\"; echo\\n' > stream"
       " && printf '#!/bin/sh\\nprintf \"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\n\"\\n"
       "while [ ! -e /tmp/release ]; do sleep 0.1; done\\necho released\\n' > hold"
       " && printf '#!/bin/sh\\nprintf \"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\n\"\\n"
       "head -c \"$CONTENT_LENGTH\" | sha256sum\\n' > sum"
       " && printf '#!/bin/sh\\nprintf \"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\n\"\\n"
       "echo \"for=$HTTP_X_FORWARDED_FOR proto=$HTTP_X_FORWARDED_PROTO "
       "host=$HTTP_X_FORWARDED_HOST\"\\n'"
       " > fwd && chmod +x stream hold sum fwd && httpd -p 127.0.0.1:8000 -h /www");
    // httpd daemonizes: wait until it listens, so no test races its start.
    ASSERT_TRUE(testing::Eventually(
        [&] { return absl::StrContains(Sh(id, "netstat -ltn"), "127.0.0.1:8000"); },
        absl::Seconds(10)));
  }

  static std::string HostFor(int port, const std::string& public_id) {
    return absl::StrCat(port, "-", public_id, ".localhost");
  }

  HttpResponse Get(int port, const std::string& public_id, const std::string& path = "/",
                   std::map<std::string, std::string> headers = {}) {
    headers["Host"] = HostFor(port, public_id);
    return HttpRequest("GET", absl::StrCat("http://127.0.0.1:", cluster_->proxy_port(), path), "",
                       headers);
  }

  static Cluster* cluster_;
  static std::string* setup_error_;
  std::string tenant_, key_;
};

Cluster* Proxy::cluster_ = nullptr;
std::string* Proxy::setup_error_ = nullptr;

TEST_F(Proxy, ReachesALoopbackOnlyServerOnTheFirstRequest) {
  Sandbox sb = Create();
  ASSERT_FALSE(sb.id.empty());
  StartHttpd(sb.id);
  // The very first request after the server started: no retries, no scan.
  auto r = Get(8000, sb.public_id);
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, "hello from the sandbox\n");

  // X-Forwarded-*: the client's address appended, the scheme, the original host.
  r = Get(8000, sb.public_id, "/cgi-bin/fwd", {{"X-Forwarded-For", "198.18.0.9"}});
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, absl::StrCat("for=198.18.0.9, 127.0.0.1 proto=http host=",
                                 HostFor(8000, sb.public_id), "\n"));

  // The sandbox object lists the listening port with its public URL.
  auto got = Call("GET", "/v1/sandboxes/" + sb.id);
  ASSERT_EQ(got.status, 200) << got.body;
  auto urls = Obj(Json(got.body), "urls");
  EXPECT_EQ(Str(urls, "8000"),
            absl::StrCat("http://", HostFor(8000, sb.public_id), ":", cluster_->proxy_port()))
      << got.body;
  Call("DELETE", "/v1/sandboxes/" + sb.id);
}

TEST_F(Proxy, ClosedPortIs502UnknownAndEndedAre404) {
  Sandbox sb = Create();
  ASSERT_FALSE(sb.id.empty());
  auto r = Get(8001, sb.public_id);
  EXPECT_EQ(r.status, 502) << r.body;
  auto error = Obj(Json(r.body), "error");
  EXPECT_EQ(Str(error, "reason"), "PORT_NOT_LISTENING") << r.body;
  EXPECT_TRUE(absl::StrContains(Str(error, "message"), "8001")) << r.body;
  EXPECT_TRUE(absl::StrContains(Str(error, "message"), "running")) << r.body;

  // A browser gets a page instead.
  r = Get(8001, sb.public_id, "/", {{"Accept", "text/html,application/xhtml+xml"}});
  EXPECT_EQ(r.status, 502);
  EXPECT_TRUE(absl::StartsWith(r.Header("content-type"), "text/html")) << r.Header("content-type");
  EXPECT_TRUE(absl::StrContains(r.body, "8001")) << r.body;

  // Unknown public id, a host that is no public URL.
  r = Get(8000, "0123456789abcdef0123456789abcdef");
  EXPECT_EQ(r.status, 404) << r.body;
  EXPECT_EQ(Str(Obj(Json(r.body), "error"), "code"), "NOT_FOUND") << r.body;
  r = HttpRequest("GET", absl::StrCat("http://127.0.0.1:", cluster_->proxy_port(), "/"), "",
                  {{"Host", "example.org"}});
  EXPECT_EQ(r.status, 404) << r.body;

  // Destroyed: 404 at once (the tunnel finds no sandbox even while a lookup is cached).
  StartHttpd(sb.id);
  ASSERT_EQ(Get(8000, sb.public_id).status, 200);
  ASSERT_EQ(Call("DELETE", "/v1/sandboxes/" + sb.id).status, 204);
  r = Get(8000, sb.public_id);
  EXPECT_EQ(r.status, 404) << r.body;
}

TEST_F(Proxy, UpgradeRelaysBytesBothWays) {
  Sandbox sb = Create();
  ASSERT_FALSE(sb.id.empty());
  // A WebSocket-style server: answers 101 to any request, greets, then echoes what it gets.
  Sh(sb.id,
     "printf '#!/bin/sh\\nwhile read -r l; do [ \"$l\" = \"$(printf \"\\\\r\")\" ] && break; "
     "done\\n"
     "printf \"HTTP/1.1 101 Switching Protocols\\\\r\\\\nUpgrade: websocket\\\\r\\\\n"
     "Connection: Upgrade\\\\r\\\\n\\\\r\\\\n\"\\necho greeting\\nexec cat\\n' > /ws.sh && "
     "chmod +x /ws.sh && (nc -ll -p 9000 -e /ws.sh >/dev/null 2>&1 &)");
  int fd = -1;
  std::string got;
  // nc was started in the background: wait until it listens (ports come from the sandbox).
  ASSERT_TRUE(testing::Eventually(
      [&] { return absl::StrContains(Sh(sb.id, "netstat -ltn"), ":9000"); }, absl::Seconds(10)));
  fd = Connect(cluster_->proxy_port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, absl::StrCat("GET /chat HTTP/1.1\r\nHost: ", HostFor(9000, sb.public_id),
                                       "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                                       "Sec-WebSocket-Version: 13\r\n\r\n")));
  ASSERT_TRUE(ReadUntil(fd, got, "greeting\n")) << got;
  EXPECT_TRUE(absl::StartsWith(got, "HTTP/1.1 101")) << got;
  for (const char* msg : {"ping one\n", "ping two\n"}) {
    got.clear();
    ASSERT_TRUE(SendAll(fd, msg));
    ASSERT_TRUE(ReadUntil(fd, got, msg)) << got;
  }
  ::close(fd);
  Call("DELETE", "/v1/sandboxes/" + sb.id);
}

TEST_F(Proxy, StreamsTheFirstEventBeforeTheServerFinishes) {
  Sandbox sb = Create();
  ASSERT_FALSE(sb.id.empty());
  StartHttpd(sb.id);
  int fd = Connect(cluster_->proxy_port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, absl::StrCat("GET /cgi-bin/stream HTTP/1.1\r\nHost: ",
                                       HostFor(8000, sb.public_id), "\r\n\r\n")));
  std::string got;
  // The server cannot finish before /tmp/go exists, and that file is made only after the first
  // event came through the proxy.
  ASSERT_TRUE(ReadUntil(fd, got, "data: first")) << got;
  EXPECT_FALSE(absl::StrContains(got, "data: second"));
  EXPECT_TRUE(absl::StrContains(got, "text/event-stream")) << got;
  Sh(sb.id, "touch /tmp/go");
  ASSERT_TRUE(ReadUntil(fd, got, "data: second")) << got;
  ASSERT_TRUE(ReadUntil(fd, got, "\r\n0\r\n\r\n")) << got;  // the stream's end, chunked
  ::close(fd);
  Call("DELETE", "/v1/sandboxes/" + sb.id);
}

TEST_F(Proxy, HundredMebibytesUpAndDownIntact) {
  Sandbox sb = Create(R"(,"memoryMb":256)");
  ASSERT_FALSE(sb.id.empty());
  StartHttpd(sb.id);
  constexpr size_t kSize = size_t{100} << 20;
  // Download a file of random bytes.
  std::string want = Sh(sb.id,
                        "dd if=/dev/urandom of=/www/big bs=1M count=100 2>/dev/null && "
                        "sha256sum /www/big | cut -d' ' -f1");
  int fd = Connect(cluster_->proxy_port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(
      fd, absl::StrCat("GET /big HTTP/1.1\r\nHost: ", HostFor(8000, sb.public_id), "\r\n\r\n")));
  std::string got;
  ASSERT_TRUE(ReadUntil(fd, got, "\r\n\r\n")) << got;
  size_t head = got.find("\r\n\r\n") + 4;
  ASSERT_TRUE(absl::StartsWith(got, "HTTP/1.1 200")) << got.substr(0, head);
  ASSERT_TRUE(ReadBytes(fd, got, head + kSize));
  EXPECT_EQ(Sha256Hex(std::string_view(got).substr(head, kSize)) + "\n", want);
  ::close(fd);

  // Upload: a body the server hashes as it reads it.
  std::string body(kSize, '\0');
  uint64_t x = 88172645463325252ULL;
  for (size_t i = 0; i < kSize; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(body.data() + i, &x, 8);
  }
  fd = Connect(cluster_->proxy_port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(
      SendAll(fd, absl::StrCat("POST /cgi-bin/sum HTTP/1.1\r\nHost: ", HostFor(8000, sb.public_id),
                               "\r\nContent-Length: ", kSize, "\r\n\r\n")));
  ASSERT_TRUE(SendAll(fd, body));
  got.clear();
  ASSERT_TRUE(ReadUntil(fd, got, "  -\n", 120000)) << got;
  EXPECT_TRUE(absl::StrContains(got, Sha256Hex(body))) << got;
  ::close(fd);
  Call("DELETE", "/v1/sandboxes/" + sb.id);
}

TEST_F(Proxy, TrafficKeepsASandboxAliveAndAHitResumesIt) {
  Sandbox sb = Create(R"(,"timeoutSec":3)");
  ASSERT_FALSE(sb.id.empty());
  StartHttpd(sb.id);
  // 8 s of requests, one every 500 ms: more than twice the idle timeout.
  for (int i = 0; i < 16; ++i) {
    ASSERT_EQ(Get(8000, sb.public_id).status, 200) << "request " << i;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  EXPECT_EQ(Str(Json(Call("GET", "/v1/sandboxes/" + sb.id).body), "state"), "RUNNING");
  // Without traffic it goes (so the requests above were what kept it).
  EXPECT_TRUE(testing::Eventually(
      [&] { return Str(Json(Call("GET", "/v1/sandboxes/" + sb.id).body), "state") == "DESTROYED"; },
      absl::Seconds(20)));

  // A hibernated sandbox is resumed by a hit, then served.
  Sandbox h = Create();
  ASSERT_FALSE(h.id.empty());
  StartHttpd(h.id);
  ASSERT_EQ(Call("POST", "/v1/sandboxes/" + h.id + "/hibernate").status, 200);
  auto r = Get(8000, h.public_id);
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, "hello from the sandbox\n");
  EXPECT_EQ(Str(Json(Call("GET", "/v1/sandboxes/" + h.id).body), "state"), "RUNNING");
  Call("DELETE", "/v1/sandboxes/" + h.id);
}

TEST_F(Proxy, TunnelRefusesConnectionsWithoutTheToken) {
  Sandbox sb = Create();
  ASSERT_FALSE(sb.id.empty());
  StartHttpd(sb.id);
  std::string host, port_text;
  const std::string addr = cluster_->tunnel_addr("runner-1");
  int port = 0;
  ASSERT_TRUE(absl::SimpleAtoi(addr.substr(addr.rfind(':') + 1), &port));
  auto attempt = [&](const std::string& first_line) {
    int fd = Connect(port);
    EXPECT_GE(fd, 0);
    SendAll(fd, first_line);
    std::string got;
    ReadUntil(fd, got, "\n", 5000);
    ::close(fd);
    return got;
  };
  EXPECT_EQ(attempt(absl::StrCat("ISORUN-TUNNEL/1 not-the-token-at-all ", sb.id, " 8000\n")),
            "ERR AUTH\n");
  EXPECT_EQ(attempt(absl::StrCat("ISORUN-TUNNEL/1  ", sb.id, " 8000\n")), "ERR AUTH\n");
  // Plain HTTP straight at the tunnel is not a way in either.
  EXPECT_EQ(attempt("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "ERR BAD_REQUEST\n");
  // The control plane's token works (so the refusals above are the token's doing).
  EXPECT_EQ(
      attempt(absl::StrCat("ISORUN-TUNNEL/1 ", cluster_->tunnel_token(), " ", sb.id, " 8000\n")),
      "OK\n");
  Call("DELETE", "/v1/sandboxes/" + sb.id);
}

TEST_F(Proxy, PerSandboxConnectionCapIs429) {
  Sandbox sb = Create();
  ASSERT_FALSE(sb.id.empty());
  StartHttpd(sb.id);
  // kCap requests held open by the server, each on a tunnel of its own.
  std::vector<int> held;
  for (int i = 0; i < kCap; ++i) {
    int fd = Connect(cluster_->proxy_port());
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(SendAll(fd, absl::StrCat("GET /cgi-bin/hold HTTP/1.1\r\nHost: ",
                                         HostFor(8000, sb.public_id), "\r\n\r\n")));
    // One at a time, each until its answer has begun (the CGI script runs and holds): busybox
    // httpd listens with a backlog of 9, and a burst of 20 connects could leave some waiting
    // for SYN retries past the test's patience.
    std::string head;
    ASSERT_TRUE(ReadUntil(fd, head, "\r\n\r\n")) << i << ": " << head;
    ASSERT_TRUE(absl::StartsWith(head, "HTTP/1.1 200")) << i << ": " << head;
    held.push_back(fd);
  }
  HttpResponse r;
  ASSERT_TRUE(testing::Eventually(
      [&] {
        r = Get(8000, sb.public_id);
        return r.status == 429;
      },
      absl::Seconds(10)))
      << r.status << " " << r.body;
  EXPECT_EQ(Str(Obj(Json(r.body), "error"), "reason"), "CONNECTION_LIMIT") << r.body;
  EXPECT_FALSE(r.Header("retry-after").empty());
  Sh(sb.id, "touch /tmp/release");
  for (int fd : held) {
    std::string got;
    EXPECT_TRUE(ReadUntil(fd, got, "released")) << got;
    ::close(fd);
  }
  // Slots are back.
  EXPECT_TRUE(testing::Eventually([&] { return Get(8000, sb.public_id).status == 200; },
                                  absl::Seconds(10)));
  Call("DELETE", "/v1/sandboxes/" + sb.id);
}

TEST_F(Proxy, HoldsTenThousandConnectionsWhileServingNewRequests) {
  Sandbox sb = Create();
  ASSERT_FALSE(sb.id.empty());
  StartHttpd(sb.id);
  ASSERT_EQ(Get(8000, sb.public_id).status, 200);
  const pid_t gateway = cluster_->pid("gateway");
  auto rss_kib = [&] {
    std::ifstream in("/proc/" + std::to_string(gateway) + "/status");
    std::string line;
    while (std::getline(in, line)) {
      if (absl::StartsWith(line, "VmRSS:")) {
        long kib = 0;
        (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(6, line.size() - 9)), &kib);
        return kib;
      }
    }
    return 0L;
  };
  const long rss_before = rss_kib();
  constexpr int kConnections = 10000;
  std::vector<int> fds;
  fds.reserve(kConnections);
  for (int i = 0; i < kConnections; ++i) {
    int fd = Connect(cluster_->proxy_port());
    ASSERT_GE(fd, 0) << "connection " << i << ": " << std::strerror(errno);
    fds.push_back(fd);
    // Half of them have started a request head (a slow client), half said nothing yet.
    if (i % 2 == 1) SendAll(fd, "GET / HTTP/1.1\r\n");
  }
  // A new request is served while all of them are open.
  auto r = Get(8000, sb.public_id);
  EXPECT_EQ(r.status, 200) << r.body;
  // None of them was closed by the proxy.
  int closed = 0;
  for (int fd : fds) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 0) > 0) ++closed;
  }
  EXPECT_EQ(closed, 0);
  const long rss_after = rss_kib();
  std::printf(
      "proxy held %d connections: gateway RSS %ld KiB before, %ld KiB with them (%.1f KiB "
      "each)\n",
      kConnections, rss_before, rss_after,
      static_cast<double>(rss_after - rss_before) / kConnections);
  // Bounded memory: well under 10 KiB a connection.
  EXPECT_LT(rss_after - rss_before, 100 * 1024) << "KiB for " << kConnections << " connections";
  for (int fd : fds) ::close(fd);
  Call("DELETE", "/v1/sandboxes/" + sb.id);
}

}  // namespace
}  // namespace isorun
