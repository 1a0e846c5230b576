#include "services/kit/server.h"

#include <gtest/gtest.h>

#include <string>

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

}  // namespace
}  // namespace isorun
