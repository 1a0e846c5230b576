// The blocking server on the event-driven front end: handlers on workers, bodies bounded before
// the handler, streams with hang-up detection, per-address caps, thousands of idle and slow
// clients held while new requests are served, a chunk line that never ends, and a graceful stop.

#include "services/kit/http_blocking.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "services/kit/sanitizer_build.h"
#include "gtest/gtest.h"

namespace isorun::http {
namespace {

long RssKib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "VmRSS:")) {
      long kib = 0;
      (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(6, line.size() - 9)), &kib);
      return kib;
    }
  }
  return 0;
}

// A connection from `from` (a loopback address) to the server; -1 when it fails.
int Connect(int port, const char* from = "127.0.0.1") {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in local{};
  local.sin_family = AF_INET;
  ::inet_pton(AF_INET, from, &local.sin_addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0) {
    ::close(fd);
    return -1;
  }
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

void Send(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

// Reads until `stop_after` arrives or the peer closes (at most 10 s).
std::string Read(int fd, const std::string& stop_after = "") {
  std::string out;
  char buf[4096];
  for (int i = 0; i < 1000; ++i) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 10) <= 0) continue;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (!stop_after.empty() && out.find(stop_after) != std::string::npos) break;
  }
  return out;
}

bool ClosedByPeer(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) <= 0) return false;
  char c;
  return ::recv(fd, &c, 1, MSG_DONTWAIT) <= 0;
}

class BlockingServerTest : public ::testing::Test {
 protected:
  void Start(BlockingServerOptions o = {}) {
    o.front.address = "127.0.0.1:0";
    auto s = BlockingServer::Start(o, [this](const Request& r) { return Handle(r); });
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
  }
  void TearDown() override {
    if (server_) server_->Stop(absl::Seconds(2));
  }

  Response Handle(const Request& r) {
    Response out;
    if (r.body_too_large) {
      out.status = 413;
      out.body = R"({"error":"too large"})";
      return out;
    }
    if (r.target == "/slow") absl::SleepFor(absl::Milliseconds(300));
    if (r.target == "/stream") {
      out.content_type = "application/x-ndjson";
      out.stream = [this](const ChunkWriter& write) {
        for (int i = 0; i < 2000 && !gone_.HasBeenNotified(); ++i) {
          if (!write("line\n")) break;
          absl::SleepFor(absl::Milliseconds(5));
        }
      };
      out.on_client_gone = [this] {
        if (!gone_.HasBeenNotified()) gone_.Notify();
      };
      return out;
    }
    out.body = absl::StrCat("{\"got\":", r.body.size(), "}");
    return out;
  }

  std::string Get(const std::string& target, const char* from = "127.0.0.1") {
    int fd = Connect(server_->port(), from);
    if (fd < 0) return "";
    Send(fd, "GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n");
    std::string r = Read(fd, "}");
    ::close(fd);
    return r;
  }

  absl::Notification gone_;
  std::unique_ptr<BlockingServer> server_;
};

