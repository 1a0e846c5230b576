// The public-URL proxy end to end: gateway (proxy on its public address), lifecycle, quota,
// scheduler and a runc runner (tunnel listener) as processes; real sandboxes from the local
// registry; servers started inside them with busybox (httpd on the sandbox's 127.0.0.1 only, CGI
// scripts for streaming and uploads, nc for an Upgrade). All traffic goes to loopback: the proxy,
// the runner's tunnel, and the sandbox's own loopback behind it. Skips, saying why, where real
// sandboxes cannot run.
//
// ProxyTls runs a subset (a first request and keep-alive, a stream, an Upgrade, a closed port)
// on a cluster with mutual TLS everywhere (certificates made by openssl), where the tunnel is
// TLS too, and tries the tunnel without a certificate, with one of another CA and with valid
// certificates of identities other than the gateway's.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "services/kit/ids.h"
#include "services/kit/sanitizer_build.h"
#include "services/runner/runc_test_env.h"
#include "tests/support/cluster.h"
#include "tests/support/eventually.h"
#include "tests/support/http_client.h"
#include "tests/support/json_fields.h"

ABSL_DECLARE_FLAG(std::string, tls_cert_file);
ABSL_DECLARE_FLAG(std::string, tls_key_file);
ABSL_DECLARE_FLAG(std::string, tls_ca_file);

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

int Sh(const std::string& command) { return std::system(command.c_str()); }

// A CA DIR/PREFIXca.{crt,key} and, for each identity, DIR/PREFIX<identity>.{crt,key} with the URI
// SAN isorun://<identity> (as ./isorun up makes them). False when openssl failed.
bool MakePki(const std::string& dir, const std::string& prefix,
             const std::vector<std::string>& identities) {
  if (Sh(absl::StrCat("cd ", dir, " && openssl req -x509 -newkey ec -pkeyopt ",
                      "ec_paramgen_curve:P-256 -nodes -keyout ", prefix, "ca.key -out ", prefix,
                      "ca.crt -days 2 -subj /CN=", prefix, "ca >/dev/null 2>&1")) != 0) {
    return false;
  }
  for (const auto& id : identities) {
    const std::string base = prefix + id;
    if (Sh(absl::StrCat("cd ", dir, " && openssl req -newkey ec -pkeyopt ",
                        "ec_paramgen_curve:P-256 -nodes -keyout ", base, ".key -out ", base,
                        ".csr -subj /CN=", id, " >/dev/null 2>&1 && printf ",
                        "'subjectAltName=IP:127.0.0.1,URI:isorun://", id, "\\n' >", base,
                        ".ext && openssl x509 -req -in ", base, ".csr -CA ", prefix,
                        "ca.crt -CAkey ", prefix, "ca.key -CAcreateserial -days 2 -out ", base,
                        ".crt -extfile ", base, ".ext >/dev/null 2>&1")) != 0) {
      return false;
    }
  }
  return true;
}

// Opens a TLS connection to the tunnel at `port` presenting `cert`/`key` (none when empty),
// sends `line` and returns the runner's answer line; "HANDSHAKE FAILED" or "CLOSED: <what was
// read>" when it got no line. The server's certificate is not checked here: what is tested is
// whom the runner lets in.
std::string TlsTunnelAttempt(int port, const std::string& cert, const std::string& key,
                             const std::string& line) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  if (!cert.empty()) {
    EXPECT_EQ(SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()), 1);
    EXPECT_EQ(SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM), 1);
  }
  int fd = Connect(port);
  EXPECT_GE(fd, 0);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  std::string got;
  if (SSL_connect(ssl) != 1) {
    got = "HANDSHAKE FAILED";
  } else {
    // With TLS 1.3 the client's handshake ends before the server has judged its certificate:
    // a refusal shows as an alert or a close on the first read.
    SSL_write(ssl, line.data(), static_cast<int>(line.size()));
    char buf[256];
    while (got.find('\n') == std::string::npos) {
      int n = SSL_read(ssl, buf, sizeof buf);
      if (n <= 0) {
        got = "CLOSED: " + got;
        break;
      }
      got.append(buf, static_cast<size_t>(n));
    }
  }
  ERR_clear_error();
  SSL_free(ssl);
  ::close(fd);
  SSL_CTX_free(ctx);
  return got;
}

int OpenFds(pid_t pid) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"))) {
    (void)e;
    ++n;
  }
  return n;
}

