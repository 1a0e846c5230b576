// The sandbox's syscall filter program, installed for real in a child process (no runc needed):
// what the deny list names fails with EPERM, ordinary work goes on.

#include "services/runner/seccomp_bpf.h"

#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "absl/strings/str_cat.h"
#include "services/runner/seccomp_profile.h"

namespace isorun::runner {
namespace {

// Runs `probe` in a child under the filter; returns what it wrote on the pipe.
std::string UnderFilter(void (*probe)(int fd)) {
  int fds[2];
  if (::pipe(fds) != 0) return "pipe failed";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    static sock_filter program[kSeccompMaxInstructions];
    const int n = SeccompFilterProgram(program);
    sock_fprog fprog{static_cast<unsigned short>(n), program};
    if (n <= 0 || ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        ::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0) {
      (void)!::write(fds[1], "install failed", 14);
      ::_exit(1);
    }
    probe(fds[1]);
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string out;
  char buf[512];
  ssize_t got;
  while ((got = ::read(fds[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(got));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return out;
}

// Writes "name=errno " for a call that returned -1, "name=ok " otherwise.
void Report(int fd, const char* name, long rc) {
  const std::string s = absl::StrCat(name, "=", rc == -1 ? errno : 0, " ");
  (void)!::write(fd, s.data(), s.size());
}

TEST(SeccompBpf, TheProgramIsSmallAndBuilds) {
  sock_filter program[kSeccompMaxInstructions];
  const int n = SeccompFilterProgram(program);
  ASSERT_GT(n, 0);
  // Ranges of allowed numbers, not one comparison per syscall.
  EXPECT_LT(n, 200) << n;
  EXPECT_GT(SeccompAllowedSyscalls().size(), 250u);
}

TEST(SeccompBpf, TheDenyListIsRefusedAndOrdinaryWorkGoesOn) {
  const std::string out = UnderFilter([](int fd) {
    Report(fd, "getpid", ::getpid());
    Report(fd, "open", ::open("/proc/self/status", O_RDONLY));
    // A process: clone without namespace flags.
    const pid_t child = ::fork();
    if (child == 0) ::_exit(0);
    Report(fd, "fork", child);
    if (child > 0) ::waitpid(child, nullptr, 0);
    Report(fd, "unshare0", ::unshare(0));
    Report(fd, "unshare_user", ::unshare(CLONE_NEWUSER));
    Report(fd, "unshare_net", ::unshare(CLONE_NEWNET));
    Report(fd, "unshare_time", ::unshare(CLONE_NEWTIME));
    Report(fd, "clone_newns", ::syscall(SYS_clone, CLONE_NEWNS | SIGCHLD, 0, 0, 0, 0));
    Report(fd, "clone3", ::syscall(SYS_clone3, nullptr, 0));
    Report(fd, "setns", ::syscall(SYS_setns, 0, 0));
    Report(fd, "mount", ::mount("none", "/tmp", "tmpfs", 0, nullptr));
    Report(fd, "bpf", ::syscall(SYS_bpf, 0, nullptr, 0));
    Report(fd, "keyctl", ::syscall(SYS_keyctl, 0, 0, 0, 0, 0));
    Report(fd, "add_key", ::syscall(SYS_add_key, "user", "x", "y", 1, 0));
    Report(fd, "userfaultfd", ::syscall(SYS_userfaultfd, 0));
    Report(fd, "perf_event_open", ::syscall(SYS_perf_event_open, nullptr, 0, -1, -1, 0));
    Report(fd, "io_uring_setup", ::syscall(SYS_io_uring_setup, 1, nullptr));
    Report(fd, "kexec_load", ::syscall(SYS_kexec_load, 0, 0, nullptr, 0));
    Report(fd, "init_module", ::syscall(SYS_init_module, nullptr, 0, ""));
    Report(fd, "personality_query", ::personality(0xffffffff));
    Report(fd, "personality_linux", ::personality(PER_LINUX));
    Report(fd, "personality_norandom", ::personality(static_cast<unsigned>(PER_LINUX) | static_cast<unsigned>(ADDR_NO_RANDOMIZE)));
#if defined(__x86_64__)
    // The same getpid through the x32 ABI: another ABI is refused.
    Report(fd, "x32_getpid", ::syscall(0x40000000 | SYS_getpid));
#endif
  });
  const std::string want = absl::StrCat(
      "getpid=0 open=0 fork=0 unshare0=0 unshare_user=", EPERM, " unshare_net=", EPERM,
      " unshare_time=", EPERM, " clone_newns=", EPERM, " clone3=", ENOSYS, " setns=", EPERM,
      " mount=", EPERM, " bpf=", EPERM, " keyctl=", EPERM, " add_key=", EPERM,
      " userfaultfd=", EPERM, " perf_event_open=", EPERM, " io_uring_setup=", EPERM,
      " kexec_load=", EPERM, " init_module=", EPERM,
      " personality_query=0 personality_linux=0 personality_norandom=", EPERM, " "
#if defined(__x86_64__)
      , "x32_getpid=", EPERM, " "
#endif
  );
  EXPECT_EQ(out, want);
}

}  // namespace
}  // namespace isorun::runner
