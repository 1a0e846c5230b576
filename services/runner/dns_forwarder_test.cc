#include "services/runner/dns_forwarder.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "absl/synchronization/mutex.h"

namespace isorun::runner {
namespace {

constexpr uint32_t kLoopback = 0x7f000001;

// An answer with one A record for the query's name.
std::string AnswerA(std::string_view query, uint32_t addr, uint32_t ttl) {
  auto q = ParseDnsQuery(query);
  std::string r = DnsReply(query, *q, kDnsNoError);
  r[7] = 1;  // ANCOUNT
  const char rr[] = {'\xc0', '\x0c', 0, 1, 0, 1};
  r.append(rr, sizeof rr);
  for (int shift = 24; shift >= 0; shift -= 8) r += static_cast<char>((ttl >> shift) & 0xff);
  r += '\0';
  r += '\4';
  for (int shift = 24; shift >= 0; shift -= 8) r += static_cast<char>((addr >> shift) & 0xff);
  return r;
}

int BoundUdp(int* port) {
  int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(kLoopback);
  ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  socklen_t len = sizeof sa;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  *port = ntohs(sa.sin_port);
  return fd;
}

// A UDP upstream on loopback answering every query with 198.18.0.7 (TTL 30), counting queries.
class FakeUpstream {
 public:
  FakeUpstream() : fd_(BoundUdp(&port_)) {
    thread_ = std::thread([this] {
      char buf[1500];
      while (!stop_) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, 50) != 1) continue;
        sockaddr_in from{};
        socklen_t len = sizeof from;
        ssize_t n = ::recvfrom(fd_, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
        if (n <= 0) continue;
        ++queries_;
        std::string a = AnswerA(std::string_view(buf, static_cast<size_t>(n)), 0xC6120007, 30);
        ::sendto(fd_, a.data(), a.size(), 0, reinterpret_cast<sockaddr*>(&from), len);
      }
    });
  }
  ~FakeUpstream() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  int port() const { return port_; }
  int queries() const { return queries_; }

 private:
  int port_ = 0;
  int fd_;
  std::atomic<bool> stop_{false};
  std::atomic<int> queries_{0};
  std::thread thread_;
};

std::string AskUdp(int port, const std::string& query) {
  int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(kLoopback);
  sa.sin_port = htons(static_cast<uint16_t>(port));
  ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  ::send(fd, query.data(), query.size(), 0);
  pollfd p{fd, POLLIN, 0};
  std::string out;
  if (::poll(&p, 1, 5000) == 1) {
    char buf[1500];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) out.assign(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

std::string AskTcp(int port, const std::string& query) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(kLoopback);
  sa.sin_port = htons(static_cast<uint16_t>(port));
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
    std::string framed = {static_cast<char>(query.size() >> 8),
                          static_cast<char>(query.size() & 0xff)};
    framed += query;
    ::send(fd, framed.data(), framed.size(), 0);
    char buf[1500];
    size_t got = 0;
    auto want = [&] {
      return size_t{2} + ((static_cast<size_t>(static_cast<uint8_t>(buf[0])) << 8) |
                          static_cast<uint8_t>(buf[1]));
    };
    while (got < 2 || got < want()) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 5000) != 1) break;
      ssize_t n = ::recv(fd, buf + got, sizeof buf - got, 0);
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    if (got > 2) out.assign(buf + 2, got - 2);
  }
  ::close(fd);
  return out;
}

int Rcode(const std::string& m) { return m.size() < 4 ? -1 : m[3] & 0x0f; }

TEST(DnsMessage, QueryRoundTrip) {
  std::string q = DnsQuery(0x1234, "Api.Example.ORG", kDnsTypeA);
  auto parsed = ParseDnsQuery(q);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->id, 0x1234);
  EXPECT_EQ(parsed->name, "api.example.org");
  EXPECT_EQ(parsed->qtype, kDnsTypeA);
  auto addrs = DnsAnswerAddresses(AnswerA(q, 0xC6120007, 42));
  ASSERT_TRUE(addrs.ok());
  ASSERT_EQ(addrs->size(), 1u);
  EXPECT_EQ((*addrs)[0].addr, 0xC6120007u);
  EXPECT_EQ((*addrs)[0].ttl, 42u);
}

TEST(DnsMessage, RejectsGarbageAndPointerLoops) {
  EXPECT_FALSE(ParseDnsQuery("short").ok());
  std::string q = DnsQuery(1, "a.b", kDnsTypeA);
  std::string loop = q.substr(0, 12) + "\xc0\x0c" + std::string("\0\1\0\1", 4);
  EXPECT_FALSE(ParseDnsQuery(loop).ok());
  EXPECT_FALSE(DnsAnswerAddresses(q.substr(0, 14)).ok());
}

