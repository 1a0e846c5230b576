// isorun-sandbox-init: PID 1 of every runc sandbox, bind-mounted read-only at /dev/init.
//
// It reaps the orphans that commands leave behind (a background job whose shell exited is
// re-parented to PID 1), so zombies never eat the sandbox's pids limit, and otherwise sleeps.
// Signals from inside the sandbox are ignored (a process there cannot stop the sandbox by
// killing PID 1); SIGTERM or SIGINT from outside (the runner) ends it. Built static, with no
// C++ runtime use, so it runs in any image.
//
// It also puts every sandbox process under the syscall filter (seccomp_bpf.h): itself first
// thing, so whatever PID 1 starts inherits it, and, run as `/dev/init exec PROGRAM ARGS...` (how
// the runner starts every exec), the command before it executes PROGRAM. If the filter cannot
// be installed nothing runs (exit 126).

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "services/runner/seccomp_bpf.h"

namespace {

bool InstallFilter() {
  static sock_filter program[isorun::runner::kSeccompMaxInstructions];
  const int n = isorun::runner::SeccompFilterProgram(program);
  if (n <= 0) return false;
  sock_fprog fprog{static_cast<unsigned short>(n), program};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
  return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) == 0;
}

void Say(const char* what) {
  const char prefix[] = "isorun-sandbox-init: ";
  (void)!write(2, prefix, sizeof prefix - 1);
  (void)!write(2, what, strlen(what));
  (void)!write(2, "\n", 1);
}

}  // namespace

int main(int argc, char** argv) {
  const bool exec_mode = argc >= 3 && strcmp(argv[1], "exec") == 0;
  if (!InstallFilter()) {
    Say("cannot install the syscall filter; not starting");
    return 126;
  }
  if (exec_mode) {
    execv(argv[2], argv + 2);
    Say(strerror(errno));
    return 127;
  }
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, nullptr);
  for (;;) {
    siginfo_t info;
    int sig = sigwaitinfo(&all, &info);
    if (sig == SIGCHLD) {
      while (waitpid(-1, nullptr, WNOHANG) > 0) {
      }
    } else if ((sig == SIGTERM || sig == SIGINT) && info.si_pid == 0) {
      // si_pid is 0 for a sender outside this PID namespace.
      return 0;
    }
  }
}