// What a process's descriptors point to, one a line (for a failure's message).
std::string FdList(pid_t pid) {
  std::string out;
  for (const auto& e : std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"))) {
    std::error_code ec;
    absl::StrAppend(&out, e.path().filename().string(), " -> ",
                    std::filesystem::read_symlink(e.path(), ec).string(), "\n");
  }
  return out;
}

class Proxy : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { StartCluster(/*tls=*/false); }

  // One cluster per suite (Proxy, then ProxyTls: gtest runs a suite's tests together).
  static void StartCluster(bool tls) {
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
    if (tls) {
      char tmpl[] = "/tmp/isorun-proxy-tls.XXXXXX";
      if (::mkdtemp(tmpl) == nullptr ||
          !MakePki(tmpl, "", {"gateway", "lifecycle", "quota", "scheduler", "runner", "admin"}) ||
          !MakePki(tmpl, "other-", {"gateway"})) {
        setup_error_ = new std::string("openssl could not make the test's certificates");
        return;
      }
      tls_dir_ = new std::string(tmpl);
      options.tls_dir = *tls_dir_;
      // The cluster's readiness checks use this process's flags.
      absl::SetFlag(&FLAGS_tls_cert_file, *tls_dir_ + "/admin.crt");
      absl::SetFlag(&FLAGS_tls_key_file, *tls_dir_ + "/admin.key");
      absl::SetFlag(&FLAGS_tls_ca_file, *tls_dir_ + "/ca.crt");
    }
    try {
      cluster_ = new Cluster(options);
    } catch (const std::exception& e) {
      setup_error_ = new std::string(std::string("the cluster did not start: ") + e.what());
    }
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
    delete setup_error_;
    setup_error_ = nullptr;
    if (tls_dir_ != nullptr) {
      std::filesystem::remove_all(*tls_dir_);
      delete tls_dir_;
      tls_dir_ = nullptr;
      absl::SetFlag(&FLAGS_tls_cert_file, "");
      absl::SetFlag(&FLAGS_tls_key_file, "");
      absl::SetFlag(&FLAGS_tls_ca_file, "");
    }
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

  // The test bodies both suites run.
  void LoopbackOnlyServerOnTheFirstRequest();
  void ClosedPortUnknownAndEnded();
  void UpgradeRelaysBothWays();
  void StreamsBeforeTheServerFinishes();

  static Cluster* cluster_;
  static std::string* setup_error_;
  static std::string* tls_dir_;
  std::string tenant_, key_;
};

Cluster* Proxy::cluster_ = nullptr;
std::string* Proxy::setup_error_ = nullptr;
std::string* Proxy::tls_dir_ = nullptr;

class ProxyTls : public Proxy {
 protected:
  static void SetUpTestSuite() { StartCluster(/*tls=*/true); }
};

TEST_F(Proxy, ReachesALoopbackOnlyServerOnTheFirstRequest) { LoopbackOnlyServerOnTheFirstRequest(); }
TEST_F(ProxyTls, ReachesALoopbackOnlyServerOnTheFirstRequest) {
  LoopbackOnlyServerOnTheFirstRequest();
}

void Proxy::LoopbackOnlyServerOnTheFirstRequest() {
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
  // Keep-alive: more requests on one client connection (over the tunnel it keeps).
  int fd = Connect(cluster_->proxy_port());
  ASSERT_GE(fd, 0);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(SendAll(
        fd, absl::StrCat("GET / HTTP/1.1\r\nHost: ", HostFor(8000, sb.public_id), "\r\n\r\n")));
    std::string reply;
    ASSERT_TRUE(ReadUntil(fd, reply, "hello from the sandbox\n")) << i << ": " << reply;
    EXPECT_TRUE(absl::StartsWith(reply, "HTTP/1.1 200")) << reply;
  }
  ::close(fd);
  Call("DELETE", "/v1/sandboxes/" + sb.id);
}

TEST_F(Proxy, ClosedPortIs502UnknownAndEndedAre404) { ClosedPortUnknownAndEnded(); }
TEST_F(ProxyTls, ClosedPortIs502UnknownAndEndedAre404) { ClosedPortUnknownAndEnded(); }

