#pragma once

// gRPC adapter of isorun.v1.Quotas over QuotaStore. Runs on the sync server's thread pool (the
// store blocks on Postgres).

#include "isorun/v1/quotas.grpc.pb.h"
#include "quotas/quota_store.h"

namespace isorun::quota {

class QuotaService final : public v1::Quotas::Service {
 public:
  explicit QuotaService(QuotaStore& store) : store_(store) {}

  grpc::Status Admit(grpc::ServerContext*, const v1::AdmitRequest*, v1::AdmitResponse*) override;
  grpc::Status Release(grpc::ServerContext*, const v1::ReleaseRequest*,
                       v1::ReleaseResponse*) override;
  grpc::Status GetUsage(grpc::ServerContext*, const v1::GetUsageRequest*, v1::Usage*) override;

 private:
  QuotaStore& store_;
};

}  // namespace isorun::quota
