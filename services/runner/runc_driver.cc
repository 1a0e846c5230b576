#include "services/runner/runc_driver.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "services/kit/egress_policy.h"
#include "services/kit/ids.h"
#include "services/kit/image_policy.h"
#include "services/kit/log.h"
#include "services/kit/status.h"
#include "services/runner/cgroups.h"
#include "services/runner/disk_layer.h"
#include "services/runner/fs_util.h"
#include "services/runner/process.h"
#include "services/runner/runc_config.h"

namespace isorun::runner {
namespace {

constexpr char kMetaFile[] = "sandbox.meta";
constexpr char kDefaultPath[] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
constexpr absl::Duration kRuncTimeout = absl::Seconds(60);
constexpr int kPauseAttempts = 5;
// What the exec wrapper prints on runc's stderr when the request's cwd cannot be entered.
constexpr char kCwdFailed[] = "isorun-exec: cannot enter cwd";

absl::Status UnknownSandbox(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("no sandbox ", id, " on this runner"));
}

absl::Status RegistryNotAllowed(const std::string& image) {
  return Error(absl::StatusCode::kInvalidArgument, "IMAGE_REGISTRY_NOT_ALLOWED",
               absl::StrCat("image ", image, " names a registry this cluster does not pull from"));
}

absl::Status Hibernated(const std::string& id) {
  return Error(absl::StatusCode::kFailedPrecondition, "SANDBOX_NOT_RUNNING",
               absl::StrCat("sandbox ", id, " is hibernated; resume it first"));
}

// runc's own error, from its stderr or its --log file: the last message, without logrus framing.
std::string RuncMessage(const std::string& text) {
  std::string last;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::string l(absl::StripAsciiWhitespace(line));
    if (l.empty()) continue;
    if (l.front() == '{') {  // --log-format json
      google::protobuf::Struct entry;
      if (google::protobuf::util::JsonStringToMessage(l, &entry).ok()) {
        auto msg = entry.fields().find("msg");
        if (msg != entry.fields().end()) l = msg->second.string_value();
      }
    } else if (auto m = l.find("msg=\""); m != std::string::npos) {
      std::string unescaped;
      std::string quoted = l.substr(m + 5);
      if (!quoted.empty() && quoted.back() == '"') quoted.pop_back();
      l = absl::CUnescape(quoted, &unescaped) ? unescaped : quoted;
    }
    last = l;
  }
  if (last.size() > 500) last = last.substr(0, 500) + "...";
  return last;
}

absl::StatusOr<std::string> RunRunc(const std::vector<std::string>& argv) {
  auto run = RunCaptured(argv, kRuncTimeout);
  if (!run.ok()) return run.status();
  if (run->exit_code != 0 || run->timed_out) {
    return absl::InternalError(absl::StrCat(ShellQuote({argv.begin() + 3, argv.end()}), " failed: ",
                                            run->timed_out ? "timed out" : RuncMessage(run->err)));
  }
  return run->out;
}

// Parses a JSON array (runc list) through a Struct, the only JSON reader at hand.
absl::StatusOr<google::protobuf::ListValue> ParseJsonArray(const std::string& text) {
  std::string t(absl::StripAsciiWhitespace(text));
  google::protobuf::ListValue out;
  if (t.empty() || t == "null") return out;
  google::protobuf::Struct wrapper;
  if (!google::protobuf::util::JsonStringToMessage(absl::StrCat("{\"l\":", t, "}"), &wrapper)
           .ok()) {
    return absl::InternalError("cannot parse the output of runc list");
  }
  return wrapper.fields().at("l").list_value();
}

bool ValidEnvKey(const std::string& key) {
  return !key.empty() && key.find('=') == std::string::npos && key.find('\0') == std::string::npos;
}

}  // namespace

bool ValidSandboxId(const std::string& id) {
  if (id.empty() || id.size() > 128 || id.front() == '.' || id.front() == '-') return false;
  for (char c : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.') {
      return false;
    }
  }
  return true;
}

RuncDriver::RuncDriver(RuncOptions options, ImageFetcher& fetcher)
    : options_(std::move(options)),
      cache_({absl::StrCat(options_.data_dir, "/images"), options_.image_cache_bytes,
              options_.registry},
             fetcher),
      layers_(std::make_unique<DiskLayerPool>(
          DiskLayerPoolOptions{.dir = absl::StrCat(options_.data_dir, "/layers"),
                               .owner = options_.uid_base,
                               .default_mb = options_.default_disk_mb,
                               .per_size = options_.disk_pool_per_size})) {
  epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
  wake_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (epoll_ >= 0 && wake_ >= 0) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = 0;
    if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, wake_, &ev) == 0) {
      watcher_ = std::thread([this] { WatchLoop(); });
    }
  }
}

RuncDriver::~RuncDriver() {
  if (watcher_.joinable()) {
    const uint64_t one = 1;
    (void)!::write(wake_, &one, sizeof one);
    watcher_.join();
  }
  {
    absl::MutexLock lock(&watch_mu_);
    for (auto& [key, w] : watches_) {
      if (w.pidfd >= 0) ::close(w.pidfd);
    }
    watches_.clear();
  }
  if (wake_ >= 0) ::close(wake_);
  if (epoll_ >= 0) ::close(epoll_);
}

void RuncDriver::AddWatch(Watch watch, int fd) {
  if (epoll_ < 0 || fd < 0) {
    if (watch.pidfd >= 0) ::close(watch.pidfd);
    return;
  }
  absl::MutexLock lock(&watch_mu_);
  const uint64_t key = next_watch_++;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
  ev.data.u64 = key;
  if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    if (watch.pidfd >= 0) ::close(watch.pidfd);
    return;
  }
  watches_[key] = std::move(watch);
}

void RuncDriver::WatchSandbox(const std::string& id, const std::shared_ptr<Sandbox>& sb) {
  int pid = 0;
  std::shared_ptr<AgentChannel> agent;
  {
    absl::MutexLock lock(&mu_);
    pid = sb->init_pid;
    agent = sb->agent;
  }
  if (pid > 0) {
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    // The pid may have been reused before the pidfd was opened: only the sandbox's own init
    // counts (the check after the open holds, as a pidfd never changes process).
    if (pidfd >= 0 && InitAlive(id, pid)) {
      AddWatch(Watch{.id = id, .sandbox = sb, .pidfd = pidfd, .agent = nullptr}, pidfd);
    } else if (pidfd >= 0) {
      ::close(pidfd);
    }
  }
  if (agent != nullptr) AddWatch(Watch{.id = id, .sandbox = sb, .pidfd = -1, .agent = agent}, agent->fd());
}

