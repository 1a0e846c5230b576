#pragma once

// What the gateway serves to operators (/v1/admin/*) and the per-tenant usage history
// (/v1/usage/history):
// - PgOperatorTokens: checks `Authorization: Bearer isro_<tokenId>_<secret>` against
//   accounts.operator_tokens (hash only, constant-time compare, revoked tokens refused). No cache:
//   operator traffic is a dashboard's, a few requests a minute.
// - SchedulerAdminClient: the scheduler's admin listener (capacity view, history, forecast,
//   drain), reached over plain HTTP on the operators' network; the gateway is the only door to
//   it from outside, and only with an operator token.
// - TenantUsageRecorder: per tenant and minute, creates and 429s by reason as the gateway answered
//   them, plus the largest active and hibernated counts seen (sampled every minute through the
//   lifecycle's GetUsage for tenants that used the API in the last day), written in batches
//   (counters added up across gateways, gauges kept at their maximum). Minute rows older than a
//   day are rolled up into hours (kept 30 days).
//
// Thread-safe. TenantUsageRecorder owns one background thread (Start/Stop).

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "services/kit/pg.h"

namespace isorun::gateway {

class PgOperatorTokens {
 public:
  explicit PgOperatorTokens(PgPool& pool);
  // The token id when `authorization` carries a valid operator token; UNAUTHENTICATED (reason
  // OPERATOR_TOKEN_MISSING, _MALFORMED or _INVALID) otherwise, UNAVAILABLE when it cannot tell.
  absl::StatusOr<std::string> Verify(std::optional<std::string_view> authorization);

 private:
  PgPool& pool_;
};

struct UpstreamResponse {
  int status = 0;
  std::string content_type;
  std::string body;
};

class SchedulerAdminClient {
 public:
  // `url`: http://host:port, or several comma-separated (scheduler replicas: only the leader
  // serves, the followers answer 503, so each call tries them in turn). Empty: no scheduler,
  // every call UNAVAILABLE.
  explicit SchedulerAdminClient(std::string url, absl::Duration deadline = absl::Seconds(10));
  absl::StatusOr<UpstreamResponse> Call(const std::string& method, const std::string& target);

 private:
  absl::StatusOr<UpstreamResponse> CallOne(const std::string& host, const std::string& port,
                                           const std::string& method, const std::string& target);
  absl::StatusOr<UpstreamResponse> CallEndpoint(boost::asio::io_context& ioc,
                                                const boost::asio::ip::tcp::endpoint& endpoint,
                                                const std::string& host, const std::string& port,
                                                const std::string& method,
                                                const std::string& target);
  std::vector<std::pair<std::string, std::string>> upstreams_;  // host, port
  absl::Duration deadline_;
};

class TenantUsageRecorder {
 public:
  // Returns {active, hibernated} for a tenant, or an error.
  using UsageFn = std::function<absl::StatusOr<std::pair<int64_t, int64_t>>(const std::string&)>;
  struct Options {
    absl::Duration flush_interval = absl::Seconds(10);
    absl::Duration sample_interval = absl::Minutes(1);
    absl::Duration sample_tenants_seen_within = absl::Hours(24);
    absl::Duration minute_retention = absl::Hours(24);
    absl::Duration hour_retention = absl::Hours(24 * 30);
  };
  TenantUsageRecorder(PgPool& pool, UsageFn usage, Options options);
  ~TenantUsageRecorder();

  void Start();
  void Stop();  // flushes what is pending

  // One answered API request of `tenant`: a create (`created`), or a 429 with `reason`.
  void RecordCreate(const std::string& tenant);
  void RecordRefusal(const std::string& tenant, const std::string& reason);
  // Marks the tenant as recently seen (for sampling).
  void Seen(const std::string& tenant);
  // Samples the usage of recently seen tenants now.
  void SampleNow();
  absl::Status Flush();

  struct Point {
    absl::Time at;
    absl::flat_hash_map<std::string, int64_t> values;  // metric -> value
  };
  // The tenant's history in [from, to) by `step` (counters summed, gauges at their maximum).
  absl::StatusOr<std::vector<Point>> Query(const std::string& tenant, absl::Time from,
                                           absl::Time to, absl::Duration step);
  absl::Status Compact(absl::Time now);

 private:
  struct Key {
    std::string tenant;
    int64_t minute;  // unix seconds / 60
    std::string metric;
    bool operator==(const Key& o) const {
      return minute == o.minute && tenant == o.tenant && metric == o.metric;
    }
    template <typename H>
    friend H AbslHashValue(H h, const Key& k) {
      return H::combine(std::move(h), k.tenant, k.minute, k.metric);
    }
  };
  void Add(const std::string& tenant, const std::string& metric, int64_t value, bool gauge);

  PgPool& pool_;
  UsageFn usage_;
  const Options options_;
  absl::Mutex mu_;
  absl::flat_hash_map<Key, int64_t> counters_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<Key, int64_t> gauges_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, absl::Time> seen_ ABSL_GUARDED_BY(mu_);
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace isorun::gateway
