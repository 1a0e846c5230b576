#include "services/kit/server.h"

#include <arpa/inet.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace isorun {
namespace {

// A second server on a port in use must fail, not start and quietly take part of the first one's
// connections (gRPC's default SO_REUSEPORT).
TEST(GrpcServer, APortInUseIsAnError) {
  auto first = StartGrpcServer("127.0.0.1:0", {});
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_GT(first->port, 0);
  auto second = StartGrpcServer("127.0.0.1:" + std::to_string(first->port), {});
  EXPECT_FALSE(second.ok());
  if (second.ok()) second->server->Shutdown();
  first->server->Shutdown();
}

TEST(MakeChannel, ReplicaListsBecomeIpv4Targets) {
  EXPECT_EQ(ChannelTarget("127.0.0.1:7003"), "127.0.0.1:7003");
  EXPECT_EQ(ChannelTarget("127.0.0.1:7003, 127.0.0.2:7003"), "ipv4:127.0.0.1:7003,127.0.0.2:7003");
  EXPECT_FALSE(IsReplicaSet("lifecycle:7003"));
  EXPECT_TRUE(IsReplicaSet("127.0.0.1:1,127.0.0.1:2"));
  EXPECT_TRUE(IsReplicaSet("dns:///lifecycle.isorun.svc:7003"));
}

// A loopback TCP relay to a local port that lets each connection wait `delay` before any of its
// bytes go through: a peer that is up but slow to answer a new connection's handshake, as a
// busy or briefly stopped service is.
class SlowRelay {
 public:
  SlowRelay(int target_port, absl::Duration delay) : target_port_(target_port), delay_(delay) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        ::listen(listen_fd_, 16) != 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "relay socket: " << errno;
      return;
    }
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { Accept(); });
  }
  ~SlowRelay() {
    stop_ = true;
    if (acceptor_.joinable()) acceptor_.join();
    for (auto& t : pipes_) t.join();
    ::close(listen_fd_);
  }
  int port() const { return port_; }

 private:
  void Accept() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      int client = ::accept(listen_fd_, nullptr, nullptr);
      if (client < 0) continue;
      pipes_.emplace_back([this, client] { Pipe(client); });
    }
  }
  void Pipe(int client) {
    absl::SleepFor(delay_);
    int upstream = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(target_port_));
    if (::connect(upstream, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      char buf[16384];
      pollfd p[2] = {{client, POLLIN, 0}, {upstream, POLLIN, 0}};
      bool open = true;
      while (open && !stop_) {
        if (::poll(p, 2, 50) <= 0) continue;
        for (int i = 0; i < 2 && open; ++i) {
          if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
          ssize_t n = ::read(p[i].fd, buf, sizeof(buf));
          open = n > 0 && ::send(p[1 - i].fd, buf, static_cast<size_t>(n), MSG_NOSIGNAL) == n;
        }
      }
    }
    ::close(upstream);
    ::close(client);
  }

  int target_port_;
  absl::Duration delay_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::vector<std::thread> pipes_;  // only the acceptor adds, the destructor joins after it
};

grpc::Status HealthCheck(const std::shared_ptr<grpc::Channel>& channel, absl::Duration deadline) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  grpc::GenericStub stub(channel);
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1), response;
  grpc::Status st;
  absl::Notification done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", {}, &request, &response,
                 [&](grpc::Status s) {
                   st = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  return st;
}

// A peer that takes a few hundred milliseconds to answer a new connection is up: a fresh
// channel's first call reaches it. (gRPC 1.51 gives a connection attempt only the "min reconnect
// backoff"; at 100 ms this call failed UNAVAILABLE, "tcp handshaker shutdown" or "timed out before
// receiving SETTINGS frame".)
TEST(MakeChannel, AFreshChannelReachesAPeerSlowToAnswerItsConnection) {
  auto server = StartGrpcServer("127.0.0.1:0", {});
  ASSERT_TRUE(server.ok()) << server.status();
  {
    SlowRelay relay(server->port, absl::Milliseconds(300));
    auto channel = MakeChannel("127.0.0.1:" + std::to_string(relay.port()));
    grpc::Status st = HealthCheck(channel, absl::Seconds(5));
    EXPECT_TRUE(st.ok()) << st.error_code() << ": " << st.error_message();
  }
  server->server->Shutdown(std::chrono::system_clock::now());
}

// A replica set keeps answering when one of its replicas is gone: round_robin leaves the dead
// one out and a call that found it dead is repeated on the other.
TEST(MakeChannel, CallsReachTheReplicaThatIsLeft) {
  auto a = StartGrpcServer("127.0.0.1:0", {});
  auto b = StartGrpcServer("127.0.0.1:0", {});
  ASSERT_TRUE(a.ok() && b.ok());
  auto channel = MakeChannel("127.0.0.1:" + std::to_string(a->port) + ",127.0.0.1:" +
                             std::to_string(b->port));
  ASSERT_TRUE(channel->WaitForConnected(std::chrono::system_clock::now() +
                                        std::chrono::seconds(10)));
  a->server->Shutdown();
  for (int i = 0; i < 20; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    // An empty message is a valid HealthCheckRequest (the whole server's health).
    grpc::GenericStub stub(channel);
    grpc::Slice empty("");
    grpc::ByteBuffer request(&empty, 1), response;
    grpc::Status st;
    absl::Notification done;
    stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", {}, &request, &response,
                   [&](grpc::Status s) {
                     st = std::move(s);
                     done.Notify();
                   });
    done.WaitForNotification();
    EXPECT_TRUE(st.ok()) << i << ": " << st.error_message();
  }
  b->server->Shutdown();
}

}  // namespace
}  // namespace isorun
