#include "scheduler/sim_fleet.h"

#include <algorithm>
#include <cmath>

#include "absl/random/distributions.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace isorun::scheduler {

ZipfSampler::ZipfSampler(int n, double s) {
  cdf_.reserve(static_cast<size_t>(std::max(1, n)));
  double sum = 0;
  for (int k = 0; k < std::max(1, n); ++k) {
    sum += 1.0 / std::pow(static_cast<double>(k + 1), s);
    cdf_.push_back(sum);
  }
  for (double& c : cdf_) c /= sum;
}

int ZipfSampler::Sample(absl::BitGenRef rng) const {
  const double u = absl::Uniform<double>(rng, 0.0, 1.0);
  auto it = std::upper_bound(cdf_.begin(), cdf_.end(), u);
  if (it == cdf_.end()) --it;
  return static_cast<int>(it - cdf_.begin());
}

double ZipfSampler::Probability(int k) const {
  const auto i = static_cast<size_t>(k);
  return i == 0 ? cdf_[0] : cdf_[i] - cdf_[i - 1];
}

std::string SimFleet::ImageRef(int k) { return absl::StrCat("sim/img-", k, ":1"); }

std::string SimFleet::ImageDigest(int k) {
  return absl::StrFormat("sha256:%064x", static_cast<uint64_t>(k) * 2654435761u + 1);
}

namespace {

int ImageOf(const std::string& ref) {
  // "sim/img-K:1"
  const size_t dash = ref.find("img-");
  const size_t colon = ref.rfind(':');
  int k = 0;
  if (dash == std::string::npos || colon == std::string::npos ||
      !absl::SimpleAtoi(absl::string_view(ref).substr(dash + 4, colon - dash - 4), &k)) {
    return -1;
  }
  return k;
}

}  // namespace

SimFleet::SimFleet(SimFleetOptions options, absl::Time now, absl::BitGenRef rng)
    : options_(std::move(options)), now_(now), popularity_(options_.images, options_.zipf_s) {
  if (options_.regions.empty()) options_.regions = {"local"};
  // Image sizes: log-uniform from 50 MB to 2 GB.
  for (int k = 0; k < options_.images; ++k) {
    const double lg = absl::Uniform<double>(rng, std::log(50.0), std::log(2048.0));
    image_bytes_.push_back(static_cast<int64_t>(std::exp(lg) * (1 << 20)));
  }
  for (int i = 0; i < options_.runners; ++i) {
    RunnerView v;
    v.id = absl::StrCat("sim-", i);
    v.name = v.id;
    v.address = absl::StrCat("10.0.", i / 250, ".", i % 250, ":7101");
    v.region = options_.regions[static_cast<size_t>(i) % options_.regions.size()];
    v.capacity = options_.runner_capacity;
    v.image_cache_bytes = options_.cache_bytes;
    v.last_heartbeat = now_;
    const auto fill = static_cast<int64_t>(static_cast<double>(options_.cache_bytes) *
                                           options_.initial_cache_fill);
    std::vector<bool> have(static_cast<size_t>(options_.images), false);
    for (int tries = 0; tries < 400 && v.image_cache_used_bytes < fill; ++tries) {
      const int k = popularity_.Sample(rng);
      if (have[static_cast<size_t>(k)] || v.image_cache_used_bytes + ImageBytes(k) > fill) continue;
      have[static_cast<size_t>(k)] = true;
      CachedImage img;
      img.digest = ImageDigest(k);
      img.size_bytes = ImageBytes(k);
      img.refs = {ImageRef(k)};
      img.last_used = now_ - absl::Seconds(absl::Uniform<int>(rng, 1, 3600));
      v.image_cache_used_bytes += img.size_bytes;
      v.images.push_back(std::move(img));
    }
    state_.Upsert(v);
  }
  int64_t slots = 0;
  for (RunnerIndex r = 0; r < state_.size(); ++r) slots += state_.slot(r).capacity.sandboxes;
  target_active_ = static_cast<int64_t>(static_cast<double>(slots) * options_.utilization);
}

PlacementRequest SimFleet::NextRequest(absl::BitGenRef rng) {
  static constexpr int64_t kCpu[] = {250, 500, 1000, 2000};
  static constexpr int64_t kMemory[] = {256, 512, 1024, 4096};
  PlacementRequest req;
  req.image = ImageRef(popularity_.Sample(rng));
  if (options_.requests_name_region) {
    req.region = options_.regions[requests_ % options_.regions.size()];
  }
  ++requests_;
  req.cpu_millis = kCpu[absl::Uniform<int>(rng, 0, 4)];
  req.memory_mb = kMemory[absl::Uniform<int>(rng, 0, 4)];
  return req;
}

void SimFleet::Touch(RunnerIndex r, ImageId id) {
  RunnerRecord& rec = state_.mutable_record(r);
  for (size_t i = 0; i < rec.images.size(); ++i) {
    if (rec.image_of[i] == id) rec.images[i].last_used = now_ + absl::Microseconds(clock_ticks_);
  }
}

void SimFleet::Pull(RunnerIndex r, int k) {
  const RunnerRecord& rec = state_.record(r);
  std::vector<CachedImage> images = rec.images;
  int64_t used = rec.image_cache_used_bytes;
  const int64_t size = ImageBytes(k);
  const int64_t budget = rec.image_cache_bytes;
  while (!images.empty() && used + size > budget) {
    auto lru = std::min_element(
        images.begin(), images.end(),
        [](const CachedImage& a, const CachedImage& b) { return a.last_used < b.last_used; });
    used -= lru->size_bytes;
    *lru = std::move(images.back());
    images.pop_back();
  }
  CachedImage img;
  img.digest = ImageDigest(k);
  img.size_bytes = size;
  img.refs = {ImageRef(k)};
  img.last_used = now_ + absl::Microseconds(clock_ticks_);
  images.push_back(std::move(img));
  state_.SetImages(r, std::move(images));
  state_.mutable_record(r).image_cache_used_bytes = used + size;
}

void SimFleet::Apply(const PlacementRequest& request, const PlacementDecision& decision) {
  ++clock_ticks_;
  const RunnerIndex r = decision.runner_index;
  const ResourceVector amount{request.cpu_millis, request.memory_mb, 1};
  state_.Reserve(r, amount);
  state_.RecordPlacement(decision.image);
  live_.push_back({r, amount});
  if (decision.warm) {
    Touch(r, decision.image);
  } else if (int k = ImageOf(request.image); k >= 0) {
    Pull(r, k);
  }
  while (static_cast<int64_t>(live_.size()) > target_active_) {
    state_.Unreserve(live_.front().runner, live_.front().amount);
    live_.pop_front();
  }
}

}  // namespace isorun::scheduler
