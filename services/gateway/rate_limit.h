#pragma once

// Request and create rate limits, decided by the quota service (GCRA buckets per key and per
// tenant, held in the memory of the replica that owns the tenant's shard). The gateway routes
// each check to the owner (ShardFor) and turns the answer into RateLimit headers.
//
// Failure policy: when quota cannot answer (down, slow, misrouted) the request is let through
// and the failure counted: a rate limiter protects capacity, and refusing every request while
// it is away would turn its outage into an outage of the whole API.

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "isorun/v1/quotas.grpc.pb.h"

namespace isorun::gateway {

class RateChecker {
 public:
  virtual ~RateChecker() = default;
  // OK with the tightest bucket's window; RESOURCE_EXHAUSTED (reason RATE_LIMIT, with the
  // window in the ErrorDetail) when refused; any other status when the check itself failed.
  virtual absl::StatusOr<v1::RateWindow> Check(const std::string& tenant_id,
                                               const std::string& key_id, v1::RateKind kind) = 0;
};

// Calls isorun.v1.Quotas/CheckRate on the replica that owns the tenant: `replicas[i]` serves
// shard i of replicas.size().
class QuotaRateChecker final : public RateChecker {
 public:
  QuotaRateChecker(const std::vector<std::shared_ptr<grpc::Channel>>& replicas,
                   absl::Duration deadline);
  absl::StatusOr<v1::RateWindow> Check(const std::string& tenant_id, const std::string& key_id,
                                       v1::RateKind kind) override;

 private:
  std::vector<std::unique_ptr<v1::Quotas::Stub>> stubs_;
  const absl::Duration deadline_;
};

// RateLimit-Policy and RateLimit headers (draft-ietf-httpapi-ratelimit-headers, structured
// field form): `"requests";q=<burst>;w=<window s>` and `"requests";r=<remaining>;t=<reset s>`.
std::vector<std::pair<std::string, std::string>> RateLimitHeaders(const v1::RateWindow& window);

}  // namespace isorun::gateway