void RuncDriver::WatchLoop() {
  epoll_event events[16];
  while (true) {
    const int n = ::epoll_wait(epoll_, events, 16, -1);
    if (n < 0 && errno != EINTR) return;
    for (int i = 0; i < n; ++i) {
      const uint64_t key = events[i].data.u64;
      if (key == 0) return;  // the driver is going away
      Watch w;
      {
        absl::MutexLock lock(&watch_mu_);
        auto it = watches_.find(key);
        if (it == watches_.end()) continue;
        w = std::move(it->second);
        watches_.erase(it);
      }
      std::shared_ptr<Sandbox> sb = w.sandbox.lock();
      if (w.agent != nullptr) {
        ::epoll_ctl(epoll_, EPOLL_CTL_DEL, w.agent->fd(), nullptr);
        const bool expected = w.agent->gone();  // Stop marks it before the teardown
        w.agent->MarkGone();
        bool live = false;
        if (sb != nullptr) {
          absl::MutexLock lock(&mu_);
          live = sb->state == State::kRunning || sb->state == State::kPaused;
        }
        if (live && !expected) {
          LogWarn("the sandbox's exec agent closed its channel", {{"sandbox", w.id}});
        }
      }
      if (w.pidfd >= 0) {
        ::epoll_ctl(epoll_, EPOLL_CTL_DEL, w.pidfd, nullptr);
        ::close(w.pidfd);
        if (sb != nullptr) ReapIfDead(w.id, sb);
      }
    }
  }
}

absl::StatusOr<std::unique_ptr<RuncDriver>> RuncDriver::Create(RuncOptions options,
                                                               ImageFetcher& fetcher) {
  if (::geteuid() != 0) {
    return absl::FailedPreconditionError(
        "the runc driver needs root (it mounts overlays and creates user namespaces)");
  }
  if (options.data_dir.empty() || options.data_dir.front() != '/') {
    return absl::InvalidArgumentError("--data_dir must be an absolute path");
  }
  while (options.data_dir.size() > 1 && options.data_dir.back() == '/') options.data_dir.pop_back();
  // The configured registry (of unqualified names) is allowed under its own name too.
  if (!options.registry.empty()) {
    options.registries.push_back(absl::AsciiStrToLower(options.registry));
  }
  auto version = RunCaptured({options.runc_path, "--version"}, absl::Seconds(10));
  if (!version.ok() || version->exit_code != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot run ", options.runc_path, " (install runc, or set --runc_path)"));
  }
  if (!options.init_path.empty() && ::access(options.init_path.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("sandbox init ", options.init_path, " is not executable"));
  }
  if (absl::Status s = MakeDirs(options.data_dir, 0711); !s.ok()) return s;
  // The container's setup runs as the sandbox's root, host uid `uid_base`, which must be able
  // to walk down to its bundle (but not list anything on the way).
  std::string prefix;
  for (absl::string_view part : absl::StrSplit(options.data_dir, '/', absl::SkipEmpty())) {
    absl::StrAppend(&prefix, "/", part);
    struct stat st;
    if (::stat(prefix.c_str(), &st) != 0) return absl::InternalError("cannot stat " + prefix);
    if ((st.st_mode & S_IXOTH) != 0) continue;
    if (prefix == options.data_dir) {
      ::chmod(prefix.c_str(), (st.st_mode & 07777) | S_IXOTH);
      continue;
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "sandboxes run as host uid ", options.uid_base, " and must be able to traverse ", prefix,
        " (chmod o+x ", prefix, ", or choose another --data_dir)"));
  }
  for (const char* sub : {"/sandboxes", "/runc"}) {
    if (absl::Status s = MakeDirs(options.data_dir + sub, 0711); !s.ok()) return s;
  }
  std::unique_ptr<RuncDriver> driver(new RuncDriver(std::move(options), fetcher));
  auto own = CgroupDirsOf(static_cast<int>(::getpid()));
  if (own.count("memory") > 0) {
    driver->limit_swap_ = PathExists(own["memory"] + "/memory.memsw.limit_in_bytes");
  }
  if (absl::Status s = driver->cache_.Load(); !s.ok()) return s;
  if (absl::Status s = driver->Recover(); !s.ok()) return s;
  // Layers of re-attached sandboxes stay; the rest of an earlier run's are removed.
  std::vector<std::string> kept_layers;
  {
    absl::MutexLock lock(&driver->mu_);
    for (const auto& [id, sb] : driver->sandboxes_) {
      char target[PATH_MAX];
      const ssize_t n = ::readlink(absl::StrCat(driver->SandboxDir(id), "/layer").c_str(), target,
                                   sizeof target - 1);
      if (n > 0) kept_layers.emplace_back(target, static_cast<size_t>(n));
    }
  }
  if (absl::Status s = driver->layers_->Start(kept_layers); !s.ok()) return s;
  return driver;
}

std::string RuncDriver::SandboxDir(const std::string& id) const {
  return absl::StrCat(options_.data_dir, "/sandboxes/", id);
}

std::vector<std::string> RuncDriver::Runc(std::vector<std::string> args) const {
  std::vector<std::string> argv = {options_.runc_path, "--root",
                                   absl::StrCat(options_.data_dir, "/runc")};
  argv.insert(argv.end(), std::make_move_iterator(args.begin()),
              std::make_move_iterator(args.end()));
  return argv;
}

