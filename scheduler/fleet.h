#pragma once

// The scheduler's authoritative in-memory view of the fleet: runners (from registration and
// heartbeats), placements (reservations of cpu, memory and a slot) and image demand, over a
// FleetStore so that a restarted scheduler rebuilds the same view with Load().
//
// Thread-safe: one mutex guards everything; nothing blocks while holding it (no I/O, no RPC).
// - Place() decides and reserves under the mutex, so concurrent placements never overcommit a
//   runner; the placement row is written after, and the reservation undone if that fails.
// - Heartbeat() only updates memory, so a fleet of thousands heartbeating every second costs no
//   database writes. Sync() (called every --sync_interval_ms by a background thread) persists a
//   coarse last-seen (at most once per `last_seen_every` per runner) and the image lists that
//   changed, in one batch each, and reads the draining marks operators set with isorunctl.
// - Heartbeats correct reservations: a sandbox the runner reports without a placement (a leftover
//   the reconciler has yet to stop, or one whose placement row was lost) counts against the runner
//   once it has been reported for `unplaced_grace`; placements the runner does not report yet
//   (starting) stay reserved until released.
//
// Runner states, as ListRunners reports them (the lifecycle acts on LOST):
//   LOST       silent for longer than `lost_after`.
//   UNHEALTHY  silent for longer than `policy.healthy_within`, or its heartbeat stream broke and
//              it has not been heard from since. Gets no placements.
//   DRAINING   healthy but marked draining: keeps its sandboxes, gets no new ones.
//   HEALTHY    everything else.
// After a restart, silence counts from the later of the stored last-seen and `healthy_within`
// before the load: a runner that was fine is UNHEALTHY until its first heartbeat (well under a
// second), never LOST because the scheduler itself was down. A reload in a running process (a
// leader that lost its lock during a database outage and won it back) keeps what the process
// heard itself since: runners whose heartbeat streams stayed open stay HEALTHY throughout.

#include <atomic>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/btree_map.h"
#include "absl/container/flat_hash_map.h"
#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "scheduler/demand.h"
#include "scheduler/fleet_state.h"
#include "scheduler/fleet_store.h"
#include "scheduler/placement.h"
#include "scheduler/prewarm.h"

namespace isorun::scheduler {

struct PlacementResult {
  std::string runner_id;
  std::string runner_name;
  std::string runner_address;
  bool warm = false;
};

struct RunnerStatus {
  RunnerView view;    // allocated: reserved plus what runs beyond the placements
  std::string state;  // HEALTHY, UNHEALTHY, LOST, DRAINING
  ResourceVector reserved;
  int64_t placements_warm = 0;
  int64_t placements_cold = 0;
  std::vector<std::string> pulling;  // pre-warm pulls in flight
};

struct FleetOptions {
  PolicyOptions policy;
  size_t spread_window = 10000;  // see FleetState::RecordPlacement
  absl::Duration lost_after = absl::Seconds(60);
  absl::Duration last_seen_every = absl::Seconds(5);
  absl::Duration unplaced_grace = absl::Seconds(5);
  PrewarmOptions prewarm;
};

// One heartbeat. Unset optionals mean "unchanged since the previous heartbeat".
struct HeartbeatReport {
  std::string runner_id = {};
  ResourceVector allocated = {};  // as the runner sees it; cpu and memory 0 when it does not know
  std::optional<std::vector<CachedImage>> images = {};
  std::optional<std::vector<std::string>> sandbox_ids = {};
  std::optional<int64_t> image_cache_used_bytes = {};
  std::optional<ResourceVector> capacity = {};
  uint64_t stream = 0;  // the heartbeat stream it came on (Fleet::NewStreamId); 0: unary
};

struct FleetTotals {
  std::map<std::string, int64_t> runners_by_state;  // every state, 0 included
  ResourceVector capacity;
  ResourceVector allocated;
  ResourceVector free;  // per runner never below zero
  // Over schedulable runners (healthy, not draining): what new placements can use.
  ResourceVector schedulable_capacity;
  ResourceVector schedulable_free;
  int64_t images = 0;  // distinct images cached anywhere
  int64_t placements = 0;
  int64_t pulls_in_flight = 0;
};

class Fleet {
 public:
  using Clock = std::function<absl::Time()>;

  Fleet(FleetStore& store, Clock clock, FleetOptions options = {});

