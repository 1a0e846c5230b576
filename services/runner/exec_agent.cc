#include "services/runner/exec_agent.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "services/runner/fd_util.h"
#include "services/runner/exec_agent_protocol.h"
#include "services/runner/process.h"

namespace isorun::runner {
namespace {

namespace proto = agent_protocol;

// The channel's send buffer: a request of kMaxRequest must fit in one datagram.
constexpr int kChannelSendBuffer = 4 << 20;
// After asking the agent to kill a command, how long to wait for its exit status.
constexpr absl::Duration kKillGrace = absl::Seconds(5);

absl::Status SocketPair(Fd& a, Fd& b) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return Errno("socketpair");
  a.Reset(sv[0]);
  b.Reset(sv[1]);
  return absl::OkStatus();
}

absl::Status Pipe(Fd& r, Fd& w) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return Errno("pipe");
  r.Reset(p[0]);
  w.Reset(p[1]);
  return absl::OkStatus();
}

void SendByte(int fd, char type) { (void)::send(fd, &type, 1, MSG_NOSIGNAL | MSG_DONTWAIT); }

int32_t ValueOf(const char* msg, ssize_t n) {
  int32_t v = 0;
  if (n >= static_cast<ssize_t>(1 + sizeof v)) std::memcpy(&v, msg + 1, sizeof v);
  return v;
}

}  // namespace

absl::StatusOr<std::pair<std::shared_ptr<AgentChannel>, int>> AgentChannel::Make() {
  Fd ours, theirs;
  if (absl::Status s = SocketPair(ours, theirs); !s.ok()) return s;
  // Root may exceed the system's default limit; fall back to asking within it.
  if (::setsockopt(ours.get(), SOL_SOCKET, SO_SNDBUFFORCE, &kChannelSendBuffer,
                   sizeof kChannelSendBuffer) != 0) {
    (void)::setsockopt(ours.get(), SOL_SOCKET, SO_SNDBUF, &kChannelSendBuffer,
                       sizeof kChannelSendBuffer);
  }
  std::shared_ptr<AgentChannel> channel(new AgentChannel(ours.Release()));
  return std::make_pair(std::move(channel), theirs.Release());
}

AgentChannel::~AgentChannel() { ::close(fd_); }

absl::Status AgentChannel::Send(const std::string& message, const std::vector<int>& fds) {
  iovec iov{const_cast<char*>(message.data()), message.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  absl::MutexLock lock(&send_mu_);
  if (gone()) return absl::UnavailableError("the sandbox's exec agent is gone");
  ssize_t n;
  do {
    n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(message.size())) return absl::OkStatus();
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    // The agent is not reading (its sandbox is being frozen, or it is swamped): not a loss of
    // the agent, but this command goes another way.
    return absl::UnavailableError("the sandbox's exec agent is not taking requests");
  }
  MarkGone();
  return absl::UnavailableError(
      absl::StrCat("the sandbox's exec agent is gone: ", std::strerror(errno)));
}

