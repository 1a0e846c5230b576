#pragma once

// The runner's image cache: OCI images pulled from a registry, content-addressed by manifest
// digest, each unpacked once into a read-only root filesystem that the sandboxes using it share
// as the lower layer of their overlay (copy-on-write).
//
// Promises:
// - A reference with a tag is resolved to a digest once, at its first pull; afterwards it is
//   served from the cache without asking the registry (API.md requires pinned tags; a tag moved
//   in the registry is seen once the image has been evicted). A reference with a digest never
//   needs the registry once that digest is cached.
// - Concurrent acquisitions of one cold image share a single resolve and a single pull
//   (single-flight by reference and by digest); the pull's failure is every waiter's failure.
// - An image is evicted, least recently used first, when the unpacked total exceeds the budget,
//   and never while a holder (a sandbox) uses it. When everything is in use the cache may
//   exceed its budget rather than fail a start.
// - State lives under `dir` (DIR/<digest hex>/rootfs and image.meta, written last), so a runner
//   restart keeps its cache; incomplete pulls are removed at Load().
//
// Thread-safe. Pulls run on the calling thread, outside the lock.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "services/runner/driver.h"
#include "services/runner/image_ref.h"

namespace isorun::runner {

// What a sandbox's init needs from the image's configuration.
struct ImageConfig {
  std::vector<std::string> env;  // "K=V"
  std::string cwd = "/";
};

// Gets images from a registry. The real one runs skopeo and umoci (skopeo_fetcher.h); tests use
// fakes that count calls.
class ImageFetcher {
 public:
  virtual ~ImageFetcher() = default;
  // The manifest digest `ref` (which has a tag and no digest) points to now.
  virtual absl::StatusOr<std::string> Resolve(const ImageRef& ref) = 0;
  // Downloads manifest `digest` of `ref`'s repository, verifying every digest, and unpacks its
  // root filesystem into `dir`/rootfs (an empty directory `dir` exists).
  virtual absl::StatusOr<ImageConfig> Fetch(const ImageRef& ref, const std::string& digest,
                                            const std::string& dir) = 0;
  // The compressed size of manifest `digest` of `ref`'s repository (its layers and config): what
  // Fetch downloads into `dir`/layout. UNIMPLEMENTED when the fetcher cannot say.
  virtual absl::StatusOr<int64_t> CompressedSize(const ImageRef& ref, const std::string& digest) {
    return absl::UnimplementedError("no compressed size");
  }
};

// Where a pull in progress is: "PULLING" (resolving the tag, or downloading: `bytes_done` of
// `bytes_total`, 0 when unknown) or "UNPACKING" (the download is complete).
struct PullProgress {
  std::string phase;
  int64_t bytes_done = 0;
  int64_t bytes_total = 0;
};

struct ImageCacheOptions {
  std::string dir;
  int64_t budget_bytes = int64_t{20} << 30;
  std::string default_registry;  // for unqualified references
};

// A sandbox's use of a cached image; give it back with Release(digest, holder).
struct ImageLease {
  std::string digest;
  std::string rootfs;  // read-only: never write here
  ImageConfig config;
  bool warm = false;  // cached before this call (no resolve, no pull, no wait for one)
};

struct ImageCacheStats {
  int64_t resolves = 0;  // registry lookups of a tag
  int64_t pulls = 0;     // images fetched and unpacked
  int64_t evictions = 0;
};

class ImageCache {
 public:
  ImageCache(ImageCacheOptions options, ImageFetcher& fetcher);
  ImageCache(const ImageCache&) = delete;
  ImageCache& operator=(const ImageCache&) = delete;

  // Reads the cache directory, removing incomplete pulls and leftovers of evictions.
  absl::Status Load();

  // Resolves `image` (see image_ref.h), pulls it if needed and records `holder` as a user of it.
  // Idempotent per (image, holder). NOT_FOUND when the registry has no such image,
  // INVALID_ARGUMENT for a malformed reference, UNAVAILABLE when the registry cannot be reached.
  absl::StatusOr<ImageLease> Acquire(const std::string& image, const std::string& holder);
  // Records `holder` as a user of a cached digest (a runner restart re-attaching its sandboxes).
  // NOT_FOUND when the digest is not cached.
  absl::StatusOr<ImageLease> AcquireDigest(const std::string& digest, const std::string& holder);
  // Ends `holder`'s use of `digest` (no-op if it had none) and evicts if over budget.
  void Release(const std::string& digest, const std::string& holder);

  // Pulls `image` if needed without keeping it in use (pre-warming): it becomes the most
  // recently used image. Returns its entry.
  absl::StatusOr<CachedImageInfo> Prefetch(const std::string& image);

  // The pull of `image` in progress now, if one is (a cold Acquire or Prefetch waiting for it).
  // The first call of a pull asks the fetcher for its size (one registry request); later calls
  // only measure the download folder.
  std::optional<PullProgress> Progress(const std::string& image);

  std::vector<CachedImageInfo> Images();
  int64_t total_bytes();
  ImageCacheStats stats();
  const std::string& default_registry() const { return options_.default_registry; }

 private:
  struct Entry {
    std::string digest;
    int64_t size_bytes = 0;
    absl::Time last_used;
    std::set<std::string> tags;   // registry/repo:tag known to point here
    std::set<std::string> names;  // registry/repo it was pulled from
    ImageConfig config;
    std::set<std::string> holders;
  };
  // One in-progress pull or resolve; waiters block on `done`.
  struct Flight {
    absl::Notification done;
    absl::Status status;
  };

  std::string EntryDir(const std::string& digest) const;
  ImageLease LeaseLocked(Entry& entry, const std::string& holder, bool warm)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RememberRefLocked(Entry& entry, const ImageRef& ref) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PersistLocked(const Entry& entry, bool sync = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves evicted entries to the trash; the caller deletes them outside the lock.
  std::vector<std::string> EvictLocked(const std::string& keep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EmptyTrash(const std::vector<std::string>& dirs);
  // Runs `fn` once for concurrent callers with the same key.
  absl::Status SingleFlight(const std::string& key, const std::function<absl::Status()>& fn);
  absl::Status PullRef(const ImageRef& ref);
  absl::Status PullDigest(const ImageRef& ref, const std::string& digest);

  const ImageCacheOptions options_;
  ImageFetcher& fetcher_;
  absl::Mutex mu_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);     // by digest
  std::map<std::string, std::string> tags_ ABSL_GUARDED_BY(mu_);  // registry/repo:tag -> digest
  int64_t total_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  ImageCacheStats stats_ ABSL_GUARDED_BY(mu_);
  // Pulls in progress: reference (ImageRef::ToString) -> its digest once resolved ("" before),
  // counted (several callers of one reference); digest -> the pull's folder and size.
  struct RefPull {
    int callers = 0;
    std::string digest;
  };
  struct DigestPull {
    ImageRef ref;
    std::string dir;
    int64_t total = -1;  // -1: not asked yet; 0: unknown
  };
  std::map<std::string, RefPull> ref_pulls_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, DigestPull> digest_pulls_ ABSL_GUARDED_BY(mu_);
  absl::Mutex flights_mu_;
  std::map<std::string, std::shared_ptr<Flight>> flights_ ABSL_GUARDED_BY(flights_mu_);
};

}  // namespace isorun::runner