absl::Status RuncDriver::Recover() {
  auto listed = RunRunc(Runc({"list", "--format", "json"}));
  if (!listed.ok()) return listed.status();
  auto containers = ParseJsonArray(*listed);
  if (!containers.ok()) return containers.status();
  struct Found {
    std::string status;
    int pid = 0;
  };
  std::map<std::string, Found> found;
  for (const auto& c : containers->values()) {
    const auto& f = c.struct_value().fields();
    auto id = f.find("id");
    if (id == f.end()) continue;
    Found x;
    if (auto st = f.find("status"); st != f.end()) x.status = st->second.string_value();
    if (auto pid = f.find("pid"); pid != f.end())
      x.pid = static_cast<int>(pid->second.number_value());
    found[id->second.string_value()] = x;
  }
  const std::string root = absl::StrCat(options_.data_dir, "/sandboxes");
  for (const auto& id : ListDir(root)) {
    if (!ValidSandboxId(id)) continue;
    auto c = found.find(id);
    auto meta = ReadFile(absl::StrCat(SandboxDir(id), "/", kMetaFile));
    auto sb = std::make_shared<Sandbox>();
    if (meta.ok()) {
      for (absl::string_view line : absl::StrSplit(*meta, '\n', absl::SkipEmpty())) {
        size_t sp = line.find(' ');
        if (sp == absl::string_view::npos) continue;
        std::string key(line.substr(0, sp)), value;
        if (!absl::CUnescape(line.substr(sp + 1), &value)) continue;
        if (key == "image") sb->image = value;
        if (key == "digest") sb->digest = value;
        if (key == "memory_mb") (void)absl::SimpleAtoi(value, &sb->memory_mb);
        if (key == "init_filter") sb->init_filter = value == "1";
      }
    }
    bool alive =
        c != found.end() && (c->second.status == "running" || c->second.status == "paused");
    if (alive && !sb->digest.empty() && cache_.AcquireDigest(sb->digest, id).ok()) {
      sb->state = c->second.status == "paused" ? State::kPaused : State::kRunning;
      sb->init_pid = c->second.pid;
      sb->cgroups = CgroupDirsOf(sb->init_pid);
      sb->result = {sb->digest, true};
      {
        absl::MutexLock lock(&mu_);
        sandboxes_[id] = sb;
      }
      LogInfo("re-attached sandbox", {{"sandbox", id}, {"state", c->second.status}});
      WatchSandbox(id, sb);
    } else {
      LogInfo("removing the remains of a stopped sandbox", {{"sandbox", id}});
      if (absl::Status s = Teardown(id); !s.ok()) {
        LogWarn("cannot remove sandbox remains", {{"sandbox", id}, {"error", s.ToString()}});
      }
    }
    found.erase(id);
  }
  for (const auto& [id, c] : found) {  // a container without a bundle directory: not ours to keep
    LogWarn("deleting a container without a sandbox directory", {{"container", id}});
    (void)RunRunc(Runc({"delete", "--force", id}));
  }
  if (options_.network != nullptr) {
    std::map<std::string, int> live;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [id, sb] : sandboxes_) live[id] = sb->init_pid;
    }
    if (absl::Status s = options_.network->Recover(live); !s.ok()) {
      LogWarn("sandbox networks recovered with errors", {{"error", s.ToString()}});
    }
  }
  return absl::OkStatus();
}

absl::Status RuncDriver::Teardown(const std::string& id) {
  const std::string dir = SandboxDir(id);
  // The network first, while the sandbox's namespace still exists: deleting the host side of
  // its veth then removes the pair at once (after the container, the kernel would remove it
  // some time later), and the sandbox has no way out from the first moment.
  if (options_.network != nullptr) {
    if (absl::Status s = options_.network->Release(id); !s.ok()) return s;
  }
  // `delete --force` of a running container freezes, kills and polls (about 100 ms here); a
  // plain kill first lets it find the container stopped (or nearly) and finish in a few ms.
  (void)RunCaptured(Runc({"kill", id, "KILL"}), kRuncTimeout);
  auto run = RunCaptured(Runc({"delete", "--force", id}), kRuncTimeout);
  if (!run.ok()) return run.status();
  if (run->exit_code != 0 && !absl::StrContains(run->err, "does not exist")) {
    return absl::InternalError(
        absl::StrCat("cannot delete container ", id, ": ", RuncMessage(run->err)));
  }
  const std::string rootfs = absl::StrCat(dir, "/rootfs");
  if (::umount2(rootfs.c_str(), MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT) {
    return absl::InternalError(absl::StrCat("cannot unmount ", rootfs, ": ", std::strerror(errno)));
  }
  // The disk layer the sandbox's symlink names (none when the start failed before taking one).
  char target[PATH_MAX];
  const ssize_t n = ::readlink(absl::StrCat(dir, "/layer").c_str(), target, sizeof target - 1);
  if (n > 0) layers_->Discard(std::string(target, static_cast<size_t>(n)));
  return RemoveTree(dir);
}

absl::StatusOr<StartResult> RuncDriver::Start(const v1::StartSandboxRequest& request) {
  const std::string& id = request.sandbox_id();
  if (!ValidSandboxId(id)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid sandbox id \"", id, "\""));
  }
  while (true) {
    std::shared_ptr<Sandbox> sb;
    {
      absl::MutexLock lock(&mu_);
      auto& slot = sandboxes_[id];
      if (slot == nullptr) slot = std::make_shared<Sandbox>();
      sb = slot;
    }
    absl::MutexLock op(&sb->op_mu);
    {
      absl::MutexLock lock(&mu_);
      if (sb->state == State::kGone) continue;  // stopped meanwhile: start afresh
      if (sb->state != State::kNew) return sb->result;
    }
    auto result = StartLocked(*sb, request);
    if (!result.ok()) {
      absl::MutexLock lock(&mu_);
      sb->state = State::kGone;
      auto it = sandboxes_.find(id);
      if (it != sandboxes_.end() && it->second == sb) sandboxes_.erase(it);
    } else {
      WatchSandbox(id, sb);
    }
    return result;
  }
}

