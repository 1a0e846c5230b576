#pragma once

// Postgres persistence of the scheduler (schema `scheduler`): runners, their cached images and
// placements, so a restarted scheduler knows its fleet and every reservation at once.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "scheduler/placement.h"
#include "services/kit/pg.h"

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
  std::vector<RunnerView> runners;  // allocated is zero: derived from placements
  std::vector<StoredPlacement> placements;
};

class SchedulerStore {
 public:
  explicit SchedulerStore(PgPool& pool);

  // Inserts the runner or updates the row of the same name; returns its id (stable across
  // restarts of the runner) and whether it is draining.
  absl::StatusOr<std::pair<std::string, bool>> UpsertRunner(const RunnerView& runner);
  // Records a heartbeat; returns the draining flag (set by operators in the table). NOT_FOUND when
  // the runner row is gone.
  absl::StatusOr<bool> TouchRunner(const std::string& runner_id);
  absl::Status ReplaceImages(const std::string& runner_id, const std::vector<std::string>& refs);
  absl::Status InsertPlacement(const StoredPlacement& placement);
  absl::StatusOr<bool> DeletePlacement(const std::string& sandbox_id);
  absl::StatusOr<FleetSnapshot> Load();

 private:
  PgPool& pool_;
};

}  // namespace isorun::scheduler
