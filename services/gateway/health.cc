#include "services/gateway/health.h"

#include <google/protobuf/empty.pb.h>
#include <google/protobuf/wrappers.pb.h>
#include <grpcpp/client_context.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/impl/codegen/proto_utils.h>

#include <future>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/gateway/strings.h"

namespace isorun::gateway {

absl::Status CheckGrpcServing(const std::shared_ptr<grpc::Channel>& channel,
                              absl::Duration deadline) {
  // grpc.health.v1 has no generated client in the system packages. Its messages are tiny and
  // wire-compatible with well-known types: HealthCheckRequest{service = ""} encodes as an empty
  // message, HealthCheckResponse{ServingStatus status = 1} as a varint in field 1, which is
  // UInt32Value.value. SERVING is 1.
  grpc::TemplatedGenericStub<google::protobuf::Empty, google::protobuf::UInt32Value> stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  google::protobuf::Empty request;
  google::protobuf::UInt32Value response;
  // A promise, not an absl::Notification: the waiter may destroy it while set_value returns.
  std::promise<grpc::Status> done;
  std::future<grpc::Status> result = done.get_future();
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  grpc::Status status = result.get();
  if (!status.ok()) {
    return absl::UnavailableError(Cat("health check failed: ", status.error_message()));
  }
  constexpr uint32_t kServing = 1;
  if (response.value() != kServing) {
    return absl::UnavailableError(Cat("not serving (status ", response.value(), ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckPostgres(PgPool& pool) {
  return pool.Transact([](pqxx::work& tx) {
    tx.exec("SELECT 1");
    return absl::OkStatus();
  });
}

}  // namespace isorun::gateway
