#include "quotas/rate_limiter.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>

namespace isorun::quota {

RateDecision RateLimiter::Check(const std::vector<Bucket>& buckets, absl::Time now) {
  // Lock the stripes involved in a fixed order so concurrent checks cannot deadlock.
  std::set<size_t> stripe_ids;
  for (const auto& b : buckets) stripe_ids.insert(std::hash<std::string>{}(b.name) % kStripes);
  std::vector<absl::Mutex*> locked;
  for (size_t id : stripe_ids) {
    stripes_[id].mu.Lock();
    locked.push_back(&stripes_[id].mu);
  }
  RateDecision decision;
  decision.allowed = true;
  std::vector<absl::Time> new_tats(buckets.size());
  double tightest = INFINITY;
  for (size_t i = 0; i < buckets.size(); ++i) {
    const Bucket& b = buckets[i];
    Stripe& stripe = stripes_[std::hash<std::string>{}(b.name) % kStripes];
    const absl::Duration interval = absl::Seconds(1.0 / std::max(b.params.per_sec, 1e-9));
    const absl::Duration capacity = interval * std::max(b.params.burst, 1);
    auto it = stripe.tat.find(b.name);
    absl::Time tat = it == stripe.tat.end() ? now : std::max(it->second, now);
    absl::Time next = tat + interval;
    absl::Duration ahead = next - now;  // how full the bucket is after this request
    bool allowed = ahead <= capacity;
    new_tats[i] = next;
    double room = allowed ? absl::FDivDuration(capacity - ahead, interval) : -1;
    // Report the refusing bucket, or else the one with the least room.
    if ((!allowed && decision.allowed) || (allowed == decision.allowed && room < tightest)) {
      tightest = room;
      decision.policy = b.policy;
      decision.params = b.params;
      if (allowed) {
        decision.remaining = static_cast<int>(std::floor(room + 1e-9));
        decision.reset = ahead;
        decision.retry_after = absl::ZeroDuration();
      } else {
        decision.remaining = 0;
        decision.reset = tat - now;
        decision.retry_after = ahead - capacity;
      }
    }
    if (!allowed) decision.allowed = false;
  }
  if (decision.allowed) {
    for (size_t i = 0; i < buckets.size(); ++i) {
      stripes_[std::hash<std::string>{}(buckets[i].name) % kStripes].tat[buckets[i].name] =
          new_tats[i];
    }
  }
  for (auto it = locked.rbegin(); it != locked.rend(); ++it) (*it)->Unlock();
  return decision;
}

size_t RateLimiter::Collect(absl::Time now) {
  size_t dropped = 0;
  for (auto& stripe : stripes_) {
    absl::MutexLock lock(&stripe.mu);
    for (auto it = stripe.tat.begin(); it != stripe.tat.end();) {
      if (it->second <= now) {
        it = stripe.tat.erase(it);
        ++dropped;
      } else {
        ++it;
      }
    }
  }
  return dropped;
}

size_t RateLimiter::size() {
  size_t n = 0;
  for (auto& stripe : stripes_) {
    absl::MutexLock lock(&stripe.mu);
    n += stripe.tat.size();
  }
  return n;
}

}  // namespace isorun::quota
