#pragma once

// The real driver: each sandbox is a runc container (see runc_config.h for its isolation) whose
// root filesystem is an overlay of a cached image (read-only, shared) and a writable layer of its
// own. Needs root, runc 1.1 and overlayfs; cgroup v1 for exec group kills and for reporting OOM
// kills and fork failures (without it those degrade to process-group kills and no reports).
//
// On disk, under `data_dir`:
//   images/<digest hex>/...        the image cache (image_cache.h)
//   sandboxes/<id>/config.json     the runc bundle: config, rootfs (overlay mount point),
//                   layer          symlink to the sandbox's writable layer (diskMb) in layers/,
//                   sandbox.meta   image and digest
//   layers/<size>-<hex>.img        writable layers' filesystems (disk_layer.h), each mounted on
//   layers/<size>-<hex>/           with the overlay's upper/ and work/; some ready, not yet taken
//   runc/                          runc's own state (--root), so `runc list` shows only ours
// Sandboxes survive a runner restart: Create() re-attaches the containers still running or paused
// and removes the remains of the others, so Sandboxes() reports exactly what runs.
//
// Thread-safe. Operations on one sandbox (start, stop, pause, unpause) are serialized; execs run
// concurrently with each other.

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "services/runner/disk_layer.h"
#include "services/runner/driver.h"
#include "services/runner/exec_agent.h"
#include "services/runner/image_cache.h"
#include "services/runner/sandbox_network.h"

namespace isorun::runner {

struct RuncOptions {
  std::string data_dir;
  std::string registry;  // for unqualified image names
  // Registry hosts images may come from (lowercase host:port); anything else is refused with
  // IMAGE_REGISTRY_NOT_ALLOWED before the cache or the network is touched.
  std::vector<std::string> registries;
  int default_disk_mb = 2048;  // the writable layer of a request without disk_mb
  // Disk layers kept formatted and mounted per size in use (disk_layer.h); 0: none, every start
  // formats its own.
  int disk_pool_per_size = 2;
  int64_t image_cache_bytes = int64_t{20} << 30;
  int pids_limit = 512;
  std::string runc_path = "runc";
  // Host path of the static init bind-mounted as PID 1 (isorun-sandbox-init). Empty: a shell
  // loop is PID 1 instead (it reaps orphans less promptly).
  std::string init_path;
  uint32_t uid_base = 100000;  // root in every sandbox is this host uid
  uint32_t id_count = 65536;
  std::string cgroup_parent = "isorun";
  absl::Duration exec_default_timeout = absl::Seconds(30);
  size_t exec_output_cap = size_t{16} << 20;  // per stream, for Exec (not ExecStream)
  // Sandbox networks and egress profiles; null: every sandbox has loopback only, whatever its
  // profile. Must outlive the driver.
  SandboxNetwork* network = nullptr;
};

class RuncDriver final : public Driver {
 public:
  // Checks the host (root, runc, data_dir reachable by the sandboxes' uid), loads the image
  // cache, and re-attaches or cleans up the sandboxes of an earlier process. `fetcher` is used
  // for pulls (tests pass a counting wrapper); it must outlive the driver.
  static absl::StatusOr<std::unique_ptr<RuncDriver>> Create(RuncOptions options,
                                                            ImageFetcher& fetcher);
  ~RuncDriver() override;

  absl::StatusOr<StartResult> Start(const v1::StartSandboxRequest& request) override;
  absl::StatusOr<bool> Stop(const std::string& sandbox_id) override;
  absl::Status Pause(const std::string& sandbox_id) override;
  absl::Status Unpause(const std::string& sandbox_id) override;
  // Running and hibernated sandboxes; first removes those whose container died.
  std::vector<std::string> Sandboxes() override;
  std::vector<CachedImageInfo> Images() override;
  // Pre-warming: pulls `image` into the cache without starting anything.
  absl::StatusOr<CachedImageInfo> Pull(const std::string& image) override;
  std::optional<v1::StartProgress> PullProgress(const std::string& image) override;
  absl::Status SetNetwork(const std::string& sandbox_id, const v1::NetworkPolicy& policy) override;
  absl::StatusOr<std::vector<v1::EgressLogEntry>> EgressLog(const std::string& sandbox_id) override;
  absl::StatusOr<v1::ExecResponse> Exec(const std::string& sandbox_id,
                                        const v1::ExecRequest& request) override;
  absl::StatusOr<int> ExecStream(const std::string& sandbox_id, const v1::ExecRequest& request,
                                 const ExecSink& sink,
                                 const std::function<bool()>& cancelled) override;

