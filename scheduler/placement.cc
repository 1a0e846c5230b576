#include "scheduler/placement.h"

#include "absl/random/distributions.h"

namespace isorun::scheduler {

bool IsHealthy(const RunnerView& runner, absl::Time now, const PolicyOptions& options) {
  return now - runner.last_heartbeat <= options.healthy_within;
}

bool Fits(const RunnerView& runner, const PlacementRequest& request) {
  return runner.allocated.cpu_millis + request.cpu_millis <= runner.capacity.cpu_millis &&
         runner.allocated.memory_mb + request.memory_mb <= runner.capacity.memory_mb &&
         runner.allocated.sandboxes + 1 <= runner.capacity.sandboxes;
}

namespace {

// Fraction of the runner left free after placing the request, averaged over the dimensions.
double FreeAfter(const RunnerView& r, const PlacementRequest& req) {
  auto frac = [](int64_t used, int64_t cap) {
    return cap <= 0 ? 0.0 : 1.0 - static_cast<double>(used) / static_cast<double>(cap);
  };
  return (frac(r.allocated.cpu_millis + req.cpu_millis, r.capacity.cpu_millis) +
          frac(r.allocated.memory_mb + req.memory_mb, r.capacity.memory_mb) +
          frac(r.allocated.sandboxes + 1, r.capacity.sandboxes)) /
         3.0;
}

}  // namespace

std::optional<PlacementDecision> ChoosePlacement(const std::vector<RunnerView>& runners,
                                                 const PlacementRequest& request, absl::Time now,
                                                 absl::BitGenRef rng,
                                                 const PolicyOptions& options) {
  std::optional<PlacementDecision> best;
  double best_score = -1;
  int ties = 0;
  for (size_t i = 0; i < runners.size(); ++i) {
    const RunnerView& r = runners[i];
    if (r.draining || !IsHealthy(r, now, options)) continue;
    if (!request.region.empty() && r.region != request.region) continue;
    if (!Fits(r, request)) continue;
    bool warm = r.images.count(request.image) > 0;
    // Warmth dominates: any warm runner scores above every cold one.
    double score = (warm ? 2.0 : 0.0) + FreeAfter(r, request);
    if (score > best_score + 1e-9) {
      best = PlacementDecision{i, warm};
      best_score = score;
      ties = 1;
    } else if (score > best_score - 1e-9) {
      // Reservoir sampling over exact ties.
      ++ties;
      if (absl::Uniform(rng, 0, ties) == 0) best = PlacementDecision{i, warm};
    }
  }
  return best;
}

}  // namespace isorun::scheduler
