#include "services/runner/seccomp_profile.h"

#include <sched.h>
#include <sys/syscall.h>

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
  // Only the names this architecture has (seccomp_syscalls.inc): the filter covers the native
  // ABI alone.
  static const auto* names = new std::vector<std::string>{
#define ISORUN_SYSCALL(name) #name,
#include "services/runner/seccomp_syscalls.inc"
#undef ISORUN_SYSCALL
  };
  return *names;
}

std::string SeccompProfileJson() {
  JsonWriter w;
  w.BeginObject();
  w.Key("defaultAction").String("SCMP_ACT_ERRNO");
  w.Key("defaultErrnoRet").Int(kEperm);
  // The native architecture only. Each architecture listed multiplies the rules libseccomp
  // compiles on every start and exec (the x86_64 + x86 + x32 triple of the runtimes' default
  // profiles made an exec about 60 ms slower here); a syscall of another ABI (int 0x80, x32)
  // hits the filter's bad-architecture action and never runs. 32-bit programs do not run in a
  // sandbox, which also closes the compat syscall paths, a source of kernel bugs of their own.
  w.Key("architectures").BeginArray();
#if defined(__x86_64__)
  w.String("SCMP_ARCH_X86_64");
#elif defined(__aarch64__)
  w.String("SCMP_ARCH_AARCH64");
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
