#include "scheduler/fleet.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "services/kit/log.h"
#include "services/kit/status.h"

namespace isorun::scheduler {

Fleet::Fleet(SchedulerStore& store, Clock clock, FleetOptions options)
    : store_(store), clock_(std::move(clock)), options_(options) {}

absl::Status Fleet::Load() {
  auto snap = store_.Load();
  if (!snap.ok()) return snap.status();
  absl::MutexLock lock(&mu_);
  runners_ = std::move(snap->runners);
  index_.clear();
  placements_.clear();
  warm_cold_.clear();
  for (size_t i = 0; i < runners_.size(); ++i) index_[runners_[i].id] = i;
  for (auto& p : snap->placements) {
    auto it = index_.find(p.runner_id);
    if (it == index_.end()) continue;
    RunnerView& r = runners_[it->second];
    r.allocated.cpu_millis += p.cpu_millis;
    r.allocated.memory_mb += p.memory_mb;
    r.allocated.sandboxes += 1;
    auto& counts = warm_cold_[p.runner_id];
    (p.warm ? counts.first : counts.second) += 1;
    placements_[p.sandbox_id] = std::move(p);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Fleet::Register(RunnerView runner) {
  auto stored = store_.UpsertRunner(runner);
  if (!stored.ok()) return stored.status();
  std::vector<std::string> refs(runner.images.begin(), runner.images.end());
  if (absl::Status s = store_.ReplaceImages(stored->first, refs); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  runner.id = stored->first;
  runner.draining = stored->second;
  runner.last_heartbeat = clock_();
  auto it = index_.find(runner.id);
  if (it == index_.end()) {
    index_[runner.id] = runners_.size();
    runners_.push_back(std::move(runner));
  } else {
    // Keep what placements have reserved; take the rest from the registration.
    runner.allocated = runners_[it->second].allocated;
    runners_[it->second] = std::move(runner);
  }
  return stored->first;
}

absl::Status Fleet::Heartbeat(const std::string& runner_id,
                              const std::vector<std::string>& images) {
  auto draining = store_.TouchRunner(runner_id);
  if (!draining.ok()) return draining.status();
  bool images_changed = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(runner_id);
    if (it == index_.end()) return absl::NotFoundError(absl::StrCat("unknown runner ", runner_id));
    RunnerView& r = runners_[it->second];
    r.last_heartbeat = clock_();
    r.draining = *draining;
    std::unordered_set<std::string> now(images.begin(), images.end());
    if (now != r.images) {
      r.images = std::move(now);
      images_changed = true;
    }
  }
  if (images_changed) return store_.ReplaceImages(runner_id, images);
  return absl::OkStatus();
}

PlacementResult Fleet::ResultFor(const RunnerView& r, bool warm) const {
  return PlacementResult{r.id, r.name, r.address, warm};
}

absl::StatusOr<PlacementResult> Fleet::Place(const std::string& sandbox_id,
                                             const PlacementRequest& request) {
  if (sandbox_id.empty()) return absl::InvalidArgumentError("sandbox id is empty");
  StoredPlacement placement;
  PlacementResult result;
  {
    absl::MutexLock lock(&mu_);
    if (auto existing = placements_.find(sandbox_id); existing != placements_.end()) {
      auto it = index_.find(existing->second.runner_id);
      if (it != index_.end()) return ResultFor(runners_[it->second], existing->second.warm);
    }
    auto decision = ChoosePlacement(runners_, request, clock_(), rng_, options_.policy);
    if (!decision) {
      return Error(absl::StatusCode::kResourceExhausted, "CAPACITY",
                   absl::StrCat("no runner has room for ", request.cpu_millis, " cpu millis and ",
                                request.memory_mb,
                                " MB now; this is platform capacity, not your limit: retry later"),
                   0, 0, 2);
    }
    RunnerView& r = runners_[decision->runner_index];
    r.allocated.cpu_millis += request.cpu_millis;
    r.allocated.memory_mb += request.memory_mb;
    r.allocated.sandboxes += 1;
    auto& counts = warm_cold_[r.id];
    (decision->warm ? counts.first : counts.second) += 1;
    placement = StoredPlacement{sandbox_id,    r.id,           request.cpu_millis,
                                request.memory_mb, request.image, decision->warm,
                                clock_()};
    placements_[sandbox_id] = placement;
    result = ResultFor(r, decision->warm);
  }
  if (absl::Status s = store_.InsertPlacement(placement); !s.ok()) {
    absl::MutexLock lock(&mu_);
    placements_.erase(sandbox_id);
    if (auto it = index_.find(placement.runner_id); it != index_.end()) {
      RunnerView& r = runners_[it->second];
      r.allocated.cpu_millis -= placement.cpu_millis;
      r.allocated.memory_mb -= placement.memory_mb;
      r.allocated.sandboxes -= 1;
    }
    return s;
  }
  return result;
}

absl::StatusOr<bool> Fleet::Release(const std::string& sandbox_id) {
  // Postgres first: if it fails the caller retries, and memory still matches the table.
  auto deleted = store_.DeletePlacement(sandbox_id);
  if (!deleted.ok()) return deleted.status();
  absl::MutexLock lock(&mu_);
  auto p = placements_.find(sandbox_id);
  if (p == placements_.end()) return *deleted;
  if (auto it = index_.find(p->second.runner_id); it != index_.end()) {
    RunnerView& r = runners_[it->second];
    r.allocated.cpu_millis -= p->second.cpu_millis;
    r.allocated.memory_mb -= p->second.memory_mb;
    r.allocated.sandboxes -= 1;
  }
  placements_.erase(p);
  return true;
}

absl::StatusOr<PlacementResult> Fleet::Get(const std::string& sandbox_id) {
  absl::MutexLock lock(&mu_);
  auto p = placements_.find(sandbox_id);
  if (p == placements_.end()) {
    return absl::NotFoundError(absl::StrCat("no placement for ", sandbox_id));
  }
  auto it = index_.find(p->second.runner_id);
  if (it == index_.end()) return absl::NotFoundError("placement on an unknown runner");
  return ResultFor(runners_[it->second], p->second.warm);
}

std::vector<Fleet::PlacementInfo> Fleet::ListPlacements(absl::Duration min_age,
                                                        const std::string& after, int limit) {
  absl::MutexLock lock(&mu_);
  absl::Time cutoff = clock_() - min_age;
  std::vector<PlacementInfo> out;
  for (auto it = placements_.upper_bound(after);
       it != placements_.end() && static_cast<int>(out.size()) < limit; ++it) {
    if (it->second.created > cutoff) continue;
    auto r = index_.find(it->second.runner_id);
    if (r == index_.end()) continue;
    out.push_back({it->first, ResultFor(runners_[r->second], it->second.warm)});
  }
  return out;
}

std::vector<RunnerStatus> Fleet::List() {
  absl::MutexLock lock(&mu_);
  absl::Time now = clock_();
  std::vector<RunnerStatus> out;
  for (const auto& r : runners_) {
    RunnerStatus s;
    s.view = r;
    if (r.draining) {
      s.state = "DRAINING";
    } else if (IsHealthy(r, now, options_.policy)) {
      s.state = "HEALTHY";
    } else if (now - r.last_heartbeat <= options_.lost_after) {
      s.state = "UNHEALTHY";
    } else {
      s.state = "LOST";
    }
    auto counts = warm_cold_.find(r.id);
    if (counts != warm_cold_.end()) {
      s.placements_warm = counts->second.first;
      s.placements_cold = counts->second.second;
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace isorun::scheduler