absl::StatusOr<StartResult> RuncDriver::StartLocked(Sandbox& sb,
                                                    const v1::StartSandboxRequest& request) {
  const std::string& id = request.sandbox_id();
  for (const auto& [k, v] : request.env()) {
    if (!ValidEnvKey(k) || v.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("invalid env variable name \"", k, "\""));
    }
  }
  if (!ImageRegistryAllowed(request.image(), options_.registries)) {
    return RegistryNotAllowed(request.image());
  }
  const absl::Time t0 = absl::Now();
  auto lease = cache_.Acquire(request.image(), id);
  if (!lease.ok()) return lease.status();
  const absl::Time t_image = absl::Now();
  const std::string dir = SandboxDir(id);
  auto fail = [&](absl::Status status) {
    if (absl::Status s = Teardown(id); !s.ok()) {
      LogWarn("cleanup after a failed start", {{"sandbox", id}, {"error", s.ToString()}});
    }
    cache_.Release(lease->digest, id);
    return status;
  };
  if (PathUnderProc(lease->config.cwd)) {
    return fail(Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
                      "the image's working directory is under /proc, which is not allowed"));
  }
  if (PathExists(dir)) {  // remains of an earlier attempt with this id
    if (absl::Status s = Teardown(id); !s.ok()) return fail(s);
  }
  for (const char* sub : {"", "/rootfs"}) {
    if (absl::Status s = MakeDirs(dir + sub, 0711); !s.ok()) return fail(s);
  }
  // The writable layer is a filesystem of diskMb of its own, formatted and mounted ahead of time
  // (disk_layer.h); the sandbox's directory names it with a symlink, which Teardown follows.
  const int disk_mb = request.disk_mb() > 0 ? request.disk_mb() : options_.default_disk_mb;
  auto layer = layers_->Take(disk_mb);
  if (!layer.ok()) return fail(layer.status());
  if (::symlink(layer->c_str(), (dir + "/layer").c_str()) != 0) {
    (void)DiskLayerPool::Remove(*layer);
    return fail(absl::InternalError(absl::StrCat("cannot link the disk layer of ", id)));
  }
  const absl::Time t_layer = absl::Now();
  // The layer's upper/ belongs to the sandbox's root; the merged root shows its owner and mode.
  const std::string upper = *layer + "/upper";
  const std::string rootfs = dir + "/rootfs";
  const std::string overlay =
      absl::StrCat("lowerdir=", lease->rootfs, ",upperdir=", upper, ",workdir=", *layer, "/work");
  if (::mount("overlay", rootfs.c_str(), "overlay", MS_NOSUID | MS_NODEV, overlay.c_str()) != 0) {
    return fail(absl::InternalError(
        absl::StrCat("cannot mount the sandbox's overlay on ", rootfs, ": ", std::strerror(errno),
                     " (is ", options_.data_dir, " on a filesystem overlayfs accepts?)")));
  }
  ContainerSpec spec;
  spec.rootfs = rootfs;
  if (options_.init_path.empty()) {
    spec.args = {"/bin/sh", "-c", "while :; do sleep 3600 & wait $!; done"};
  } else {
    spec.init_path = options_.init_path;
    // The init is also the exec agent, reached over the channel runc passes on as its fd 3.
    spec.args = {kInitInSandbox, "agent"};
    // The init installs the syscall filter itself, on PID 1 and on every exec (seccomp_bpf.h):
    // runc's `linux.seccomp` would have libseccomp compile the profile on every start and exec.
    spec.seccomp = false;
  }
  std::vector<std::string> sandbox_env;
  for (const auto& [k, v] : request.env()) sandbox_env.push_back(absl::StrCat(k, "=", v));
  spec.env = MergeEnv({{kDefaultPath, "HOME=/root"}, lease->config.env, sandbox_env});
  spec.cwd = lease->config.cwd;
  spec.host_id = options_.uid_base;
  spec.id_count = options_.id_count;
  spec.cgroups_path = absl::StrCat("/", options_.cgroup_parent, "/", id);
  spec.cpu_millis = request.cpu_millis();
  spec.memory_mb = request.memory_mb();
  spec.limit_swap = limit_swap_;
  spec.pids_limit = options_.pids_limit;
  if (options_.network != nullptr) {
    v1::NetworkPolicy policy = request.network();
    if (absl::Status s = NormalizeNetworkPolicy(policy); !s.ok()) return fail(s);
    spec.resolv_conf = dir + "/resolv.conf";
    if (absl::Status s = options_.network->Prepare(id, policy, spec.resolv_conf); !s.ok()) {
      return fail(s);
    }
  }
  if (absl::Status s = WriteFileAtomic(dir + "/config.json", RuncConfigJson(spec)); !s.ok()) {
    return fail(s);
  }
  if (absl::Status s =
          WriteFileAtomic(dir + "/" + kMetaFile,
                          absl::StrCat("image ", absl::CEscape(request.image()), "\ndigest ",
                                       lease->digest, "\nmemory_mb ", request.memory_mb(),
                                       "\ninit_filter ", spec.seccomp ? "0" : "1", "\n"));
      !s.ok()) {
    return fail(s);
  }
  std::shared_ptr<AgentChannel> agent;
  int agent_end = -1;
  if (!spec.init_path.empty()) {
    auto made = AgentChannel::Make();
    if (!made.ok()) return fail(made.status());
    agent = std::move(made->first);
    agent_end = made->second;
  }
  const absl::Time t_bundle = absl::Now();
  ProcessOptions run;
  // The container's PID 1 inherits runc's stdio: /dev/null, not pipes it would hold forever.
  run.null_stdio = true;
  std::vector<std::string> run_args = {"--log", dir + "/runc.log", "--log-format", "json", "run",
                                       "--detach", "--bundle", dir, "--pid-file",
                                       dir + "/init.pid"};
  if (agent_end >= 0) {
    run_args.insert(run_args.end(), {"--preserve-fds", "1"});
    run.inherit_fds = {agent_end};
  }
  run_args.push_back(id);
  run.argv = Runc(std::move(run_args));
  run.deadline = absl::Now() + kRuncTimeout;
  auto started = RunProcess(run);
  // Only the sandbox's init holds the agent's end from here on: its exit is EOF on ours.
  if (agent_end >= 0) ::close(agent_end);
  if (!started.ok()) return fail(started.status());
  if (started->exit_code != 0) {
    auto log = ReadFile(dir + "/runc.log");
    return fail(absl::InternalError(
        absl::StrCat("runc could not start sandbox ", id, ": ",
                     started->timed_out ? "timed out" : RuncMessage(log.ok() ? *log : ""))));
  }
  int pid = 0;
  auto pid_text = ReadFile(dir + "/init.pid");
  if (pid_text.ok()) (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(*pid_text), &pid);
  auto cgroups = CgroupDirsOf(pid);
  const absl::Time t_run = absl::Now();
  if (options_.network != nullptr) {
    if (pid <= 0) return fail(absl::InternalError("runc gave no pid for the sandbox's init"));
    if (absl::Status s = options_.network->Attach(id, pid); !s.ok()) return fail(s);
  }
  const absl::Time t_done = absl::Now();
  {
    absl::MutexLock lock(&mu_);
    sb.state = State::kRunning;
    sb.image = request.image();
    sb.digest = lease->digest;
    sb.memory_mb = request.memory_mb();
    sb.init_pid = pid;
    sb.init_filter = !spec.seccomp;
    sb.cgroups = std::move(cgroups);
    sb.result = {lease->digest, lease->warm};
    sb.agent = agent;
    sb.fallback_logged = false;
  }
  LogInfo("sandbox started",
          {{"sandbox", id},
           {"image", request.image()},
           {"digest", lease->digest},
           {"warm", lease->warm ? "true" : "false"},
           {"image_ms", std::to_string(absl::ToInt64Milliseconds(t_image - t0))},
           {"layer_ms", std::to_string(absl::ToInt64Milliseconds(t_layer - t_image))},
           {"bundle_ms", std::to_string(absl::ToInt64Milliseconds(t_bundle - t_image))},
           {"runc_ms", std::to_string(absl::ToInt64Milliseconds(t_run - t_bundle))},
           {"network_ms", std::to_string(absl::ToInt64Milliseconds(t_done - t_run))}});
  return StartResult{lease->digest, lease->warm};
}

