// isorun-sandbox-init: PID 1 of every runc sandbox, bind-mounted read-only at /dev/init.
//
// It reaps the orphans that commands leave behind (a background job whose shell exited is
// re-parented to PID 1), so zombies never eat the sandbox's pids limit. Signals from inside the
// sandbox are ignored (a process there cannot stop the sandbox by killing PID 1); SIGTERM or
// SIGINT from outside (the runner) ends it. Built static, with no C++ runtime use, so it runs in
// any image.
//
// It puts every sandbox process under the syscall filter (seccomp_bpf.h): itself first thing,
// so whatever PID 1 starts inherits it, and, run as `/dev/init exec PROGRAM ARGS...` (the
// runner's `runc exec` fallback), the command before it executes PROGRAM. If the filter cannot be
// installed nothing runs (exit 126).
//
// Run as `/dev/init agent` it is also the sandbox's exec agent (exec_agent_protocol.h): it forks
// the commands the runner sends over the inherited fd 3, each in a session of its own, and
// reports their exit. It makes itself non-dumpable before anything else runs in the sandbox, so
// the sandbox's processes cannot reach that descriptor through /proc/1/fd, ptrace or
// pidfd_getfd; every descriptor it holds is close-on-exec, so no command inherits one.

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "services/runner/exec_agent_protocol.h"
#include "services/runner/seccomp_bpf.h"

extern char** environ;

