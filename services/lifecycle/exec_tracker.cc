#include "services/lifecycle/exec_tracker.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/kit/status.h"

namespace isorun::lifecycle {

ExecTracker::Ticket::~Ticket() { tracker_->End(tenant_, sandbox_); }

absl::StatusOr<std::unique_ptr<ExecTracker::Ticket>> ExecTracker::Begin(const std::string& tenant,
                                                                        const std::string& sandbox,
                                                                        int tenant_limit,
                                                                        int timeout_sec) {
  absl::MutexLock lock(&mu_);
  auto t = tenants_.find(tenant);
  const int by_tenant = t == tenants_.end() ? 0 : t->second;
  if (tenant_limit > 0 && by_tenant >= tenant_limit) {
    return Error(absl::StatusCode::kResourceExhausted, "EXEC_LIMIT",
                 absl::StrCat("tenant has ", by_tenant, " of ", tenant_limit,
                              " exec calls running; wait for one to finish or retry later"),
                 tenant_limit, by_tenant, 1);
  }
  ++tenants_[tenant];
  SandboxCalls& calls = sandboxes_[sandbox];
  if (calls.running++ == 0) calls.last_touch = absl::Now();
  calls.touch_every = std::min(absl::Seconds(5), absl::Seconds(std::max(1, timeout_sec)) / 3);
  return std::unique_ptr<Ticket>(new Ticket(this, tenant, sandbox));
}

void ExecTracker::End(const std::string& tenant, const std::string& sandbox) {
  absl::MutexLock lock(&mu_);
  if (auto it = tenants_.find(tenant); it != tenants_.end() && --it->second <= 0) {
    tenants_.erase(it);
  }
  if (auto it = sandboxes_.find(sandbox); it != sandboxes_.end() && --it->second.running <= 0) {
    sandboxes_.erase(it);
  }
}

std::vector<std::string> ExecTracker::DueForTouch(absl::Time now) {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> due;
  for (auto& [id, calls] : sandboxes_) {
    if (now - calls.last_touch < calls.touch_every) continue;
    calls.last_touch = now;
    due.push_back(id);
  }
  return due;
}

int ExecTracker::running(const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  auto it = tenants_.find(tenant);
  return it == tenants_.end() ? 0 : it->second;
}

}  // namespace isorun::lifecycle
