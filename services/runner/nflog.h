#pragma once

// Reads packets that nftables `log group N` rules send to user space (NFLOG over netlink),
// without a library: one raw NETLINK_NETFILTER socket bound to one group. The egress log and its
// counters are built from these: each logged packet is the first of a connection attempt, with
// the rule's prefix saying which sandbox and which verdict.
//
// Chosen over reading the kernel log (`log` without group): NFLOG is per group, so several
// runners on one host each see only their own packets, and nothing reaches dmesg.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace isorun::runner {

struct LoggedPacket {
  std::string prefix;
  uint8_t protocol = 0;  // IPPROTO_*
  uint32_t dst = 0;      // host order
  uint16_t dst_port = 0;
};

class NflogReader {
 public:
  using Sink = std::function<void(const LoggedPacket&)>;
  // Binds the first free group from `first_group` on (another process may hold a group; the
  // kernel refuses a second binding). `sink` runs on the reader's thread.
  static absl::StatusOr<std::unique_ptr<NflogReader>> Start(int first_group, Sink sink);
  ~NflogReader();
  int group() const { return group_; }

 private:
  NflogReader() = default;
  void Loop();

  int fd_ = -1;
  int group_ = 0;
  Sink sink_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

// Parses one IPv4 packet's header (and the TCP/UDP ports after it).
bool ParseIpv4Packet(const uint8_t* data, size_t len, LoggedPacket* out);

}  // namespace isorun::runner
