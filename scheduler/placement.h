#pragma once

// Placement policy: a pure function of the fleet state, the request, the time and randomness (all
// passed in), so tests drive it deterministically and the benchmark measures it alone.
//
// Filter: healthy (heard from within `healthy_within`, heartbeat stream not broken), not draining,
// in the requested region (empty: any), with free cpu, memory and a sandbox slot.
//
// Score, higher wins:
//   fit       the share of the runner left free after placing, averaged over cpu, memory and
//             slots (least-allocated, the default: spreads load); or the share used
//             (most-allocated: packs runners, leaves whole runners free).
//   locality  a warm runner (its cache holds the image: a start skips the pull) gets a bonus of
//             warm_skew x size factor x spread factor, in the same units as fit. So a warm runner
//             beats every cold one unless it is fuller than the best cold candidate by more than
//             that bonus: a warm runner is preferred strongly but never required, and a full one is
//             simply filtered out. The size factor (in the spirit of Kubernetes' ImageLocality)
//             weighs what a cold start costs: images of `large_image_bytes` or more count fully,
//             small ones down to `min_size_factor` (unknown sizes count fully). The spread factor
//             weighs how widely the image is cached against how much it is asked for: with
//             `share` the image's part of the last placements (FleetState::RecordPlacement) and N
//             the runners, share x N runners would serve its demand at the fleet's average pace;
//             when fewer hold it, the factor is holders / (share x N), down to
//             `min_spread_factor`. So a hot image cached on one runner does not swamp it (cold
//             runners take some creates, pull the image, and it spreads), while a rarely asked
//             image cached on one runner keeps the whole bonus: that runner is not at risk.
// Choice: uniformly at random among the best few (`top_k`) candidates of the best one's warmth
// whose score is within `tie_window` of it, so that identical schedulers do not herd onto one
// runner.
//
// Cost does not grow with the fleet: warm candidates come from an index image -> runners (all of
// them when few hold the image, else a random sample of `warm_candidates`), cold candidates from a
// random sample of `cold_candidates` runners of the region ("power of d choices"). Only when no
// sampled runner fits does the policy scan the whole region, so a request is refused only when no
// runner at all can take it.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/random/bit_gen_ref.h"
#include "absl/time/time.h"
#include "scheduler/fleet_state.h"

namespace isorun::scheduler {

struct PlacementRequest {
  std::string image;
  std::string region;  // empty: any region
  int64_t cpu_millis = 0;
  int64_t memory_mb = 0;
};

struct PlacementDecision {
  RunnerIndex runner_index = 0;
  bool warm = false;
  ImageId image = kNoImage;  // what the request's image resolved to
};

enum class FitStrategy { kLeastAllocated, kMostAllocated };

struct PolicyOptions {
  absl::Duration healthy_within = absl::Seconds(10);
  FitStrategy fit = FitStrategy::kLeastAllocated;
  // The largest extra load (share of the runner, 0..1) a warm runner may carry over the best cold
  // candidate and still win, for a large image held by many runners.
  double warm_skew = 0.4;
  int64_t large_image_bytes = int64_t{512} << 20;
  double min_size_factor = 0.5;
  double min_spread_factor = 0.5;
  int cold_candidates = 8;
  int warm_candidates = 16;
  // Regions and holder lists this small are scanned whole instead of sampled.
  int scan_whole_below = 32;
  int top_k = 3;
  double tie_window = 0.02;
};

bool IsHealthy(const RunnerSlot& runner, absl::Time now, const PolicyOptions& options);
bool Fits(const RunnerSlot& runner, const PlacementRequest& request);

class PlacementPolicy {
 public:
  explicit PlacementPolicy(PolicyOptions options = {}) : options_(options) {}

  // nullopt when no runner can take the request.
  std::optional<PlacementDecision> Choose(const FleetState& fleet, const PlacementRequest& request,
                                          absl::Time now, absl::BitGenRef rng) const;

  // Whether some runner that could take the request holds its image (a full scan: the oracle
  // that benchmarks compare warm placements with).
  bool WarmFeasible(const FleetState& fleet, const PlacementRequest& request, absl::Time now) const;

  // The locality bonus of `image` (see the header comment).
  double WarmBonus(const FleetState& fleet, ImageId image) const;

  const PolicyOptions& options() const { return options_; }

 private:
  PolicyOptions options_;
};

// Convenience for small fleets given as a list (tests): runner i of `runners` is index i; an
// image in a RunnerView counts under its digest and every ref.
std::optional<PlacementDecision> ChoosePlacement(const std::vector<RunnerView>& runners,
                                                 const PlacementRequest& request, absl::Time now,
                                                 absl::BitGenRef rng,
                                                 const PolicyOptions& options = {});

}  // namespace isorun::scheduler