  // Replaces the in-memory view with what the store holds.
  absl::Status Load();

  // Returns the runner id (stable for a name).
  absl::StatusOr<std::string> Register(RunnerView runner);
  // NOT_FOUND: the runner must register again. Never touches the store.
  absl::Status Heartbeat(HeartbeatReport report);
  uint64_t NewStreamId() { return next_stream_.fetch_add(1) + 1; }
  // The heartbeat stream `stream` of the runner ended: unschedulable until heard from again
  // (unless a newer stream already took over).
  void StreamEnded(const std::string& runner_id, uint64_t stream);

  // Idempotent per sandbox id. RESOURCE_EXHAUSTED (reason CAPACITY) when nothing fits.
  absl::StatusOr<PlacementResult> Place(const std::string& sandbox_id,
                                        const PlacementRequest& request);
  // True when a placement was released, false when there was none.
  absl::StatusOr<bool> Release(const std::string& sandbox_id);

  // Place and Release for many sandboxes: decided one by one in order (as if called in turn),
  // persisted in one statement. Each item gets the result it would have had alone.
  struct PlaceItem {
    std::string sandbox_id;
    PlacementRequest request;
  };
  std::vector<absl::StatusOr<PlacementResult>> PlaceMany(const std::vector<PlaceItem>& items);
  std::vector<absl::StatusOr<bool>> ReleaseMany(const std::vector<std::string>& sandbox_ids);
  absl::StatusOr<PlacementResult> Get(const std::string& sandbox_id);

  struct PlacementInfo {
    std::string sandbox_id;
    PlacementResult where;
  };
  // Placements at least `min_age` old with sandbox id > `after`, by sandbox id.
  std::vector<PlacementInfo> ListPlacements(absl::Duration min_age, const std::string& after,
                                            int limit);

  std::vector<RunnerStatus> List();
  FleetTotals Totals();

  // Writes pending last-seen times and changed image lists, reads draining marks.
  absl::Status Sync();

  // Pre-warming: plans a round and records its pulls as in flight; the caller makes the calls and
  // reports each with FinishPull.
  std::vector<PullTask> StartPrewarmRound();
  void FinishPull(const PullTask& task, const absl::StatusOr<CachedImage>& pulled);
  double PrewarmBoost(const std::string& region);

  const FleetOptions& options() const { return options_; }

 private:
  // What the fleet keeps per runner beyond FleetState.
  struct Tracking {
    absl::flat_hash_map<std::string, ResourceVector> placed;  // sandbox id -> reservation
    absl::flat_hash_map<std::string, absl::Time> unplaced_since;
    ResourceVector reported;  // allocated as the runner reported it
    bool recheck = false;     // placements changed: recompute the extra at the next heartbeat
    int64_t warm = 0;
    int64_t cold = 0;
    absl::Time persisted_seen = absl::InfinitePast();
    bool images_dirty = false;
    bool capacity_dirty = false;
    uint64_t stream = 0;
    // When this process last heard from the runner itself (registration or heartbeat).
    absl::Time heard = absl::InfinitePast();
  };

  PlacementResult ResultFor(RunnerIndex r, bool warm) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Tracking& TrackingOf(RunnerIndex r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RecomputeExtra(RunnerIndex r, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Unplace(const StoredPlacement& p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string StateOf(RunnerIndex r, absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  FleetStore& store_;
  const Clock clock_;
  const FleetOptions options_;
  const PlacementPolicy policy_;
  std::atomic<uint64_t> next_stream_{0};

  absl::Mutex mu_;
  FleetState state_ ABSL_GUARDED_BY(mu_);
  std::vector<Tracking> tracking_ ABSL_GUARDED_BY(mu_);  // by RunnerIndex
  // Ordered so the reconciler can page through it.
  absl::btree_map<std::string, StoredPlacement> placements_ ABSL_GUARDED_BY(mu_);
  DemandTracker demand_ ABSL_GUARDED_BY(mu_);
  PrewarmPlanner planner_ ABSL_GUARDED_BY(mu_);
  absl::BitGen rng_ ABSL_GUARDED_BY(mu_);
};

// Whether two image lists name the same images (digest, size and references), whatever their
// order and last use: only such a change is worth writing down.
bool SameImages(const std::vector<CachedImage>& a, const std::vector<CachedImage>& b);

}  // namespace isorun::scheduler
