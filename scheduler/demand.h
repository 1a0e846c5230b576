#pragma once

// Create demand per image over a sliding window, for pre-warming: how many creates asked for each
// image in each region, and how many of them started cold. The window is cut into equal buckets;
// a bucket older than the window is reused, so memory is bounded by the images seen in one
// window. Not thread-safe (Fleet holds it under its mutex); time is passed in.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace isorun::scheduler {

class DemandTracker {
 public:
  explicit DemandTracker(absl::Duration window = absl::Seconds(60), int buckets = 12);

  // One placement (or refusal: count it as cold) of `image` in `region` ("" for any region).
  void Record(absl::Time now, absl::string_view region, absl::string_view image, bool warm);

  struct Count {
    int64_t creates = 0;
    int64_t cold = 0;
    double cold_rate() const {
      return creates == 0 ? 0.0 : static_cast<double>(cold) / static_cast<double>(creates);
    }
  };
  struct ImageDemand {
    std::string region;
    std::string image;
    Count count;
  };
  // Every (region, image) asked for within the window ending at `now`.
  std::vector<ImageDemand> Images(absl::Time now) const;

  // A region's creates in the newest third of the window and in the two thirds before it: a cold
  // rate that is higher in `recent` than in `earlier` is rising.
  struct Trend {
    Count recent;
    Count earlier;
  };
  Trend RegionTrend(absl::Time now, absl::string_view region) const;

  absl::Duration window() const { return width_ * static_cast<int64_t>(buckets_.size()); }

 private:
  struct Bucket {
    int64_t epoch = -1;                               // which slice of time it counts; -1: unused
    absl::flat_hash_map<std::string, Count> images;   // region + '\n' + image
    absl::flat_hash_map<std::string, Count> regions;  // region
  };
  int64_t EpochOf(absl::Time t) const;
  // Whether the bucket counts for the window ending in epoch `now`.
  bool Live(const Bucket& b, int64_t now) const;

  absl::Duration width_;
  std::vector<Bucket> buckets_;
};

}  // namespace isorun::scheduler
