#pragma once

// Dependency checks for GET /healthz.

#include <grpcpp/channel.h>

#include <memory>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "services/kit/pg.h"

namespace isorun::gateway {

// grpc.health.v1.Health/Check for the whole server (service ""): OK when SERVING.
absl::Status CheckGrpcServing(const std::shared_ptr<grpc::Channel>& channel,
                              absl::Duration deadline);

// SELECT 1 through the pool.
absl::Status CheckPostgres(PgPool& pool);

}  // namespace isorun::gateway