absl::StatusOr<bool> RuncDriver::Stop(const std::string& sandbox_id) {
  std::shared_ptr<Sandbox> sb;
  {
    absl::MutexLock lock(&mu_);
    auto it = sandboxes_.find(sandbox_id);
    if (it != sandboxes_.end()) sb = it->second;
  }
  if (sb == nullptr) {
    // Remains of a sandbox this process does not know (a failed cleanup) go too.
    if (ValidSandboxId(sandbox_id) && PathExists(SandboxDir(sandbox_id))) {
      if (absl::Status s = Teardown(sandbox_id); !s.ok()) return s;
    }
    return false;
  }
  absl::MutexLock op(&sb->op_mu);
  std::string digest;
  {
    absl::MutexLock lock(&mu_);
    if (sb->state == State::kGone || sb->state == State::kNew) return false;
    digest = sb->digest;
    if (sb->agent != nullptr) sb->agent->MarkGone();
  }
  if (absl::Status s = Teardown(sandbox_id); !s.ok()) return s;
  cache_.Release(digest, sandbox_id);
  absl::MutexLock lock(&mu_);
  sb->state = State::kGone;
  sb->agent = nullptr;
  auto it = sandboxes_.find(sandbox_id);
  if (it != sandboxes_.end() && it->second == sb) sandboxes_.erase(it);
  LogInfo("sandbox stopped", {{"sandbox", sandbox_id}});
  return true;
}

absl::Status RuncDriver::Pause(const std::string& sandbox_id) {
  std::shared_ptr<Sandbox> sb;
  {
    absl::MutexLock lock(&mu_);
    auto it = sandboxes_.find(sandbox_id);
    if (it == sandboxes_.end()) return UnknownSandbox(sandbox_id);
    sb = it->second;
  }
  absl::MutexLock op(&sb->op_mu);
  {
    absl::MutexLock lock(&mu_);
    if (sb->state == State::kPaused) return absl::OkStatus();
    if (sb->state != State::kRunning) return UnknownSandbox(sandbox_id);
  }
  // With cgroup v1, the freezer can stay FREEZING while processes in the sandbox keep forking;
  // runc then gives up ("unable to freeze") and thaws. The forks are short-lived, so a later try
  // finds a quiet moment. Any other failure is final, and the sandbox is left running.
  absl::StatusOr<std::string> paused;
  for (int attempt = 1;; ++attempt) {
    paused = RunRunc(Runc({"pause", sandbox_id}));
    if (paused.ok() || attempt == kPauseAttempts ||
        !absl::StrContains(paused.status().message(), "unable to freeze")) {
      break;
    }
    LogWarn("pause: retrying", {{"sandbox", sandbox_id}, {"attempt", absl::StrCat(attempt)}});
    absl::SleepFor(absl::Milliseconds(20 * attempt));
  }
  if (!paused.ok()) {
    (void)RunRunc(Runc({"resume", sandbox_id}));
    LogWarn("pause failed", {{"sandbox", sandbox_id}, {"error", paused.status().ToString()}});
    return paused.status();
  }
  absl::MutexLock lock(&mu_);
  sb->state = State::kPaused;
  return absl::OkStatus();
}

absl::Status RuncDriver::Unpause(const std::string& sandbox_id) {
  std::shared_ptr<Sandbox> sb;
  {
    absl::MutexLock lock(&mu_);
    auto it = sandboxes_.find(sandbox_id);
    if (it == sandboxes_.end()) return UnknownSandbox(sandbox_id);
    sb = it->second;
  }
  absl::MutexLock op(&sb->op_mu);
  {
    absl::MutexLock lock(&mu_);
    if (sb->state == State::kRunning) return absl::OkStatus();
    if (sb->state != State::kPaused) return UnknownSandbox(sandbox_id);
  }
  auto resumed = RunRunc(Runc({"resume", sandbox_id}));
  if (!resumed.ok()) return resumed.status();
  absl::MutexLock lock(&mu_);
  sb->state = State::kRunning;
  return absl::OkStatus();
}

bool RuncDriver::InitAlive(const std::string& id, int pid) const {
  auto stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  if (!stat.ok()) return false;
  size_t paren = stat->rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat->size()) return false;
  const char state = (*stat)[paren + 2];
  if (state == 'Z' || state == 'X') return false;
  // The pid may have been reused: it must still be in this sandbox's cgroup.
  auto cgroup = ReadFile(absl::StrCat("/proc/", pid, "/cgroup"));
  return cgroup.ok() &&
         absl::StrContains(*cgroup, absl::StrCat("/", options_.cgroup_parent, "/", id));
}

void RuncDriver::ReapVanished() {
  std::vector<std::pair<std::string, std::shared_ptr<Sandbox>>> candidates;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, sb] : sandboxes_) {
      if ((sb->state == State::kRunning || sb->state == State::kPaused) && sb->init_pid > 0) {
        candidates.emplace_back(id, sb);
      }
    }
  }
  for (const auto& [id, sb] : candidates) ReapIfDead(id, sb);
}

void RuncDriver::ReapIfDead(const std::string& id, const std::shared_ptr<Sandbox>& sb) {
  int pid = 0;
  {
    absl::MutexLock lock(&mu_);
    pid = sb->init_pid;
  }
  if (pid <= 0 || InitAlive(id, pid)) return;
  absl::MutexLock op(&sb->op_mu);
  std::string digest;
  {
    absl::MutexLock lock(&mu_);
    if (sb->state != State::kRunning && sb->state != State::kPaused) return;
    digest = sb->digest;
  }
  LogWarn("sandbox died: its init is gone; removing it", {{"sandbox", id}});
  if (absl::Status s = Teardown(id); !s.ok()) {
    LogWarn("cannot remove a dead sandbox", {{"sandbox", id}, {"error", s.ToString()}});
    return;
  }
  cache_.Release(digest, id);
  absl::MutexLock lock(&mu_);
  sb->state = State::kGone;
  sb->agent = nullptr;
  auto it = sandboxes_.find(id);
  if (it != sandboxes_.end() && it->second == sb) sandboxes_.erase(it);
}

