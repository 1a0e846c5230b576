#include "services/runner/dns_forwarder.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "services/kit/log.h"

namespace isorun::runner {
namespace {

constexpr size_t kHeader = 12;
constexpr size_t kMaxMessage = 65535;

uint16_t Get16(std::string_view m, size_t at) {
  return static_cast<uint16_t>((static_cast<uint8_t>(m[at]) << 8) | static_cast<uint8_t>(m[at + 1]));
}

uint32_t Get32(std::string_view m, size_t at) {
  return (uint32_t{Get16(m, at)} << 16) | Get16(m, at + 2);
}

void Put16(std::string& m, size_t at, uint16_t v) {
  m[at] = static_cast<char>(v >> 8);
  m[at + 1] = static_cast<char>(v & 0xff);
}

// Reads a (possibly compressed) name at `*at`; moves `*at` past it in the message.
absl::StatusOr<std::string> ReadName(std::string_view m, size_t* at) {
  std::string name;
  size_t pos = *at;
  bool jumped = false;
  for (int hops = 0; hops < 64; ++hops) {
    if (pos >= m.size()) return absl::InvalidArgumentError("truncated name");
    const uint8_t len = static_cast<uint8_t>(m[pos]);
    if ((len & 0xc0) == 0xc0) {
      if (pos + 1 >= m.size()) return absl::InvalidArgumentError("truncated pointer");
      if (!jumped) *at = pos + 2;
      jumped = true;
      pos = Get16(m, pos) & 0x3fff;
      continue;
    }
    if ((len & 0xc0) != 0) return absl::InvalidArgumentError("bad label");
    if (len == 0) {
      if (!jumped) *at = pos + 1;
      return name;
    }
    if (pos + 1 + len > m.size()) return absl::InvalidArgumentError("truncated label");
    if (!name.empty()) name += '.';
    name.append(m.substr(pos + 1, len));
    if (name.size() > 255) return absl::InvalidArgumentError("name too long");
    pos += 1 + len;
  }
  return absl::InvalidArgumentError("name pointer loop");
}

bool ParseHostPort(const std::string& text, uint32_t* addr, int* port) {
  auto colon = text.rfind(':');
  std::string host = colon == std::string::npos ? text : text.substr(0, colon);
  *port = 53;
  if (colon != std::string::npos && (!absl::SimpleAtoi(text.substr(colon + 1), port) ||
                                     *port <= 0 || *port > 65535)) {
    return false;
  }
  auto a = ParseIpv4(host);
  if (!a.ok()) return false;
  *addr = *a;
  return true;
}

sockaddr_in SockAddr(uint32_t addr, int port) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(addr);
  sa.sin_port = htons(static_cast<uint16_t>(port));
  return sa;
}

bool WaitFd(int fd, short events, absl::Duration timeout) {
  pollfd p{fd, events, 0};
  int ms = static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(timeout)));
  return ::poll(&p, 1, ms) == 1 && (p.revents & events) != 0;
}

