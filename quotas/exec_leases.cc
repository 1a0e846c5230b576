#include "quotas/exec_leases.h"

#include "absl/strings/str_cat.h"
#include "services/kit/status.h"

namespace isorun::quota {

size_t ExecLeaseTable::DropLapsed(Leases& leases, absl::Time now) {
  size_t dropped = 0;
  for (auto it = leases.begin(); it != leases.end();) {
    if (it->second <= now) {
      it = leases.erase(it);
      ++dropped;
    } else {
      ++it;
    }
  }
  return dropped;
}

absl::StatusOr<int> ExecLeaseTable::Acquire(const Key& key, int limit, absl::Duration ttl,
                                            absl::Time now) {
  absl::MutexLock lock(&mu_);
  Leases& leases = tenants_[key.tenant_id];
  DropLapsed(leases, now);
  auto it = leases.find(key.lease_id);
  if (it != leases.end()) {
    it->second = now + ttl;
    return static_cast<int>(leases.size());
  }
  const int running = static_cast<int>(leases.size());
  if (running >= limit) {
    if (leases.empty()) tenants_.erase(key.tenant_id);
    return Error(absl::StatusCode::kResourceExhausted, "EXEC_LIMIT",
                 absl::StrCat("tenant has ", running, " of ", limit,
                              " exec calls running; wait for one to finish or retry later"),
                 limit, running, 1);
  }
  leases.emplace(key.lease_id, now + ttl);
  return running + 1;
}

int ExecLeaseTable::Renew(const std::vector<Key>& keys, absl::Duration ttl, absl::Time now) {
  absl::MutexLock lock(&mu_);
  int restored = 0;
  for (const auto& key : keys) {
    auto [it, inserted] = tenants_[key.tenant_id].insert_or_assign(key.lease_id, now + ttl);
    (void)it;
    if (inserted) ++restored;
  }
  return restored;
}

int ExecLeaseTable::Release(const std::vector<Key>& keys) {
  absl::MutexLock lock(&mu_);
  int released = 0;
  for (const auto& key : keys) {
    auto t = tenants_.find(key.tenant_id);
    if (t == tenants_.end()) continue;
    released += static_cast<int>(t->second.erase(key.lease_id));
    if (t->second.empty()) tenants_.erase(t);
  }
  return released;
}

int ExecLeaseTable::Running(const std::string& tenant_id, absl::Time now) {
  absl::MutexLock lock(&mu_);
  auto t = tenants_.find(tenant_id);
  if (t == tenants_.end()) return 0;
  DropLapsed(t->second, now);
  return static_cast<int>(t->second.size());
}

size_t ExecLeaseTable::Collect(absl::Time now) {
  absl::MutexLock lock(&mu_);
  size_t dropped = 0;
  for (auto t = tenants_.begin(); t != tenants_.end();) {
    dropped += DropLapsed(t->second, now);
    t = t->second.empty() ? tenants_.erase(t) : std::next(t);
  }
  return dropped;
}

}  // namespace isorun::quota