absl::Status RuncDriver::SetNetwork(const std::string& sandbox_id,
                                    const v1::NetworkPolicy& policy) {
  std::shared_ptr<Sandbox> sb;
  {
    absl::MutexLock lock(&mu_);
    auto it = sandboxes_.find(sandbox_id);
    if (it == sandboxes_.end()) return UnknownSandbox(sandbox_id);
    sb = it->second;
  }
  v1::NetworkPolicy normalized = policy;
  if (absl::Status s = NormalizeNetworkPolicy(normalized); !s.ok()) return s;
  absl::MutexLock op(&sb->op_mu);
  {
    absl::MutexLock lock(&mu_);
    if (sb->state != State::kRunning && sb->state != State::kPaused) {
      return UnknownSandbox(sandbox_id);
    }
  }
  if (options_.network == nullptr) {
    if (normalized.egress() == "none") return absl::OkStatus();
    return absl::FailedPreconditionError(
        "this runner gives sandboxes no network (start it with --sandbox_network)");
  }
  return options_.network->Update(sandbox_id, normalized);
}

absl::StatusOr<std::vector<v1::EgressLogEntry>> RuncDriver::EgressLog(
    const std::string& sandbox_id) {
  {
    absl::MutexLock lock(&mu_);
    if (sandboxes_.count(sandbox_id) == 0) return UnknownSandbox(sandbox_id);
  }
  if (options_.network == nullptr) return std::vector<v1::EgressLogEntry>{};
  return options_.network->Log(sandbox_id);
}

absl::StatusOr<CachedImageInfo> RuncDriver::Pull(const std::string& image) {
  if (!ImageRegistryAllowed(image, options_.registries)) return RegistryNotAllowed(image);
  return cache_.Prefetch(image);
}

std::vector<std::string> RuncDriver::Sandboxes() {
  ReapVanished();
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [id, sb] : sandboxes_) {
    if (sb->state != State::kGone) out.push_back(id);
  }
  return out;
}

std::vector<CachedImageInfo> RuncDriver::Images() { return cache_.Images(); }

std::optional<v1::StartProgress> RuncDriver::PullProgress(const std::string& image) {
  auto pull = cache_.Progress(image);
  if (!pull) return std::nullopt;
  v1::StartProgress out;
  out.set_phase(pull->phase);
  out.set_pull_bytes_done(pull->bytes_done);
  out.set_pull_bytes_total(pull->bytes_total);
  return out;
}

int RuncDriver::InitPid(const std::string& sandbox_id) {
  absl::MutexLock lock(&mu_);
  auto it = sandboxes_.find(sandbox_id);
  return it == sandboxes_.end() ? 0 : it->second->init_pid;
}

int RuncDriver::NetnsPid(const std::string& sandbox_id) {
  absl::MutexLock lock(&mu_);
  auto it = sandboxes_.find(sandbox_id);
  if (it == sandboxes_.end()) return 0;
  if (it->second->state != State::kRunning && it->second->state != State::kPaused) return 0;
  return it->second->init_pid;
}

absl::StatusOr<int> RuncDriver::RunExec(const std::string& sandbox_id,
                                        const v1::ExecRequest& request, absl::Duration timeout,
                                        const std::function<bool(int, std::string_view)>& on_output,
                                        const std::function<bool()>& cancelled) {
  std::map<std::string, std::string> cgroups;
  int memory_mb = 0;
  int init_pid = 0;
  bool init_filter = false;
  std::shared_ptr<Sandbox> sb;
  std::shared_ptr<AgentChannel> agent;
  {
    absl::MutexLock lock(&mu_);
    auto it = sandboxes_.find(sandbox_id);
    if (it == sandboxes_.end()) return UnknownSandbox(sandbox_id);
    if (it->second->state == State::kPaused) return Hibernated(sandbox_id);
    if (it->second->state != State::kRunning) {
      return Error(absl::StatusCode::kFailedPrecondition, "SANDBOX_NOT_RUNNING",
                   absl::StrCat("sandbox ", sandbox_id, " is not running"));
    }
    sb = it->second;
    cgroups = sb->cgroups;
    memory_mb = sb->memory_mb;
    init_filter = sb->init_filter;
    init_pid = sb->init_pid;
    agent = sb->agent;
  }
  if (request.cmd().find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("cmd contains a NUL character");
  }
  if (!request.cwd().empty() &&
      (request.cwd().front() != '/' || request.cwd().find('\0') != std::string::npos)) {
    return absl::InvalidArgumentError("cwd must be an absolute path");
  }
  if (PathUnderProc(request.cwd())) {
    return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
                 "cwd must not be /proc or below it");
  }
  for (const auto& [k, v] : request.env()) {
    if (!ValidEnvKey(k) || v.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("invalid env variable name \"", k, "\""));
    }
  }
  const std::string tag = RandomHex(6);
  const std::string& freezer = cgroups["freezer"];
  // A fork bomb an earlier command left in the background (its shell exited before the bomb
  // reached the limit, so that exec could not tell): if the sandbox hit its pids limit since
  // and one finished command's cgroup holds most of the sandbox's tasks, it goes now.
  if (!freezer.empty()) {
    int64_t seen = 0;
    {
      absl::MutexLock lock(&mu_);
      seen = sb->pids_hits_seen;
    }
    if (PidsLimitHits(cgroups["pids"]) > seen) {
      for (const auto& name : ListDir(freezer)) {
        const std::string dir = absl::StrCat(freezer, "/", name);
        if (name.size() != 13 || name[0] != 'x' || !PathExists(dir + "/tasks")) continue;
        if (CountTasks(dir) * 2 < options_.pids_limit) continue;
        LogWarn("stopping a fork bomb a finished command left running",
                {{"sandbox", sandbox_id}, {"cgroup", name}});
        KillFreezerCgroup(dir);
        ::rmdir(dir.c_str());
      }
    }
  }
  // Each command runs in a freezer cgroup of its own below the sandbox's: at the timeout
  // everything it started is killed, including processes that left its process group.
  const std::string exec_cgroup = freezer.empty() ? "" : absl::StrCat(freezer, "/x", tag);
  const bool have_cgroup = !exec_cgroup.empty() && ::mkdir(exec_cgroup.c_str(), 0755) == 0;

  const int64_t oom_before = OomKills(cgroups["memory"]);
  const int64_t pids_before = PidsLimitHits(cgroups["pids"]);
  // A command that drives the sandbox into its pids limit with most of the sandbox's tasks in
  // its own cgroup is a fork bomb (or as bad as one): stop it and everything it started, rather
  // than leave the sandbox unable to fork until the timeout.
  bool fork_bomb = false;
  auto is_fork_bomb = [&] {
    if (!have_cgroup || PidsLimitHits(cgroups["pids"]) <= pids_before) return false;
    return CountTasks(exec_cgroup) * 2 >= options_.pids_limit;
  };
  auto poll_cancelled = [&] {
    if (cancelled && cancelled()) return true;
    if (!fork_bomb && is_fork_bomb()) fork_bomb = true;
    return fork_bomb;
  };
  const absl::Time deadline =
      timeout != absl::InfiniteDuration() ? absl::Now() + timeout : absl::InfiniteFuture();

  // What either way of running the command ends with.
  int exit_code = -1;
  bool timed_out = false, was_cancelled = false, cwd_failed = false;
  std::string runc_why;  // runc's own message (runc exec only)
  bool ran = false;

  if (agent != nullptr && !agent->gone()) {
    AgentExecOptions ao;
    ao.cmd = request.cmd();
    ao.cwd = request.cwd();
    for (const auto& [k, v] : request.env()) ao.env.emplace_back(k, v);
    ao.stdin_data = request.stdin();
    ao.deadline = deadline;
    ao.cancelled = poll_cancelled;
    ao.on_output = on_output;
    int host_pid = 0;
    ao.on_started = [&](int pid) -> absl::Status {
      host_pid = pid;
      if (!have_cgroup) return absl::OkStatus();
      // Before the command runs (it waits for our go): nothing it starts can be outside.
      const std::string procs = exec_cgroup + "/cgroup.procs";
      const int fd = ::open(procs.c_str(), O_WRONLY | O_CLOEXEC);
      const std::string text = absl::StrCat(pid, "\n");
      const bool ok = fd >= 0 && ::write(fd, text.data(), text.size()) ==
                                     static_cast<ssize_t>(text.size());
      if (fd >= 0) ::close(fd);
      if (!ok) return absl::InternalError("cannot move the command into its cgroup");
      return absl::OkStatus();
    };
    ao.on_kill = [&] {
      if (have_cgroup) KillFreezerCgroup(exec_cgroup);
      if (host_pid > 1) ::kill(-host_pid, SIGKILL);
    };
    auto r = RunAgentExec(*agent, ao);
    if (r.ok()) {
      ran = true;
      exit_code = r->exec_errno != 0 ? 127 : r->exit_code;
      timed_out = r->timed_out;
      was_cancelled = r->cancelled;
      cwd_failed = r->cwd_failed;
      if (r->exec_errno != 0 && !timed_out && !was_cancelled) {
        if (have_cgroup) ::rmdir(exec_cgroup.c_str());
        return absl::InternalError(absl::StrCat("cannot run the command in sandbox ", sandbox_id,
                                                ": /bin/sh: ", std::strerror(r->exec_errno)));
      }
    } else if (r.status().code() == absl::StatusCode::kUnavailable &&
               InitAlive(sandbox_id, init_pid)) {
      // Nothing ran: the command goes through `runc exec` below.
      LogWarn("exec agent unavailable: this exec uses runc exec",
              {{"sandbox", sandbox_id}, {"reason", std::string(r.status().message())}});
    } else {
      if (have_cgroup) {
        KillFreezerCgroup(exec_cgroup);
        ::rmdir(exec_cgroup.c_str());
      }
      // ABORTED: the init exited while the command ran; it may not look dead yet (InitAlive)
      // while the kernel kills the rest of its PID namespace.
      if (r.status().code() == absl::StatusCode::kUnavailable ||
          r.status().code() == absl::StatusCode::kAborted || !InitAlive(sandbox_id, init_pid)) {
        return Error(absl::StatusCode::kFailedPrecondition, "SANDBOX_NOT_RUNNING",
                     absl::StrCat("sandbox ", sandbox_id, " is not running (its init exited)"));
      }
      return r.status();
    }
  } else {
    bool first = false;
    {
      absl::MutexLock lock(&mu_);
      first = !sb->fallback_logged;
      sb->fallback_logged = true;
    }
    if (first) {
      LogInfo("sandbox has no exec agent (started by an earlier runner process, or without the "
              "init): its execs use runc exec",
              {{"sandbox", sandbox_id}});
    }
  }

  if (!ran) {
    // The runc exec fallback. The command's stdio are our pipes passed as fds 3-5, and a wrapper
    // shell moves them to 0-2 for `/bin/sh -c cmd`. runc's own stdio (its copy loop, its error
    // messages) stay apart: runc waits for the wrapper only, so a server the command leaves in
    // the background holding our pipes does not hold the exec open (with runc's stdio it would,
    // until the timeout killed it), and a failure of runc to start the command is never
    // mistaken for the command's output. The wrapper stays runc's child, so runc reaps it.
    std::vector<std::string> args = {"exec", "--preserve-fds", "3"};
    if (have_cgroup) args.insert(args.end(), {"--cgroup", absl::StrCat("freezer:x", tag)});
    // Without that cgroup, the command's process group is what can be killed: find it by pid.
    const std::string pid_file =
        have_cgroup ? "" : absl::StrCat(SandboxDir(sandbox_id), "/exec-", tag, ".pid");
    if (!pid_file.empty()) args.insert(args.end(), {"--pid-file", pid_file});
    // The working directory is entered by the wrapper, inside the sandbox, after runc has
    // finished and the syscall filter is on: runc itself never chdirs where the request says
    // (its working-directory escapes used a path resolved while it still held host file
    // descriptors). runc starts the wrapper in "/" for a request with a cwd, in the image's
    // directory otherwise.
    if (!request.cwd().empty()) args.insert(args.end(), {"--cwd", "/"});
    for (const auto& [k, v] : request.env()) {
      args.insert(args.end(), {"--env", absl::StrCat(k, "=", v)});
    }
    args.push_back(sandbox_id);
    // With the init, the command starts through it: it installs the syscall filter first.
    if (init_filter) args.insert(args.end(), {kInitInSandbox, "exec"});
    args.insert(args.end(),
                {"/bin/sh", "-c",
                 absl::StrCat("if [ -n \"$2\" ]; then cd -- \"$2\" 2>/dev/null || { echo '",
                              kCwdFailed, "' >&2; exit 1; }; fi; ",
                              "/bin/sh -c \"$1\" <&3 >&4 2>&5 3<&- 4>&- 5>&-"),
                 "isorun-exec", request.cmd(), request.cwd()});
    ProcessOptions po;
    po.argv = Runc(std::move(args));
    po.command_fds = true;
    po.stdin_data = request.stdin();
    po.deadline = deadline;
    po.cancelled = poll_cancelled;
    po.on_output = on_output;
    po.on_kill = [&] {
      if (have_cgroup) KillFreezerCgroup(exec_cgroup);
      if (pid_file.empty()) return;
      auto text = ReadFile(pid_file);
      int pid = 0;
      if (text.ok() && absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &pid) && pid > 1) {
        ::kill(-pid, SIGKILL);  // the command's process group (runc makes it a session leader)
      }
    };
    auto result = RunProcess(po);
    if (!pid_file.empty()) ::unlink(pid_file.c_str());
    if (!result.ok()) {
      if (have_cgroup) ::rmdir(exec_cgroup.c_str());
      return result.status();
    }
    exit_code = result->exit_code;
    timed_out = result->timed_out;
    was_cancelled = result->cancelled;
    cwd_failed = exit_code == 1 && absl::StrContains(result->launcher_output, kCwdFailed);
    runc_why = RuncMessage(result->launcher_output);
  }
  // The shell may have exited leaving the bomb running in the background.
  if (!fork_bomb && is_fork_bomb()) {
    fork_bomb = true;
    KillFreezerCgroup(exec_cgroup);
  }
  // Fails (EBUSY) while processes the command left in the background still run: then the
  // directory goes with the sandbox's cgroup.
  if (have_cgroup) ::rmdir(exec_cgroup.c_str());
  {
    const int64_t hits = PidsLimitHits(cgroups["pids"]);
    absl::MutexLock lock(&mu_);
    sb->pids_hits_seen = std::max(sb->pids_hits_seen, hits);
  }

  std::string note;
  if (OomKills(cgroups["memory"]) > oom_before) {
    absl::StrAppend(&note, "isorun: the sandbox ran out of memory (memoryMb ", memory_mb,
                    "): the kernel killed a process\n");
  }
  if (fork_bomb) {
    absl::StrAppend(&note, "isorun: the command reached the sandbox's limit of ",
                    options_.pids_limit,
                    " processes: it was stopped with every process it started\n");
  } else if (PidsLimitHits(cgroups["pids"]) > pids_before) {
    absl::StrAppend(&note, "isorun: the sandbox reached its limit of ", options_.pids_limit,
                    " processes: a fork failed\n");
  }
  if (timed_out) {
    std::string message =
        absl::StrCat("command still running after ", absl::ToInt64Seconds(timeout),
                     " s: killed; use a longer timeoutSec or exec:stream");
    if (!note.empty()) {
      absl::StrAppend(&message, " (", absl::StripAsciiWhitespace(note), ")");
    }
    return Error(absl::StatusCode::kDeadlineExceeded, "EXEC_TIMEOUT", message);
  }
  if (was_cancelled && !fork_bomb) {
    return absl::CancelledError("the client went away: the command was killed");
  }
  if (!fork_bomb && cwd_failed) {
    return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT",
                 absl::StrCat("cwd ", request.cwd(), " is not a directory in the sandbox"));
  }
  // runc says why it could not start the command ("exec failed: ...") on its own stderr.
  if (!fork_bomb && exit_code != 0 && absl::StrContains(runc_why, "exec failed")) {
    if (absl::StrContains(runc_why, "paused")) return Hibernated(sandbox_id);
    if (absl::StrContains(runc_why, "chdir to cwd")) {
      return absl::InvalidArgumentError(
          absl::StrCat("cwd ", request.cwd(), " is not a directory in the sandbox"));
    }
    return absl::InternalError(
        absl::StrCat("cannot run the command in sandbox ", sandbox_id, ": ", runc_why));
  }
  if (!fork_bomb && exit_code != 0 &&
      (absl::StrContains(runc_why, "not running") || absl::StrContains(runc_why, "does not exist") ||
       absl::StrContains(runc_why, "stopped"))) {
    return Error(absl::StatusCode::kFailedPrecondition, "SANDBOX_NOT_RUNNING",
                 absl::StrCat("sandbox ", sandbox_id, " is not running"));
  }
  if (!note.empty()) on_output(2, note);
  return fork_bomb ? 128 + SIGKILL : exit_code;
}

