// Linked into every binary of the ThreadSanitizer tree (./isorun test --sanitize=thread) only.
//
// Debian's abseil is not built with ThreadSanitizer, so TSan cannot see what absl::Mutex,
// absl::CondVar and absl::Notification synchronise: the atomics and futex calls inside
// libabsl_synchronization are not instrumented. Every access guarded by an absl::Mutex would then
// look like a race (in our code, which uses absl::Mutex throughout, and in gRPC's, which uses it
// too). Abseil built with TSan annotates these operations itself (ABSL_TSAN_MUTEX_*); this file
// does the same from outside: it defines the library's entry points in the executable, which
// takes precedence over the shared library for every caller (ours, gRPC's and abseil's own calls
// through its PLT), calls the library's own definition (dlsym RTLD_NEXT) and tells TSan about the
// happens-before edge: a release before an unlock, an acquire after a lock. A Condition that the
// library evaluates (possibly on the thread that unlocks) is wrapped so that its reads of guarded
// state are ordered after the last release too.
//
// The races TSan then reports are real ones: plain accesses made without the lock held.

#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/base/options.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace {

#define ISORUN_STR2(x) #x
#define ISORUN_STR(x) ISORUN_STR2(x)

// The mangled name of absl::<inline namespace>::<rest>; `konst` for const member functions.
std::string Mangled(const char* rest, bool konst = false) {
  const char* ns = ISORUN_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  return std::string(konst ? "_ZNK4absl" : "_ZN4absl") + std::to_string(std::strlen(ns)) + ns +
         rest;
}

template <typename Fn>
Fn Real(const char* rest, bool konst = false) {
  const std::string name = Mangled(rest, konst);
  void* sym = dlsym(RTLD_NEXT, name.c_str());
  if (sym == nullptr) {
    std::fprintf(stderr, "tsan_absl_sync: %s not found in abseil: %s\n", name.c_str(), dlerror());
    std::abort();
  }
  return reinterpret_cast<Fn>(sym);
}

struct WrappedContext {
  const absl::Condition* cond;
  absl::Mutex* mu;
};

bool EvalWrapped(WrappedContext* c) {
  __tsan_acquire(c->mu);
  const bool ready = c->cond->Eval();
  __tsan_release(c->mu);
  return ready;
}

using MuFn = void (*)(absl::Mutex*);
using MuTryFn = bool (*)(absl::Mutex*);
using MuCondFn = void (*)(absl::Mutex*, const absl::Condition&);
using MuCondDurFn = bool (*)(absl::Mutex*, const absl::Condition&, absl::Duration);
using MuCondTimeFn = bool (*)(absl::Mutex*, const absl::Condition&, absl::Time);
using CvFn = void (*)(absl::CondVar*, absl::Mutex*);
using CvDurFn = bool (*)(absl::CondVar*, absl::Mutex*, absl::Duration);
using CvTimeFn = bool (*)(absl::CondVar*, absl::Mutex*, absl::Time);
using NoteFn = void (*)(absl::Notification*);
using NoteWaitFn = void (*)(const absl::Notification*);
using NoteDurFn = bool (*)(const absl::Notification*, absl::Duration);
using NoteTimeFn = bool (*)(const absl::Notification*, absl::Time);

}  // namespace

// The condition-taking functions keep the caller's condition and pass a wrapped one.
#define ISORUN_WRAP(cond, mu)      \
  WrappedContext ctx{&(cond), (mu)}; \
  absl::Condition wrapped(&EvalWrapped, &ctx)

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  static const auto real = Real<MuFn>("5Mutex4LockEv");
  real(this);
  __tsan_acquire(this);
}

void Mutex::ReaderLock() {
  static const auto real = Real<MuFn>("5Mutex10ReaderLockEv");
  real(this);
  __tsan_acquire(this);
}

void Mutex::Unlock() {
  static const auto real = Real<MuFn>("5Mutex6UnlockEv");
  __tsan_release(this);
  real(this);
}

