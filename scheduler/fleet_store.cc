#include "scheduler/fleet_store.h"

#include "absl/strings/str_cat.h"

namespace isorun::scheduler {

absl::Status MemoryFleetStore::Check() const {
  if (failing_) return absl::UnavailableError("memory fleet store: failing on purpose");
  return absl::OkStatus();
}

absl::StatusOr<std::pair<std::string, bool>> MemoryFleetStore::UpsertRunner(
    const RunnerView& runner) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = Check(); !s.ok()) return s;
  auto [it, inserted] = ids_.try_emplace(runner.name, "");
  if (inserted) it->second = absl::StrCat("rn_mem", next_id_++);
  RunnerView& stored = runners_[it->second];
  const bool draining = stored.draining;
  stored = runner;
  stored.id = it->second;
  stored.draining = draining;
  stored.allocated = {};
  stored.sandbox_ids.clear();
  return std::make_pair(it->second, draining);
}

absl::Status MemoryFleetStore::TouchRunners(
    const std::vector<std::pair<std::string, absl::Time>>& last_seen) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = Check(); !s.ok()) return s;
  for (const auto& [id, seen] : last_seen) {
    auto it = runners_.find(id);
    if (it != runners_.end()) it->second.last_heartbeat = std::max(it->second.last_heartbeat, seen);
  }
  return absl::OkStatus();
}

absl::Status MemoryFleetStore::ReplaceImages(const std::vector<RunnerImages>& runners) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = Check(); !s.ok()) return s;
  for (const auto& r : runners) {
    auto it = runners_.find(r.runner_id);
    if (it == runners_.end()) continue;
    it->second.images = r.images;
    it->second.image_cache_used_bytes = r.used_bytes;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> MemoryFleetStore::DrainingRunners() {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = Check(); !s.ok()) return s;
  std::vector<std::string> out;
  for (const auto& [id, r] : runners_) {
    if (r.draining) out.push_back(id);
  }
  return out;
}

absl::Status MemoryFleetStore::InsertPlacements(const std::vector<StoredPlacement>& placements) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = Check(); !s.ok()) return s;
  for (const auto& p : placements) placements_.try_emplace(p.sandbox_id, p);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<bool>> MemoryFleetStore::DeletePlacements(
    const std::vector<std::string>& sandbox_ids) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = Check(); !s.ok()) return s;
  std::vector<bool> out;
  for (const auto& id : sandbox_ids) out.push_back(placements_.erase(id) > 0);
  return out;
}

absl::StatusOr<FleetSnapshot> MemoryFleetStore::Load() {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = Check(); !s.ok()) return s;
  FleetSnapshot snap;
  for (const auto& [id, r] : runners_) snap.runners.push_back(r);
  for (const auto& [id, p] : placements_) snap.placements.push_back(p);
  return snap;
}

void MemoryFleetStore::SetDraining(const std::string& runner_id, bool draining) {
  absl::MutexLock lock(&mu_);
  auto it = runners_.find(runner_id);
  if (it != runners_.end()) it->second.draining = draining;
}

void MemoryFleetStore::SetFailing(bool failing) {
  absl::MutexLock lock(&mu_);
  failing_ = failing;
}

}  // namespace isorun::scheduler
