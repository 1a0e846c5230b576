#pragma once

// Where the scheduler keeps what must survive it: runners, their cached images and placements.
// SchedulerStore (scheduler_store.h) is the Postgres implementation; MemoryFleetStore below serves
// tests and benchmarks that measure the scheduler without Postgres. Both pass fleet_store_test.

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "scheduler/fleet_state.h"

namespace isorun::scheduler {

struct StoredPlacement {
  std::string sandbox_id;
  std::string runner_id;
  int64_t cpu_millis = 0;
  int64_t memory_mb = 0;
  std::string image;
  bool warm = false;
  absl::Time created = absl::InfinitePast();
};

struct FleetSnapshot {
  // `allocated` is zero (derived from placements); `last_heartbeat` is the coarse last-seen.
  std::vector<RunnerView> runners;
  std::vector<StoredPlacement> placements;
};

struct RunnerImages {
  std::string runner_id;
  std::vector<CachedImage> images;
  int64_t used_bytes = 0;
};

class FleetStore {
 public:
  virtual ~FleetStore() = default;

  // Inserts the runner or updates the one of the same name, with its images; returns its id
  // (stable across restarts of the runner) and whether operators marked it draining.
  virtual absl::StatusOr<std::pair<std::string, bool>> UpsertRunner(const RunnerView& runner) = 0;
  // Records when these runners were last heard from (a coarse last-seen, written in batches).
  virtual absl::Status TouchRunners(
      const std::vector<std::pair<std::string, absl::Time>>& last_seen) = 0;
  // Replaces the cached images of these runners.
  virtual absl::Status ReplaceImages(const std::vector<RunnerImages>& runners) = 0;
  // The ids of the runners marked draining (isorunctl runners drain writes the mark).
  virtual absl::StatusOr<std::vector<std::string>> DrainingRunners() = 0;
  // Idempotent per sandbox id; all or nothing.
  virtual absl::Status InsertPlacements(const std::vector<StoredPlacement>& placements) = 0;
  // For each sandbox id, whether there was a placement to delete (a repeated id: the first).
  virtual absl::StatusOr<std::vector<bool>> DeletePlacements(
      const std::vector<std::string>& sandbox_ids) = 0;
  absl::Status InsertPlacement(const StoredPlacement& placement) {
    return InsertPlacements({placement});
  }
  absl::StatusOr<bool> DeletePlacement(const std::string& sandbox_id) {
    auto deleted = DeletePlacements({sandbox_id});
    if (!deleted.ok()) return deleted.status();
    return (*deleted)[0];
  }
  virtual absl::StatusOr<FleetSnapshot> Load() = 0;
};

// Thread-safe.
class MemoryFleetStore final : public FleetStore {
 public:
  absl::StatusOr<std::pair<std::string, bool>> UpsertRunner(const RunnerView& runner) override;
  absl::Status TouchRunners(
      const std::vector<std::pair<std::string, absl::Time>>& last_seen) override;
  absl::Status ReplaceImages(const std::vector<RunnerImages>& runners) override;
  absl::StatusOr<std::vector<std::string>> DrainingRunners() override;
  absl::Status InsertPlacements(const std::vector<StoredPlacement>& placements) override;
  absl::StatusOr<std::vector<bool>> DeletePlacements(
      const std::vector<std::string>& sandbox_ids) override;
  absl::StatusOr<FleetSnapshot> Load() override;

  // What an operator does with isorunctl runners drain|undrain.
  void SetDraining(const std::string& runner_id, bool draining);
  // Later calls fail with UNAVAILABLE while set (to test failure paths).
  void SetFailing(bool failing);

 private:
  absl::Status Check() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  std::map<std::string, RunnerView> runners_ ABSL_GUARDED_BY(mu_);  // by id
  std::map<std::string, std::string> ids_ ABSL_GUARDED_BY(mu_);     // name -> id
  std::map<std::string, StoredPlacement> placements_ ABSL_GUARDED_BY(mu_);
  bool failing_ ABSL_GUARDED_BY(mu_) = false;
  int next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace isorun::scheduler
