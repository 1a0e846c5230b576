#pragma once

// The runner's side of a sandbox's exec agent (exec_agent_protocol.h): its init runs the
// commands, so an exec costs a fork in the sandbox and a few messages instead of a `runc exec`
// (about 20 ms of runc on this machine). The command's stdin, stdout and stderr are pipes this
// side makes and passes over, so output flows from the command straight to the runner, with
// the pipe's backpressure, exactly as with a process the runner started itself.

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace isorun::runner {

// The runner's end of one sandbox's channel. Thread-safe: execs of the sandbox share it.
class AgentChannel {
 public:
  // A new channel and the agent's end of it (close-on-exec; it goes to `runc run
  // --preserve-fds 1` as fd 3, and the caller closes its copy once runc has started).
  static absl::StatusOr<std::pair<std::shared_ptr<AgentChannel>, int>> Make();
  ~AgentChannel();
  AgentChannel(const AgentChannel&) = delete;
  AgentChannel& operator=(const AgentChannel&) = delete;

  int fd() const { return fd_; }
  // The agent closed its end (its sandbox died) or a send failed: no more execs through it.
  bool gone() const { return gone_.load(); }
  void MarkGone() { gone_.store(true); }
  // Sends one message with descriptors, without blocking.
  absl::Status Send(const std::string& message, const std::vector<int>& fds);

 private:
  explicit AgentChannel(int fd) : fd_(fd) {}
  const int fd_;
  std::atomic<bool> gone_{false};
  absl::Mutex send_mu_;
};

struct AgentExecOptions {
  std::string cmd;
  std::string cwd;  // "" for the image's working directory
  std::vector<std::pair<std::string, std::string>> env;
  std::string stdin_data;
  absl::Time deadline = absl::InfiniteFuture();
  // Polled about every 50 ms; true kills the command as at the deadline.
  std::function<bool()> cancelled;
  // Output as it arrives (fd 1 or 2); false kills the command as a cancel does.
  std::function<bool(int fd, std::string_view data)> on_output;
  // The command's host pid, before anything of it runs (the caller moves it into the exec's
  // cgroup). An error kills it.
  std::function<absl::Status(int host_pid)> on_started;
  // Called once before the agent is asked to kill the command's group (deadline or cancel).
  std::function<void()> on_kill;
  // As ProcessOptions::drain_after_exit: output of background processes after the command's
  // exit is read this long, then drained in the background.
  absl::Duration drain_after_exit = absl::Milliseconds(100);
};

struct AgentExecResult {
  int exit_code = -1;  // the exit status, or 128 + signal number
  bool timed_out = false;
  bool cancelled = false;
  bool cwd_failed = false;  // cwd could not be entered (exit code 1, nothing ran)
  int exec_errno = 0;       // /bin/sh could not be executed (exit code 127)
  int host_pid = 0;
};

// Runs one command through `channel`. UNAVAILABLE when the agent is gone before the command
// started (the channel is then marked gone; nothing ran, so the caller may use another way);
// ABORTED when the agent (the sandbox's init) exited while the command ran; INTERNAL when it
// could not start it (fork failed) or stopped reporting on it.
absl::StatusOr<AgentExecResult> RunAgentExec(AgentChannel& channel,
                                             const AgentExecOptions& options);

}  // namespace isorun::runner
