#include "services/runner/seccomp_profile.h"

#include <sched.h>

#include <cstdint>

#include "services/kit/json.h"

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

namespace isorun::runner {
namespace {

// Every CLONE_NEW* flag clone(2) takes. CLONE_NEWTIME shares its bit with the exit signal of
// clone(2) (CSIGNAL), so only unshare(2) checks it.
constexpr uint64_t kCloneNamespaceFlags = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS |
                                          CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
                                          CLONE_NEWNET;
constexpr uint64_t kUnshareNamespaceFlags = kCloneNamespaceFlags | CLONE_NEWTIME;

// personality(2) values that change nothing dangerous: PER_LINUX, PER_LINUX32, UNAME26 (alone and
// with PER_LINUX32), and 0xffffffff, which only reads the current one.
constexpr uint64_t kSafePersonalities[] = {0x0, 0x8, 0x20000, 0x20008, 0xffffffff};

constexpr int kEperm = 1;
constexpr int kEnosys = 38;

void Names(JsonWriter& w, std::initializer_list<const char*> names) {
  w.Key("names").BeginArray();
  for (const char* n : names) w.String(n);
  w.EndArray();
}

// A rule allowing `name` when argument `index` satisfies `op` against `value`.
void ArgRule(JsonWriter& w, const char* name, int index, uint64_t value, uint64_t value_two,
             const char* op) {
  w.BeginObject();
  Names(w, {name});
  w.Key("action").String("SCMP_ACT_ALLOW");
  w.Key("args").BeginArray().BeginObject();
  w.Key("index").Int(index);
  w.Key("value").Int(static_cast<int64_t>(value));
  w.Key("valueTwo").Int(static_cast<int64_t>(value_two));
  w.Key("op").String(op);
  w.EndObject().EndArray();
  w.EndObject();
}

}  // namespace

const std::vector<std::string>& SeccompAllowedSyscalls() {
  // Names unknown to this architecture (the 32-bit *64 variants on x86_64, say) are skipped by
  // runc; they are here so the list holds on every architecture runc supports.
  static const auto* names = new std::vector<std::string>{
      // files and directories
      "access",
      "chdir",
      "chmod",
      "chown",
      "chown32",
      "chroot",
      "close",
      "close_range",
      "copy_file_range",
      "creat",
      "dup",
      "dup2",
      "dup3",
      "faccessat",
      "faccessat2",
      "fadvise64",
      "fadvise64_64",
      "fallocate",
      "fchdir",
      "fchmod",
      "fchmodat",
      "fchmodat2",
      "fchown",
      "fchown32",
      "fchownat",
      "fcntl",
      "fcntl64",
      "fdatasync",
      "fgetxattr",
      "flistxattr",
      "flock",
      "fremovexattr",
      "fsetxattr",
      "fstat",
      "fstat64",
      "fstatat64",
      "fstatfs",
      "fstatfs64",
      "fsync",
      "ftruncate",
      "ftruncate64",
      "futimesat",
      "getcwd",
      "getdents",
      "getdents64",
      "getxattr",
      "inotify_add_watch",
      "inotify_init",
      "inotify_init1",
      "inotify_rm_watch",
      "lchown",
      "lchown32",
      "lgetxattr",
      "link",
      "linkat",
      "listxattr",
      "llistxattr",
      "_llseek",
      "lremovexattr",
      "lseek",
      "lsetxattr",
      "lstat",
      "lstat64",
      "mkdir",
      "mkdirat",
      "mknod",
      "mknodat",
      "newfstatat",
      "open",
      "openat",
      "openat2",
      "pread64",
      "preadv",
      "preadv2",
      "pwrite64",
      "pwritev",
      "pwritev2",
      "read",
      "readahead",
      "readlink",
      "readlinkat",
      "readv",
      "removexattr",
      "rename",
      "renameat",
      "renameat2",
      "rmdir",
      "sendfile",
      "sendfile64",
      "setxattr",
      "splice",
      "stat",
      "stat64",
      "statfs",
      "statfs64",
      "statx",
      "symlink",
      "symlinkat",
      "sync",
      "sync_file_range",
      "syncfs",
      "tee",
      "truncate",
      "truncate64",
      "umask",
      "unlink",
      "unlinkat",
      "utime",
      "utimensat",
      "utimensat_time64",
      "utimes",
      "vmsplice",
      "write",
      "writev",
      "fanotify_mark",
      // asynchronous I/O (the old interface; io_uring is not allowed)
      "io_cancel",
      "io_destroy",
      "io_getevents",
      "io_pgetevents",
      "io_pgetevents_time64",
      "io_setup",
      "io_submit",
      "ioprio_get",
      "ioprio_set",
      // polling and events
      "epoll_create",
      "epoll_create1",
      "epoll_ctl",
      "epoll_ctl_old",
      "epoll_pwait",
      "epoll_pwait2",
      "epoll_wait",
      "epoll_wait_old",
      "eventfd",
      "eventfd2",
      "poll",
      "ppoll",
      "ppoll_time64",
      "pselect6",
      "pselect6_time64",
      "select",
      "_newselect",
      "signalfd",
      "signalfd4",
      "timerfd_create",
      "timerfd_gettime",
      "timerfd_gettime64",
      "timerfd_settime",
      "timerfd_settime64",
      "ioctl",
      // sockets (inside the sandbox's network namespace)
      "accept",
      "accept4",
      "bind",
      "connect",
      "getpeername",
      "getsockname",
      "getsockopt",
      "listen",
      "recv",
      "recvfrom",
      "recvmmsg",
      "recvmmsg_time64",
      "recvmsg",
      "send",
      "sendmmsg",
      "sendmsg",
      "sendto",
      "setsockopt",
      "shutdown",
      "socket",
      "socketcall",
      "socketpair",
      // processes (clone, unshare and personality only with safe arguments: see below)
      "execve",
      "execveat",
      "exit",
      "exit_group",
      "fork",
      "vfork",
      "wait4",
      "waitid",
      "waitpid",
      "getpid",
      "getppid",
      "gettid",
      "getpgid",
      "getpgrp",
      "getsid",
      "setpgid",
      "setsid",
      "getpriority",
      "setpriority",
      "prctl",
      "arch_prctl",
      "get_thread_area",
      "set_thread_area",
      "set_tid_address",
      "get_robust_list",
      "set_robust_list",
      "rseq",
      "membarrier",
      "sched_getaffinity",
      "sched_getattr",
      "sched_getparam",
      "sched_get_priority_max",
      "sched_get_priority_min",
      "sched_getscheduler",
      "sched_rr_get_interval",
      "sched_rr_get_interval_time64",
      "sched_setaffinity",
      "sched_setattr",
      "sched_setparam",
      "sched_setscheduler",
      "sched_yield",
      "getcpu",
      "getrlimit",
      "ugetrlimit",
      "setrlimit",
      "prlimit64",
      "getrusage",
      "times",
      "sysinfo",
      "uname",
      "capget",
      "capset",
      "seccomp",
      "ptrace",
      "process_vm_readv",
      "process_vm_writev",
      "kcmp",
      "pidfd_open",
      "pidfd_send_signal",
      "process_mrelease",
      // credentials (inside the sandbox's user namespace)
      "getegid",
      "getegid32",
      "geteuid",
      "geteuid32",
      "getgid",
      "getgid32",
      "getgroups",
      "getgroups32",
      "getresgid",
      "getresgid32",
      "getresuid",
      "getresuid32",
      "getuid",
      "getuid32",
      "setfsgid",
      "setfsgid32",
      "setfsuid",
      "setfsuid32",
      "setgid",
      "setgid32",
      "setgroups",
      "setgroups32",
      "setregid",
      "setregid32",
      "setresgid",
      "setresgid32",
      "setresuid",
      "setresuid32",
      "setreuid",
      "setreuid32",
      "setuid",
      "setuid32",
      // signals
      "kill",
      "tkill",
      "tgkill",
      "pause",
      "rt_sigaction",
      "rt_sigpending",
      "rt_sigprocmask",
      "rt_sigqueueinfo",
      "rt_sigreturn",
      "rt_sigsuspend",
      "rt_sigtimedwait",
      "rt_sigtimedwait_time64",
      "rt_tgsigqueueinfo",
      "sigaltstack",
      "sigprocmask",
      "sigreturn",
      "restart_syscall",
      // time (reading it, sleeping, timers; never setting the clock)
      "alarm",
      "clock_getres",
      "clock_getres_time64",
      "clock_gettime",
      "clock_gettime64",
      "clock_nanosleep",
      "clock_nanosleep_time64",
      "getitimer",
      "gettimeofday",
      "nanosleep",
      "setitimer",
      "time",
      "timer_create",
      "timer_delete",
      "timer_getoverrun",
      "timer_gettime",
      "timer_gettime64",
      "timer_settime",
      "timer_settime64",
      // memory
      "brk",
      "madvise",
      "memfd_create",
      "mincore",
      "mlock",
      "mlock2",
      "mlockall",
      "mmap",
      "mmap2",
      "mprotect",
      "mremap",
      "msync",
      "munlock",
      "munlockall",
      "munmap",
      "pkey_alloc",
      "pkey_free",
      "pkey_mprotect",
      "remap_file_pages",
      "getrandom",
      "get_mempolicy",
      "set_mempolicy",
      "mbind",
      // self-restriction (Landlock only ever takes rights away)
      "landlock_create_ruleset",
      "landlock_add_rule",
      "landlock_restrict_self",
      // futexes and System V / POSIX IPC (inside the sandbox's IPC namespace)
      "pipe",
      "pipe2",
      "futex",
      "futex_time64",
      "futex_waitv",
      "ipc",
      "mq_getsetattr",
      "mq_notify",
      "mq_open",
      "mq_timedreceive",
      "mq_timedreceive_time64",
      "mq_timedsend",
      "mq_timedsend_time64",
      "mq_unlink",
      "msgctl",
      "msgget",
      "msgrcv",
      "msgsnd",
      "semctl",
      "semget",
      "semop",
      "semtimedop",
      "semtimedop_time64",
      "shmat",
      "shmctl",
      "shmdt",
      "shmget",
  };
  return *names;
}

std::string SeccompProfileJson() {
  JsonWriter w;
  w.BeginObject();
  w.Key("defaultAction").String("SCMP_ACT_ERRNO");
  w.Key("defaultErrnoRet").Int(kEperm);
  w.Key("architectures").BeginArray();
#if defined(__x86_64__)
  w.String("SCMP_ARCH_X86_64").String("SCMP_ARCH_X86").String("SCMP_ARCH_X32");
#elif defined(__aarch64__)
  w.String("SCMP_ARCH_AARCH64").String("SCMP_ARCH_ARM");
#endif
  w.EndArray();
  w.Key("syscalls").BeginArray();
  w.BeginObject();
  w.Key("names").BeginArray();
  for (const auto& name : SeccompAllowedSyscalls()) w.String(name);
  w.EndArray();
  w.Key("action").String("SCMP_ACT_ALLOW");
  w.EndObject();
  // Threads and processes, never namespaces: (flags & CLONE_NEW*) == 0.
  ArgRule(w, "clone", 0, kCloneNamespaceFlags, 0, "SCMP_CMP_MASKED_EQ");
  ArgRule(w, "unshare", 0, kUnshareNamespaceFlags, 0, "SCMP_CMP_MASKED_EQ");
  for (uint64_t p : kSafePersonalities) ArgRule(w, "personality", 0, p, 0, "SCMP_CMP_EQ");
  w.BeginObject();
  Names(w, {"clone3"});
  w.Key("action").String("SCMP_ACT_ERRNO");
  w.Key("errnoRet").Int(kEnosys);
  w.EndObject();
  w.EndArray();
  w.EndObject();
  return w.Take();
}

}  // namespace isorun::runner
