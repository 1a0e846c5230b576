#include "services/runner/disk_layer.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
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

}  // namespace isorun::runner