bool WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Reads exactly n bytes within the deadline.
bool ReadExact(int fd, char* buf, size_t n, absl::Time deadline) {
  size_t got = 0;
  while (got < n) {
    if (!WaitFd(fd, POLLIN, deadline - absl::Now())) return false;
    ssize_t r = ::recv(fd, buf + got, n - got, 0);
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

}  // namespace

absl::StatusOr<DnsQuestion> ParseDnsQuery(std::string_view m) {
  if (m.size() < kHeader) return absl::InvalidArgumentError("short message");
  DnsQuestion q;
  q.id = Get16(m, 0);
  if ((m[2] & 0x80) != 0) return absl::InvalidArgumentError("not a query");
  if (Get16(m, 4) != 1) return absl::InvalidArgumentError("expected one question");
  size_t at = kHeader;
  auto name = ReadName(m, &at);
  if (!name.ok()) return name.status();
  if (at + 4 > m.size()) return absl::InvalidArgumentError("truncated question");
  q.name = absl::AsciiStrToLower(*name);
  q.qtype = Get16(m, at);
  q.qclass = Get16(m, at + 2);
  q.end = at + 4;
  return q;
}

std::string DnsReply(std::string_view query, const DnsQuestion& q, int rcode) {
  std::string r(query.substr(0, q.end));
  // QR, the query's opcode and RD, RA; the rcode.
  r[2] = static_cast<char>(0x80 | (r[2] & 0x79));
  r[3] = static_cast<char>(0x80 | (rcode & 0x0f));
  if (q.end <= kHeader) Put16(r, 4, 0);  // no question to echo
  Put16(r, 6, 0);
  Put16(r, 8, 0);
  Put16(r, 10, 0);
  return r;
}

absl::StatusOr<std::vector<DnsAddress>> DnsAnswerAddresses(std::string_view m) {
  if (m.size() < kHeader) return absl::InvalidArgumentError("short message");
  const int qd = Get16(m, 4), an = Get16(m, 6);
  size_t at = kHeader;
  for (int i = 0; i < qd; ++i) {
    if (!ReadName(m, &at).ok() || at + 4 > m.size()) {
      return absl::InvalidArgumentError("bad question");
    }
    at += 4;
  }
  std::vector<DnsAddress> out;
  for (int i = 0; i < an; ++i) {
    if (!ReadName(m, &at).ok() || at + 10 > m.size()) {
      return absl::InvalidArgumentError("bad answer");
    }
    const uint16_t type = Get16(m, at), cls = Get16(m, at + 2);
    const uint32_t ttl = Get32(m, at + 4);
    const uint16_t len = Get16(m, at + 8);
    at += 10;
    if (at + len > m.size()) return absl::InvalidArgumentError("truncated record");
    if (type == kDnsTypeA && cls == 1 && len == 4) out.push_back({Get32(m, at), ttl});
    at += len;
  }
  return out;
}

std::string DnsQuery(uint16_t id, const std::string& name, uint16_t qtype) {
  std::string m(kHeader, '\0');
  Put16(m, 0, id);
  m[2] = 0x01;  // RD
  Put16(m, 4, 1);
  size_t start = 0;
  while (start <= name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    if (dot > start) {
      m += static_cast<char>(dot - start);
      m += name.substr(start, dot - start);
    }
    start = dot + 1;
  }
  m += '\0';
  m += static_cast<char>(qtype >> 8);
  m += static_cast<char>(qtype & 0xff);
  m += '\0';
  m += '\1';
  return m;
}

DnsForwarder::DnsForwarder(Options options, Lookup lookup, Pin pin)
    : options_(std::move(options)), lookup_(std::move(lookup)), pin_(std::move(pin)) {}

absl::StatusOr<std::unique_ptr<DnsForwarder>> DnsForwarder::Start(Options options, Lookup lookup,
                                                                  Pin pin) {
  std::unique_ptr<DnsForwarder> f(new DnsForwarder(options, std::move(lookup), std::move(pin)));
  if (options.upstream != "off" &&
      !ParseHostPort(options.upstream, &f->upstream_addr_, &f->upstream_port_)) {
    return absl::InvalidArgumentError(
        absl::StrCat("DNS upstream '", options.upstream, "' is not ip:port (or off)"));
  }
  const sockaddr_in sa = SockAddr(options.listen_addr, options.port);
  int one = 1;
  f->udp_fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  f->tcp_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  for (int fd : {f->udp_fd_, f->tcp_fd_}) {
    // The gateway address exists only while some sandbox's veth carries it.
    ::setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof one);
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("DNS forwarder cannot bind ", Ipv4ToString(options.listen_addr), ":",
                       options.port, ": ", std::strerror(errno)));
    }
  }
  if (::listen(f->tcp_fd_, 64) != 0) {
    return absl::InternalError(absl::StrCat("DNS forwarder: listen: ", std::strerror(errno)));
  }
  if (::pipe2(f->stop_pipe_, O_CLOEXEC) != 0) return absl::InternalError("pipe2 failed");
  f->threads_.emplace_back([p = f.get()] { p->UdpLoop(); });
  f->threads_.emplace_back([p = f.get()] { p->TcpLoop(); });
  for (int i = 0; i < std::max(1, options.workers); ++i) {
    f->threads_.emplace_back([p = f.get()] { p->Worker(); });
  }
  return f;
}

