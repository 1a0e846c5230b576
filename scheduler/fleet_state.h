#pragma once

// The fleet as placement sees it: runners, their capacity and what is allocated on them, and an
// index from cached image to the runners that hold it. Plain data: no locking, no I/O, no clock.
// Fleet owns one under its mutex; the benchmark and the tests drive one directly with thousands of
// synthetic runners.
//
// Runners are addressed by a dense RunnerIndex that never changes once given (runners are never
// removed: a gone runner is LOST, and comes back under the same id). The placement-critical fields
// of a runner sit in a compact RunnerSlot array so sampling candidates touches little memory.
//
// Images are interned: one ImageId per manifest digest. Every reference a runner reports for a
// digest (busybox:1.36, REGISTRY/busybox:1.36) resolves to it, and so do `NAME@sha256:...` and a
// bare `sha256:...`: a tag and its digest are one image. When runners disagree about a tag (it
// moved), the digest most runners report for it wins.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace isorun::scheduler {

struct ResourceVector {
  int64_t cpu_millis = 0;
  int64_t memory_mb = 0;
  int64_t sandboxes = 0;

  ResourceVector& operator+=(const ResourceVector& o) {
    cpu_millis += o.cpu_millis;
    memory_mb += o.memory_mb;
    sandboxes += o.sandboxes;
    return *this;
  }
  ResourceVector& operator-=(const ResourceVector& o) {
    cpu_millis -= o.cpu_millis;
    memory_mb -= o.memory_mb;
    sandboxes -= o.sandboxes;
    return *this;
  }
  friend ResourceVector operator+(ResourceVector a, const ResourceVector& b) { return a += b; }
  friend ResourceVector operator-(ResourceVector a, const ResourceVector& b) { return a -= b; }
  friend bool operator==(const ResourceVector&, const ResourceVector&) = default;
};

// One image in a runner's cache, as the runner reports it.
struct CachedImage {
  std::string digest;  // sha256:... of the manifest; empty: identified by its first ref
  int64_t size_bytes = 0;
  std::vector<std::string> refs;  // references known to resolve to the digest
  absl::Time last_used = absl::InfinitePast();
  int sandboxes = 0;  // sandboxes using it now

  friend bool operator==(const CachedImage&, const CachedImage&) = default;
};

// A runner as registered and as listed.
struct RunnerView {
  std::string id;
  std::string name;
  std::string address;
  std::string region;
  ResourceVector capacity;
  ResourceVector allocated;  // listing: reserved by placements plus what runs beyond them
  std::vector<CachedImage> images;
  std::vector<std::string> sandbox_ids;  // as the runner last reported them
  int64_t image_cache_bytes = 0;         // 0: not reported
  int64_t image_cache_used_bytes = 0;
  absl::Time last_heartbeat = absl::InfinitePast();
  bool draining = false;
};

using RunnerIndex = uint32_t;
using ImageId = int32_t;
inline constexpr ImageId kNoImage = -1;

// What placement reads of a runner, kept small and contiguous.
struct RunnerSlot {
  ResourceVector capacity;
  ResourceVector reserved;  // held by placements
  ResourceVector extra;     // running on the runner beyond its placements (from heartbeats)
  absl::Time last_heartbeat = absl::InfinitePast();
  int32_t region = 0;
  bool draining = false;
  // The runner's heartbeat stream broke: no placements until it is heard from again.
  bool disconnected = false;

  ResourceVector allocated() const { return reserved + extra; }
};

// The rest of what the scheduler knows of a runner.
struct RunnerRecord {
  std::string id;
  std::string name;
  std::string address;
  std::string region;
  std::vector<CachedImage> images;
  std::vector<ImageId> image_of;     // the id of images[i]
  std::vector<ImageId> image_ids;    // the same ids, sorted and unique
  std::vector<uint32_t> holder_pos;  // where this runner sits in Holders(image_ids[i])
  std::vector<std::string> sandbox_ids;
  int64_t image_cache_bytes = 0;
  int64_t image_cache_used_bytes = 0;
  // Image references being pulled onto the runner ahead of demand, and their estimated bytes.
  std::vector<std::string> pulling;
  int64_t pulling_bytes = 0;
};

