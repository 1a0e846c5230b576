#pragma once

// Runs a host program with pipes for stdin, stdout and stderr, streaming its output as it
// arrives, with a deadline and cancellation. The child runs in a session of its own (setsid), so
// a kill reaches everything it started on the host; the caller adds what a session cannot reach
// (processes inside a container) through `on_kill`.
//
// Thread-compatible: each call is independent and blocks the calling thread until the child has
// exited and its output is drained.

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace isorun::runner {

struct ProcessOptions {
  std::vector<std::string> argv;  // argv[0] is looked up in PATH when it has no '/'
  std::string stdin_data;         // written to the child's stdin, which is then closed
  absl::Time deadline = absl::InfiniteFuture();
  // Polled about every 50 ms; true stops the child as at the deadline.
  std::function<bool()> cancelled;
  // Output as it arrives (fd 1 or 2), in chunks of at most 64 KiB. Returning false stops the
  // child as a cancel does. Without it the output is discarded.
  std::function<bool(int fd, std::string_view data)> on_output;
  // Called once before the child's session is killed (deadline or cancel).
  std::function<void()> on_kill;
  // After the child exits, output is read until EOF or for this long at most: a process the
  // command left running in the background may keep the pipes open. Such pipes are then drained
  // (and discarded) in the background until EOF rather than closed, so that process does not die
  // of SIGPIPE.
  absl::Duration drain_after_exit = absl::Milliseconds(100);
  // For launchers such as `runc exec --preserve-fds 3` that pass fds on to the command they
  // start: the command's stdin, stdout and stderr pipes are the child's fds 3, 4 and 5, and the
  // child's own stdin is /dev/null while its stdout and stderr (the launcher's messages) go to
  // ProcessResult::launcher_output.
  bool command_fds = false;
  // stdin, stdout and stderr on /dev/null (for programs that leave a daemon holding them, like
  // `runc run -d`, whose container would otherwise keep our pipes open).
  bool null_stdio = false;
  // Descriptors the child gets as fds 3, 4, ... (not with command_fds), e.g. the exec agent's
  // channel handed to `runc run --preserve-fds 1`.
  std::vector<int> inherit_fds;
};

struct ProcessResult {
  int exit_code = -1;           // the exit status, or 128 + signal number
  std::string launcher_output;  // command_fds: what the child itself wrote (64 KiB at most)
  bool timed_out = false;
  bool cancelled = false;
  absl::Duration elapsed;
};

// INTERNAL only when the process cannot be started at all (e.g. the binary is missing).
absl::StatusOr<ProcessResult> RunProcess(const ProcessOptions& options);

struct CapturedOutput {
  int exit_code = -1;
  bool timed_out = false;
  std::string out;
  std::string err;
};

// Runs `argv` to completion (killed after `timeout`) and returns its output.
absl::StatusOr<CapturedOutput> RunCaptured(const std::vector<std::string>& argv,
                                           absl::Duration timeout);

// Reads and discards what arrives on `fd` (a pipe still held by a background process of a
// finished command) until EOF, then closes it; takes ownership.
void DrainInBackground(int fd);

// "a b 'c d'": argv for log lines and error messages.
std::string ShellQuote(const std::vector<std::string>& argv);

}  // namespace isorun::runner