void Mutex::ReaderUnlock() {
  static const auto real = Real<MuFn>("5Mutex12ReaderUnlockEv");
  __tsan_release(this);
  real(this);
}

bool Mutex::TryLock() {
  static const auto real = Real<MuTryFn>("5Mutex7TryLockEv");
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

bool Mutex::ReaderTryLock() {
  static const auto real = Real<MuTryFn>("5Mutex13ReaderTryLockEv");
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

void Mutex::Await(const Condition& cond) {
  static const auto real = Real<MuCondFn>("5Mutex5AwaitERKNS0_9ConditionE");
  ISORUN_WRAP(cond, this);
  __tsan_release(this);
  real(this, wrapped);
  __tsan_acquire(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real =
      Real<MuCondDurFn>("5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  ISORUN_WRAP(cond, this);
  __tsan_release(this);
  const bool ready = real(this, wrapped, timeout);
  __tsan_acquire(this);
  return ready;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  static const auto real =
      Real<MuCondTimeFn>("5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  ISORUN_WRAP(cond, this);
  __tsan_release(this);
  const bool ready = real(this, wrapped, deadline);
  __tsan_acquire(this);
  return ready;
}

void Mutex::LockWhen(const Condition& cond) {
  static const auto real = Real<MuCondFn>("5Mutex8LockWhenERKNS0_9ConditionE");
  ISORUN_WRAP(cond, this);
  real(this, wrapped);
  __tsan_acquire(this);
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  static const auto real = Real<MuCondFn>("5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  ISORUN_WRAP(cond, this);
  real(this, wrapped);
  __tsan_acquire(this);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real =
      Real<MuCondDurFn>("5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  ISORUN_WRAP(cond, this);
  const bool ready = real(this, wrapped, timeout);
  __tsan_acquire(this);
  return ready;
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  static const auto real =
      Real<MuCondTimeFn>("5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  ISORUN_WRAP(cond, this);
  const bool ready = real(this, wrapped, deadline);
  __tsan_acquire(this);
  return ready;
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real =
      Real<MuCondDurFn>("5Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  ISORUN_WRAP(cond, this);
  const bool ready = real(this, wrapped, timeout);
  __tsan_acquire(this);
  return ready;
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, Time deadline) {
  static const auto real =
      Real<MuCondTimeFn>("5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  ISORUN_WRAP(cond, this);
  const bool ready = real(this, wrapped, deadline);
  __tsan_acquire(this);
  return ready;
}

void CondVar::Wait(Mutex* mu) {
  static const auto real = Real<CvFn>("7CondVar4WaitEPNS0_5MutexE");
  __tsan_release(mu);
  real(this, mu);
  __tsan_acquire(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  static const auto real = Real<CvDurFn>("7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  __tsan_release(mu);
  const bool timed_out = real(this, mu, timeout);
  __tsan_acquire(mu);
  return timed_out;
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  static const auto real = Real<CvTimeFn>("7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  __tsan_release(mu);
  const bool timed_out = real(this, mu, deadline);
  __tsan_acquire(mu);
  return timed_out;
}

void Notification::Notify() {
  static const auto real = Real<NoteFn>("12Notification6NotifyEv");
  __tsan_release(this);
  real(this);
}

void Notification::WaitForNotification() const {
  static const auto real = Real<NoteWaitFn>("12Notification19WaitForNotificationEv", true);
  real(this);
  __tsan_acquire(const_cast<Notification*>(this));
}

bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  static const auto real =
      Real<NoteDurFn>("12Notification30WaitForNotificationWithTimeoutENS0_8DurationE", true);
  const bool notified = real(this, timeout);
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  static const auto real =
      Real<NoteTimeFn>("12Notification31WaitForNotificationWithDeadlineENS0_4TimeE", true);
  const bool notified = real(this, deadline);
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl
