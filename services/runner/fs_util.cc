#include "services/runner/fs_util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"

namespace isorun::runner {
namespace {

absl::Status Errno(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

thread_local int64_t g_usage = 0;
thread_local dev_t g_root_dev = 0;

// Files with several links are counted once (an image's busybox has hundreds of names).
thread_local std::set<ino_t>* g_linked = nullptr;

int AddUsage(const char*, const struct stat* st, int, struct FTW*) {
  if (st->st_dev != g_root_dev) return 0;
  if (st->st_nlink > 1 && !S_ISDIR(st->st_mode) && !g_linked->insert(st->st_ino).second) return 0;
  g_usage += static_cast<int64_t>(st->st_blocks) * 512;
  return 0;
}

thread_local int g_remove_errno = 0;

int RemoveOne(const char* path, const struct stat* st, int type, struct FTW*) {
  if (st->st_dev != g_root_dev) return 0;  // a mount point's contents: leave alone
  int rc = (type == FTW_DP || type == FTW_D) ? ::rmdir(path) : ::unlink(path);
  if (rc != 0 && errno != ENOENT && g_remove_errno == 0) g_remove_errno = errno;
  return 0;
}

}  // namespace

absl::Status MakeDirs(const std::string& path, unsigned mode) {
  if (path.empty()) return absl::InvalidArgumentError("empty path");
  std::string partial;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    partial = path.substr(0, pos);
    if (partial.empty()) continue;
    if (::mkdir(partial.c_str(), mode) != 0 && errno != EEXIST) return Errno("mkdir", partial);
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::InternalError(absl::StrCat(path, " is not a directory"));
  }
  return absl::OkStatus();
}

absl::Status RemoveTree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return Errno("stat", path);
  }
  if (!S_ISDIR(st.st_mode)) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return Errno("unlink", path);
    return absl::OkStatus();
  }
  g_root_dev = st.st_dev;
  g_remove_errno = 0;
  ::nftw(path.c_str(), RemoveOne, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
  if (g_remove_errno != 0 || PathExists(path)) {
    errno = g_remove_errno != 0 ? g_remove_errno : ENOTEMPTY;
    return Errno("cannot remove", path);
  }
  return absl::OkStatus();
}

int64_t DiskUsage(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return 0;
  g_root_dev = st.st_dev;
  g_usage = 0;
  std::set<ino_t> linked;
  g_linked = &linked;
  ::nftw(path.c_str(), AddUsage, 32, FTW_PHYS | FTW_MOUNT);
  g_linked = nullptr;
  return g_usage;
}

absl::Status WriteFileAtomic(const std::string& path, const std::string& data, bool sync) {
  std::string tmp = absl::StrCat(path, ".tmp.", ::getpid(), ".", ::gettid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("create", tmp);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t w = ::write(fd, data.data() + off, data.size() - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      absl::Status s = Errno("write", tmp);
      ::close(fd);
      ::unlink(tmp.c_str());
      return s;
    }
    off += static_cast<size_t>(w);
  }
  if (sync) ::fsync(fd);
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status s = Errno("rename", tmp);
    ::unlink(tmp.c_str());
    return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, " does not exist"));
    return Errno("open", path);
  }
  std::string out;
  char buf[8192];
  while (true) {
    ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    out.append(buf, static_cast<size_t>(r));
  }
  ::close(fd);
  return out;
}

std::vector<std::string> ListDir(const std::string& path) {
  std::vector<std::string> out;
  DIR* d = ::opendir(path.c_str());
  if (d == nullptr) return out;
  while (dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
    out.emplace_back(e->d_name);
  }
  ::closedir(d);
  return out;
}

bool PathExists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

}  // namespace isorun::runner
