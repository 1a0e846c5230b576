// isorun-sandbox-init: PID 1 of every runc sandbox, bind-mounted read-only at /dev/init.
//
// It reaps the orphans that commands leave behind (a background job whose shell exited is
// re-parented to PID 1), so zombies never eat the sandbox's pids limit, and otherwise sleeps.
// Signals from inside the sandbox are ignored (a process there cannot stop the sandbox by
// killing PID 1); SIGTERM or SIGINT from outside (the runner) ends it. Built static, with no
// C++ runtime use, so it runs in any image.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

int main() {
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
