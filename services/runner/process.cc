#include "services/runner/process.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "services/runner/fd_util.h"

extern char** environ;

namespace isorun::runner {
namespace {

// Reads and discards what background processes write to pipes whose command has finished:
// closing our end instead would kill them with SIGPIPE at their next write (a dev server started
// with `server &` in an exec would die at its first log line). One thread with epoll for all
// such pipes; a pipe is closed at EOF, when the last process holding it is gone.
class PipeDrainer {
 public:
  static PipeDrainer& Get() {
    static PipeDrainer* drainer = new PipeDrainer();
    return *drainer;
  }
  void Adopt(int fd) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = fd;
    if (epoll_ >= 0 && ::epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &ev) == 0) return;
    ::close(fd);
  }

 private:
  PipeDrainer() : epoll_(::epoll_create1(EPOLL_CLOEXEC)) {
    if (epoll_ >= 0) std::thread([this] { Run(); }).detach();
  }
  void Run() {
    epoll_event events[64];
    char buf[16384];
    while (true) {
      int n = ::epoll_wait(epoll_, events, 64, -1);
      for (int i = 0; i < n; ++i) {
        const int fd = events[i].data.fd;
        ssize_t r;
        while ((r = ::read(fd, buf, sizeof buf)) > 0) {
        }
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
          ::epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
          ::close(fd);
        }
      }
    }
  }
  const int epoll_;
};

}  // namespace

void DrainInBackground(int fd) { PipeDrainer::Get().Adopt(fd); }

std::string ShellQuote(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) {
    if (!out.empty()) out += ' ';
    bool plain = !a.empty() && a.find_first_not_of(
                                   "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                   "0123456789-_./:=@,+%") == std::string::npos;
    if (plain) {
      out += a;
      continue;
    }
    out += '\'';
    for (char c : a) {
      if (c == '\'') {
        out += "'\\''";
      } else {
        out += c;
      }
    }
    out += '\'';
  }
  return out;
}

