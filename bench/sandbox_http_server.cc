// A small HTTP/1.1 server with keep-alive that `bench proxy` copies into a sandbox (static, so it
// runs in the busybox image): every request gets "hello from isorun\n", except GET /big, which
// gets 1 GiB of bytes generated on the fly (nothing on disk). A thread per connection is fine
// here: the benchmark opens a few dozen.
//
//   isorun-sandbox-http-server PORT [ADDRESS]   (ADDRESS defaults to 127.0.0.1)

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

namespace {

bool SendAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

void Serve(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::string in;
  char buf[16384];
  static const std::string kSmall =
      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 18\r\n\r\nhello from "
      "isorun\n";
  while (true) {
    size_t end;
    while ((end = in.find("\r\n\r\n")) == std::string::npos) {
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) {
        ::close(fd);
        return;
      }
      in.append(buf, static_cast<size_t>(n));
    }
    std::string head = in.substr(0, end);
    in.erase(0, end + 4);
    const bool close_after = head.find("Connection: close") != std::string::npos ||
                             head.find("connection: close") != std::string::npos;
    bool ok;
    if (head.rfind("GET /big", 0) == 0) {
      constexpr size_t kTotal = size_t{1} << 30;
      std::string h =
          "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: " +
          std::to_string(kTotal) + "\r\n\r\n";
      ok = SendAll(fd, h.data(), h.size());
      static char chunk[1 << 20];
      for (size_t sent = 0; ok && sent < kTotal; sent += sizeof chunk) {
        ok = SendAll(fd, chunk, sizeof chunk);
      }
    } else {
      ok = SendAll(fd, kSmall.data(), kSmall.size());
    }
    if (!ok || close_after) {
      ::close(fd);
      return;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s PORT [ADDRESS]\n", argv[0]);
    return 2;
  }
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(std::atoi(argv[1])));
  if (::inet_pton(AF_INET, argc > 2 ? argv[2] : "127.0.0.1", &a.sin_addr) != 1) return 2;
  if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(s, 1024) != 0) {
    std::perror("listen");
    return 1;
  }
  while (true) {
    int fd = ::accept(s, nullptr, nullptr);
    if (fd < 0) continue;
    std::thread(Serve, fd).detach();
  }
}