absl::StatusOr<v1::ExecResponse> RuncDriver::Exec(const std::string& sandbox_id,
                                                  const v1::ExecRequest& request) {
  const absl::Time start = absl::Now();
  const absl::Duration timeout = request.timeout_sec() > 0 ? absl::Seconds(request.timeout_sec())
                                                           : options_.exec_default_timeout;
  v1::ExecResponse resp;
  const size_t cap = options_.exec_output_cap;
  auto on_output = [&](int fd, std::string_view data) {
    std::string* dst = fd == 1 ? resp.mutable_stdout() : resp.mutable_stderr();
    size_t room = cap > dst->size() ? cap - dst->size() : 0;
    if (data.size() > room) {
      if (fd == 1) {
        resp.set_stdout_truncated(true);
      } else {
        resp.set_stderr_truncated(true);
      }
      data = data.substr(0, room);
    }
    dst->append(data.data(), data.size());
    return true;  // keep reading (and dropping) so the command is not blocked on a full pipe
  };
  auto code = RunExec(sandbox_id, request, timeout, on_output, nullptr);
  if (!code.ok()) return code.status();
  resp.set_exit_code(*code);
  resp.set_duration_ms(absl::ToInt64Milliseconds(absl::Now() - start));
  return resp;
}

absl::StatusOr<int> RuncDriver::ExecStream(const std::string& sandbox_id,
                                           const v1::ExecRequest& request, const ExecSink& sink,
                                           const std::function<bool()>& cancelled) {
  const absl::Duration timeout =
      request.timeout_sec() > 0 ? absl::Seconds(request.timeout_sec()) : absl::InfiniteDuration();
  auto on_output = [&](int fd, std::string_view data) {
    v1::ExecChunk chunk;
    if (fd == 1) {
      chunk.set_stdout(std::string(data));
    } else {
      chunk.set_stderr(std::string(data));
    }
    return sink(chunk);
  };
  return RunExec(sandbox_id, request, timeout, on_output, cancelled);
}

}  // namespace isorun::runner
