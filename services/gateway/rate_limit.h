#pragma once

// Request and create rate limits, decided by the quota service (GCRA buckets per key and per
// tenant, held in the memory of one quota replica). The gateway sends each tenant's checks to the
// first replica of the tenant's rendezvous order (services/kit/shard.h) that is up, the next one
// when it is not, and turns the answer into RateLimit headers.
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

// Calls isorun.v1.Quotas/CheckRate on the tenant's replica: the first of its rendezvous order
// over `names` (the replicas' addresses, the same list in every gateway) whose channel is not
// failing; a replica that fails the call (down, unreachable) passes the check to the next one
// within the deadline.
class QuotaRateChecker final : public RateChecker {
 public:
  QuotaRateChecker(const std::vector<std::shared_ptr<grpc::Channel>>& replicas,
                   std::vector<std::string> names, absl::Duration deadline);
  absl::StatusOr<v1::RateWindow> Check(const std::string& tenant_id, const std::string& key_id,
                                       v1::RateKind kind) override;

 private:
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<v1::Quotas::Stub>> stubs_;
  const std::vector<std::string> names_;
  const absl::Duration deadline_;
};

// RateLimit-Policy and RateLimit headers (draft-ietf-httpapi-ratelimit-headers, structured
// field form): `"requests";q=<burst>;w=<window s>` and `"requests";r=<remaining>;t=<reset s>`.
std::vector<std::pair<std::string, std::string>> RateLimitHeaders(const v1::RateWindow& window);

}  // namespace isorun::gateway
