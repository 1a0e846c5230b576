#include "scheduler/placement.h"

#include <algorithm>
#include <array>

#include "absl/random/distributions.h"

namespace isorun::scheduler {

bool IsHealthy(const RunnerSlot& runner, absl::Time now, const PolicyOptions& options) {
  return !runner.disconnected && now - runner.last_heartbeat <= options.healthy_within;
}

bool Fits(const RunnerSlot& runner, const PlacementRequest& request) {
  ResourceVector a = runner.allocated();
  return a.cpu_millis + request.cpu_millis <= runner.capacity.cpu_millis &&
         a.memory_mb + request.memory_mb <= runner.capacity.memory_mb &&
         a.sandboxes + 1 <= runner.capacity.sandboxes;
}

namespace {

struct Candidate {
  double score = 0;
  RunnerIndex runner = 0;
  bool warm = false;
};

// The best few candidates seen, best first; a runner offered twice counts once.
class TopK {
 public:
  static constexpr int kMax = 16;
  explicit TopK(int k) : k_(std::clamp(k, 1, kMax)) {}

  void Offer(const Candidate& c) {
    for (int i = 0; i < n_; ++i) {
      if (items_[i].runner == c.runner) return;
    }
    if (n_ == k_ && c.score <= items_[n_ - 1].score) return;
    int pos = n_ < k_ ? n_++ : n_ - 1;
    items_[pos] = c;
    while (pos > 0 && items_[pos - 1].score < items_[pos].score) {
      std::swap(items_[pos - 1], items_[pos]);
      --pos;
    }
  }
  int size() const { return n_; }
  const Candidate& operator[](int i) const { return items_[i]; }

 private:
  int k_;
  int n_ = 0;
  std::array<Candidate, kMax> items_;
};

// The share of the runner in use once the request is placed, averaged over the dimensions.
double UsedAfter(const RunnerSlot& r, const PlacementRequest& req) {
  auto share = [](int64_t used, int64_t cap) {
    return cap <= 0 ? 1.0 : static_cast<double>(used) / static_cast<double>(cap);
  };
  ResourceVector a = r.allocated();
  return (share(a.cpu_millis + req.cpu_millis, r.capacity.cpu_millis) +
          share(a.memory_mb + req.memory_mb, r.capacity.memory_mb) +
          share(a.sandboxes + 1, r.capacity.sandboxes)) /
         3.0;
}

}  // namespace

double PlacementPolicy::WarmBonus(const FleetState& fleet, ImageId image) const {
  if (image == kNoImage) return 0;
  const int64_t size = fleet.image(image).size_bytes;
  double size_factor = 1.0;
  if (size > 0 && options_.large_image_bytes > 0) {
    size_factor =
        std::clamp(static_cast<double>(size) / static_cast<double>(options_.large_image_bytes),
                   options_.min_size_factor, 1.0);
  }
  // How many runners the image's share of recent demand would keep busy at the fleet's average
  // pace, against how many hold it: fewer holders than that and each one draws more than its
  // share of creates, so the bonus shrinks and cold runners take (and pull) some.
  double spread_factor = 1.0;
  const double share = fleet.DemandShare(image);
  const double holders = static_cast<double>(fleet.Holders(image).size());
  if (share > 0 && holders > 0) {
    const double deserved = share * static_cast<double>(fleet.size());
    spread_factor = std::clamp(holders / deserved, std::min(1.0, options_.min_spread_factor), 1.0);
  }
  return options_.warm_skew * size_factor * spread_factor;
}

std::optional<PlacementDecision> PlacementPolicy::Choose(const FleetState& fleet,
                                                         const PlacementRequest& request,
                                                         absl::Time now,
                                                         absl::BitGenRef rng) const {
  const int32_t region = fleet.RegionId(request.region);
  if (region == -2) return std::nullopt;  // no runner in that region
  const ImageId image = fleet.Resolve(request.image);
  const double bonus = WarmBonus(fleet, image);
  const bool least = options_.fit == FitStrategy::kLeastAllocated;
  const size_t whole = static_cast<size_t>(std::max(0, options_.scan_whole_below));
  TopK top(options_.top_k);
  bool found = false;
  const absl::Time heard_after = now - options_.healthy_within;
  auto consider = [&](RunnerIndex r, bool warm) {
    const RunnerSlot& s = fleet.slot(r);
    if (s.draining || s.disconnected || s.last_heartbeat < heard_after ||
        (region >= 0 && s.region != region) || !Fits(s, request)) {
      return;
    }
    const double used = UsedAfter(s, request);
    top.Offer({(least ? 1.0 - used : used) + (warm ? bonus : 0.0), r, warm});
    found = true;
  };

  const std::vector<RunnerIndex>& holders = fleet.Holders(image);
  if (holders.size() <= whole) {
    for (RunnerIndex r : holders) consider(r, true);
  } else {
    for (int i = 0; i < options_.warm_candidates; ++i) {
      consider(holders[absl::Uniform<size_t>(rng, 0, holders.size())], true);
    }
    if (!found) {
      for (RunnerIndex r : holders) consider(r, true);
    }
  }

  // Every holder was offered as warm when there are few; with many, a sampled runner may hold
  // the image unseen: it is scored as cold (checking each costs more than it brings) and the
  // winner's warmth is checked at the end.
  const std::vector<RunnerIndex>& pool = fleet.InRegion(region);
  if (pool.size() <= whole) {
    for (RunnerIndex r : pool) consider(r, false);
  } else {
    for (int i = 0; i < options_.cold_candidates; ++i) {
      consider(pool[absl::Uniform<size_t>(rng, 0, pool.size())], false);
    }
    // Nothing sampled fits: only now look at every runner, so capacity anywhere is found.
    if (!found) {
      for (RunnerIndex r : pool) consider(r, false);
    }
  }
  if (top.size() == 0) return std::nullopt;

  const Candidate& best = top[0];
  std::array<int, TopK::kMax> picks;
  int n = 0;
  for (int i = 0; i < top.size(); ++i) {
    if (top[i].warm == best.warm && top[i].score >= best.score - options_.tie_window)
      picks[n++] = i;
  }
  const Candidate& chosen = top[picks[absl::Uniform<int>(rng, 0, n)]];
  const bool warm = chosen.warm || (holders.size() > whole && fleet.Holds(chosen.runner, image));
  return PlacementDecision{chosen.runner, warm, image};
}

bool PlacementPolicy::WarmFeasible(const FleetState& fleet, const PlacementRequest& request,
                                   absl::Time now) const {
  const int32_t region = fleet.RegionId(request.region);
  if (region == -2) return false;
  for (RunnerIndex r : fleet.Holders(fleet.Resolve(request.image))) {
    const RunnerSlot& s = fleet.slot(r);
    if (!s.draining && (region < 0 || s.region == region) && Fits(s, request) &&
        IsHealthy(s, now, options_)) {
      return true;
    }
  }
  return false;
}

std::optional<PlacementDecision> ChoosePlacement(const std::vector<RunnerView>& runners,
                                                 const PlacementRequest& request, absl::Time now,
                                                 absl::BitGenRef rng,
                                                 const PolicyOptions& options) {
  FleetState fleet;
  for (size_t i = 0; i < runners.size(); ++i) {
    RunnerView view = runners[i];
    view.id = std::to_string(i);
    RunnerIndex r = fleet.Upsert(view);
    fleet.mutable_slot(r).reserved = runners[i].allocated;
  }
  return PlacementPolicy(options).Choose(fleet, request, now, rng);
}

}  // namespace isorun::scheduler
