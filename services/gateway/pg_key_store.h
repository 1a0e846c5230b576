#pragma once

// The API key store on accounts.api_keys, with a cache that revocation empties at once.
//
// Cache rules (correctness first):
// - Keys that exist are cached (revoked ones included). Unknown key ids are cached too, briefly
//   (`negative_ttl`) and in a bounded table (`max_negative`), so a client repeating a forged or
//   deleted key costs a hash lookup, not a Postgres query, per request. INSERTs notify as well
//   (migration 0013), which evicts a negative entry; a key id is random, so it is never looked
//   up before its key exists unless someone guessed it.
// - A background thread holds a dedicated connection that LISTENs on `isorun_api_keys` (the
//   migration's trigger NOTIFYs the key id on every UPDATE and DELETE) and evicts that key.
// - The cache is served only while that connection is listening. When it is down or
//   reconnecting, the cache is emptied and every lookup goes to Postgres, until it listens again.
// - A lookup that raced with an eviction does not cache what it read (an epoch counter).
// - "Revocation takes effect on the very next request" (API.md) needs more than NOTIFY: the
//   notification reaches the listener some time after the revoking COMMIT is acknowledged
//   (measured here: about half of the lookups made right after a revoke still saw the old row).
//   So, with `strict_revocation` (the default), a cache hit first waits for a barrier: a
//   `SELECT 1` on the listener connection that started after the lookup did. Postgres 15
//   signals listening backends at commit, before the committing client is answered, and a
//   backend delivers pending notifications before it answers the next query, so once the
//   barrier is back every revocation committed before the lookup began has been applied. One
//   barrier serves every lookup waiting for it, so concurrent requests share a round trip
//   (about 40 us here) instead of each paying a pooled lookup (BEGIN, SELECT, COMMIT).
// - Without strict_revocation a cache hit is only refused while a notification is in flight
//   inside this process (bytes waiting on the listener socket, or being applied); what remains
//   is Postgres's delivery latency, well under a millisecond.
//
// Thread-safe. One background thread, owned by this object (Start/Stop).

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "services/gateway/auth.h"
#include "services/kit/pg.h"

namespace isorun::gateway {

class PgKeyStore final : public KeyStore {
 public:
  struct Options {
    // Defence in depth: an entry is re-read after this long even without a notification.
    absl::Duration entry_ttl = absl::Minutes(5);
    size_t max_entries = 100000;
    // Unknown key ids: how long one is remembered, and how many at most (a full table is
    // emptied, so a flood of distinct forged ids cannot grow memory).
    absl::Duration negative_ttl = absl::Seconds(10);
    size_t max_negative = 100000;
    // How often an idle listener connection is checked with a query.
    absl::Duration listener_ping = absl::Seconds(10);
    absl::Duration reconnect_max_backoff = absl::Seconds(2);
    // See the class comment. Off trades exactness for one round trip less per request.
    bool strict_revocation = true;
    // A lookup waiting longer than this for a barrier reads Postgres instead.
    absl::Duration barrier_timeout = absl::Seconds(1);
  };

  // Registers the store's prepared statement: construct it before the pool's first query.
  PgKeyStore(PgPool& pool, Options options);
  explicit PgKeyStore(PgPool& pool) : PgKeyStore(pool, Options()) {}
  ~PgKeyStore() override;
  PgKeyStore(const PgKeyStore&) = delete;
  PgKeyStore& operator=(const PgKeyStore&) = delete;

  // Starts the listener thread (until then every lookup goes to Postgres).
  void Start();
  // Stops it; lookups keep working, uncached.
  void Stop();

  absl::StatusOr<std::optional<StoredKey>> Find(const std::string& key_id) override;

  // For tests and health: whether the listener is up and the cache in use.
  bool listening() const;
  bool WaitUntilListening(absl::Duration timeout) const;
  bool IsCached(const std::string& key_id) const;
  // The Postgres backend pid of the listener connection (0 when down).
  int listener_backend_pid() const;

  // Counters for metrics and tests.
  uint64_t cache_hits() const { return hits_.load(); }
  uint64_t cache_misses() const { return misses_.load(); }
  uint64_t barriers() const { return barriers_.load(); }
  // Lookups answered "unknown" from the negative cache.
  uint64_t negative_hits() const { return negative_hits_.load(); }
  bool IsNegativeCached(const std::string& key_id) const;

 private:
  struct Entry {
    StoredKey key;
    absl::Time expires;
  };
  class Receiver;

  void ListenLoop();
  // A notification's payload: a key id (changed or deleted) or "+" and a new key's id.
  void Evict(const std::string& payload);
  // Empties the cache and marks the listener as up or down.
  void SetListening(bool up, int fd, int pid);
  // Whether a notification may be waiting to be applied.
  bool NotificationPending(int fd) const;
  // Waits for a barrier that started after this call; false if none completed (listener down,
  // timeout), in which case the caller must read Postgres.
  bool AwaitBarrier();
  void WakeListener();
  absl::StatusOr<std::optional<StoredKey>> Read(const std::string& key_id, absl::Time deadline);

  PgPool& pool_;
  const Options options_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> cache_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, absl::Time> negative_ ABSL_GUARDED_BY(mu_);  // -> expiry
  uint64_t epoch_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t negative_epoch_ ABSL_GUARDED_BY(mu_) = 0;  // also moved by new keys
  bool listening_ ABSL_GUARDED_BY(mu_) = false;
  int listener_fd_ ABSL_GUARDED_BY(mu_) = -1;
  int listener_pid_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Barriers are numbered; a lookup needs the first one that has not started yet.
  uint64_t barrier_next_ ABSL_GUARDED_BY(mu_) = 1;    // number of the next barrier to start
  uint64_t barrier_wanted_ ABSL_GUARDED_BY(mu_) = 0;  // highest number a lookup waits for
  uint64_t barrier_done_ ABSL_GUARDED_BY(mu_) = 0;    // highest number completed

  // True while the listener thread reads from its connection (notifications being applied).
  std::atomic<bool> draining_{false};
  std::atomic<uint64_t> hits_{0};
  std::atomic<uint64_t> misses_{0};
  std::atomic<uint64_t> barriers_{0};
  std::atomic<uint64_t> negative_hits_{0};
  // Wakes the listener thread from poll() (barrier requests, Stop).
  int wake_fd_ = -1;
  std::thread thread_;
};

}  // namespace isorun::gateway
