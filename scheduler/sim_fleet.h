#pragma once

// A simulated fleet in one process, for the benchmark and for tests at scale: thousands of
// synthetic runners with image caches, and a stream of create requests whose images follow a
// Zipf-like popularity (image k is asked for in proportion to 1 / k^s). It drives FleetState and
// PlacementPolicy directly, as Fleet does, without locks, I/O or gRPC:
//   - runners start with caches filled (to `initial_cache_fill` of their budget) by sampling the
//     same popularity, so popular images are widely cached and the tail is rare;
//   - a placement reserves its resources; a cold one also "pulls" the image onto the runner,
//     evicting the least recently used images when the cache budget is exceeded;
//   - sandboxes live until the fleet holds `utilization` of its slots: each new placement then
//     ends the oldest one, keeping the load steady.
// Not thread-safe.

#include <cstdint>
#include <deque>
#include <random>
#include <string>
#include <vector>

#include "absl/random/bit_gen_ref.h"
#include "absl/time/time.h"
#include "scheduler/fleet_state.h"
#include "scheduler/placement.h"

namespace isorun::scheduler {

// Samples 0..n-1 with P(k) proportional to 1 / (k + 1)^s.
class ZipfSampler {
 public:
  ZipfSampler(int n, double s);
  int Sample(absl::BitGenRef rng) const;
  double Probability(int k) const;

 private:
  std::vector<double> cdf_;
};

struct SimFleetOptions {
  int runners = 10000;
  int images = 500;
  double zipf_s = 1.1;
  std::vector<std::string> regions = {"local"};
  // Slots bind first: 32 sandboxes of the mean request use about half the cpu and memory.
  ResourceVector runner_capacity = {64000, 131072, 32};
  int64_t cache_bytes = int64_t{20} << 30;
  double initial_cache_fill = 0.6;
  // Share of all slots in use at steady state.
  double utilization = 0.6;
  // Requests ask for a region (round robin over `regions`) or, when false, any region.
  bool requests_name_region = true;
};

class SimFleet {
 public:
  SimFleet(SimFleetOptions options, absl::Time now, absl::BitGenRef rng);

  FleetState& state() { return state_; }
  const SimFleetOptions& options() const { return options_; }
  absl::Time now() const { return now_; }

  static std::string ImageRef(int k);     // "sim/img-K:1"
  static std::string ImageDigest(int k);  // "sha256:..." (64 hex digits)
  int64_t ImageBytes(int k) const { return image_bytes_[static_cast<size_t>(k)]; }

  // The next create: a Zipf-popular image, a size from a small menu.
  PlacementRequest NextRequest(absl::BitGenRef rng);
  // Records a decision: reserves, and for a cold start pulls the image onto the runner (LRU).
  // Then ends the oldest sandboxes while the fleet holds more than its target.
  void Apply(const PlacementRequest& request, const PlacementDecision& decision);

  int64_t active() const { return static_cast<int64_t>(live_.size()); }

 private:
  void Pull(RunnerIndex r, int image);
  void Touch(RunnerIndex r, ImageId id);

  SimFleetOptions options_;
  absl::Time now_;
  FleetState state_;
  ZipfSampler popularity_;
  std::vector<int64_t> image_bytes_;
  struct Live {
    RunnerIndex runner;
    ResourceVector amount;
  };
  std::deque<Live> live_;
  int64_t target_active_ = 0;
  uint64_t requests_ = 0;
  int64_t clock_ticks_ = 0;
};

}  // namespace isorun::scheduler
