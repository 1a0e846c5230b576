// isorun-channel-probe: run inside a sandbox by runc_driver_e2etest, it tries every way a
// sandbox process has to reach the exec agent's channel (fd 3 of PID 1, exec_agent_protocol.h)
// or any other descriptor of PID 1, and prints one line per attempt: "<name> blocked <errno
// text>" or "<name> REACHED". Exit status: 0 when every attempt was blocked.
//
// `channel_probe PID` makes the same attempts against another process (a control: against an
// ordinary process of the sandbox the ptrace and /proc ways work, so the probe can tell).
//
// Static, so it runs in any image.

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

int reached = 0;

void Report(const char* name, bool ok, int err) {
  if (ok) {
    ++reached;
    printf("%s REACHED\n", name);
  } else {
    printf("%s blocked %s\n", name, strerror(err));
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int pid = argc > 1 ? atoi(argv[1]) : 1;
  char path[64];

  // The descriptor table through /proc. (Listing its numbers is allowed: the directory belongs
  // to the sandbox's root, as PID 1 does. Numbers are no way in; what they name is.)
  snprintf(path, sizeof path, "/proc/%d/fd", pid);
  DIR* d = opendir(path);
  printf("info: listing %s %s\n", path, d != nullptr ? "works" : strerror(errno));
  if (d != nullptr) closedir(d);
  char link[256];
  // The channel is PID 1's fd 3; another process's stdin is the control.
  snprintf(path, sizeof path, "/proc/%d/fd/%d", pid, pid == 1 ? 3 : 0);
  errno = 0;
  ssize_t n = readlink(path, link, sizeof link);
  Report("readlink_proc_fd", n >= 0, errno);
  // (A socket cannot be opened through /proc even with access; a pipe or a file could.)
  snprintf(path, sizeof path, "/proc/%d/fd/0", pid);
  int fd = open(path, O_RDONLY);
  Report("open_proc_fd", fd >= 0, errno);
  if (fd >= 0) close(fd);
  snprintf(path, sizeof path, "/proc/%d/mem", pid);
  fd = open(path, O_RDWR);
  Report("open_proc_mem", fd >= 0, errno);
  if (fd >= 0) close(fd);

  // pidfd_getfd: a copy of the channel itself.
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    Report("pidfd_getfd", false, errno);
  } else {
    int got = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, 3, 0));
    Report("pidfd_getfd", got >= 0, errno);
    if (got >= 0) close(got);
    close(pidfd);
  }

  // Reading or writing its memory.
  char local[8];
  iovec liov{local, sizeof local};
  iovec riov{reinterpret_cast<void*>(0x400000), sizeof local};
  errno = 0;
  n = static_cast<ssize_t>(syscall(SYS_process_vm_readv, pid, &liov, 1, &riov, 1, 0));
  // EFAULT means the check passed and only the address was wrong: reached.
  Report("process_vm_readv", n >= 0 || errno == EFAULT, errno);

  // ptrace: attach, then leave it as it was.
  errno = 0;
  long attached = ptrace(PTRACE_SEIZE, pid, nullptr, nullptr);
  Report("ptrace_seize", attached == 0, errno);
  if (attached == 0) ptrace(PTRACE_DETACH, pid, nullptr, nullptr);

  // Its own descriptors: nothing but stdin, stdout and stderr was inherited.
  int extra = 0;
  for (int i = 3; i < 4096; ++i) {
    if (fcntl(i, F_GETFD) >= 0) {
      struct stat st;
      if (fstat(i, &st) == 0) {
        printf("inherited fd %d (mode %o)\n", i, st.st_mode & S_IFMT);
        ++extra;
      }
    }
  }
  Report("inherited_fds", extra > 0, 0);
  return reached == 0 ? 0 : 1;
}
