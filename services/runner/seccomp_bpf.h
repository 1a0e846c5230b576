#pragma once

// The syscall filter of seccomp_profile.h as a classic BPF program the sandbox's init installs
// itself (prctl(PR_SET_NO_NEW_PRIVS) + seccomp(SECCOMP_SET_MODE_FILTER)), on PID 1 at start and on
// every exec before the command runs (`/dev/init exec CMD...`). The same rules as runc's
// `linux.seccomp` (the allow list of seccomp_syscalls.inc, the argument checks of clone, unshare
// and personality, clone3 answering ENOSYS, everything else EPERM, other ABIs refused), built
// here in microseconds instead of by runc's libseccomp on every start and exec (which cost an
// exec tens of milliseconds on a busy 2-core host).
//
// The program: check the architecture (and on x86_64 refuse x32 numbers), send clone, unshare,
// personality and clone3 to their own checks, then walk the allowed numbers as ascending ranges
// (an out-of-range number is refused at the first range above it), so a syscall costs at most
// two comparisons per range (30 ranges on x86_64).
//
// Header-only and free of the C++ runtime: the static init links it.

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <sys/syscall.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

namespace isorun::runner {

#if defined(__x86_64__)
inline constexpr unsigned kSeccompAuditArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
inline constexpr unsigned kSeccompAuditArch = AUDIT_ARCH_AARCH64;
#else
#error "the sandbox syscall filter knows x86_64 and aarch64 only"
#endif
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "args[0]'s low word is read at +0");

// Longest program SeccompFilterProgram writes.
inline constexpr int kSeccompMaxInstructions = 1024;

