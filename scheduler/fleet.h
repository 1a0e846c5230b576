#pragma once

// The scheduler's authoritative in-memory view of the fleet: runners (from registration and
// heartbeats) and placements (reservations of cpu, memory and a slot). Every change is written to
// SchedulerStore so a restarted scheduler rebuilds the same view with Load().
//
// Thread-safe. Place() decides and reserves under one mutex, so concurrent placements never
// overcommit a runner; the Postgres write happens outside the lock and is undone in memory if it
// fails.

#include <functional>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "scheduler/placement.h"
#include "scheduler/scheduler_store.h"

namespace isorun::scheduler {

struct PlacementResult {
  std::string runner_id;
  std::string runner_name;
  std::string runner_address;
  bool warm = false;
};

struct RunnerStatus {
  RunnerView view;
  std::string state;  // HEALTHY, UNHEALTHY, LOST, DRAINING
  int64_t placements_warm = 0;
  int64_t placements_cold = 0;
};

struct FleetOptions {
  PolicyOptions policy;
  absl::Duration lost_after = absl::Seconds(60);
};

class Fleet {
 public:
  using Clock = std::function<absl::Time()>;

  Fleet(SchedulerStore& store, Clock clock, FleetOptions options = {});

  // Replaces the in-memory view with what Postgres holds.
  absl::Status Load();

  // Returns the runner id.
  absl::StatusOr<std::string> Register(RunnerView runner);
  // NOT_FOUND: the runner must register again.
  absl::Status Heartbeat(const std::string& runner_id, const std::vector<std::string>& images);

  // Idempotent per sandbox id. RESOURCE_EXHAUSTED (reason CAPACITY) when nothing fits.
  absl::StatusOr<PlacementResult> Place(const std::string& sandbox_id,
                                        const PlacementRequest& request);
  // True when a placement was released, false when there was none.
  absl::StatusOr<bool> Release(const std::string& sandbox_id);
  absl::StatusOr<PlacementResult> Get(const std::string& sandbox_id);

  struct PlacementInfo {
    std::string sandbox_id;
    PlacementResult where;
  };
  // Placements at least `min_age` old with sandbox id > `after`, by sandbox id.
  std::vector<PlacementInfo> ListPlacements(absl::Duration min_age, const std::string& after,
                                            int limit);

  std::vector<RunnerStatus> List();

 private:
  PlacementResult ResultFor(const RunnerView& r, bool warm) const;

  SchedulerStore& store_;
  const Clock clock_;
  const FleetOptions options_;

  absl::Mutex mu_;
  std::vector<RunnerView> runners_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, size_t> index_ ABSL_GUARDED_BY(mu_);  // runner id -> position
  // Ordered so the reconciler can page through it.
  std::map<std::string, StoredPlacement> placements_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, std::pair<int64_t, int64_t>> warm_cold_ ABSL_GUARDED_BY(mu_);
  absl::BitGen rng_ ABSL_GUARDED_BY(mu_);
};

}  // namespace isorun::scheduler