absl::StatusOr<AgentExecResult> RunAgentExec(AgentChannel& channel,
                                             const AgentExecOptions& options) {
  std::string request(1, proto::kExec);
  request.append(options.cmd).push_back('\0');
  request.append(options.cwd).push_back('\0');
  for (const auto& [k, v] : options.env) {
    absl::StrAppend(&request, k, "=", v);
    request.push_back('\0');
  }
  if (request.size() > proto::kMaxRequest) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cmd, cwd and env together are larger than ", proto::kMaxRequest >> 20, " MiB"));
  }
  Fd ctl, ctl_agent, start, start_child, in_r, in_w, out_r, out_w, err_r, err_w;
  if (absl::Status s = SocketPair(ctl, ctl_agent); !s.ok()) return s;
  if (absl::Status s = SocketPair(start, start_child); !s.ok()) return s;
  for (auto [r, w] : {std::pair{&in_r, &in_w}, {&out_r, &out_w}, {&err_r, &err_w}}) {
    if (absl::Status s = Pipe(*r, *w); !s.ok()) return s;
  }
  // The kernel attaches the sender's pid (as this process sees it) to what arrives on `start`.
  const int one = 1;
  if (::setsockopt(start.get(), SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) {
    return Errno("SO_PASSCRED");
  }
  // A child that exits before reading all of its stdin must not kill us with SIGPIPE (writes
  // below use the pipe; the process-wide setting is RunProcess's too).
  static const bool sigpipe_ignored = [] {
    ::signal(SIGPIPE, SIG_IGN);
    return true;
  }();
  (void)sigpipe_ignored;
  if (absl::Status s = channel.Send(request, {ctl_agent.get(), start_child.get(), in_r.get(),
                                               out_w.get(), err_w.get()});
      !s.ok()) {
    return s;
  }
  ctl_agent.Close();
  start_child.Close();
  in_r.Close();
  out_w.Close();
  err_w.Close();
  SetNonBlocking(ctl.get());
  SetNonBlocking(start.get());
  SetNonBlocking(in_w.get());
  SetNonBlocking(out_r.get());
  SetNonBlocking(err_r.get());
  size_t stdin_off = 0;
  if (options.stdin_data.empty()) in_w.Close();

  AgentExecResult result;
  bool started = false, exited = false, killed = false, agent_lost = false;
  absl::Status failure;  // the command could not be started
  std::string lost_why;
  bool init_exited = false;  // EOF on ctl with no status and no "stopped" before it
  absl::Time drain_until = absl::InfiniteFuture();
  absl::Time give_up = absl::InfiniteFuture();
  std::string buf(64 * 1024, '\0');

  auto kill_command = [&] {
    if (killed) return;
    killed = true;
    if (options.on_kill) options.on_kill();
    SendByte(ctl.get(), proto::kKill);
    give_up = absl::Now() + kKillGrace;
  };
  auto read_from = [&](Fd& fd, int which) {
    while (fd.get() >= 0) {
      ssize_t r = ::read(fd.get(), buf.data(), buf.size());
      if (r > 0) {
        std::string_view data(buf.data(), static_cast<size_t>(r));
        if (options.on_output && !options.on_output(which, data) && !exited && !killed) {
          result.cancelled = true;
          kill_command();
        }
        if (static_cast<size_t>(r) < buf.size()) return;
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
  auto on_start_message = [&] {
    char msg[16];
    char control[CMSG_SPACE(sizeof(ucred))];
    iovec iov{msg, sizeof msg};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(start.get(), &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno != EAGAIN && errno != EINTR) start.Close();
      return;
    }
    if (n == 0) {  // the command runs (start is close-on-exec) or its process is gone
      start.Close();
      return;
    }
    if (msg[0] == proto::kPid && !started) {
      for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
          ucred cred;
          std::memcpy(&cred, CMSG_DATA(c), sizeof cred);
          result.host_pid = cred.pid;
        }
      }
      started = true;
      absl::Status s = result.host_pid > 0
                           ? (options.on_started ? options.on_started(result.host_pid)
                                                 : absl::OkStatus())
                           : absl::InternalError("the exec agent's child sent no credentials");
      if (!s.ok()) {
        failure = s;
        kill_command();
        return;
      }
      if (!killed) SendByte(start.get(), proto::kGo);
    } else if (msg[0] == proto::kCwdFailed) {
      result.cwd_failed = true;
    } else if (msg[0] == proto::kExecFailed) {
      result.exec_errno = ValueOf(msg, n);
    }
  };
  auto on_ctl_message = [&] {
    char msg[16];
    ssize_t n = ::recv(ctl.get(), msg, sizeof msg, MSG_DONTWAIT);
    // ECONNRESET: the agent closed its end with our kill request unread; that error comes
    // before the messages still queued (the exit status), so read again.
    if (n < 0 && errno == ECONNRESET) n = ::recv(ctl.get(), msg, sizeof msg, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n > 0 && msg[0] == proto::kStatus) {
      exited = true;
      result.exit_code = ExitCodeOf(ValueOf(msg, n));
    } else if (n > 0 && msg[0] == proto::kForkFailed) {
      exited = true;
      const int err = ValueOf(msg, n);
      failure = absl::InternalError(
          absl::StrCat("the sandbox could not start the command: ", std::strerror(err)));
    } else if (n > 0 && msg[0] == proto::kStopped) {
      lost_why = absl::StrCat("the agent stopped reporting: ",
                              ValueOf(msg, n) == 0 ? "EOF" : std::strerror(ValueOf(msg, n)));
      return;
    } else if (n > 0) {
      return;  // nothing else is sent on ctl
    } else {
      // EOF (or an error) before the exit status: the agent, the sandbox's init, is gone.
      exited = true;
      agent_lost = true;
      if (lost_why.empty()) {
        init_exited = n == 0;
        lost_why = n == 0 ? "EOF" : absl::StrCat("recv: ", std::strerror(errno));
      }
    }
    ctl.Close();
    drain_until = absl::Now() + options.drain_after_exit;
    in_w.Close();
  };

  while (true) {
    absl::Time now = absl::Now();
    if (exited && out_r.get() < 0 && err_r.get() < 0) break;
    if (exited && now >= drain_until) break;
    if (!exited && !killed) {
      if (now >= options.deadline) {
        result.timed_out = true;
        kill_command();
      } else if (options.cancelled && options.cancelled()) {
        result.cancelled = true;
        kill_command();
      }
    }
    if (!exited && killed && now >= give_up) {
      // The agent did not answer (its sandbox frozen meanwhile, or it died with the command's
      // pipes held elsewhere): the kill was done from here as well; stop waiting.
      result.exit_code = 128 + SIGKILL;
      break;
    }
    pollfd fds[5];
    int n = 0;
    int i_ctl = -1, i_start = -1, i_out = -1, i_err = -1, i_in = -1;
    if (ctl.get() >= 0) {
      i_ctl = n;
      fds[n++] = {ctl.get(), POLLIN, 0};
    }
    if (start.get() >= 0) {
      i_start = n;
      fds[n++] = {start.get(), POLLIN, 0};
    }
    if (out_r.get() >= 0) {
      i_out = n;
      fds[n++] = {out_r.get(), POLLIN, 0};
    }
    if (err_r.get() >= 0) {
      i_err = n;
      fds[n++] = {err_r.get(), POLLIN, 0};
    }
    if (in_w.get() >= 0 && started) {
      i_in = n;
      fds[n++] = {in_w.get(), POLLOUT, 0};
    }
    absl::Duration wait = absl::Milliseconds(50);
    if (!exited && !killed && options.deadline - now < wait) wait = options.deadline - now;
    if (exited && drain_until - now < wait) wait = drain_until - now;
    if (killed && !exited && give_up - now < wait) wait = give_up - now;
    int timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(wait + absl::Microseconds(999)));
    if (timeout_ms < 0) timeout_ms = 0;
    int ready = ::poll(fds, static_cast<nfds_t>(n), timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      kill_command();
      return Errno("poll");
    }
    constexpr short kReadable = POLLIN | POLLHUP | POLLERR;
    if (i_start >= 0 && (fds[i_start].revents & kReadable)) on_start_message();
    if (i_out >= 0 && (fds[i_out].revents & kReadable)) read_from(out_r, 1);
    if (i_err >= 0 && (fds[i_err].revents & kReadable)) read_from(err_r, 2);
    if (i_ctl >= 0 && (fds[i_ctl].revents & kReadable)) on_ctl_message();
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
  // The start messages that came with the exit (cwd or exec failures) are read by now unless
  // they were the last thing: look once more.
  if (start.get() >= 0) on_start_message();
  // What is still open is held by processes the command left in the background.
  if (out_r.get() >= 0) DrainInBackground(out_r.Release());
  if (err_r.get() >= 0) DrainInBackground(err_r.Release());
  if (!failure.ok()) return failure;
  if (agent_lost) {
    channel.MarkGone();
    if (!started) {
      return absl::UnavailableError("the sandbox's exec agent went away before the command ran");
    }
    // EOF on ctl with neither an exit status nor a "stopped" message: the init holds its end
    // until it has sent the status, so its descriptors were closed by its exit. That comes
    // before the init is a zombie (a PID namespace's init first waits for every other process
    // of the namespace to die), so the caller cannot rely on seeing it gone yet.
    if (init_exited) {
      return absl::AbortedError("the sandbox's init exited while the command ran");
    }
    return absl::InternalError(
        absl::StrCat("the sandbox's init exited while the command ran (", lost_why, ")"));
  }
  return result;
}

}  // namespace isorun::runner
