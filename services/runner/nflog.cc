#include "services/runner/nflog.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_log.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "services/kit/log.h"

namespace isorun::runner {
namespace {

void PutAttr(std::vector<char>& msg, uint16_t type, const void* data, size_t len) {
  nlattr a{};
  a.nla_len = static_cast<uint16_t>(NLA_HDRLEN + len);
  a.nla_type = type;
  const size_t at = msg.size();
  msg.resize(at + NLA_ALIGN(a.nla_len), 0);
  std::memcpy(msg.data() + at, &a, sizeof a);
  std::memcpy(msg.data() + at + NLA_HDRLEN, data, len);
}

// One config message to the NFLOG subsystem; returns the kernel's answer (0 or -errno).
int Config(int fd, uint16_t group, uint8_t family, uint16_t attr, const void* data, size_t len) {
  std::vector<char> msg(NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(nfgenmsg)), 0);
  PutAttr(msg, attr, data, len);
  auto* nh = reinterpret_cast<nlmsghdr*>(msg.data());
  nh->nlmsg_len = static_cast<uint32_t>(msg.size());
  nh->nlmsg_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
  nh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  nh->nlmsg_seq = 1;
  auto* g = reinterpret_cast<nfgenmsg*>(msg.data() + NLMSG_HDRLEN);
  g->nfgen_family = family;
  g->version = NFNETLINK_V0;
  g->res_id = htons(group);
  if (::send(fd, msg.data(), msg.size(), 0) < 0) return -errno;
  char buf[4096];
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, 2000) != 1) return -ETIMEDOUT;
  ssize_t n = ::recv(fd, buf, sizeof buf, 0);
  if (n < static_cast<ssize_t>(NLMSG_HDRLEN + sizeof(nlmsgerr))) return -EIO;
  auto* rh = reinterpret_cast<nlmsghdr*>(buf);
  if (rh->nlmsg_type != NLMSG_ERROR) return -EIO;
  return reinterpret_cast<nlmsgerr*>(NLMSG_DATA(rh))->error;
}

}  // namespace

bool ParseIpv4Packet(const uint8_t* d, size_t len, LoggedPacket* out) {
  if (len < 20 || (d[0] >> 4) != 4) return false;
  const size_t ihl = static_cast<size_t>(d[0] & 0x0f) * 4;
  if (ihl < 20 || len < ihl) return false;
  out->protocol = d[9];
  out->dst = (uint32_t{d[16]} << 24) | (uint32_t{d[17]} << 16) | (uint32_t{d[18]} << 8) | d[19];
  out->dst_port = 0;
  if ((out->protocol == IPPROTO_TCP || out->protocol == IPPROTO_UDP) && len >= ihl + 4) {
    out->dst_port = static_cast<uint16_t>((d[ihl + 2] << 8) | d[ihl + 3]);
  }
  return true;
}

absl::StatusOr<std::unique_ptr<NflogReader>> NflogReader::Start(int first_group, Sink sink) {
  std::unique_ptr<NflogReader> r(new NflogReader());
  r->sink_ = std::move(sink);
  for (int group = first_group; group < first_group + 64 && group <= 65535; ++group) {
    int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (fd < 0) return absl::InternalError(absl::StrCat("netlink socket: ", std::strerror(errno)));
    sockaddr_nl sa{};
    sa.nl_family = AF_NETLINK;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
      ::close(fd);
      return absl::InternalError(absl::StrCat("netlink bind: ", std::strerror(errno)));
    }
    nfulnl_msg_config_cmd bind{NFULNL_CFG_CMD_BIND};
    int err = Config(fd, static_cast<uint16_t>(group), AF_UNSPEC, NFULA_CFG_CMD, &bind,
                     sizeof bind);
    if (err == -EBUSY) {  // another process's group
      ::close(fd);
      continue;
    }
    if (err != 0) {
      ::close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat("cannot bind NFLOG group ", group, ": ", std::strerror(-err)));
    }
    // The first 64 bytes of each packet (its IP and transport headers), each packet sent at
    // once rather than batched for up to a second.
    nfulnl_msg_config_mode mode{};
    mode.copy_range = htonl(64);
    mode.copy_mode = NFULNL_COPY_PACKET;
    uint32_t qthresh = htonl(1);
    if (Config(fd, static_cast<uint16_t>(group), AF_UNSPEC, NFULA_CFG_MODE, &mode, sizeof mode) !=
            0 ||
        Config(fd, static_cast<uint16_t>(group), AF_UNSPEC, NFULA_CFG_QTHRESH, &qthresh,
               sizeof qthresh) != 0) {
      ::close(fd);
      return absl::InternalError("cannot configure the NFLOG group");
    }
    int size = 1 << 20;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    r->fd_ = fd;
    r->group_ = group;
    r->thread_ = std::thread([p = r.get()] { p->Loop(); });
    return r;
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("NFLOG groups ", first_group, "-", first_group + 63, " are all taken"));
}

NflogReader::~NflogReader() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
  if (fd_ >= 0) {
    nfulnl_msg_config_cmd unbind{NFULNL_CFG_CMD_UNBIND};
    (void)Config(fd_, static_cast<uint16_t>(group_), AF_UNSPEC, NFULA_CFG_CMD, &unbind,
                 sizeof unbind);
    ::close(fd_);
  }
}

void NflogReader::Loop() {
  std::vector<char> buf(1 << 16);
  while (!stopping_) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    ssize_t n = ::recv(fd_, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n <= 0) continue;  // ENOBUFS: the kernel dropped some; go on
    int left = static_cast<int>(n);
    for (auto* nh = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(nh, left);
         nh = NLMSG_NEXT(nh, left)) {
      if (nh->nlmsg_type != ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)) continue;
      const size_t hdr = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(nfgenmsg));
      if (nh->nlmsg_len < hdr) continue;
      const char* attrs = reinterpret_cast<const char*>(nh) + hdr;
      size_t alen = nh->nlmsg_len - hdr;
      LoggedPacket pkt;
      bool have_payload = false;
      while (alen >= NLA_HDRLEN) {
        const auto* a = reinterpret_cast<const nlattr*>(attrs);
        if (a->nla_len < NLA_HDRLEN || a->nla_len > alen) break;
        const char* data = attrs + NLA_HDRLEN;
        const size_t dlen = a->nla_len - NLA_HDRLEN;
        switch (a->nla_type & NLA_TYPE_MASK) {
          case NFULA_PREFIX:
            pkt.prefix.assign(data, strnlen(data, dlen));
            break;
          case NFULA_PAYLOAD:
            have_payload =
                ParseIpv4Packet(reinterpret_cast<const uint8_t*>(data), dlen, &pkt);
            break;
          default:
            break;
        }
        const size_t step = NLA_ALIGN(a->nla_len);
        if (step >= alen) break;
        attrs += step;
        alen -= step;
      }
      if (have_payload && sink_) sink_(pkt);
    }
  }
}

}  // namespace isorun::runner
