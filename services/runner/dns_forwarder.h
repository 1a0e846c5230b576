#pragma once

// The runner's DNS forwarder: the resolver of every sandbox with a network (its resolv.conf names
// the gateway address, the host side of each sandbox's veth). It answers each sandbox by its
// profile, found by the query's source address:
//   open       forwards every query to the upstream resolver;
//   allowlist  forwards only names on the list (others: NXDOMAIN; AAAA of listed names: no data,
//              sandboxes have IPv4 only), and before answering pins the A records it returns into
//              that sandbox's allowed set for their TTL: the only way a name becomes reachable;
//   unknown source: REFUSED.
// UDP and TCP (RFC 1035 length-prefixed). A pin that fails answers SERVFAIL: a sandbox never gets
// an address it could not reach.
//
// Threads: one receiving UDP, one accepting TCP, a few workers resolving; TCP connections get a
// thread each, at most kMaxTcpClients at once. Thread-safe.

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "services/kit/egress_policy.h"

namespace isorun::runner {

struct DnsQuestion {
  uint16_t id = 0;
  std::string name;  // lowercase, no final dot
  uint16_t qtype = 0;
  uint16_t qclass = 0;
  size_t end = 0;  // offset just past the question
};

struct DnsAddress {
  uint32_t addr = 0;
  uint32_t ttl = 0;
};

inline constexpr uint16_t kDnsTypeA = 1;
inline constexpr uint16_t kDnsTypeAaaa = 28;
inline constexpr int kDnsNoError = 0;
inline constexpr int kDnsFormErr = 1;
inline constexpr int kDnsServFail = 2;
inline constexpr int kDnsNxDomain = 3;
inline constexpr int kDnsRefused = 5;

// A query with exactly one question.
absl::StatusOr<DnsQuestion> ParseDnsQuery(std::string_view message);
// An answer to `query` with no records and `rcode`.
std::string DnsReply(std::string_view query, const DnsQuestion& q, int rcode);
// The A records (class IN) of an answer's answer section.
absl::StatusOr<std::vector<DnsAddress>> DnsAnswerAddresses(std::string_view message);
// Builds a query (tests, and the TCP fallback's checks).
std::string DnsQuery(uint16_t id, const std::string& name, uint16_t qtype);

struct DnsProfile {
  std::string egress;  // open or allowlist
  std::vector<AllowEntry> entries;
};

class DnsForwarder {
 public:
  struct Options {
    uint32_t listen_addr = 0;  // host order
    int port = 53;
    std::string upstream;  // "ip:port"; "off": every query REFUSED
    int workers = 4;
    absl::Duration upstream_timeout = absl::Seconds(2);
  };
  // The profile of the sandbox with this source address, if any.
  using Lookup = std::function<std::optional<DnsProfile>(uint32_t source)>;
  // Allows `addrs` for the sandbox at `source` (the answer to `name`). Must finish before the
  // sandbox gets the answer.
  using Pin = std::function<absl::Status(uint32_t source, const std::string& name,
                                         const std::vector<DnsAddress>& addrs)>;

  static absl::StatusOr<std::unique_ptr<DnsForwarder>> Start(Options options, Lookup lookup,
                                                             Pin pin);
  ~DnsForwarder();

  // The answer to one query from `source` (empty: send nothing).
  std::string Answer(uint32_t source, std::string_view query);

 private:
  DnsForwarder(Options options, Lookup lookup, Pin pin);
  void UdpLoop();
  void TcpLoop();
  void Worker();
  void ServeTcp(int fd);
  std::string Forward(std::string_view query, uint16_t id);

  static constexpr int kMaxTcpClients = 32;
  static constexpr size_t kMaxQueue = 512;
  const Options options_;
  const Lookup lookup_;
  const Pin pin_;
  uint32_t upstream_addr_ = 0;
  int upstream_port_ = 0;
  int udp_fd_ = -1;
  int tcp_fd_ = -1;
  int stop_pipe_[2] = {-1, -1};
  std::atomic<bool> stopping_{false};
  struct Job {
    uint32_t source;
    uint16_t port;  // network order
    std::string query;
  };
  absl::Mutex mu_;
  std::deque<Job> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<int> tcp_clients_ ABSL_GUARDED_BY(mu_);  // their sockets, shut down on stop
  std::vector<std::thread> threads_;
};

}  // namespace isorun::runner
