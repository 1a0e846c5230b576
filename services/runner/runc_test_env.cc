#include "services/runner/runc_test_env.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "services/runner/fs_util.h"
#include "services/runner/process.h"

namespace isorun::runner::testing {
namespace {

bool OnPath(const std::string& tool) {
  auto r = RunCaptured({"/bin/sh", "-c", "command -v " + tool}, absl::Seconds(5));
  return r.ok() && r->exit_code == 0;
}

std::string ComputeReason() {
  if (::geteuid() != 0) return "not root";
  auto max_userns = ReadFile("/proc/sys/user/max_user_namespaces");
  if (max_userns.ok() && absl::StripAsciiWhitespace(*max_userns) == "0") {
    return "user namespaces are disabled (user.max_user_namespaces = 0)";
  }
  auto fs = ReadFile("/proc/filesystems");
  if (!fs.ok() || !absl::StrContains(*fs, "overlay")) {
    // The module may load on first mount; runc tests will tell.
    auto modprobe = RunCaptured({"/bin/sh", "-c", "modprobe overlay"}, absl::Seconds(5));
    fs = ReadFile("/proc/filesystems");
    if (!fs.ok() || !absl::StrContains(*fs, "overlay")) return "no overlayfs";
  }
  if (!PathExists("/dev/loop-control")) return "no loop devices (/dev/loop-control)";
  for (const char* tool : {"runc", "skopeo", "umoci", "docker-registry", "mkfs.ext4"}) {
    if (!OnPath(tool)) return absl::StrCat(tool, " is not installed");
  }
  auto ldd = RunCaptured({"/bin/sh", "-c", "test -x /bin/busybox && ! ldd /bin/busybox"},
                         absl::Seconds(5));
  if (!ldd.ok() || ldd->exit_code != 0) return "busybox-static is not installed";
  if (!PathExists(SandboxInitPath())) return "isorun-sandbox-init is not built";
  return "";
}

pid_t g_registry_pid = 0;
std::string g_registry_dir;

void StopRegistry() {
  if (g_registry_pid > 0) {
    ::kill(g_registry_pid, SIGTERM);
    ::waitpid(g_registry_pid, nullptr, 0);
    g_registry_pid = 0;
  }
  if (!g_registry_dir.empty()) (void)RemoveTree(g_registry_dir);
}


absl::StatusOr<std::string> StartRegistry() {
  const std::string script = std::string(ISORUN_SOURCE_DIR) + "/scripts/registry.sh";
  g_registry_dir = MakeScratchDir("isorun-test-registry");
  const int port = FreeLoopbackPort();
  ::setenv("ISORUN_TEST_IMAGES_DIR",
           ::getenv("ISORUN_TEST_IMAGES_DIR") ? ::getenv("ISORUN_TEST_IMAGES_DIR")
                                              : "/tmp/isorun-test-images",
           1);
  const std::string log = g_registry_dir + "/registry.log";
  const std::string port_text = std::to_string(port);
  pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    ::execl("/bin/bash", "bash", script.c_str(), "serve", g_registry_dir.c_str(), port_text.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  g_registry_pid = pid;
  std::atexit(StopRegistry);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (!LoopbackPortOpen(port)) {
    if (::waitpid(pid, nullptr, WNOHANG) == pid) {
      g_registry_pid = 0;
      auto text = ReadFile(log);
      return absl::InternalError("the test registry exited: " + (text.ok() ? *text : ""));
    }
    if (absl::Now() > deadline) return absl::InternalError("the test registry did not listen");
    absl::SleepFor(absl::Milliseconds(50));
  }
  const std::string address = absl::StrCat("127.0.0.1:", port);
  auto push = RunCaptured({"/bin/bash", script, "push", g_registry_dir, address}, absl::Minutes(5));
  if (!push.ok()) return push.status();
  if (push->exit_code != 0) {
    return absl::InternalError("pushing the test images failed: " + push->err);
  }
  return address;
}

}  // namespace

const std::string& RuncUnavailableReason() {
  static const std::string* reason = new std::string(ComputeReason());
  return *reason;
}

SkopeoOptions TestSkopeoOptions() {
  SkopeoOptions options;
  if (!RuncUnavailableReason().empty()) return options;
  auto registry = TestRegistryAddress();
  if (registry.ok()) options.insecure_registries = {*registry};
  return options;
}

std::string SandboxInitPath() { return ISORUN_SANDBOX_INIT; }

absl::StatusOr<std::string> TestRegistryAddress() {
  static std::once_flag once;
  static absl::StatusOr<std::string>* address = nullptr;
  std::call_once(once, [] { address = new absl::StatusOr<std::string>(StartRegistry()); });
  return *address;
}

std::string MakeScratchDir(const std::string& prefix) {
  std::string tmpl = absl::StrCat("/tmp/", prefix, ".XXXXXX");
  if (::mkdtemp(tmpl.data()) == nullptr) return "";
  ::chmod(tmpl.c_str(), 0711);
  return tmpl;
}

void RemoveScratchDir(const std::string& dir) {
  if (dir.empty()) return;
  const std::string root = dir + "/runc";
  if (PathExists(root)) {
    auto ids = RunCaptured({"runc", "--root", root, "list", "--quiet"}, absl::Seconds(30));
    if (ids.ok()) {
      for (absl::string_view id : absl::StrSplit(ids->out, '\n', absl::SkipEmpty())) {
        (void)RunCaptured({"runc", "--root", root, "delete", "--force", std::string(id)},
                          absl::Seconds(30));
      }
    }
  }
  for (const auto& id : ListDir(dir + "/sandboxes")) {
    ::umount2((dir + "/sandboxes/" + id + "/rootfs").c_str(), MNT_DETACH);
    ::umount2((dir + "/sandboxes/" + id + "/layer").c_str(), MNT_DETACH);
  }
  for (const auto& name : ListDir(dir + "/layers")) {  // disk layers, taken or ready
    ::umount2((dir + "/layers/" + name).c_str(), MNT_DETACH);
  }
  (void)RemoveTree(dir);
}

bool LoopbackPortOpen(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool open = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return open;
}

std::vector<int> HostPidsRunning(const std::string& cmdline) {
  std::vector<int> out;
  for (const auto& name : ListDir("/proc")) {
    int pid = 0;
    if (!absl::SimpleAtoi(name, &pid)) continue;
    auto text = ReadFile(absl::StrCat("/proc/", pid, "/cmdline"));
    if (!text.ok() || text->empty()) continue;
    std::string args = *text;
    if (args.back() == '\0') args.pop_back();
    std::replace(args.begin(), args.end(), '\0', ' ');
    if (args == cmdline) out.push_back(pid);
  }
  return out;
}

int FreeLoopbackPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace isorun::runner::testing
