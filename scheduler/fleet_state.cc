#include "scheduler/fleet_state.h"

#include <algorithm>

namespace isorun::scheduler {
namespace {

const std::vector<RunnerIndex>& NoRunners() {
  static const std::vector<RunnerIndex>* const kEmpty = new std::vector<RunnerIndex>();
  return *kEmpty;
}

// The identity of a reported image: its digest, or its first reference when it has none.
absl::string_view KeyOf(const CachedImage& image) {
  if (!image.digest.empty()) return image.digest;
  if (!image.refs.empty()) return image.refs.front();
  return {};
}

void EraseOne(std::vector<RunnerIndex>& v, RunnerIndex r) {
  auto it = std::find(v.begin(), v.end(), r);
  if (it == v.end()) return;
  *it = v.back();
  v.pop_back();
}

}  // namespace

absl::string_view PinnedDigest(absl::string_view image) {
  constexpr absl::string_view kSha = "sha256:";
  if (image.substr(0, kSha.size()) == kSha) return image;
  auto at = image.find("@sha256:");
  if (at != absl::string_view::npos) return image.substr(at + 1);
  return {};
}

int32_t FleetState::InternRegion(const std::string& region) {
  auto [it, inserted] = region_ids_.try_emplace(region, static_cast<int32_t>(region_names_.size()));
  if (inserted) {
    region_names_.push_back(region);
    by_region_.emplace_back();
  }
  return it->second;
}

int32_t FleetState::RegionId(absl::string_view region) const {
  if (region.empty()) return -1;
  auto it = region_ids_.find(region);
  return it == region_ids_.end() ? -2 : it->second;
}

const std::vector<RunnerIndex>& FleetState::InRegion(int32_t region) const {
  if (region == -1) return all_;
  if (region < 0 || static_cast<size_t>(region) >= by_region_.size()) return NoRunners();
  return by_region_[static_cast<size_t>(region)];
}

std::optional<RunnerIndex> FleetState::Find(absl::string_view runner_id) const {
  auto it = by_id_.find(runner_id);
  if (it == by_id_.end()) return std::nullopt;
  return it->second;
}

RunnerIndex FleetState::Upsert(const RunnerView& view) {
  RunnerIndex r;
  int32_t region = InternRegion(view.region);
  if (auto found = Find(view.id)) {
    r = *found;
    if (slots_[r].region != region) {
      EraseOne(by_region_[static_cast<size_t>(slots_[r].region)], r);
      by_region_[static_cast<size_t>(region)].push_back(r);
    }
  } else {
    r = static_cast<RunnerIndex>(slots_.size());
    slots_.emplace_back();
    records_.emplace_back();
    by_id_[view.id] = r;
    all_.push_back(r);
    by_region_[static_cast<size_t>(region)].push_back(r);
  }
  RunnerSlot& s = slots_[r];
  s.capacity = view.capacity;
  s.region = region;
  s.draining = view.draining;
  s.disconnected = false;
  s.last_heartbeat = view.last_heartbeat;
  RunnerRecord& rec = records_[r];
  rec.id = view.id;
  rec.name = view.name;
  rec.address = view.address;
  rec.region = view.region;
  rec.sandbox_ids = view.sandbox_ids;
  rec.image_cache_bytes = view.image_cache_bytes;
  rec.image_cache_used_bytes = view.image_cache_used_bytes;
  SetImages(r, view.images);
  return r;
}

RunnerView FleetState::View(RunnerIndex r) const {
  const RunnerSlot& s = slots_[r];
  const RunnerRecord& rec = records_[r];
  RunnerView v;
  v.id = rec.id;
  v.name = rec.name;
  v.address = rec.address;
  v.region = rec.region;
  v.capacity = s.capacity;
  v.allocated = s.allocated();
  v.images = rec.images;
  v.sandbox_ids = rec.sandbox_ids;
  v.image_cache_bytes = rec.image_cache_bytes;
  v.image_cache_used_bytes = rec.image_cache_used_bytes;
  v.last_heartbeat = s.last_heartbeat;
  v.draining = s.draining;
  return v;
}

ImageId FleetState::Intern(const CachedImage& image) {
  absl::string_view key = KeyOf(image);
  if (key.empty()) return kNoImage;
  auto [it, inserted] = by_digest_.try_emplace(key, static_cast<ImageId>(images_.size()));
  if (inserted) {
    ImageInfo info;
    info.digest = std::string(key);
    info.ref = image.refs.empty() ? std::string(key) : image.refs.front();
    images_.push_back(std::move(info));
    holders_.emplace_back();
  }
  ImageInfo& info = images_[static_cast<size_t>(it->second)];
  info.size_bytes = std::max(info.size_bytes, image.size_bytes);
  return it->second;
}

void FleetState::AddRef(const std::string& ref, ImageId id) {
  auto& targets = by_ref_[ref];
  for (auto& [image, count] : targets) {
    if (image == id) {
      ++count;
      return;
    }
  }
  targets.emplace_back(id, 1);
}

void FleetState::RemoveRef(const std::string& ref, ImageId id) {
  auto it = by_ref_.find(ref);
  if (it == by_ref_.end()) return;
  auto& targets = it->second;
  for (size_t i = 0; i < targets.size(); ++i) {
    if (targets[i].first != id) continue;
    if (--targets[i].second == 0) {
      targets[i] = targets.back();
      targets.pop_back();
    }
    break;
  }
  if (targets.empty()) by_ref_.erase(it);
}

void FleetState::Link(RunnerIndex r, ImageId id) {
  RunnerRecord& rec = records_[r];
  auto it = std::lower_bound(rec.image_ids.begin(), rec.image_ids.end(), id);
  if (it != rec.image_ids.end() && *it == id) return;
  const auto k = it - rec.image_ids.begin();
  auto& holders = holders_[static_cast<size_t>(id)];
  rec.image_ids.insert(it, id);
  rec.holder_pos.insert(rec.holder_pos.begin() + k, static_cast<uint32_t>(holders.size()));
  holders.push_back(r);
}

void FleetState::Unlink(RunnerIndex r, ImageId id) {
  RunnerRecord& rec = records_[r];
  auto it = std::lower_bound(rec.image_ids.begin(), rec.image_ids.end(), id);
  if (it == rec.image_ids.end() || *it != id) return;
  const auto k = it - rec.image_ids.begin();
  const uint32_t pos = rec.holder_pos[static_cast<size_t>(k)];
  auto& holders = holders_[static_cast<size_t>(id)];
  const RunnerIndex moved = holders.back();
  holders[pos] = moved;
  holders.pop_back();
  if (moved != r) {
    RunnerRecord& other = records_[moved];
    auto m = std::lower_bound(other.image_ids.begin(), other.image_ids.end(), id);
    other.holder_pos[static_cast<size_t>(m - other.image_ids.begin())] = pos;
  }
  rec.image_ids.erase(it);
  rec.holder_pos.erase(rec.holder_pos.begin() + k);
}

void FleetState::SetImages(RunnerIndex r, std::vector<CachedImage> images) {
  RunnerRecord& rec = records_[r];
  for (size_t i = 0; i < rec.images.size(); ++i) {
    for (const auto& ref : rec.images[i].refs) RemoveRef(ref, rec.image_of[i]);
  }
  std::vector<ImageId> ids;
  ids.reserve(images.size());
  for (const auto& image : images) ids.push_back(Intern(image));
  std::vector<ImageId> wanted = ids;
  std::sort(wanted.begin(), wanted.end());
  wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
  if (!wanted.empty() && wanted.front() == kNoImage) wanted.erase(wanted.begin());
  // Unlink what went, link what came.
  const std::vector<ImageId> had = rec.image_ids;
  for (ImageId id : had) {
    if (!std::binary_search(wanted.begin(), wanted.end(), id)) Unlink(r, id);
  }
  for (ImageId id : wanted) Link(r, id);
  for (size_t i = 0; i < images.size(); ++i) {
    if (ids[i] == kNoImage) continue;
    for (const auto& ref : images[i].refs) AddRef(ref, ids[i]);
  }
  rec.images = std::move(images);
  rec.image_of = std::move(ids);
}

void FleetState::AddImage(RunnerIndex r, CachedImage image) {
  std::vector<CachedImage> images = records_[r].images;
  absl::string_view key = KeyOf(image);
  bool replaced = false;
  for (auto& existing : images) {
    if (KeyOf(existing) != key) continue;
    for (auto& ref : existing.refs) {
      if (std::find(image.refs.begin(), image.refs.end(), ref) == image.refs.end()) {
        image.refs.push_back(ref);
      }
    }
    existing = image;
    replaced = true;
    break;
  }
  if (!replaced) images.push_back(std::move(image));
  SetImages(r, std::move(images));
}

bool FleetState::Holds(RunnerIndex r, ImageId image) const {
  if (image == kNoImage) return false;
  const auto& ids = records_[r].image_ids;
  return std::binary_search(ids.begin(), ids.end(), image);
}

ImageId FleetState::Resolve(absl::string_view image) const {
  absl::string_view digest = PinnedDigest(image);
  if (!digest.empty()) {
    auto it = by_digest_.find(digest);
    return it == by_digest_.end() ? kNoImage : it->second;
  }
  if (auto it = by_ref_.find(image); it != by_ref_.end() && !it->second.empty()) {
    const auto* best = &it->second.front();
    for (const auto& target : it->second) {
      if (target.second > best->second) best = &target;
    }
    return best->first;
  }
  // Images reported without a digest are known by their first reference.
  auto it = by_digest_.find(image);
  return it == by_digest_.end() ? kNoImage : it->second;
}

void FleetState::RecordPlacement(ImageId image) {
  if (image == kNoImage || demand_window_ == 0) return;
  if (recent_count_.size() < images_.size()) recent_count_.resize(images_.size(), 0);
  if (recent_.size() < demand_window_) {
    recent_.push_back(image);
  } else {
    --recent_count_[static_cast<size_t>(recent_[recent_next_])];
    recent_[recent_next_] = image;
    recent_next_ = (recent_next_ + 1) % demand_window_;
  }
  ++recent_count_[static_cast<size_t>(image)];
}

double FleetState::DemandShare(ImageId image) const {
  if (image == kNoImage || recent_.empty() || static_cast<size_t>(image) >= recent_count_.size()) {
    return 0;
  }
  return static_cast<double>(recent_count_[static_cast<size_t>(image)]) /
         static_cast<double>(recent_.size());
}

void FleetState::set_demand_window(size_t window) {
  demand_window_ = window;
  recent_.clear();
  recent_next_ = 0;
  recent_count_.assign(recent_count_.size(), 0);
}

const std::vector<RunnerIndex>& FleetState::Holders(ImageId image) const {
  if (image == kNoImage || static_cast<size_t>(image) >= holders_.size()) return NoRunners();
  return holders_[static_cast<size_t>(image)];
}

}  // namespace isorun::scheduler