DnsForwarder::~DnsForwarder() {
  stopping_ = true;
  if (stop_pipe_[1] >= 0) (void)!::write(stop_pipe_[1], "x", 1);
  {
    absl::MutexLock lock(&mu_);
    for (int fd : tcp_clients_) ::shutdown(fd, SHUT_RDWR);
  }
  for (auto& t : threads_) t.join();
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](std::vector<int>* clients) { return clients->empty(); }, &tcp_clients_));
  }
  for (int fd : {udp_fd_, tcp_fd_, stop_pipe_[0], stop_pipe_[1]}) {
    if (fd >= 0) ::close(fd);
  }
}

void DnsForwarder::UdpLoop() {
  std::string buf(kMaxMessage, '\0');
  while (!stopping_) {
    pollfd p[2] = {{udp_fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
    if (::poll(p, 2, -1) < 0 && errno != EINTR) break;
    if (p[1].revents != 0) break;
    if ((p[0].revents & POLLIN) == 0) continue;
    sockaddr_in from{};
    socklen_t len = sizeof from;
    ssize_t n = ::recvfrom(udp_fd_, buf.data(), buf.size(), MSG_DONTWAIT,
                           reinterpret_cast<sockaddr*>(&from), &len);
    if (n <= 0) continue;
    absl::MutexLock lock(&mu_);
    if (queue_.size() >= kMaxQueue) continue;  // overloaded: the client retries
    queue_.push_back({ntohl(from.sin_addr.s_addr), from.sin_port,
                      std::string(buf.data(), static_cast<size_t>(n))});
  }
  absl::MutexLock lock(&mu_);
  queue_.clear();
}

void DnsForwarder::Worker() {
  while (true) {
    Job job;
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(
          absl::Condition(
              +[](DnsForwarder* f) {
                f->mu_.AssertReaderHeld();
                return !f->queue_.empty() || f->stopping_.load();
              },
              this),
          absl::Milliseconds(500));
      if (stopping_) return;
      if (queue_.empty()) continue;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    std::string answer = Answer(job.source, job.query);
    if (answer.empty()) continue;
    if (answer.size() > 512) {
      // Too big for plain UDP: a truncated answer sends the client to TCP.
      auto q = ParseDnsQuery(job.query);
      if (!q.ok()) continue;
      answer = DnsReply(job.query, *q, kDnsNoError);
      answer[2] = static_cast<char>(answer[2] | 0x02);  // TC
    }
    sockaddr_in to = SockAddr(job.source, 0);
    to.sin_port = job.port;
    ::sendto(udp_fd_, answer.data(), answer.size(), MSG_DONTWAIT,
             reinterpret_cast<sockaddr*>(&to), sizeof to);
  }
}

void DnsForwarder::TcpLoop() {
  while (!stopping_) {
    pollfd p[2] = {{tcp_fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
    if (::poll(p, 2, -1) < 0 && errno != EINTR) break;
    if (p[1].revents != 0) break;
    if ((p[0].revents & POLLIN) == 0) continue;
    int fd = ::accept4(tcp_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    {
      absl::MutexLock lock(&mu_);
      if (tcp_clients_.size() >= static_cast<size_t>(kMaxTcpClients) || stopping_) {
        ::close(fd);
        continue;
      }
      tcp_clients_.push_back(fd);
    }
    std::thread([this, fd] {
      ServeTcp(fd);
      absl::MutexLock lock(&mu_);
      tcp_clients_.erase(std::find(tcp_clients_.begin(), tcp_clients_.end(), fd));
      ::close(fd);
    }).detach();
  }
}

void DnsForwarder::ServeTcp(int fd) {
  sockaddr_in peer{};
  socklen_t len = sizeof peer;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0) return;
  const uint32_t source = ntohl(peer.sin_addr.s_addr);
  // A few queries per connection, each within 5 s.
  for (int i = 0; i < 16 && !stopping_; ++i) {
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    char hdr[2];
    if (!ReadExact(fd, hdr, 2, deadline)) return;
    const size_t n = Get16(std::string_view(hdr, 2), 0);
    std::string query(n, '\0');
    if (n == 0 || !ReadExact(fd, query.data(), n, deadline)) return;
    std::string answer = Answer(source, query);
    if (answer.empty()) return;
    std::string framed(2, '\0');
    Put16(framed, 0, static_cast<uint16_t>(answer.size()));
    framed += answer;
    if (!WriteAll(fd, framed)) return;
  }
}

std::string DnsForwarder::Forward(std::string_view query, uint16_t id) {
  const sockaddr_in up = SockAddr(upstream_addr_, upstream_port_);
  std::string answer;
  for (int attempt = 0; attempt < 2 && answer.empty(); ++attempt) {
    int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return "";
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&up), sizeof up) == 0 &&
        ::send(fd, query.data(), query.size(), 0) == static_cast<ssize_t>(query.size())) {
      const absl::Time deadline = absl::Now() + options_.upstream_timeout;
      std::string buf(kMaxMessage, '\0');
      while (WaitFd(fd, POLLIN, deadline - absl::Now())) {
        ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
        if (n < static_cast<ssize_t>(kHeader)) break;
        if (Get16(buf, 0) != id) continue;  // a stale answer
        answer.assign(buf.data(), static_cast<size_t>(n));
        break;
      }
    }
    ::close(fd);
  }
  if (answer.size() > 2 && (answer[2] & 0x02) != 0) {  // truncated: ask again over TCP
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return answer;
    const absl::Time deadline = absl::Now() + options_.upstream_timeout;
    std::string framed(2, '\0');
    Put16(framed, 0, static_cast<uint16_t>(query.size()));
    framed.append(query);
    char hdr[2];
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&up), sizeof up) == 0 &&
        WriteAll(fd, framed) && ReadExact(fd, hdr, 2, deadline)) {
      std::string full(Get16(std::string_view(hdr, 2), 0), '\0');
      if (!full.empty() && ReadExact(fd, full.data(), full.size(), deadline)) answer = full;
    }
    ::close(fd);
  }
  return answer;
}

