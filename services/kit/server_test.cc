#include "services/kit/server.h"

#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <string>

#include "absl/synchronization/notification.h"

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
