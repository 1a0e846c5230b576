#include "scheduler/prewarm.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "absl/random/distributions.h"

namespace isorun::scheduler {

double PrewarmPlanner::boost(const std::string& region) const {
  auto it = boost_.find(region);
  return it == boost_.end() ? 1.0 : it->second;
}

std::vector<PullTask> PrewarmPlanner::Plan(const FleetState& fleet, const DemandTracker& demand,
                                           const PolicyOptions& health, absl::Time now,
                                           absl::BitGenRef rng) {
  std::vector<PullTask> tasks;
  if (!options_.enabled) return tasks;
  const std::vector<DemandTracker::ImageDemand> all = demand.Images(now);  // most asked first
  std::map<std::string, std::vector<const DemandTracker::ImageDemand*>> hot;
  for (const auto& d : all) {
    if (d.count.creates < options_.min_creates) continue;
    auto& v = hot[d.region];
    if (static_cast<int>(v.size()) < options_.max_images) v.push_back(&d);
  }

  // The cold-start trend of every region with demand, or with a boost still to decay.
  std::set<std::string> regions;
  for (const auto& [region, images] : hot) regions.insert(region);
  for (const auto& [region, b] : boost_) regions.insert(region);
  for (const auto& region : regions) {
    const DemandTracker::Trend t = demand.RegionTrend(now, region);
    double& b = boost_[region];
    b = std::max(b, 1.0);
    const double recent = t.recent.cold_rate();
    if (t.recent.creates >= options_.min_creates && recent > options_.target_cold_rate &&
        recent >= t.earlier.cold_rate()) {
      b = std::min(options_.max_boost, b * 2);
    } else if (t.recent.creates == 0 || recent <= options_.target_cold_rate / 2) {
      b = std::max(1.0, b / 2);
    }
  }

  struct Planned {
    int pulls = 0;
    int64_t bytes = 0;
  };
  absl::flat_hash_map<RunnerIndex, Planned> planned;
  auto room_left = [&] { return options_.max_pulls_per_round - static_cast<int>(tasks.size()); };
  for (const auto& [region, images] : hot) {
    if (room_left() <= 0) break;
    const int32_t region_id = fleet.RegionId(region);
    if (region_id == -2) continue;
    const std::vector<RunnerIndex>& pool = fleet.InRegion(region_id);
    auto schedulable = [&](RunnerIndex r) {
      const RunnerSlot& s = fleet.slot(r);
      return !s.draining && IsHealthy(s, now, health);
    };
    int64_t n = 0;
    absl::flat_hash_map<std::string, int64_t> in_flight;
    for (RunnerIndex r : pool) {
      if (!schedulable(r)) continue;
      ++n;
      for (const auto& image : fleet.record(r).pulling) ++in_flight[image];
    }
    if (n == 0) continue;
    const double fraction = std::min(options_.max_fraction, options_.fraction * boost(region));
    const int64_t cap = std::min<int64_t>(
        n, std::max<int64_t>(1, static_cast<int64_t>(
                                    std::floor(static_cast<double>(n) * options_.max_fraction))));
    const double top = static_cast<double>(images.front()->count.creates);

    for (const auto* d : images) {
      if (room_left() <= 0) break;
      const ImageId id = fleet.Resolve(d->image);
      int64_t holders = 0;
      for (RunnerIndex r : fleet.Holders(id)) {
        if ((region_id < 0 || fleet.slot(r).region == region_id) && schedulable(r)) ++holders;
      }
      if (auto it = in_flight.find(d->image); it != in_flight.end()) holders += it->second;
      const double share = static_cast<double>(d->count.creates) / top;
      int64_t target =
          static_cast<int64_t>(std::ceil(static_cast<double>(n) * fraction * share - 1e-9));
      target = std::min(cap, std::max<int64_t>(target, options_.min_holders));
      const int64_t need = std::min<int64_t>(target - holders, room_left());
      if (need <= 0) continue;
      int64_t bytes = options_.assumed_image_bytes;
      if (id != kNoImage && fleet.image(id).size_bytes > 0) bytes = fleet.image(id).size_bytes;

      std::vector<std::pair<double, RunnerIndex>> candidates;
      auto offer = [&](RunnerIndex r) {
        if (!schedulable(r) || fleet.Holds(r, id)) return;
        const RunnerRecord& rec = fleet.record(r);
        if (std::find(rec.pulling.begin(), rec.pulling.end(), d->image) != rec.pulling.end()) {
          return;
        }
        Planned p;
        if (auto it = planned.find(r); it != planned.end()) p = it->second;
        if (static_cast<int>(rec.pulling.size()) + p.pulls >= options_.max_pulls_per_runner) return;
        const int64_t budget =
            rec.image_cache_bytes > 0 ? rec.image_cache_bytes : options_.default_cache_bytes;
        if (budget - rec.image_cache_used_bytes - rec.pulling_bytes - p.bytes < bytes) return;
        const RunnerSlot& s = fleet.slot(r);
        const double load = s.capacity.sandboxes <= 0
                                ? 1.0
                                : static_cast<double>(s.allocated().sandboxes) /
                                      static_cast<double>(s.capacity.sandboxes);
        candidates.emplace_back(load, r);
      };
      const size_t samples = static_cast<size_t>(4 * need + 64);
      if (pool.size() <= samples) {
        for (RunnerIndex r : pool) offer(r);
      } else {
        for (size_t i = 0; i < samples; ++i)
          offer(pool[absl::Uniform<size_t>(rng, 0, pool.size())]);
      }
      std::sort(candidates.begin(), candidates.end());
      candidates.erase(
          std::unique(candidates.begin(), candidates.end(),
                      [](const auto& a, const auto& b) { return a.second == b.second; }),
          candidates.end());
      for (size_t i = 0; i < candidates.size() && static_cast<int64_t>(i) < need; ++i) {
        const RunnerIndex r = candidates[i].second;
        const RunnerRecord& rec = fleet.record(r);
        tasks.push_back(PullTask{r, rec.id, rec.address, d->image, bytes});
        Planned& p = planned[r];
        ++p.pulls;
        p.bytes += bytes;
      }
    }
  }
  return tasks;
}

}  // namespace isorun::scheduler