namespace {

namespace proto = isorun::runner::agent_protocol;

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

// A message of a type byte and an optional int32.
void Send(int fd, char type, int32_t value, bool with_value) {
  char buf[1 + sizeof(int32_t)];
  buf[0] = type;
  if (with_value) memcpy(buf + 1, &value, sizeof value);
  (void)!send(fd, buf, with_value ? sizeof buf : 1, MSG_NOSIGNAL);
}

struct Command {
  pid_t pid;
  int ctl;  // -1 once the runner has gone away from it
};

Command* commands = nullptr;
int n_commands = 0;
int cap_commands = 0;

void CloseFds(const int* fds, int n) {
  for (int i = 0; i < n; ++i) {
    if (fds[i] >= 0) close(fds[i]);
  }
}

// The forked command's process: never returns.
[[noreturn]] void RunCommand(int start, const int* stdio, const char* cmd, const char* cwd,
                             char* const* env, int n_env) {
  setsid();
  for (int i = 0; i < 3; ++i) {
    if (dup2(stdio[i], i) < 0) _exit(127);
  }
  // The runner learns this process's host pid from the credentials the kernel attaches, and puts
  // it into the exec's cgroup before anything of the command runs.
  Send(start, proto::kPid, 0, false);
  char go = 0;
  if (recv(start, &go, 1, 0) != 1 || go != proto::kGo) _exit(137);
  if (cwd[0] != '\0' && chdir(cwd) != 0) {
    Send(start, proto::kCwdFailed, errno, true);
    _exit(1);
  }
  // The environment: PID 1's own (the sandbox's), with the request's variables replacing
  // variables of the same name.
  int n_own = 0;
  while (environ[n_own] != nullptr) ++n_own;
  char** envp = static_cast<char**>(malloc(sizeof(char*) * (n_own + n_env + 1)));
  if (envp == nullptr) _exit(127);
  int k = 0;
  for (int i = 0; i < n_own; ++i) {
    const char* eq = strchr(environ[i], '=');
    size_t key_len = eq == nullptr ? strlen(environ[i]) : static_cast<size_t>(eq - environ[i]);
    bool replaced = false;
    for (int j = 0; j < n_env && !replaced; ++j) {
      replaced = strncmp(env[j], environ[i], key_len) == 0 && env[j][key_len] == '=';
    }
    if (!replaced) envp[k++] = environ[i];
  }
  for (int j = 0; j < n_env; ++j) envp[k++] = env[j];
  envp[k] = nullptr;
  // Every descriptor above 2 is close-on-exec already; this makes sure of it.
#ifdef SYS_close_range
  (void)syscall(SYS_close_range, 3u, ~0u, 4u /* CLOSE_RANGE_CLOEXEC */);
#endif
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  char sh[] = "/bin/sh";
  char dash_c[] = "-c";
  char* argv[] = {sh, dash_c, const_cast<char*>(cmd), nullptr};
  execve(sh, argv, envp);
  Send(start, proto::kExecFailed, errno, true);
  _exit(127);
}

// Reads one exec request from the channel and starts its command. Returns false when the
// channel is closed (the runner is gone).
bool HandleRequest(int channel, char* buf) {
  char control[CMSG_SPACE(sizeof(int) * proto::kExecFds)];
  iovec iov{buf, proto::kMaxRequest};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n = recvmsg(channel, &msg, MSG_CMSG_CLOEXEC);
  if (n < 0) return errno == EINTR || errno == EAGAIN;
  if (n == 0) return false;
  int fds[proto::kExecFds];
  int n_fds = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int count = static_cast<int>((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    for (int i = 0; i < count; ++i) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (n_fds < proto::kExecFds) {
        fds[n_fds++] = fd;
      } else {
        close(fd);
      }
    }
  }
  // The strings: cmd, cwd, then env; the message must end with a NUL.
  const bool well_formed = n_fds == proto::kExecFds && (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) == 0 &&
                           n >= 3 && buf[0] == proto::kExec && buf[n - 1] == '\0';
  if (!well_formed) {
    if (n_fds > 0) Send(fds[0], proto::kForkFailed, EINVAL, true);
    CloseFds(fds, n_fds);
    return true;
  }
  const char* cmd = buf + 1;
  const char* end = buf + n;
  const char* cwd = cmd + strlen(cmd) + 1;
  if (cwd >= end) {
    Send(fds[0], proto::kForkFailed, EINVAL, true);
    CloseFds(fds, n_fds);
    return true;
  }
  // env pointers into buf, which the child owns after the fork.
  int n_env = 0;
  for (const char* p = cwd + strlen(cwd) + 1; p < end; p += strlen(p) + 1) ++n_env;
  char** env = static_cast<char**>(malloc(sizeof(char*) * (n_env + 1)));
  if (env == nullptr) {
    Send(fds[0], proto::kForkFailed, ENOMEM, true);
    CloseFds(fds, n_fds);
    return true;
  }
  int i = 0;
  for (char* p = const_cast<char*>(cwd) + strlen(cwd) + 1; p < end; p += strlen(p) + 1) {
    env[i++] = p;
  }
  env[i] = nullptr;
  if (n_commands == cap_commands) {
    int cap = cap_commands == 0 ? 16 : cap_commands * 2;
    Command* grown = static_cast<Command*>(realloc(commands, sizeof(Command) * cap));
    if (grown == nullptr) {
      free(env);
      Send(fds[0], proto::kForkFailed, ENOMEM, true);
      CloseFds(fds, n_fds);
      return true;
    }
    commands = grown;
    cap_commands = cap;
  }
  pid_t pid = fork();
  if (pid == 0) RunCommand(fds[1], fds + 2, cmd, cwd, env, n_env);
  free(env);
  if (pid < 0) {
    Send(fds[0], proto::kForkFailed, errno, true);
    CloseFds(fds, n_fds);
    return true;
  }
  CloseFds(fds + 1, n_fds - 1);
  commands[n_commands++] = Command{pid, fds[0]};
  return true;
}

void Forget(int i) {
  if (commands[i].ctl >= 0) {
    // Unread messages (a kill request that crossed the exit) would make the close reset the
    // runner's end, and its next read fail with ECONNRESET instead of returning the status.
    char m[16];
    while (recv(commands[i].ctl, m, sizeof m, MSG_DONTWAIT) > 0) {
    }
    close(commands[i].ctl);
  }
  commands[i] = commands[--n_commands];
}

void ReapChildren() {
  int status = 0;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    for (int i = 0; i < n_commands; ++i) {
      if (commands[i].pid != pid) continue;
      if (commands[i].ctl >= 0) Send(commands[i].ctl, proto::kStatus, status, true);
      Forget(i);
      break;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool exec_mode = argc >= 3 && strcmp(argv[1], "exec") == 0;
  const bool agent_mode = argc >= 2 && strcmp(argv[1], "agent") == 0;
  if (!exec_mode) {
    // Before anything else in the sandbox runs: its processes run as the same uid, and a
    // dumpable PID 1 would let them ptrace it or open its descriptors (the agent's channel).
    // Children inherit this only until they exec.
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  }
  int channel = -1;
  if (agent_mode) {
    channel = proto::kChannelFd;
    if (fcntl(channel, F_SETFD, FD_CLOEXEC) != 0) channel = -1;
  }
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
  const int sigfd = signalfd(-1, &all, SFD_CLOEXEC | SFD_NONBLOCK);
  char* buf = channel >= 0 ? static_cast<char*>(malloc(proto::kMaxRequest)) : nullptr;
  if (buf == nullptr && channel >= 0) {
    close(channel);
    channel = -1;
  }
  if (sigfd < 0) {
    // Without a signalfd there is no multiplexing: reap, and run nothing else.
    if (channel >= 0) close(channel);
    for (;;) {
      siginfo_t info;
      int sig = sigwaitinfo(&all, &info);
      if (sig == SIGCHLD) {
        while (waitpid(-1, nullptr, WNOHANG) > 0) {
        }
      } else if ((sig == SIGTERM || sig == SIGINT) && info.si_pid == 0) {
        return 0;
      }
    }
  }
  pollfd* fds = nullptr;
  int cap_fds = 0;
  for (;;) {
    const int want = 2 + n_commands;
    if (want > cap_fds) {
      pollfd* grown = static_cast<pollfd*>(realloc(fds, sizeof(pollfd) * want * 2));
      if (grown != nullptr) {
        fds = grown;
        cap_fds = want * 2;
      }
    }
    int n = 0;
    fds[n++] = {sigfd, POLLIN, 0};
    if (channel >= 0) fds[n++] = {channel, POLLIN, 0};
    const int first_ctl = n;
    for (int i = 0; i < n_commands && n < cap_fds; ++i) {
      fds[n++] = {commands[i].ctl, static_cast<short>(commands[i].ctl >= 0 ? POLLIN : 0), 0};
    }
    if (poll(fds, n, -1) < 0) continue;
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo si;
      while (read(sigfd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
        if ((si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) && si.ssi_pid == 0) {
          // si_pid is 0 for a sender outside this PID namespace.
          return 0;
        }
      }
      ReapChildren();  // SIGCHLD may coalesce: always look
    }
    // Commands first (their slots move when one is forgotten), then new requests.
    for (int j = first_ctl; j < n; ++j) {
      if (fds[j].revents == 0) continue;
      int i = 0;
      while (i < n_commands && commands[i].ctl != fds[j].fd) ++i;
      if (i == n_commands || commands[i].ctl < 0) continue;
      char m[16];
      ssize_t r = recv(commands[i].ctl, m, sizeof m, MSG_DONTWAIT);
      // (The process itself too: it may not have made its session yet.)
      if (r > 0 && m[0] == proto::kKill) {
        kill(-commands[i].pid, SIGKILL);
        kill(commands[i].pid, SIGKILL);
      } else if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
        // The runner gave up on this command: it must not outlive that. (Should it still be
        // there, it learns why the agent stopped reporting.)
        Send(commands[i].ctl, proto::kStopped, r == 0 ? 0 : errno, true);
        kill(-commands[i].pid, SIGKILL);
        kill(commands[i].pid, SIGKILL);
        close(commands[i].ctl);
        commands[i].ctl = -1;
      }
    }
    if (channel >= 0 && fds[1].revents != 0) {
      if (!HandleRequest(channel, buf)) {
        // The runner went away (a restart): it runs commands with `runc exec` from now on.
        close(channel);
        channel = -1;
        free(buf);
        buf = nullptr;
      }
    }
  }
}
