#pragma once

// The syscall filter of every sandbox process (PID 1 and every exec): config.json's
// `linux.seccomp`, which runc compiles with libseccomp and installs right before it executes the
// sandbox's program, so runc's own setup (mounts, namespaces) is not affected.
//
// Default deny: a syscall not on the allow list fails with EPERM. The list is the ordinary
// userland of a Linux program (files, sockets, processes, signals, time, memory, IPC inside the
// sandbox's namespaces) in the spirit of the container runtimes' default profiles. Left out on
// purpose, because each is kernel attack surface a tenant could use against its neighbours or the
// host, and none is needed to run programs:
//   - new namespaces: unshare/clone/clone3 with any CLONE_NEW* flag, setns (a new user namespace
//     would hand the process a full capability set against fresh kernel code paths);
//   - mount, umount2, pivot_root, move_mount, open_tree, fsopen, fsconfig, fsmount, fspick,
//     mount_setattr (chroot stays: it only narrows a process's view of its own sandbox);
//   - bpf, perf_event_open, userfaultfd (classic helpers of kernel exploits);
//   - keyctl, add_key, request_key (the kernel keyring is not namespaced);
//   - io_uring_setup, io_uring_enter, io_uring_register (a large source of kernel bugs);
//   - kexec_load, kexec_file_load, init_module, finit_module, delete_module, reboot, swapon,
//     swapoff, acct, quotactl, syslog, iopl, ioperm, settimeofday, clock_settime, adjtimex,
//     clock_adjtime, lookup_dcookie, open_by_handle_at, name_to_handle_at, nfsservctl,
//     vhangup, uselib, ustat, sysfs, _sysctl, fanotify_init, process_madvise, pidfd_getfd;
//   - personality other than the standard Linux personalities (0, PER_LINUX32, UNAME26 and the
//     query 0xffffffff): others change the kernel's behaviour (READ_IMPLIES_EXEC,
//     ADDR_NO_RANDOMIZE).
// ptrace, process_vm_readv/writev and kcmp stay: the sandbox's pid namespace means a process can
// only reach processes of its own sandbox (debuggers and strace keep working), never one outside.
// Only the runner's native ABI is allowed (x86_64 or aarch64): 32-bit syscalls (i386 `int 0x80`,
// x32, arm32) are refused outright, which keeps the compiled filter small (runc compiles it on
// every start and exec) and closes the kernel's compat entry points.
// clone3 answers ENOSYS rather than EPERM: its flags live in memory a filter cannot read, and
// ENOSYS makes the C library fall back to clone, whose flags are checked.

#include <string>
#include <vector>

namespace isorun::runner {

// The syscalls allowed whatever their arguments.
const std::vector<std::string>& SeccompAllowedSyscalls();

// The `linux.seccomp` object of config.json, as JSON.
std::string SeccompProfileJson();

}  // namespace isorun::runner
