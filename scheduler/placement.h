#pragma once

// Placement policy: a pure function of the fleet view, the request, the time and randomness, so
// tests drive it deterministically.
//
// Filter: healthy (heartbeat newer than the grace period), same region, not draining, enough free
// cpu, memory and sandbox slots. Score: a runner that already caches the image wins over one that
// does not (a warm start skips the pull); among equals, the least allocated runner wins (spreads
// load); ties are broken at random so that identical schedulers do not herd onto one runner.

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/random/bit_gen_ref.h"
#include "absl/time/time.h"

namespace isorun::scheduler {

struct ResourceVector {
  int64_t cpu_millis = 0;
  int64_t memory_mb = 0;
  int64_t sandboxes = 0;
};

struct RunnerView {
  std::string id;
  std::string name;
  std::string address;
  std::string region;
  ResourceVector capacity;
  ResourceVector allocated;
  // Image references (tags and digests) in the runner's cache.
  std::unordered_set<std::string> images;
  absl::Time last_heartbeat;
  bool draining = false;
};

struct PlacementRequest {
  std::string image;
  std::string region;  // empty: any region
  int64_t cpu_millis = 0;
  int64_t memory_mb = 0;
};

struct PlacementDecision {
  size_t runner_index = 0;
  bool warm = false;
};

struct PolicyOptions {
  absl::Duration healthy_within = absl::Seconds(10);
};

bool IsHealthy(const RunnerView& runner, absl::Time now, const PolicyOptions& options);
bool Fits(const RunnerView& runner, const PlacementRequest& request);

// nullopt when no runner can take the request.
std::optional<PlacementDecision> ChoosePlacement(const std::vector<RunnerView>& runners,
                                                 const PlacementRequest& request, absl::Time now,
                                                 absl::BitGenRef rng,
                                                 const PolicyOptions& options = {});

}  // namespace isorun::scheduler
