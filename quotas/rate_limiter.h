#pragma once

// GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp per bucket) for
// the request and create rates. Pure: time is an argument. A check names several buckets (the
// key's, the tenant's, the tenant's creates) and consumes from all of them or from none, so a
// refused request is never half-counted.
//
// Thread-safe: buckets are striped over mutexes by bucket name.

#include <array>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace isorun::quota {

struct RateParams {
  double per_sec = 1;
  int burst = 1;  // how many may pass at once from a full bucket
};

struct Bucket {
  std::string name;
  std::string policy;  // reported in headers: "requests" or "creates"
  RateParams params;
};

struct RateDecision {
  bool allowed = false;
  // Of the tightest bucket (the one refusing, or the one with least room left).
  std::string policy;
  RateParams params;
  int remaining = 0;
  absl::Duration reset;        // until that bucket is full again
  absl::Duration retry_after;  // when refused: until this request would pass
};

class RateLimiter {
 public:
  RateDecision Check(const std::vector<Bucket>& buckets, absl::Time now);
  // Drops buckets that are full again (their state equals a fresh bucket). Returns how many.
  size_t Collect(absl::Time now);
  size_t size();

 private:
  static constexpr size_t kStripes = 16;
  struct Stripe {
    absl::Mutex mu;
    // Theoretical arrival time per bucket.
    std::unordered_map<std::string, absl::Time> tat ABSL_GUARDED_BY(mu);
  };
  std::array<Stripe, kStripes> stripes_;
};

}  // namespace isorun::quota
