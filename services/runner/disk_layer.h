#pragma once

// The writable layer of a sandbox as a filesystem of its own, so that its size is capped
// (`diskMb`): a sparse file formatted ext4 and mounted through a loop device, on which the
// sandbox's overlay keeps its upper and work directories. A sandbox that fills it gets ENOSPC;
// the host's disk and the other sandboxes' layers are not touched.
//
// Why this and not the alternatives: project quotas (ext4 `prjquota`, XFS `pquota`) need the
// data folder's filesystem mounted with them, which an operator's runner host rarely is (this
// one is not); a tmpfs would count against memory; overlayfs itself has no size limit. A loop
// filesystem works on any host with loop devices. The file is sparse and mounted with `discard`,
// so host disk is used only for what the sandbox holds.
//
// Formatting (mke2fs) and mounting cost tens of milliseconds, more than runc's own start on a
// busy host, so neither is on the start path: a DiskLayerPool keeps a few layers of each size
// in use formatted, mounted and empty, made by a background thread; a start takes one (a
// symlink in the sandbox's directory names it). Every layer is formatted afresh for one sandbox
// and never reused, so nothing one tenant wrote can reach another. A size nobody asked for
// recently is made on the start path, once, and then kept ready too.

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace isorun::runner {

// Creates `image` (size_mb MiB, sparse), formats it with its root directory owned by `owner`
// (uid and gid), and mounts it on the existing directory `mount_point` (nosuid, nodev). The loop
// device detaches by itself once the filesystem is unmounted.
absl::Status MountDiskLayer(const std::string& image, const std::string& mount_point, int size_mb,
                            uint32_t owner);

// Unmounts what MountDiskLayer mounted (lazily: a process still holding a file there does not
// block it). OK when nothing is mounted there.
absl::Status UnmountDiskLayer(const std::string& mount_point);

struct DiskLayerPoolOptions {
  std::string dir;        // where layers live: <dir>/<name>.img mounted on <dir>/<name>/
  uint32_t owner = 0;     // uid and gid of each layer's root, upper/ and work/ directories
  int default_mb = 2048;  // always kept ready
  int per_size = 2;       // ready layers per size; 0: no pool, every start formats its own
  int max_sizes = 4;      // sizes kept ready besides the default (the most recently used)
  absl::Duration size_ttl = absl::Minutes(10);  // a size unused this long is no longer kept
};

class DiskLayerPool {
 public:
  explicit DiskLayerPool(DiskLayerPoolOptions options);
  // Stops the background thread and removes the ready layers nobody took.
  ~DiskLayerPool();
  DiskLayerPool(const DiskLayerPool&) = delete;
  DiskLayerPool& operator=(const DiskLayerPool&) = delete;

  // Removes what an earlier process left in the pool's folder except the layers in `keep`
  // (those of sandboxes that still run), then starts the background thread.
  absl::Status Start(const std::vector<std::string>& keep);

  // A layer of size_mb for one sandbox: the path of its mount point, holding upper/ and work/.
  // A ready one if there is; else formatted and mounted now.
  absl::StatusOr<std::string> Take(int size_mb);

  // Unmounts a layer Take returned and deletes its image. OK when it is gone already.
  static absl::Status Remove(const std::string& layer_dir);

  // Remove, on the background thread (a stop does not wait for the unmount, the loop device's
  // release and the image's deletion; nor does the next start compete with them at full
  // priority). Synchronous without a pool.
  void Discard(std::string layer_dir);

  // Ready layers of size_mb (for tests).
  int ReadyCount(int size_mb);

 private:
  absl::StatusOr<std::string> Make(int size_mb);
  void Refill();
  // Sizes to keep ready and how many are missing of each; drops expired sizes' layers into
  // `stale`.
  std::vector<int> Wanted(std::vector<std::string>& stale) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const DiskLayerPoolOptions options_;
  absl::Mutex mu_;
  std::map<int, std::deque<std::string>> ready_ ABSL_GUARDED_BY(mu_);
  std::map<int, absl::Time> last_used_ ABSL_GUARDED_BY(mu_);  // sizes besides the default
  std::vector<std::string> discarded_ ABSL_GUARDED_BY(mu_);   // for Remove on the thread
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace isorun::runner
