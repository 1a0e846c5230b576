#pragma once

// gRPC adapter of isorun.v1.Quotas: admission over QuotaStore (Postgres), rate limits over
// RateLimiter (this replica's memory, for the tenants the gateways send here: see
// services/kit/shard.h; any replica serves any tenant, so one that is left serves them all). Runs on the sync server's
// thread pool (the store blocks on Postgres).

#include <functional>
#include <string>
#include <unordered_map>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "isorun/v1/quotas.grpc.pb.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"
#include "quotas/exec_leases.h"
#include "quotas/quota_store.h"
#include "quotas/rate_limiter.h"

namespace isorun::quota {

struct QuotaServiceOptions {
  // Limits changed with `isorunctl tenants set-limits` take effect within this time.
  absl::Duration limits_ttl = absl::Seconds(2);
};

class QuotaService final : public v1::Quotas::Service {
 public:
  using Clock = std::function<absl::Time()>;
  QuotaService(QuotaStore& store, prometheus::Registry& registry,
               QuotaServiceOptions options = {}, Clock clock = [] { return absl::Now(); });

  grpc::Status CheckRate(grpc::ServerContext*, const v1::CheckRateRequest*,
                         v1::CheckRateResponse*) override;
  grpc::Status Admit(grpc::ServerContext*, const v1::AdmitRequest*, v1::AdmitResponse*) override;
  grpc::Status Release(grpc::ServerContext*, const v1::ReleaseRequest*,
                       v1::ReleaseResponse*) override;
  grpc::Status AdmitBatch(grpc::ServerContext*, const v1::AdmitBatchRequest*,
                          v1::AdmitBatchResponse*) override;
  grpc::Status ReleaseBatch(grpc::ServerContext*, const v1::ReleaseBatchRequest*,
                            v1::ReleaseBatchResponse*) override;
  grpc::Status GetUsage(grpc::ServerContext*, const v1::GetUsageRequest*, v1::Usage*) override;
  grpc::Status ListReservations(grpc::ServerContext*, const v1::ListReservationsRequest*,
                                v1::ListReservationsResponse*) override;
  grpc::Status AcquireExecLease(grpc::ServerContext*, const v1::AcquireExecLeaseRequest*,
                                v1::AcquireExecLeaseResponse*) override;
  grpc::Status RenewExecLeases(grpc::ServerContext*, const v1::RenewExecLeasesRequest*,
                               v1::RenewExecLeasesResponse*) override;
  grpc::Status ReleaseExecLeases(grpc::ServerContext*, const v1::ReleaseExecLeasesRequest*,
                                 v1::ReleaseExecLeasesResponse*) override;

  // Drops rate buckets that are full again; called periodically.
  size_t CollectRateBuckets() { return limiter_.Collect(clock_()); }
  // Drops exec leases whose holder stopped renewing them; called periodically.
  size_t CollectExecLeases() { return exec_leases_.Collect(clock_()); }

 private:
  void CountAdmission(const absl::StatusOr<AdmitResult>& result);

  absl::StatusOr<TenantLimits> CachedLimits(const std::string& tenant_id);

  QuotaStore& store_;
  const QuotaServiceOptions options_;
  const Clock clock_;
  RateLimiter limiter_;
  ExecLeaseTable exec_leases_;
  absl::Mutex mu_;
  struct CachedEntry {
    TenantLimits limits;
    absl::Time fetched;
  };
  std::unordered_map<std::string, CachedEntry> limits_ ABSL_GUARDED_BY(mu_);
  prometheus::Family<prometheus::Counter>& admissions_;
  prometheus::Family<prometheus::Counter>& rate_checks_;
};

}  // namespace isorun::quota