  ImageCache& image_cache() { return cache_; }
  DiskLayerPool& disk_layers() { return *layers_; }
  // Host pid of a sandbox's PID 1, 0 if unknown (tests check ownership and namespaces with it).
  int InitPid(const std::string& sandbox_id);
  int NetnsPid(const std::string& sandbox_id) override;

 private:
  enum class State { kNew, kRunning, kPaused, kGone };
  struct Sandbox {
    absl::Mutex op_mu;          // serializes start/stop/pause/unpause of this sandbox
    State state = State::kNew;  // guarded by the driver's mu_
    std::string image;
    std::string digest;
    int memory_mb = 0;
    int init_pid = 0;
    // Its init installs the syscall filter and starts execs (`/dev/init exec`); false for
    // sandboxes an older runner started (runc applies their filter, if any).
    bool init_filter = false;
    StartResult result;                          // what a repeated Start answers
    std::map<std::string, std::string> cgroups;  // controller -> dir
    // The channel to its init's exec agent (exec_agent.h); null for sandboxes an earlier runner
    // process started (their channel went with that process: execs use `runc exec`).
    std::shared_ptr<AgentChannel> agent;
    bool fallback_logged = false;  // that execs go through `runc exec` was said once
    int64_t pids_hits_seen = 0;    // its pids limit hits when its last exec ended
  };
  // What the watcher thread waits on: a sandbox init's pidfd (it exited) or its agent's channel
  // (closed).
  struct Watch {
    std::string id;
    std::weak_ptr<Sandbox> sandbox;
    int pidfd = -1;                        // owned
    std::shared_ptr<AgentChannel> agent;   // or this
  };
  RuncDriver(RuncOptions options, ImageFetcher& fetcher);
  absl::Status Recover();
  // Tears down sandboxes whose init died (killed from outside, or the host's OOM killer), so
  // Sandboxes() stops reporting them and the lifecycle marks them LOST.
  void ReapVanished();
  // Tears `sb` down if its init is gone (what ReapVanished does for each sandbox).
  void ReapIfDead(const std::string& id, const std::shared_ptr<Sandbox>& sb);
  // Has the watcher thread notice at once when the init of `sb` exits or its agent's channel
  // closes, instead of at the next Sandboxes() call.
  void WatchSandbox(const std::string& id, const std::shared_ptr<Sandbox>& sb);
  void AddWatch(Watch watch, int fd);
  void WatchLoop();
  bool InitAlive(const std::string& id, int pid) const;
  std::string SandboxDir(const std::string& id) const;
  std::vector<std::string> Runc(std::vector<std::string> args) const;
  // Kills and deletes the container, unmounts and removes the bundle. Idempotent.
  absl::Status Teardown(const std::string& id);
  absl::StatusOr<StartResult> StartLocked(Sandbox& sb, const v1::StartSandboxRequest& request);
  // The shared body of Exec and ExecStream.
  absl::StatusOr<int> RunExec(const std::string& sandbox_id, const v1::ExecRequest& request,
                              absl::Duration timeout,
                              const std::function<bool(int, std::string_view)>& on_output,
                              const std::function<bool()>& cancelled);

  const RuncOptions options_;
  ImageCache cache_;
  std::unique_ptr<DiskLayerPool> layers_;
  bool limit_swap_ = true;
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Sandbox>> sandboxes_ ABSL_GUARDED_BY(mu_);
  int epoll_ = -1;  // the watcher's
  int wake_ = -1;   // eventfd: the watcher stops
  absl::Mutex watch_mu_;
  std::map<uint64_t, Watch> watches_ ABSL_GUARDED_BY(watch_mu_);
  uint64_t next_watch_ ABSL_GUARDED_BY(watch_mu_) = 1;
  std::thread watcher_;
};

// Sandbox ids become file and container names: letters, digits, '_', '-', '.', not leading
// '.' or '-', at most 128 characters.
bool ValidSandboxId(const std::string& id);

}  // namespace isorun::runner
