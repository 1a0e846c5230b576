#include "services/runner/runc_config.h"

#include <algorithm>
#include <map>

#include "services/kit/json.h"
#include "services/runner/seccomp_profile.h"

namespace isorun::runner {

const std::vector<std::string>& SandboxCapabilities() {
  // Docker's default set without NET_RAW, MKNOD, AUDIT_WRITE and SETFCAP. All of them act only
  // inside the sandbox's user namespace.
  static const auto* caps = new std::vector<std::string>{
      "CAP_CHOWN",  "CAP_DAC_OVERRIDE", "CAP_FOWNER",  "CAP_FSETID",           "CAP_KILL",
      "CAP_SETGID", "CAP_SETUID",       "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT"};
  return *caps;
}

std::vector<std::string> MergeEnv(const std::vector<std::vector<std::string>>& lists) {
  std::vector<std::string> out;
  std::map<std::string, size_t> index;
  for (const auto& list : lists) {
    for (const auto& kv : list) {
      std::string key = kv.substr(0, kv.find('='));
      auto it = index.find(key);
      if (it == index.end()) {
        index[key] = out.size();
        out.push_back(kv);
      } else {
        out[it->second] = kv;
      }
    }
  }
  return out;
}

namespace {

void StringArray(JsonWriter& w, const std::vector<std::string>& values) {
  w.BeginArray();
  for (const auto& v : values) w.String(v);
  w.EndArray();
}

void Mount(JsonWriter& w, const char* destination, const char* type, const std::string& source,
           const std::vector<std::string>& options) {
  w.BeginObject();
  w.Key("destination").String(destination);
  w.Key("type").String(type);
  w.Key("source").String(source);
  w.Key("options");
  StringArray(w, options);
  w.EndObject();
}

void IdMapping(JsonWriter& w, uint32_t host, uint32_t count) {
  w.BeginArray().BeginObject();
  w.Key("containerID").Int(0);
  w.Key("hostID").Int(host);
  w.Key("size").Int(count);
  w.EndObject().EndArray();
}

}  // namespace

std::string RuncConfigJson(const ContainerSpec& spec) {
  JsonWriter w;
  w.BeginObject();
  w.Key("ociVersion").String("1.0.2");

  w.Key("process").BeginObject();
  w.Key("terminal").Bool(false);
  w.Key("user").BeginObject().Key("uid").Int(0).Key("gid").Int(0).EndObject();
  w.Key("args");
  StringArray(w, spec.args);
  w.Key("env");
  StringArray(w, spec.env);
  w.Key("cwd").String(spec.cwd.empty() ? "/" : spec.cwd);
  w.Key("capabilities").BeginObject();
  for (const char* set : {"bounding", "effective", "permitted"}) {
    w.Key(set);
    StringArray(w, SandboxCapabilities());
  }
  w.EndObject();
  w.Key("rlimits").BeginArray();
  w.BeginObject().Key("type").String("RLIMIT_NOFILE").Key("hard").Int(4096).Key("soft").Int(1024);
  w.EndObject();
  w.EndArray();
  w.Key("noNewPrivileges").Bool(true);
  w.Key("oomScoreAdj").Int(500);  // under pressure the host kills sandboxes before the runner
  w.EndObject();

  w.Key("root").BeginObject().Key("path").String(spec.rootfs).Key("readonly").Bool(false);
  w.EndObject();
  w.Key("hostname").String(spec.hostname);

  w.Key("mounts").BeginArray();
  Mount(w, "/proc", "proc", "proc", {"nosuid", "noexec", "nodev"});
  Mount(w, "/dev", "tmpfs", "tmpfs", {"nosuid", "strictatime", "mode=755", "size=65536k"});
  Mount(w, "/dev/pts", "devpts", "devpts",
        {"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"});
  Mount(w, "/dev/shm", "tmpfs", "shm", {"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"});
  Mount(w, "/dev/mqueue", "mqueue", "mqueue", {"nosuid", "noexec", "nodev"});
  Mount(w, "/sys", "sysfs", "sysfs", {"nosuid", "noexec", "nodev", "ro"});
  if (!spec.init_path.empty()) {
    Mount(w, kInitInSandbox, "bind", spec.init_path, {"bind", "ro", "nosuid", "nodev"});
  }
  if (!spec.resolv_conf.empty()) {
    Mount(w, "/etc/resolv.conf", "bind", spec.resolv_conf,
          {"bind", "ro", "nosuid", "nodev", "noexec"});
  }
  w.EndArray();

  w.Key("linux").BeginObject();
  w.Key("uidMappings");
  IdMapping(w, spec.host_id, spec.id_count);
  w.Key("gidMappings");
  IdMapping(w, spec.host_id, spec.id_count);
  w.Key("namespaces").BeginArray();
  // No "path": new namespaces. A new network namespace has only lo (brought up by runc).
  for (const char* ns : {"pid", "network", "ipc", "uts", "mount", "user"}) {
    w.BeginObject().Key("type").String(ns).EndObject();
  }
  w.EndArray();
  if (!spec.cgroups_path.empty()) w.Key("cgroupsPath").String(spec.cgroups_path);
  w.Key("resources").BeginObject();
  // No device access beyond what runc always allows (null, zero, full, random, urandom, tty).
  w.Key("devices").BeginArray();
  w.BeginObject().Key("allow").Bool(false).Key("access").String("rwm").EndObject();
  w.EndArray();
  if (spec.memory_mb > 0) {
    const int64_t bytes = int64_t{spec.memory_mb} << 20;
    w.Key("memory").BeginObject().Key("limit").Int(bytes);
    if (spec.limit_swap) w.Key("swap").Int(bytes);
    w.EndObject();
  }
  if (spec.cpu_millis > 0) {
    constexpr int64_t kPeriodUs = 100000;
    w.Key("cpu").BeginObject();
    w.Key("quota").Int(int64_t{spec.cpu_millis} * kPeriodUs / 1000);
    w.Key("period").Int(kPeriodUs);
    w.Key("shares").Int(std::max<int64_t>(2, int64_t{spec.cpu_millis} * 1024 / 1000));
    w.EndObject();
  }
  if (spec.pids_limit > 0)
    w.Key("pids").BeginObject().Key("limit").Int(spec.pids_limit).EndObject();
  w.EndObject();  // resources
  w.Key("maskedPaths");
  StringArray(w, {"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                  "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                  "/sys/firmware"});
  w.Key("readonlyPaths");
  StringArray(w, {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"});
  if (spec.seccomp) w.Key("seccomp").Raw(SeccompProfileJson());
  w.EndObject();  // linux

  w.EndObject();
  return w.Take();
}

}  // namespace isorun::runner
