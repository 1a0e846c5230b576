#include "scheduler/demand.h"

#include <algorithm>
#include <tuple>

#include "absl/strings/str_cat.h"

namespace isorun::scheduler {

DemandTracker::DemandTracker(absl::Duration window, int buckets)
    : width_(window / std::max(1, buckets)), buckets_(static_cast<size_t>(std::max(1, buckets))) {
  if (width_ <= absl::ZeroDuration()) width_ = absl::Seconds(1);
}

int64_t DemandTracker::EpochOf(absl::Time t) const {
  absl::Duration rem;
  return absl::IDivDuration(t - absl::UnixEpoch(), width_, &rem);
}

bool DemandTracker::Live(const Bucket& b, int64_t now) const {
  return b.epoch >= 0 && b.epoch <= now && now - b.epoch < static_cast<int64_t>(buckets_.size());
}

void DemandTracker::Record(absl::Time now, absl::string_view region, absl::string_view image,
                           bool warm) {
  const int64_t epoch = EpochOf(now);
  Bucket& b = buckets_[static_cast<size_t>(epoch % static_cast<int64_t>(buckets_.size()))];
  if (b.epoch != epoch) {
    b.epoch = epoch;
    b.images.clear();
    b.regions.clear();
  }
  Count& c = b.images[absl::StrCat(region, "\n", image)];
  ++c.creates;
  Count& r = b.regions[region];
  ++r.creates;
  if (!warm) {
    ++c.cold;
    ++r.cold;
  }
}

std::vector<DemandTracker::ImageDemand> DemandTracker::Images(absl::Time now) const {
  const int64_t epoch = EpochOf(now);
  absl::flat_hash_map<std::string, Count> sum;
  for (const Bucket& b : buckets_) {
    if (!Live(b, epoch)) continue;
    for (const auto& [key, c] : b.images) {
      Count& s = sum[key];
      s.creates += c.creates;
      s.cold += c.cold;
    }
  }
  std::vector<ImageDemand> out;
  out.reserve(sum.size());
  for (auto& [key, c] : sum) {
    size_t nl = key.find('\n');
    out.push_back({key.substr(0, nl), key.substr(nl + 1), c});
  }
  std::sort(out.begin(), out.end(), [](const ImageDemand& a, const ImageDemand& b) {
    if (a.count.creates != b.count.creates) return a.count.creates > b.count.creates;
    return std::tie(a.region, a.image) < std::tie(b.region, b.image);
  });
  return out;
}

DemandTracker::Trend DemandTracker::RegionTrend(absl::Time now, absl::string_view region) const {
  const int64_t epoch = EpochOf(now);
  const int64_t recent_span = std::max<int64_t>(1, static_cast<int64_t>(buckets_.size()) / 3);
  Trend t;
  for (const Bucket& b : buckets_) {
    if (!Live(b, epoch)) continue;
    auto it = b.regions.find(region);
    if (it == b.regions.end()) continue;
    Count& into = epoch - b.epoch < recent_span ? t.recent : t.earlier;
    into.creates += it->second.creates;
    into.cold += it->second.cold;
  }
  return t;
}

}  // namespace isorun::scheduler
