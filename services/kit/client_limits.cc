#include "services/kit/client_limits.h"

#include <algorithm>
#include <cmath>

namespace isorun::http {

ClientLimits::ClientLimits(int max_connections, double requests_per_sec, double burst)
    : max_connections_(std::max(0, max_connections)),
      rate_(std::max(0.0, requests_per_sec)),
      burst_(burst > 0 ? burst : std::max(1.0, 2 * requests_per_sec)) {}

void ClientLimits::Refill(Entry& e, absl::Time now) const {
  if (rate_ <= 0) return;
  const double elapsed = absl::ToDoubleSeconds(now - e.last);
  if (elapsed > 0) e.tokens = std::min(burst_, e.tokens + elapsed * rate_);
  e.last = std::max(e.last, now);
}

ClientLimits::Entry& ClientLimits::Get(const std::string& ip, absl::Time now) {
  if (auto it = entries_.find(ip); it != entries_.end()) return it->second;
  SweepIfLarge(now);  // before the new entry, which it would otherwise find idle and drop
  Entry& e = entries_[ip];
  e.tokens = burst_;
  e.last = now;
  return e;
}

void ClientLimits::SweepIfLarge(absl::Time now) {
  if (entries_.size() < sweep_at_) return;
  for (auto it = entries_.begin(); it != entries_.end();) {
    Entry& e = it->second;
    Refill(e, now);
    if (e.connections == 0 && (rate_ <= 0 || e.tokens >= burst_)) {
      entries_.erase(it++);
    } else {
      ++it;
    }
  }
  // Sweep again only after the table doubled from what is left: amortized O(1) per insert.
  sweep_at_ = std::max<size_t>(4096, 2 * entries_.size());
}

bool ClientLimits::Open(const std::string& ip, absl::Time now) {
  if (!enabled()) return true;
  absl::MutexLock lock(&mu_);
  Entry& e = Get(ip, now);
  if (max_connections_ > 0 && e.connections >= max_connections_) return false;
  ++e.connections;
  return true;
}

void ClientLimits::Close(const std::string& ip) {
  if (!enabled()) return;
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(ip);
  if (it != entries_.end() && it->second.connections > 0) --it->second.connections;
}

bool ClientLimits::AllowRequest(const std::string& ip, absl::Time now,
                                absl::Duration* retry_after) {
  if (rate_ <= 0) return true;
  absl::MutexLock lock(&mu_);
  Entry& e = Get(ip, now);
  Refill(e, now);
  if (e.tokens >= 1) {
    e.tokens -= 1;
    return true;
  }
  if (retry_after != nullptr) *retry_after = absl::Seconds((1 - e.tokens) / rate_);
  return false;
}

size_t ClientLimits::tracked() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

}  // namespace isorun::http
