#pragma once

// The OCI runtime config (config.json) of a sandbox, generated from its request: pure, so that
// the isolation settings are unit-tested field by field.
//
// Isolation: new pid, mount, ipc, uts, network (loopback only; runc brings lo up) and user
// namespaces; root inside maps to host uid/gid `host_id` (the image is unpacked owned by that
// range); no new privileges; a small capability set that only has meaning inside the user
// namespace; /proc and /sys with the usual masked and read-only paths; cgroup limits on cpu
// (quota per 100 ms period), memory (and memory+swap: no swap use) and the number of processes;
// a default-deny syscall filter (seccomp_profile.h) on every process.

#include <cstdint>
#include <string>
#include <vector>

namespace isorun::runner {

struct ContainerSpec {
  std::string rootfs;             // absolute path of the merged overlay
  std::vector<std::string> args;  // pid 1
  std::vector<std::string> env;   // "K=V", image env overridden by the sandbox's env
  std::string cwd = "/";
  std::string hostname = "sandbox";
  std::string init_path;  // host file bind-mounted read-only at /dev/init; may be empty
  uint32_t host_id = 100000;
  uint32_t id_count = 65536;
  std::string cgroups_path;  // e.g. "/isorun/<sandbox id>"
  int cpu_millis = 0;        // 0: no cpu limit
  int memory_mb = 0;         // 0: no memory limit
  bool limit_swap = true;    // also set memory+swap (needs swap accounting)
  int pids_limit = 0;        // 0: no limit
  bool seccomp = true;       // the syscall filter of seccomp_profile.h
  // Host file bind-mounted read-only at /etc/resolv.conf (the runner's DNS forwarder, or no
  // resolver); empty: the image's own.
  std::string resolv_conf;
};

// Where the init binary appears inside the sandbox.
inline constexpr char kInitInSandbox[] = "/dev/init";

// The capabilities sandbox processes get (bounding, effective, permitted).
const std::vector<std::string>& SandboxCapabilities();

std::string RuncConfigJson(const ContainerSpec& spec);

// Merges "K=V" lists: later lists override earlier ones by key, order of first appearance kept.
std::vector<std::string> MergeEnv(const std::vector<std::vector<std::string>>& lists);

}  // namespace isorun::runner