absl::StatusOr<ProcessResult> RunProcess(const ProcessOptions& options) {
  if (options.argv.empty()) return absl::InvalidArgumentError("no program to run");
  // A child that exits before reading all of its stdin must not kill us with SIGPIPE.
  static std::once_flag ignore_sigpipe;
  std::call_once(ignore_sigpipe, [] { ::signal(SIGPIPE, SIG_IGN); });

  // Pipe ends go above the fds the child gets (0-5), so no dup2 below overwrites a source.
  auto make_pipe = [](Fd& r, Fd& w) -> absl::Status {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return Errno("pipe");
    for (int i = 0; i < 2; ++i) {
      int high = ::fcntl(p[i], F_DUPFD_CLOEXEC, 16);
      ::close(p[i]);
      if (high < 0) return Errno("fcntl");
      p[i] = high;
    }
    r.Reset(p[0]);
    w.Reset(p[1]);
    return absl::OkStatus();
  };
  Fd in_r, in_w, out_r, out_w, err_r, err_w, launcher_r, launcher_w;
  for (auto [r, w] : {std::pair{&in_r, &in_w}, {&out_r, &out_w}, {&err_r, &err_w}}) {
    if (absl::Status s = make_pipe(*r, *w); !s.ok()) return s;
  }
  if (options.command_fds) {
    if (absl::Status s = make_pipe(launcher_r, launcher_w); !s.ok()) return s;
  }

  std::vector<int> inherited_copies;  // closed once the child has them
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (options.null_stdio) {
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  } else if (options.command_fds) {
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, launcher_w.get(), 1);
    posix_spawn_file_actions_adddup2(&actions, launcher_w.get(), 2);
    posix_spawn_file_actions_adddup2(&actions, in_r.get(), 3);
    posix_spawn_file_actions_adddup2(&actions, out_w.get(), 4);
    posix_spawn_file_actions_adddup2(&actions, err_w.get(), 5);
  } else {
    posix_spawn_file_actions_adddup2(&actions, in_r.get(), 0);
    posix_spawn_file_actions_adddup2(&actions, out_w.get(), 1);
    posix_spawn_file_actions_adddup2(&actions, err_w.get(), 2);
  }
  if (!options.command_fds) {
    // Sources are close-on-exec; each target below a later source would overwrite it, so they
    // go through duplicates above every target first.
    std::vector<int> high;
    for (int fd : options.inherit_fds) {
      int h = ::fcntl(fd, F_DUPFD_CLOEXEC, 16 + static_cast<int>(options.inherit_fds.size()));
      if (h < 0) {
        for (int x : high) ::close(x);
        posix_spawn_file_actions_destroy(&actions);
        return Errno("fcntl");
      }
      high.push_back(h);
    }
    for (size_t i = 0; i < high.size(); ++i) {
      posix_spawn_file_actions_adddup2(&actions, high[i], 3 + static_cast<int>(i));
    }
    inherited_copies.swap(high);
  }
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // The runner blocks SIGINT/SIGTERM in every thread and ignores SIGPIPE: the child starts clean.
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> argv;
  for (const auto& a : options.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const absl::Time start = absl::Now();
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, argv[0], &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  for (int fd : inherited_copies) ::close(fd);
  if (rc != 0) {
    return absl::InternalError(
        absl::StrCat("cannot run ", options.argv[0], ": ", std::strerror(rc)));
  }
  in_r.Close();
  out_w.Close();
  err_w.Close();
  launcher_w.Close();
  SetNonBlocking(in_w.get());
  SetNonBlocking(out_r.get());
  SetNonBlocking(err_r.get());
  if (launcher_r.get() >= 0) SetNonBlocking(launcher_r.get());
  size_t stdin_off = 0;
  if (options.stdin_data.empty() || options.null_stdio) in_w.Close();
  if (options.null_stdio) {
    out_r.Close();
    err_r.Close();
  }

  Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  ProcessResult result;
  bool exited = false, killed = false;
  absl::Time drain_until = absl::InfiniteFuture();
  int wait_status = 0;
  std::string buf(64 * 1024, '\0');

  auto kill_child = [&] {
    if (killed) return;
    killed = true;
    if (options.on_kill) options.on_kill();
    ::kill(-pid, SIGKILL);
  };
  auto reap = [&] {
    if (!exited && ::waitpid(pid, &wait_status, WNOHANG) == pid) {
      exited = true;
      result.exit_code = ExitCodeOf(wait_status);
      drain_until = absl::Now() + options.drain_after_exit;
      in_w.Close();
    }
  };
  // fd: 1 or 2 for the command's output, 0 for the launcher's own.
  auto read_from = [&](Fd& fd, int which) {
    while (fd.get() >= 0) {
      ssize_t r = ::read(fd.get(), buf.data(), buf.size());
      if (r > 0) {
        std::string_view data(buf.data(), static_cast<size_t>(r));
        if (which == 0) {
          if (result.launcher_output.size() < 65536) result.launcher_output.append(data);
        } else if (options.on_output && !options.on_output(which, data) && !exited && !killed) {
          result.cancelled = true;
          kill_child();
        }
        if (static_cast<size_t>(r) < buf.size()) return;  // likely drained; poll again
        continue;
      }
      if (r == 0) {
        fd.Close();
        return;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN) fd.Close();
      return;
    }
  };

  while (true) {
    reap();
    if (exited && out_r.get() < 0 && err_r.get() < 0 && launcher_r.get() < 0) break;
    absl::Time now = absl::Now();
    if (exited && now >= drain_until) break;
    if (!exited && !killed) {
      if (now >= options.deadline) {
        result.timed_out = true;
        kill_child();
      } else if (options.cancelled && options.cancelled()) {
        result.cancelled = true;
        kill_child();
      }
    }
    pollfd fds[5];
    int n = 0;
    int i_out = -1, i_err = -1, i_launcher = -1, i_in = -1;
    if (out_r.get() >= 0) {
      i_out = n;
      fds[n++] = {out_r.get(), POLLIN, 0};
    }
    if (err_r.get() >= 0) {
      i_err = n;
      fds[n++] = {err_r.get(), POLLIN, 0};
    }
    if (launcher_r.get() >= 0) {
      i_launcher = n;
      fds[n++] = {launcher_r.get(), POLLIN, 0};
    }
    if (in_w.get() >= 0) {
      i_in = n;
      fds[n++] = {in_w.get(), POLLOUT, 0};
    }
    if (!exited && pidfd.get() >= 0) fds[n++] = {pidfd.get(), POLLIN, 0};
    absl::Duration wait = absl::Milliseconds(50);
    if (pidfd.get() < 0 && !exited) wait = absl::Milliseconds(5);
    if (!exited && !killed && options.deadline - now < wait) wait = options.deadline - now;
    if (exited && drain_until - now < wait) wait = drain_until - now;
    // Round up: a zero timeout on a positive wait would spin.
    int timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(wait + absl::Microseconds(999)));
    if (timeout_ms < 0) timeout_ms = 0;
    int ready = ::poll(fds, static_cast<nfds_t>(n), timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      kill_child();
      ::waitpid(pid, &wait_status, 0);
      return Errno("poll");
    }
    constexpr short kReadable = POLLIN | POLLHUP | POLLERR;
    if (i_out >= 0 && (fds[i_out].revents & kReadable)) read_from(out_r, 1);
    if (i_err >= 0 && (fds[i_err].revents & kReadable)) read_from(err_r, 2);
    if (i_launcher >= 0 && (fds[i_launcher].revents & kReadable)) read_from(launcher_r, 0);
    if (i_in >= 0 && fds[i_in].revents) {
      if (fds[i_in].revents & (POLLERR | POLLHUP)) {
        in_w.Close();
      } else {
        ssize_t w = ::write(in_w.get(), options.stdin_data.data() + stdin_off,
                            options.stdin_data.size() - stdin_off);
        if (w > 0) stdin_off += static_cast<size_t>(w);
        if ((w < 0 && errno != EAGAIN && errno != EINTR) ||
            stdin_off >= options.stdin_data.size()) {
          in_w.Close();
        }
      }
    }
  }
  if (!exited) {
    ::waitpid(pid, &wait_status, 0);
    result.exit_code = ExitCodeOf(wait_status);
  }
  // What is still open is held by processes the command left in the background.
  if (out_r.get() >= 0) PipeDrainer::Get().Adopt(out_r.Release());
  if (err_r.get() >= 0) PipeDrainer::Get().Adopt(err_r.Release());
  if (launcher_r.get() >= 0) PipeDrainer::Get().Adopt(launcher_r.Release());
  result.elapsed = absl::Now() - start;
  return result;
}

absl::StatusOr<CapturedOutput> RunCaptured(const std::vector<std::string>& argv,
                                           absl::Duration timeout) {
  CapturedOutput captured;
  ProcessOptions options;
  options.argv = argv;
  options.deadline = absl::Now() + timeout;
  options.on_output = [&captured](int fd, std::string_view data) {
    std::string& dst = fd == 1 ? captured.out : captured.err;
    // Tools' output is small; cap it anyway so a runaway tool cannot exhaust memory.
    if (dst.size() < (4 << 20)) dst.append(data.data(), data.size());
    return true;
  };
  auto result = RunProcess(options);
  if (!result.ok()) return result.status();
  captured.exit_code = result->exit_code;
  captured.timed_out = result->timed_out;
  return captured;
}

}  // namespace isorun::runner