struct ImageInfo {
  std::string digest;
  int64_t size_bytes = 0;  // the largest size any runner reported
  std::string ref;         // a reference to pull it by (the first one reported)
};

class FleetState {
 public:
  // Adds a runner, or replaces the registration of the runner with the same id: its name,
  // address, region, capacity, images, draining flag and last heartbeat come from `view`; what
  // placements reserved and the measured extra stay.
  RunnerIndex Upsert(const RunnerView& view);
  std::optional<RunnerIndex> Find(absl::string_view runner_id) const;
  size_t size() const { return slots_.size(); }

  const RunnerSlot& slot(RunnerIndex r) const { return slots_[r]; }
  RunnerSlot& mutable_slot(RunnerIndex r) { return slots_[r]; }
  const RunnerRecord& record(RunnerIndex r) const { return records_[r]; }
  // Runner `r` as a whole (the inverse of what Upsert takes in).
  RunnerView View(RunnerIndex r) const;
  RunnerRecord& mutable_record(RunnerIndex r) { return records_[r]; }

  // Replaces the runner's cached images and updates the image index (only the images that came
  // or went touch it: cost does not grow with how many runners hold an image).
  void SetImages(RunnerIndex r, std::vector<CachedImage> images);
  // Adds (or refreshes) one image, as after a pull; its refs join those already known.
  void AddImage(RunnerIndex r, CachedImage image);
  bool Holds(RunnerIndex r, ImageId image) const;

  // The image a reference (tag, NAME@digest or digest) names; kNoImage when no runner has it.
  ImageId Resolve(absl::string_view image) const;
  // Runners whose cache holds `image`, in no particular order.
  const std::vector<RunnerIndex>& Holders(ImageId image) const;
  const ImageInfo& image(ImageId image) const { return images_[static_cast<size_t>(image)]; }
  size_t image_count() const { return images_.size(); }

  // -1 for a region no runner is in. The empty region means any.
  int32_t RegionId(absl::string_view region) const;
  // Runners of a region (every runner for region -1).
  const std::vector<RunnerIndex>& InRegion(int32_t region) const;
  const std::vector<std::string>& regions() const { return region_names_; }

  // Recent demand, for the spread factor of placement: which images the last `window`
  // placements asked for (a count, not a time window, so it needs no clock).
  void RecordPlacement(ImageId image);
  // The share of the remembered placements that asked for `image`; 0 when none did.
  double DemandShare(ImageId image) const;
  void set_demand_window(size_t window);

  void Reserve(RunnerIndex r, const ResourceVector& amount) { slots_[r].reserved += amount; }
  void Unreserve(RunnerIndex r, const ResourceVector& amount) { slots_[r].reserved -= amount; }

 private:
  ImageId Intern(const CachedImage& image);
  void AddRef(const std::string& ref, ImageId id);
  void RemoveRef(const std::string& ref, ImageId id);
  void Link(RunnerIndex r, ImageId id);
  void Unlink(RunnerIndex r, ImageId id);
  int32_t InternRegion(const std::string& region);

  std::vector<RunnerSlot> slots_;
  std::vector<RunnerRecord> records_;
  absl::flat_hash_map<std::string, RunnerIndex> by_id_;

  std::vector<ImageInfo> images_;
  std::vector<std::vector<RunnerIndex>> holders_;  // by ImageId
  absl::flat_hash_map<std::string, ImageId> by_digest_;
  // reference -> (image, how many runners report the pair)
  absl::flat_hash_map<std::string, std::vector<std::pair<ImageId, int>>> by_ref_;

  std::vector<std::string> region_names_;
  absl::flat_hash_map<std::string, int32_t> region_ids_;
  std::vector<std::vector<RunnerIndex>> by_region_;
  std::vector<RunnerIndex> all_;

  size_t demand_window_ = 10000;
  std::vector<ImageId> recent_;  // ring buffer of the last placements' images
  size_t recent_next_ = 0;
  std::vector<int32_t> recent_count_;  // by ImageId
};

// The digest a reference pins (`NAME@sha256:...` or `sha256:...`), or empty.
absl::string_view PinnedDigest(absl::string_view image);

}  // namespace isorun::scheduler
