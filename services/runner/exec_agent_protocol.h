#pragma once

// The exec agent's protocol: how the runner has a sandbox's PID 1 (isorun-sandbox-init, started as
// `/dev/init agent`) run commands, instead of a `runc exec` per command. Shared by the runner
// (exec_agent.h) and the init (sandbox_init.cc, static and without the C++ runtime: constants
// only here).
//
// The channel is one end of a SOCK_SEQPACKET socketpair the runner hands to `runc run
// --preserve-fds 1`: it is the init's fd 3, which the init marks close-on-exec at once. No path
// names it inside the sandbox, and the init is not dumpable, so the sandbox's processes (same
// uid, no CAP_SYS_PTRACE) can neither open /proc/1/fd/3 nor ptrace the init nor pidfd_getfd
// its descriptors.
//
// One exec, all messages single SEQPACKET datagrams:
//   runner -> init, on the channel: kExec, then NUL-terminated strings `cmd`, `cwd` ("" for the
//     image's directory) and `KEY=VALUE` for each env variable; SCM_RIGHTS with five descriptors:
//     ctl, start, stdin (read end), stdout and stderr (write ends). ctl and start are each one end
//     of a socketpair of their own whose other end the runner keeps.
//   The init forks the command's process and closes its copies of start and the stdio.
//   child -> runner, on start: kPid. The runner's end has SO_PASSCRED, so the kernel attaches the
//     child's pid as the runner sees it (its host pid): the runner moves it into the exec's
//     freezer cgroup, then answers kGo. Only then does the child enter cwd (kCwdFailed and exit
//     1 if it cannot) and exec `/bin/sh -c cmd` (kExecFailed + errno and exit 127 if that fails);
//     start is close-on-exec, so EOF on it means the command runs.
//   init -> runner, on ctl: kStatus + the wait status (int32) when the command's process exits,
//     or kForkFailed + errno when it could not be made. runner -> init: kKill, and the init kills
//     the command's process group (it is a session leader). EOF on ctl, the runner gone, kills
//     the group too.

namespace isorun::runner::agent_protocol {

inline constexpr int kChannelFd = 3;
// The largest request (cmd, cwd and env together): larger ones are refused by the runner.
inline constexpr unsigned kMaxRequest = 1u << 20;
inline constexpr int kExecFds = 5;  // ctl, start, stdin, stdout, stderr

inline constexpr char kExec = 'X';
inline constexpr char kStatus = 'S';
inline constexpr char kForkFailed = 'F';
inline constexpr char kKill = 'K';
// init -> runner on ctl, + errno (0: EOF): the init stopped listening on ctl (it kills the
// command's group then).
inline constexpr char kStopped = 'D';
inline constexpr char kPid = 'P';
inline constexpr char kGo = 'G';
inline constexpr char kCwdFailed = 'C';
inline constexpr char kExecFailed = 'E';

}  // namespace isorun::runner::agent_protocol