TEST_F(BlockingServerTest, ServesBodiesAndKeepAlive) {
  Start();
  int fd = Connect(server_->port());
  for (int i = 0; i < 3; ++i) {
    Send(fd, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    EXPECT_NE(Read(fd, "}").find("{\"got\":5}"), std::string::npos);
  }
  // Chunked too.
  Send(fd, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  EXPECT_NE(Read(fd, "}").find("{\"got\":3}"), std::string::npos);
  ::close(fd);
}

TEST_F(BlockingServerTest, ABodyOverTheLimitIsNotReadAndTheHandlerAnswers413) {
  BlockingServerOptions o;
  o.max_body_bytes = 100;
  Start(o);
  int fd = Connect(server_->port());
  Send(fd, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
  std::string r = Read(fd);
  EXPECT_TRUE(absl::StartsWith(r, "HTTP/1.1 413")) << r;
  ::close(fd);
  fd = Connect(server_->port());
  Send(fd, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n" +
               std::string(512, 'x') + "\r\n0\r\n\r\n");
  r = Read(fd);
  EXPECT_TRUE(absl::StartsWith(r, "HTTP/1.1 413")) << r;
  ::close(fd);
}

TEST_F(BlockingServerTest, AStreamEndsWhenTheClientHangsUp) {
  Start();
  int fd = Connect(server_->port());
  Send(fd, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string r = Read(fd, "line\n");
  EXPECT_NE(r.find("Transfer-Encoding: chunked"), std::string::npos) << r;
  ::close(fd);
  EXPECT_TRUE(gone_.WaitForNotificationWithTimeout(absl::Seconds(10)));
}

TEST_F(BlockingServerTest, CapsConnectionsAndRequestsPerClientAddress) {
  BlockingServerOptions o;
  o.front.max_connections_per_client = 2;
  o.front.max_requests_per_client_per_sec = 5;
  o.front.client_request_burst = 5;
  Start(o);
  int a = Connect(server_->port(), "127.0.0.2");
  int b = Connect(server_->port(), "127.0.0.2");
  int c = Connect(server_->port(), "127.0.0.2");
  std::string refused = Read(c);
  EXPECT_TRUE(absl::StartsWith(refused, "HTTP/1.1 429")) << refused;
  EXPECT_NE(refused.find("CLIENT_CONNECTION_LIMIT"), std::string::npos);
  // Another address is not affected.
  EXPECT_NE(Get("/", "127.0.0.3").find("200 OK"), std::string::npos);
  ::close(a);
  ::close(b);
  ::close(c);
  // Five requests in a burst pass; the sixth is refused with Retry-After.
  int ok = 0;
  std::string last;
  for (int i = 0; i < 6; ++i) {
    last = Get("/", "127.0.0.4");
    if (last.find("200 OK") != std::string::npos) ++ok;
  }
  EXPECT_EQ(ok, 5);
  EXPECT_TRUE(absl::StartsWith(last, "HTTP/1.1 429")) << last;
  EXPECT_NE(last.find("CLIENT_RATE_LIMIT"), std::string::npos);
  EXPECT_NE(last.find("Retry-After: 1"), std::string::npos);
}

// Today's thread-per-connection gateway refused everything beyond 2,000 open connections.
TEST_F(BlockingServerTest, HoldsThousandsOfIdleAndSlowClientsWhileServingNewRequests) {
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &rl);
  constexpr int kHeld = 3000;  // client and server ends both live in this process
  if (rl.rlim_cur < 2 * kHeld + 100) GTEST_SKIP() << "the open-file limit is " << rl.rlim_cur;
  Start();
  const long before = RssKib();
  std::vector<int> fds;
  for (int i = 0; i < kHeld; ++i) {
    // Spread over source addresses, as many clients would be.
    const std::string from = absl::StrCat("127.0.", 10 + i / 250, ".", 1 + i % 250);
    int fd = Connect(server_->port(), from.c_str());
    ASSERT_GE(fd, 0) << i;
    if (i % 3 == 1) Send(fd, "GET / HTTP/1.1\r\nHost: x\r\n");  // a head that never ends
    if (i % 3 == 2) Send(fd, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab");
    fds.push_back(fd);
  }
  // A new client is served at once (the slow handler runs on a worker, not an I/O thread).
  EXPECT_NE(Get("/slow").find("200 OK"), std::string::npos);
  EXPECT_NE(Get("/").find("{\"got\":0}"), std::string::npos);
  int closed = 0;
  for (int fd : fds) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 0) > 0) ++closed;
  }
  EXPECT_EQ(closed, 0);
  const long after = RssKib();
  std::printf("held %d connections (idle, slow head, slow body): RSS %ld KiB before, %ld KiB "
              "with them (%.1f KiB each, both ends in this process)\n",
              kHeld, before, after, static_cast<double>(after - before) / kHeld);
  if (kMemoryBoundsApply) {
    EXPECT_LT(after - before, 60 * 1024);
  }
  for (int fd : fds) ::close(fd);
}

// Beast 1.74 does not bound a chunk-size line by itself: the front end's buffer cap does.
TEST_F(BlockingServerTest, AnEndlessChunkExtensionIs400WithoutMemoryGrowth) {
  Start();
  const long before = RssKib();
  int fd = Connect(server_->port());
  Send(fd, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=");
  const std::string piece(64 * 1024, 'a');
  size_t sent = 0;
  std::string answer;
  while (sent < (size_t{32} << 20)) {
    pollfd p{fd, POLLIN | POLLOUT, 0};
    if (::poll(&p, 1, 1000) <= 0) break;
    if (p.revents & POLLIN) {
      answer = Read(fd);
      break;
    }
    ssize_t n = ::send(fd, piece.data(), piece.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  if (answer.empty()) answer = Read(fd);
  EXPECT_TRUE(absl::StartsWith(answer, "HTTP/1.1 400")) << answer.substr(0, 200);
  EXPECT_LT(sent, size_t{32} << 20) << "the server kept reading the chunk line";
  const long after = RssKib();
  std::printf("endless chunk extension: answered after %zu bytes; RSS %ld -> %ld KiB\n", sent,
              before, after);
  if (kMemoryBoundsApply) {
    EXPECT_LT(after - before, 8 * 1024);
  }
  ::close(fd);
}

TEST_F(BlockingServerTest, StopClosesIdleConnectionsAndFinishesBusyOnes) {
  Start();
  int idle = Connect(server_->port());
  int busy = Connect(server_->port());
  Send(busy, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_TRUE(server_->Stop(absl::Seconds(5)));
  EXPECT_NE(Read(busy).find("200 OK"), std::string::npos);
  EXPECT_TRUE(ClosedByPeer(idle, 2000));
  ::close(idle);
  ::close(busy);
}

}  // namespace
}  // namespace isorun::http
