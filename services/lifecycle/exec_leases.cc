#include "services/lifecycle/exec_leases.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/kit/ids.h"
#include "services/kit/log.h"

namespace isorun::lifecycle {

ExecLeases::Lease::~Lease() { owner_->End(id_); }

ExecLeases::ExecLeases(Backends& backends, absl::Duration ttl)
    : backends_(backends), ttl_(ttl), prefix_(RandomHex(8)), thread_([this] { Run(); }) {}

ExecLeases::~ExecLeases() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

absl::StatusOr<std::unique_ptr<ExecLeases::Lease>> ExecLeases::Acquire(
    const std::string& tenant_id) {
  std::string id;
  {
    absl::MutexLock lock(&mu_);
    id = absl::StrCat(prefix_, "-", next_++);
    // Held (and so renewed) from before the request: a lease granted while this call waits for
    // its answer never lapses unrenewed.
    held_[id] = tenant_id;
  }
  v1::ExecLease lease;
  lease.set_tenant_id(tenant_id);
  lease.set_lease_id(id);
  absl::Status s = backends_.AcquireExecLease(lease, ttl_);
  if (!s.ok()) {
    absl::MutexLock lock(&mu_);
    held_.erase(id);
    // The answer may have been lost after the lease was granted: release it to be sure (a
    // refusal took nothing).
    if (s.code() != absl::StatusCode::kResourceExhausted) ended_.push_back(lease);
    return s;
  }
  return std::unique_ptr<Lease>(new Lease(this, id));
}

void ExecLeases::End(const std::string& lease_id) {
  absl::MutexLock lock(&mu_);
  auto it = held_.find(lease_id);
  if (it == held_.end()) return;
  v1::ExecLease lease;
  lease.set_tenant_id(it->second);
  lease.set_lease_id(lease_id);
  ended_.push_back(std::move(lease));
  held_.erase(it);
}

int ExecLeases::held() {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(held_.size());
}

std::map<std::string, std::vector<v1::ExecLease>> ExecLeases::ByTenant(
    const std::vector<v1::ExecLease>& leases) {
  std::map<std::string, std::vector<v1::ExecLease>> by_tenant;
  for (const auto& l : leases) by_tenant[l.tenant_id()].push_back(l);
  return by_tenant;
}

void ExecLeases::Run() {
  const absl::Duration renew_every = ttl_ / 3;
  absl::Time next_renewal = absl::Now() + renew_every;
  while (true) {
    std::vector<v1::ExecLease> release, renew;
    bool stopping = false, renew_due = false;
    {
      absl::MutexLock lock(&mu_);
      auto wake = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_ || !ended_.empty(); };
      mu_.AwaitWithDeadline(absl::Condition(&wake), next_renewal);
      stopping = stop_;
      release.swap(ended_);
      renew_due = absl::Now() >= next_renewal;
      if (stopping || renew_due) {
        for (const auto& [id, tenant] : held_) {
          v1::ExecLease l;
          l.set_tenant_id(tenant);
          l.set_lease_id(id);
          (stopping ? release : renew).push_back(std::move(l));
        }
      }
    }
    // Each tenant's leases go to that tenant's replica (Backends routes by tenant).
    for (auto& [tenant, leases] : ByTenant(release)) {
      if (absl::Status s = backends_.ReleaseExecLeases(leases); !s.ok() && !stopping) {
        LogWarn("exec lease release failed; they lapse by themselves",
                {{"tenant", tenant}, {"error", std::string(s.message())}});
      }
    }
    if (stopping) return;
    if (renew_due) {
      for (auto& [tenant, leases] : ByTenant(renew)) {
        if (absl::Status s = backends_.RenewExecLeases(leases, ttl_); !s.ok()) {
          LogWarn("exec lease renewal failed; will retry",
                  {{"tenant", tenant}, {"error", std::string(s.message())}});
        }
      }
      next_renewal = absl::Now() + renew_every;
    }
  }
}

}  // namespace isorun::lifecycle