class ForwarderTest : public ::testing::Test {
 protected:
  void StartForwarder(const std::string& egress, std::vector<std::string> allow) {
    for (const auto& a : allow) entries_.push_back(*ParseAllowEntry(a));
    egress_ = egress;
    // A free UDP port may still be taken for TCP, or taken by another test before the bind:
    // try a few.
    absl::StatusOr<std::unique_ptr<DnsForwarder>> f = absl::UnknownError("not started");
    for (int attempt = 0; attempt < 10 && !f.ok(); ++attempt) {
      int port = 0;
      ::close(BoundUdp(&port));
      port_ = port;
      DnsForwarder::Options o;
      o.listen_addr = kLoopback;
      o.port = port_;
      o.upstream = "127.0.0.1:" + std::to_string(upstream_.port());
      f = DnsForwarder::Start(
          o,
          [this](uint32_t src) -> std::optional<DnsProfile> {
            if (src != kLoopback) return std::nullopt;
            return DnsProfile{egress_, entries_};
          },
          [this](uint32_t, const std::string& name, const std::vector<DnsAddress>& a) {
            absl::MutexLock lock(&mu_);
            for (const auto& x : a) pins_.emplace_back(name, x.addr);
            return absl::OkStatus();
          });
    }
    ASSERT_TRUE(f.ok()) << f.status();
    forwarder_ = std::move(*f);
  }
  std::vector<std::pair<std::string, uint32_t>> Pins() {
    absl::MutexLock lock(&mu_);
    return pins_;
  }

  FakeUpstream upstream_;
  int port_ = 0;
  std::string egress_;
  std::vector<AllowEntry> entries_;
  absl::Mutex mu_;
  std::vector<std::pair<std::string, uint32_t>> pins_;
  std::unique_ptr<DnsForwarder> forwarder_;
};

TEST_F(ForwarderTest, AllowlistAnswersListedNamesAndPinsBeforeAnswering) {
  StartForwarder("allowlist", {"ok.test", "*.wild.test"});
  std::string a = AskUdp(port_, DnsQuery(7, "ok.test", kDnsTypeA));
  ASSERT_EQ(Rcode(a), kDnsNoError);
  auto addrs = DnsAnswerAddresses(a);
  ASSERT_TRUE(addrs.ok());
  ASSERT_EQ(addrs->size(), 1u);
  // The pin was made before the answer went out.
  ASSERT_EQ(Pins().size(), 1u);
  EXPECT_EQ(Pins()[0], std::make_pair(std::string("ok.test"), 0xC6120007u));

  EXPECT_EQ(Rcode(AskUdp(port_, DnsQuery(8, "x.wild.test", kDnsTypeA))), kDnsNoError);
  EXPECT_EQ(Pins().size(), 2u);
  const int before = upstream_.queries();
  EXPECT_EQ(Rcode(AskUdp(port_, DnsQuery(9, "other.test", kDnsTypeA))), kDnsNxDomain);
  EXPECT_EQ(Rcode(AskUdp(port_, DnsQuery(10, "wild.test", kDnsTypeA))), kDnsNxDomain);
  // AAAA of a listed name: no data, and nothing asked upstream.
  std::string aaaa = AskUdp(port_, DnsQuery(11, "ok.test", kDnsTypeAaaa));
  EXPECT_EQ(Rcode(aaaa), kDnsNoError);
  EXPECT_EQ(DnsAnswerAddresses(aaaa)->size(), 0u);
  EXPECT_EQ(upstream_.queries(), before);
  EXPECT_EQ(Pins().size(), 2u);

  // TCP too.
  std::string t = AskTcp(port_, DnsQuery(12, "ok.test", kDnsTypeA));
  EXPECT_EQ(Rcode(t), kDnsNoError);
  EXPECT_EQ(DnsAnswerAddresses(t)->size(), 1u);
  EXPECT_EQ(Rcode(AskTcp(port_, DnsQuery(13, "no.test", kDnsTypeA))), kDnsNxDomain);
}

TEST_F(ForwarderTest, OpenForwardsEverythingWithoutPins) {
  StartForwarder("open", {});
  std::string a = AskUdp(port_, DnsQuery(7, "anything.test", kDnsTypeA));
  EXPECT_EQ(Rcode(a), kDnsNoError);
  EXPECT_EQ(DnsAnswerAddresses(a)->size(), 1u);
  EXPECT_TRUE(Pins().empty());
  // A malformed query gets FORMERR, not silence and not a crash.
  std::string bad = DnsQuery(9, "x.test", kDnsTypeA).substr(0, 14);
  EXPECT_EQ(Rcode(forwarder_->Answer(kLoopback, bad)), kDnsFormErr);
  // An unknown source is refused.
  EXPECT_EQ(Rcode(forwarder_->Answer(0x01020304, DnsQuery(1, "x.test", kDnsTypeA))), kDnsRefused);
}

}  // namespace
}  // namespace isorun::runner