// Writes the filter into `out` (room for kSeccompMaxInstructions); returns its length, or -1 if
// it would not fit or a jump would be out of a conditional jump's reach (a bug: tested).
inline int SeccompFilterProgram(sock_filter* out) {
  // The allowed numbers, sorted (insertion sort: a few hundred, once per process).
  static constexpr int kAllowed[] = {
#define ISORUN_SYSCALL(name) __NR_##name,
#include "services/runner/seccomp_syscalls.inc"
#undef ISORUN_SYSCALL
  };
  constexpr int n = static_cast<int>(sizeof kAllowed / sizeof kAllowed[0]);
  int sorted[n];
  for (int i = 0; i < n; ++i) {
    int v = kAllowed[i], j = i;
    for (; j > 0 && sorted[j - 1] > v; --j) sorted[j] = sorted[j - 1];
    sorted[j] = v;
  }
  // Ranges of consecutive numbers.
  int lo[n], hi[n], ranges = 0;
  for (int i = 0; i < n; ++i) {
    if (ranges > 0 && sorted[i] <= hi[ranges - 1] + 1) {
      if (sorted[i] > hi[ranges - 1]) hi[ranges - 1] = sorted[i];
      continue;
    }
    lo[ranges] = hi[ranges] = sorted[i];
    ++ranges;
  }

  constexpr unsigned kAllow = SECCOMP_RET_ALLOW;
  constexpr unsigned kEperm = SECCOMP_RET_ERRNO | 1;    // EPERM
  constexpr unsigned kEnosys = SECCOMP_RET_ERRNO | 38;  // ENOSYS
  constexpr unsigned kCloneNs = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
                                CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET;
  constexpr unsigned kUnshareNs = kCloneNs | CLONE_NEWTIME;
  constexpr unsigned kSafePersonalities[] = {0x0, 0x8, 0x20000, 0x20008, 0xffffffff};
  constexpr unsigned kNr = offsetof(seccomp_data, nr);
  constexpr unsigned kArch = offsetof(seccomp_data, arch);
  constexpr unsigned kArg0 = offsetof(seccomp_data, args);

  // Layout (cBPF jumps only forward): [head] [special dispatch: 4 jeq] [ranges: 2 each] [deny]
  // [allow] [clone: 4] [unshare: 4] [personality: 8] [clone3: 1], each special block ending in
  // its own returns.
  int pc = 0;
  auto emit = [&](unsigned short code, unsigned k, unsigned char jt = 0, unsigned char jf = 0) {
    if (pc < kSeccompMaxInstructions) out[pc] = sock_filter{code, jt, jf, k};
    ++pc;
  };
  const int head = 3 + (kSeccompAuditArch == AUDIT_ARCH_X86_64 ? 1 : 0);
  const int dispatch = head;
  const int chain = dispatch + 4;
  const int deny = chain + 2 * ranges;
  const int allow = deny + 1;
  const int clone_at = allow + 1, unshare_at = clone_at + 4, pers_at = unshare_at + 4;
  const int clone3_at = pers_at + 3 + static_cast<int>(sizeof kSafePersonalities /
                                                       sizeof kSafePersonalities[0]);
  const int total = clone3_at + 1;
  if (total > kSeccompMaxInstructions) return -1;
  bool reach = true;
  // Offset of a conditional jump at `from` to `to`.
  auto rel = [&](int from, int to) -> unsigned char {
    const int d = to - from - 1;
    if (d < 0 || d > 255) reach = false;
    return static_cast<unsigned char>(d);
  };

  // Another ABI than the native one: refused (deny is EPERM; the kernel never runs it).
  emit(BPF_LD | BPF_W | BPF_ABS, kArch);
  emit(BPF_JMP | BPF_JEQ | BPF_K, kSeccompAuditArch, 0, rel(pc, deny));
  emit(BPF_LD | BPF_W | BPF_ABS, kNr);
  if (kSeccompAuditArch == AUDIT_ARCH_X86_64) {
    emit(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, rel(pc, deny), 0);  // x32 numbers
  }
  emit(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, rel(pc, clone_at), 0);
  emit(BPF_JMP | BPF_JEQ | BPF_K, __NR_unshare, rel(pc, unshare_at), 0);
  emit(BPF_JMP | BPF_JEQ | BPF_K, __NR_personality, rel(pc, pers_at), 0);
  emit(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, rel(pc, clone3_at), 0);
  for (int r = 0; r < ranges; ++r) {
    // Below this range (and above the previous one): refused. Within it: allowed.
    emit(BPF_JMP | BPF_JGE | BPF_K, static_cast<unsigned>(lo[r]), 0, rel(pc, deny));
    emit(BPF_JMP | BPF_JGT | BPF_K, static_cast<unsigned>(hi[r]), 0, rel(pc, allow));
  }
  emit(BPF_RET | BPF_K, kEperm);  // deny
  emit(BPF_RET | BPF_K, kAllow);  // allow
  // clone: threads and processes, never new namespaces (the flags are the low word of args[0]).
  emit(BPF_LD | BPF_W | BPF_ABS, kArg0);
  emit(BPF_JMP | BPF_JSET | BPF_K, kCloneNs, 0, 1);
  emit(BPF_RET | BPF_K, kEperm);
  emit(BPF_RET | BPF_K, kAllow);
  // unshare: the same, CLONE_NEWTIME included.
  emit(BPF_LD | BPF_W | BPF_ABS, kArg0);
  emit(BPF_JMP | BPF_JSET | BPF_K, kUnshareNs, 0, 1);
  emit(BPF_RET | BPF_K, kEperm);
  emit(BPF_RET | BPF_K, kAllow);
  // personality: only the standard Linux personalities and the query.
  emit(BPF_LD | BPF_W | BPF_ABS, kArg0);
  const int pers_allow = clone3_at - 1;
  for (unsigned p : kSafePersonalities) {
    emit(BPF_JMP | BPF_JEQ | BPF_K, p, rel(pc, pers_allow), 0);
  }
  emit(BPF_RET | BPF_K, kEperm);
  emit(BPF_RET | BPF_K, kAllow);
  // clone3: its flags are in memory a filter cannot read; ENOSYS makes the C library use clone.
  emit(BPF_RET | BPF_K, kEnosys);
  if (pc != total || !reach) return -1;
  return pc;
}

}  // namespace isorun::runner
