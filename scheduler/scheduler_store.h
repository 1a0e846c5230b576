#pragma once

// Postgres persistence of the scheduler (schema `scheduler`): runners, their cached images and
// placements, so a restarted scheduler knows its fleet and every reservation at once.
//
// Heartbeats are not written one by one: Fleet hands over a coarse last-seen and the image lists
// that changed in batches (one statement per batch, the rows passed as one JSON parameter), with
// asynchronous commit: a batch lost in a Postgres crash is rewritten from the next heartbeats.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "scheduler/fleet_store.h"
#include "services/kit/pg.h"

namespace isorun::scheduler {

class SchedulerStore final : public FleetStore {
 public:
  explicit SchedulerStore(PgPool& pool);

  absl::StatusOr<std::pair<std::string, bool>> UpsertRunner(const RunnerView& runner) override;
  absl::Status TouchRunners(
      const std::vector<std::pair<std::string, absl::Time>>& last_seen) override;
  absl::Status ReplaceImages(const std::vector<RunnerImages>& runners) override;
  absl::StatusOr<std::vector<std::string>> DrainingRunners() override;
  absl::Status InsertPlacements(const std::vector<StoredPlacement>& placements) override;
  absl::StatusOr<std::vector<bool>> DeletePlacements(
      const std::vector<std::string>& sandbox_ids) override;
  absl::StatusOr<FleetSnapshot> Load() override;
  // Marks a runner (by name, else by id) draining or not; NOT_FOUND when there is none. The
  // fleet picks the mark up at its next Sync.
  absl::Status SetDraining(const std::string& name_or_id, bool draining);

 private:
  PgPool& pool_;
};

}  // namespace isorun::scheduler
