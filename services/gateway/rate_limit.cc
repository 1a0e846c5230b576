#include "services/gateway/rate_limit.h"

#include <algorithm>
#include <cmath>

#include "services/gateway/strings.h"
#include "services/kit/shard.h"
#include "services/kit/status.h"

namespace isorun::gateway {

QuotaRateChecker::QuotaRateChecker(const std::vector<std::shared_ptr<grpc::Channel>>& replicas,
                                   std::vector<std::string> names, absl::Duration deadline)
    : channels_(replicas), names_(std::move(names)), deadline_(deadline) {
  for (const auto& channel : replicas) stubs_.push_back(v1::Quotas::NewStub(channel));
}

absl::StatusOr<v1::RateWindow> QuotaRateChecker::Check(const std::string& tenant_id,
                                                       const std::string& key_id,
                                                       v1::RateKind kind) {
  if (stubs_.empty()) return absl::FailedPreconditionError("no quota replicas configured");
  v1::CheckRateRequest req;
  req.set_tenant_id(tenant_id);
  req.set_key_id(key_id);
  req.set_kind(kind);
  const absl::Time give_up = absl::Now() + deadline_;
  const std::vector<int> order = RendezvousOrder(tenant_id, names_);
  // Replicas whose channel already knows they are down come last: the first healthy choice
  // answers without waiting for a failure first.
  std::vector<int> tries, down;
  for (int i : order) {
    (channels_[i]->GetState(true) == GRPC_CHANNEL_TRANSIENT_FAILURE ? down : tries).push_back(i);
  }
  tries.insert(tries.end(), down.begin(), down.end());
  grpc::Status status;
  v1::CheckRateResponse resp;
  for (int i : tries) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(give_up));
    status = stubs_[i]->CheckRate(&ctx, req, &resp);
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE || absl::Now() >= give_up) break;
  }
  if (!status.ok()) return FromGrpcStatus(status);
  return resp.window();
}

std::vector<std::pair<std::string, std::string>> RateLimitHeaders(const v1::RateWindow& window) {
  std::string policy = window.policy().empty() ? "requests" : window.policy();
  // Structured-field strings: keep to the safe characters.
  policy.erase(std::remove_if(policy.begin(), policy.end(),
                              [](char c) { return c == '"' || c == '\\' || c < 0x20 || c > 0x7E; }),
               policy.end());
  int reset = std::max(0, static_cast<int>(std::ceil(window.reset_sec())));
  return {
      {"RateLimit-Policy", Cat("\"", policy, "\";q=", std::max(0, window.burst()),
                               ";w=", std::max(1, window.window_sec()))},
      {"RateLimit", Cat("\"", policy, "\";r=", std::max(0, window.remaining()), ";t=", reset)},
  };
}

}  // namespace isorun::gateway