void Proxy::ClosedPortUnknownAndEnded() {
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

TEST_F(Proxy, UpgradeRelaysBytesBothWays) { UpgradeRelaysBothWays(); }
TEST_F(ProxyTls, UpgradeRelaysBytesBothWays) { UpgradeRelaysBothWays(); }

void Proxy::UpgradeRelaysBothWays() {
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

TEST_F(Proxy, StreamsTheFirstEventBeforeTheServerFinishes) { StreamsBeforeTheServerFinishes(); }
TEST_F(ProxyTls, StreamsTheFirstEventBeforeTheServerFinishes) {
  StreamsBeforeTheServerFinishes();
}

void Proxy::StreamsBeforeTheServerFinishes() {
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

// Only the gateway's certificate opens a TLS tunnel: no certificate, one of another CA, and the
// valid certificates of the runner and the lifecycle are all refused, and the refusals leave
// nothing open in the runner.
TEST_F(ProxyTls, TunnelAdmitsTheGatewaysCertificateOnly) {
  Sandbox sb = Create();
  ASSERT_FALSE(sb.id.empty());
  StartHttpd(sb.id);
  const std::string addr = cluster_->tunnel_addr("runner-1");
  int port = 0;
  ASSERT_TRUE(absl::SimpleAtoi(addr.substr(addr.rfind(':') + 1), &port));
  const std::string& dir = *tls_dir_;
  const std::string line =
      absl::StrCat("ISORUN-TUNNEL/1 ", cluster_->tunnel_token(), " ", sb.id, " 8000\n");
  // The gateway's certificate gets in (so the refusals below are the certificates' doing). The
  // first tunnel also starts what the runner makes once (its namespace thread): the descriptors
  // are counted after it.
  EXPECT_EQ(TlsTunnelAttempt(port, dir + "/gateway.crt", dir + "/gateway.key", line), "OK\n");
  const pid_t runner = cluster_->pid("runner-1");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const int fds_before = OpenFds(runner);
  const std::string list_before = FdList(runner);

  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    // Plain text is no way in: the runner reads a TLS handshake, not a preamble, and closes.
    {
      int fd = Connect(port);
      ASSERT_GE(fd, 0);
      ASSERT_TRUE(SendAll(fd, line));
      std::string got;
      EXPECT_FALSE(ReadUntil(fd, got, "\n", 10000));
      EXPECT_FALSE(absl::StrContains(got, "OK")) << got;
      ::close(fd);
    }
    std::string got = TlsTunnelAttempt(port, "", "", line);
    EXPECT_FALSE(absl::StrContains(got, "OK")) << "no certificate: " << got;
    got = TlsTunnelAttempt(port, dir + "/other-gateway.crt", dir + "/other-gateway.key", line);
    EXPECT_FALSE(absl::StrContains(got, "OK")) << "another CA's gateway: " << got;
    // Valid certificates of the CA, but not the gateway's.
    EXPECT_EQ(TlsTunnelAttempt(port, dir + "/runner.crt", dir + "/runner.key", line),
              "ERR AUTH\n");
    EXPECT_EQ(TlsTunnelAttempt(port, dir + "/lifecycle.crt", dir + "/lifecycle.key", line),
              "ERR AUTH\n");
    // A token set with TLS is checked as well: the gateway's certificate with none fails.
    EXPECT_EQ(TlsTunnelAttempt(port, dir + "/gateway.crt", dir + "/gateway.key",
                               absl::StrCat("ISORUN-TUNNEL/1 - ", sb.id, " 8000\n")),
              "ERR AUTH\n");
    EXPECT_EQ(TlsTunnelAttempt(port, dir + "/gateway.crt", dir + "/gateway.key", line), "OK\n");
  }

  // The refused and the finished attempts left nothing open in the runner.
  EXPECT_TRUE(testing::Eventually([&] { return OpenFds(runner) <= fds_before; },
                                  absl::Seconds(10)))
      << OpenFds(runner) << " open descriptors, " << fds_before << " before:\n"
      << FdList(runner) << "before:\n"
      << list_before;
  // And the proxy still works.
  EXPECT_EQ(Get(8000, sb.public_id).status, 200);
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
  if (kMemoryBoundsApply) {
    EXPECT_LT(rss_after - rss_before, 100 * 1024) << "KiB for " << kConnections << " connections";
  }
  for (int fd : fds) ::close(fd);
  Call("DELETE", "/v1/sandboxes/" + sb.id);
}

}  // namespace
}  // namespace isorun
