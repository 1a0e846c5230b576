#include "services/runner/disk_layer.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/mount.h>
#include <unistd.h>

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/kit/ids.h"
#include "services/kit/log.h"
#include "services/runner/fs_util.h"
#include "services/runner/process.h"

namespace isorun::runner {
namespace {

absl::Status Errno(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

// Closes a file descriptor when it goes out of scope.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Attaches `image` to a free loop device with autoclear; returns the device's path and sets
// `*loop_fd` to an open descriptor of it. Keep that open until the filesystem is mounted: with
// autoclear, the device detaches when its last opener closes it while nothing is mounted.
absl::StatusOr<std::string> AttachLoop(const std::string& image, int* loop_fd) {
  Fd file{::open(image.c_str(), O_RDWR | O_CLOEXEC)};
  if (file.fd < 0) return Errno("open " + image);
  Fd control{::open("/dev/loop-control", O_RDWR | O_CLOEXEC)};
  if (control.fd < 0) return Errno("open /dev/loop-control");
  // Another process may take the device we were offered before we configure it: ask again.
  for (int attempt = 0; attempt < 16; ++attempt) {
    const int n = ::ioctl(control.fd, LOOP_CTL_GET_FREE);
    if (n < 0) return Errno("no free loop device");
    const std::string dev = absl::StrCat("/dev/loop", n);
    Fd loop{::open(dev.c_str(), O_RDWR | O_CLOEXEC)};
    if (loop.fd < 0) {
      if (errno == ENOENT) continue;  // devtmpfs has not made the node yet
      return Errno("open " + dev);
    }
    loop_config config;
    std::memset(&config, 0, sizeof config);
    config.fd = static_cast<uint32_t>(file.fd);
    config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
    std::strncpy(reinterpret_cast<char*>(config.info.lo_file_name), image.c_str(),
                 LO_NAME_SIZE - 1);
    if (::ioctl(loop.fd, LOOP_CONFIGURE, &config) == 0) {
      *loop_fd = loop.fd;
      loop.fd = -1;
      return dev;
    }
    if (errno != EBUSY) return Errno("configure " + dev);
  }
  return absl::UnavailableError("no free loop device after 16 attempts");
}

}  // namespace

absl::Status MountDiskLayer(const std::string& image, const std::string& mount_point, int size_mb,
                            uint32_t owner) {
  {
    Fd f{::open(image.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600)};
    if (f.fd < 0) return Errno("create " + image);
    if (::ftruncate(f.fd, static_cast<off_t>(size_mb) << 20) != 0) return Errno("size " + image);
  }
  // No journal (the layer does not outlive its sandbox's host boot), no reserved blocks (the
  // sandbox gets all of diskMb), inode tables initialized lazily (mke2fs in milliseconds).
  auto mkfs = RunCaptured(
      {"mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0", "-E",
       absl::StrCat("lazy_itable_init=1,nodiscard,root_owner=", owner, ":", owner), image},
      absl::Seconds(60));
  if (!mkfs.ok()) return mkfs.status();
  if (mkfs->exit_code != 0) {
    return absl::InternalError(absl::StrCat("mkfs.ext4 ", image, " failed: ", mkfs->err));
  }
  Fd loop;
  auto dev = AttachLoop(image, &loop.fd);
  if (!dev.ok()) return dev.status();
  if (::mount(dev->c_str(), mount_point.c_str(), "ext4", MS_NOSUID | MS_NODEV, "discard") != 0) {
    // Closing `loop` detaches the device (autoclear, nothing mounted).
    return Errno(absl::StrCat("mount ", *dev, " on ", mount_point));
  }
  // The mount holds the device now; it detaches when the filesystem is unmounted.
  return absl::OkStatus();
}

absl::Status UnmountDiskLayer(const std::string& mount_point) {
  if (::umount2(mount_point.c_str(), MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT) {
    return Errno("unmount " + mount_point);
  }
  return absl::OkStatus();
}

DiskLayerPool::DiskLayerPool(DiskLayerPoolOptions options) : options_(std::move(options)) {}

DiskLayerPool::~DiskLayerPool() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
  absl::MutexLock lock(&mu_);
  for (auto& [size, layers] : ready_) {
    for (const auto& dir : layers) (void)Remove(dir);
  }
  ready_.clear();
  for (const auto& dir : discarded_) (void)Remove(dir);
  discarded_.clear();
}

absl::Status DiskLayerPool::Start(const std::vector<std::string>& keep) {
  if (absl::Status s = MakeDirs(options_.dir, 0711); !s.ok()) return s;
  const std::set<std::string> kept(keep.begin(), keep.end());
  for (const auto& name : ListDir(options_.dir)) {
    std::string base = name;
    if (absl::EndsWith(base, ".img")) base.resize(base.size() - 4);
    const std::string dir = absl::StrCat(options_.dir, "/", base);
    if (kept.count(dir) > 0) continue;
    if (absl::Status s = Remove(dir); !s.ok()) {
      LogWarn("cannot remove an old disk layer", {{"layer", dir}, {"error", s.ToString()}});
    }
  }
  if (options_.per_size > 0) {
    {
      absl::MutexLock lock(&mu_);
      wake_ = true;  // fill the pool at once
    }
    thread_ = std::thread([this] { Refill(); });
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> DiskLayerPool::Make(int size_mb) {
  const std::string dir = absl::StrCat(options_.dir, "/", size_mb, "-", RandomHex(8));
  if (::mkdir(dir.c_str(), 0711) != 0) return Errno("mkdir " + dir);
  auto fail = [&](absl::Status s) {
    (void)Remove(dir);
    return s;
  };
  if (absl::Status s = MountDiskLayer(dir + ".img", dir, size_mb, options_.owner); !s.ok()) {
    return fail(s);
  }
  // The overlay's directories: upper/ is the sandbox's root directory (its owner and mode show
  // through), work/ is the overlay's own scratch space.
  const std::string upper = dir + "/upper", work = dir + "/work";
  if (::mkdir(upper.c_str(), 0755) != 0 || ::chown(upper.c_str(), options_.owner, options_.owner) != 0 ||
      ::chmod(upper.c_str(), 0755) != 0) {
    return fail(Errno("prepare " + upper));
  }
  if (::mkdir(work.c_str(), 0711) != 0) return fail(Errno("mkdir " + work));
  return dir;
}

absl::StatusOr<std::string> DiskLayerPool::Take(int size_mb) {
  if (options_.per_size > 0) {
    absl::MutexLock lock(&mu_);
    if (size_mb != options_.default_mb) last_used_[size_mb] = absl::Now();
    wake_ = true;
    auto it = ready_.find(size_mb);
    if (it != ready_.end() && !it->second.empty()) {
      std::string dir = std::move(it->second.front());
      it->second.pop_front();
      return dir;
    }
  }
  return Make(size_mb);
}

absl::Status DiskLayerPool::Remove(const std::string& layer_dir) {
  if (absl::Status s = UnmountDiskLayer(layer_dir); !s.ok()) return s;
  if (::unlink((layer_dir + ".img").c_str()) != 0 && errno != ENOENT) {
    return Errno("remove " + layer_dir + ".img");
  }
  // Lazily unmounted: the directory is empty as seen from here.
  return RemoveTree(layer_dir);
}

void DiskLayerPool::Discard(std::string layer_dir) {
  {
    absl::MutexLock lock(&mu_);
    if (thread_.joinable() && !stop_) {
      discarded_.push_back(std::move(layer_dir));
      wake_ = true;
      return;
    }
  }
  if (absl::Status s = Remove(layer_dir); !s.ok()) {
    LogWarn("cannot remove a disk layer", {{"layer", layer_dir}, {"error", s.ToString()}});
  }
}

int DiskLayerPool::ReadyCount(int size_mb) {
  absl::MutexLock lock(&mu_);
  auto it = ready_.find(size_mb);
  return it == ready_.end() ? 0 : static_cast<int>(it->second.size());
}

std::vector<int> DiskLayerPool::Wanted(std::vector<std::string>& stale) {
  const absl::Time now = absl::Now();
  // The most recently used sizes, at most max_sizes of them, each used within size_ttl.
  std::vector<std::pair<absl::Time, int>> recent;
  for (const auto& [size, used] : last_used_) recent.push_back({used, size});
  std::sort(recent.rbegin(), recent.rend());
  std::set<int> keep = {options_.default_mb};
  for (size_t i = 0; i < recent.size(); ++i) {
    if (static_cast<int>(i) < options_.max_sizes && now - recent[i].first < options_.size_ttl) {
      keep.insert(recent[i].second);
    } else {
      last_used_.erase(recent[i].second);
    }
  }
  for (auto it = ready_.begin(); it != ready_.end();) {
    if (keep.count(it->first) > 0) {
      ++it;
      continue;
    }
    for (auto& dir : it->second) stale.push_back(std::move(dir));
    it = ready_.erase(it);
  }
  std::vector<int> missing;
  for (int size : keep) {
    const int have = static_cast<int>(ready_[size].size());
    for (int i = have; i < options_.per_size; ++i) missing.push_back(size);
  }
  return missing;
}

void DiskLayerPool::Refill() {
  // Formatting competes with starts for the CPU and the disk: this thread and the mke2fs it runs
  // yield to everything else (nice 19, idle I/O class), so a start never waits behind a refill.
  (void)::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 19);
  constexpr int kIoprioClassIdle = 3, kIoprioClassShift = 13, kIoprioWhoProcess = 1;
  (void)::syscall(SYS_ioprio_set, kIoprioWhoProcess, ::gettid(),
                  kIoprioClassIdle << kIoprioClassShift);
  absl::Duration backoff = absl::ZeroDuration();
  while (true) {
    std::vector<std::string> stale;
    std::vector<int> missing;
    std::vector<std::string> discarded;
    {
      absl::MutexLock lock(&mu_);
      // Wake when a layer was taken, and now and then to drop sizes no longer used.
      auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || wake_; };
      mu_.AwaitWithTimeout(absl::Condition(&woken),
                           backoff > absl::ZeroDuration() ? backoff : absl::Minutes(1));
      if (stop_) return;
      wake_ = false;
      missing = Wanted(stale);
      discarded.swap(discarded_);
    }
    for (const auto& dir : discarded) {
      if (absl::Status s = Remove(dir); !s.ok()) {
        LogWarn("cannot remove a disk layer", {{"layer", dir}, {"error", s.ToString()}});
      }
    }
    for (const auto& dir : stale) (void)Remove(dir);
    backoff = absl::ZeroDuration();
    for (int size : missing) {
      auto made = Make(size);
      if (!made.ok()) {
        // Out of loop devices or disk: try again later rather than spin.
        LogWarn("cannot prepare a disk layer", {{"error", made.status().ToString()}});
        backoff = absl::Seconds(5);
        break;
      }
      absl::MutexLock lock(&mu_);
      if (stop_) {
        (void)Remove(*made);
        return;
      }
      ready_[size].push_back(std::move(*made));
    }
    if (!missing.empty() && backoff == absl::ZeroDuration()) {
      absl::MutexLock lock(&mu_);
      wake_ = true;  // look again at once: more may have been taken meanwhile
    }
  }
}

}  // namespace isorun::runner