std::string DnsForwarder::Answer(uint32_t source, std::string_view query) {
  auto q = ParseDnsQuery(query);
  if (!q.ok()) {
    if (query.size() < kHeader) return "";
    DnsQuestion bare;
    bare.end = kHeader;
    return DnsReply(query, bare, kDnsFormErr);
  }
  auto profile = lookup_(source);
  if (!profile.has_value() || options_.upstream == "off") return DnsReply(query, *q, kDnsRefused);
  const bool filtered = profile->egress == "allowlist";
  if (filtered) {
    if (!DomainAllowed(profile->entries, q->name)) return DnsReply(query, *q, kDnsNxDomain);
    // Sandboxes have IPv4 only: "no AAAA records" sends clients to A at once.
    if (q->qtype == kDnsTypeAaaa) return DnsReply(query, *q, kDnsNoError);
  }
  std::string answer = Forward(query, q->id);
  if (answer.empty()) return DnsReply(query, *q, kDnsServFail);
  if (filtered) {
    auto addrs = DnsAnswerAddresses(answer);
    if (!addrs.ok()) return DnsReply(query, *q, kDnsServFail);
    if (!addrs->empty()) {
      if (absl::Status s = pin_(source, q->name, *addrs); !s.ok()) {
        LogWarn("DNS forwarder: cannot allow an answer",
                {{"name", q->name}, {"error", s.ToString()}});
        return DnsReply(query, *q, kDnsServFail);
      }
    }
  }
  return answer;
}

}  // namespace isorun::runner
