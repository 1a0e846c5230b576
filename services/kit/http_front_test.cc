// The front end's bounds: oversize heads, chunk lines and bodies, and slow heads are answered
// early (431, 400, 413, 408) and the connection closed; keep-alive and idle timeouts work.

#include "services/kit/http_front.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace isorun::http {
namespace {

// Answers every request with "got N bytes" after reading its body (at most 1000 bytes).
class EchoLength : public ConnectionHandler {
 public:
  void OnRequest(std::shared_ptr<Connection> c) override {
    c->ReadBody(1000, [c](beast::error_code ec, std::string body) {
      if (ec) return;
      StringResponse r{bhttp::status::ok, 11};
      r.body() = absl::StrCat("got ", body.size(), " bytes");
      c->Reply(std::move(r));
    });
  }
};

class FrontEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FrontEndOptions o;
    o.max_head_bytes = 2048;
    o.max_buffer_bytes = 4096;
    o.head_timeout = absl::Milliseconds(300);
    o.idle_timeout = absl::Milliseconds(600);
    o.body_timeout = absl::Milliseconds(300);
    auto fe = FrontEnd::Start(o, [] { return std::make_unique<EchoLength>(); });
    ASSERT_TRUE(fe.ok()) << fe.status();
    fe_ = std::move(*fe);
  }

  int Connect() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(fe_->port()));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    return fd;
  }

  static void Send(int fd, const std::string& data) {
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return;  // the server may close early (that is the point of some tests)
      off += static_cast<size_t>(n);
    }
  }

  // Reads until the peer closes or `stop_after` appears, for at most 5 s.
  static std::string Read(int fd, const std::string& stop_after = "") {
    std::string out;
    char buf[4096];
    for (int i = 0; i < 500; ++i) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 10) <= 0) continue;
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
      if (!stop_after.empty() && out.find(stop_after) != std::string::npos) break;
    }
    return out;
  }

  static bool ClosedByPeer(int fd) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 3000) <= 0) return false;
    char c;
    return ::recv(fd, &c, 1, 0) == 0;
  }

  std::unique_ptr<FrontEnd> fe_;
};

TEST_F(FrontEndTest, ServesKeptAliveRequests) {
  int fd = Connect();
  Send(fd, "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
  EXPECT_NE(Read(fd, "got 5 bytes").find("200 OK"), std::string::npos);
  Send(fd,
       "POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  EXPECT_NE(Read(fd, "got 3 bytes").find("got 3 bytes"), std::string::npos);
  ::close(fd);
}

TEST_F(FrontEndTest, OversizeHeadIs431) {
  int fd = Connect();
  Send(fd,
       absl::StrCat("GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", std::string(3000, 'a'), "\r\n\r\n"));
  std::string r = Read(fd);
  EXPECT_NE(r.find("HTTP/1.1 431"), std::string::npos) << r;
  EXPECT_NE(r.find("\"HEADERS_TOO_LARGE\""), std::string::npos) << r;
  ::close(fd);
}

TEST_F(FrontEndTest, EndlessChunkLineIs400) {
  int fd = Connect();
  // A chunk-size line whose extension never ends: must not grow a buffer without limit.
  Send(fd, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=");
  Send(fd, std::string(8192, 'e'));
  std::string r = Read(fd);
  EXPECT_NE(r.find("HTTP/1.1 400"), std::string::npos) << r;
  EXPECT_NE(r.find("chunk line"), std::string::npos) << r;
  ::close(fd);
}

TEST_F(FrontEndTest, EndlessTrailersAre400) {
  int fd = Connect();
  Send(fd, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: ");
  Send(fd, std::string(8192, 't'));
  std::string r = Read(fd);
  EXPECT_TRUE(r.find("HTTP/1.1 400") != std::string::npos ||
              r.find("HTTP/1.1 431") != std::string::npos)
      << r;
  ::close(fd);
}

TEST_F(FrontEndTest, LargeBodyIs413BeforeItIsRead) {
  int fd = Connect();
  Send(fd, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
  std::string r = Read(fd);
  EXPECT_NE(r.find("HTTP/1.1 413"), std::string::npos) << r;
  EXPECT_NE(r.find("\"BODY_TOO_LARGE\""), std::string::npos) << r;
  ::close(fd);
}

TEST_F(FrontEndTest, LargeChunkedBodyIs413) {
  int fd = Connect();
  Send(fd, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
  for (int i = 0; i < 10; ++i) Send(fd, absl::StrCat("100\r\n", std::string(256, 'b'), "\r\n"));
  std::string r = Read(fd);
  EXPECT_NE(r.find("HTTP/1.1 413"), std::string::npos) << r;
  ::close(fd);
}

TEST_F(FrontEndTest, SlowHeadIs408) {
  int fd = Connect();
  Send(fd, "GET / HTTP/1.1\r\nHost: x\r\n");  // never finished
  std::string r = Read(fd);
  EXPECT_NE(r.find("HTTP/1.1 408"), std::string::npos) << r;
  ::close(fd);
}

TEST_F(FrontEndTest, SlowBodyIs408) {
  int fd = Connect();
  Send(fd, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab");
  std::string r = Read(fd);
  EXPECT_NE(r.find("HTTP/1.1 408"), std::string::npos) << r;
  ::close(fd);
}

TEST_F(FrontEndTest, MalformedHeadIs400) {
  int fd = Connect();
  Send(fd, "GET / HTTP/1.1\r\nHost x\r\n\r\n");
  std::string r = Read(fd);
  EXPECT_NE(r.find("HTTP/1.1 400"), std::string::npos) << r;
  ::close(fd);
}

TEST_F(FrontEndTest, IdleConnectionIsClosedQuietly) {
  int fd = Connect();
  EXPECT_TRUE(ClosedByPeer(fd));
  ::close(fd);
  // And the server still serves.
  fd = Connect();
  Send(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_NE(Read(fd, "got 0 bytes").find("200 OK"), std::string::npos);
  ::close(fd);
}

TEST(FrontEndLimits, RaisesTheOpenFileLimit) { EXPECT_GE(RaiseOpenFileLimit(), 1024); }

TEST(FrontEndLimits, SplitsHostPort) {
  std::string host;
  int port = 0;
  ASSERT_TRUE(SplitHostPort("127.0.0.1:8081", &host, &port));
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, 8081);
  ASSERT_TRUE(SplitHostPort("[::1]:9", &host, &port));
  EXPECT_EQ(host, "::1");
  EXPECT_FALSE(SplitHostPort("nohost", &host, &port));
}

}  // namespace
}  // namespace isorun::http
