#pragma once

// Pre-warming: images that many creates ask for are pulled ahead of demand onto a share of the
// runners of their region, so that most creates start warm.
//
// Every round (--prewarm_interval_ms), per region:
//   hot images   the images with at least `min_creates` creates in the sliding window
//                (--prewarm_window_sec, cut in buckets), the `max_images` most asked for.
//   target       the hottest image should be on `fraction` of the region's schedulable runners,
//                the others in proportion to their creates, never fewer than `min_holders` and
//                never more than `max_fraction` of the region.
//   cold trend   when the region's cold-start rate in the newest third of the window is above
//                `target_cold_rate` and not lower than in the two thirds before (a rising or
//                stubborn cold rate), the region's boost doubles (up to `max_boost`) and every
//                target grows with it; once the rate is under half the target the boost halves
//                back towards 1. The fraction used is min(max_fraction, fraction x boost).
//   pulls        the missing holders are chosen among a random sample of schedulable runners
//                that lack the image, least loaded first (the runners placement favours), and
//                only where the image fits in the free cache budget: budget - used - pulls in
//                flight. A runner that reports no budget is assumed to have
//                `default_cache_bytes`; an image of unknown size is assumed `assumed_image_bytes`.
//                Pre-warming never evicts: the runner's own LRU does when creates need room.
//                At most `max_pulls_per_runner` pulls in flight per runner and
//                `max_pulls_per_round` per round.
// The planner is pure (state, demand and time passed in); Fleet records the pulls it starts and
// Prewarmer (prewarmer.h) makes the runner calls.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/random/bit_gen_ref.h"
#include "absl/time/time.h"
#include "scheduler/demand.h"
#include "scheduler/fleet_state.h"
#include "scheduler/placement.h"

namespace isorun::scheduler {

struct PrewarmOptions {
  bool enabled = true;
  absl::Duration interval = absl::Seconds(5);
  absl::Duration window = absl::Seconds(60);
  int64_t min_creates = 5;
  int max_images = 20;
  double fraction = 0.1;
  double max_fraction = 0.5;
  int min_holders = 2;
  double target_cold_rate = 0.05;
  double max_boost = 8;
  int max_pulls_per_round = 64;
  int max_pulls_per_runner = 1;
  int64_t default_cache_bytes = int64_t{10} << 30;
  int64_t assumed_image_bytes = int64_t{256} << 20;
};

struct PullTask {
  RunnerIndex runner = 0;
  std::string runner_id;
  std::string address;
  std::string image;  // as creates ask for it
  int64_t bytes = 0;  // estimated, counted against the runner's cache budget while in flight
};

class PrewarmPlanner {
 public:
  explicit PrewarmPlanner(PrewarmOptions options = {}) : options_(options) {}

  // The pulls to start now. Updates the per-region boost; marks nothing in `fleet`.
  std::vector<PullTask> Plan(const FleetState& fleet, const DemandTracker& demand,
                             const PolicyOptions& health, absl::Time now, absl::BitGenRef rng);

  double boost(const std::string& region) const;
  const PrewarmOptions& options() const { return options_; }

 private:
  PrewarmOptions options_;
  absl::flat_hash_map<std::string, double> boost_;
};

}  // namespace isorun::scheduler
