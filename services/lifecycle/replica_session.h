#pragma once

// A lifecycle replica's presence in Postgres, on one dedicated connection of its own:
// - An id (sequence lifecycle.replica_ids) and the session advisory lock (4243, id), held for as
//   long as the connection lives. Rows of creates in flight record the id as their `owner`; a row
//   whose owner holds no lock belongs to a replica that died, and another replica takes it over
//   and finishes the create (lifecycle.h). Postgres drops the lock the moment the connection
//   ends, so a replica killed with -9 is seen gone at once.
// - LISTEN isorun_sandbox_settled: an idempotent retry waiting for a create that runs on another
//   replica is woken when the row leaves PENDING/STARTING (migration 0017), with no query loop
//   and no thread per waiter (each waiter's own thread sleeps on a condition variable; one thread
//   here reads the connection).
// When the connection fails, the lock is gone: the session reconnects under a new id (rows of
// the old id may be taken over meanwhile; the lifecycle compensates a create only under its row's
// lock while it is still the owner) and wakes every waiter so that each looks again.
//
// Thread-safe.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "services/kit/pg.h"

namespace isorun::lifecycle {

// The first key of the replicas' advisory locks (the second is the replica's id).
inline constexpr int kReplicaLockSpace = 4243;

class ReplicaSession {
 public:
  struct Options {
    // A query on the connection after this much silence, so a connection that died without a
    // word is noticed.
    absl::Duration ping_every = absl::Seconds(5);
    absl::Duration reconnect_max_backoff = absl::Seconds(5);
    // Called with the new id each time the session comes up (the store records it as the owner
    // of the rows inserted from then on).
    std::function<void(int32_t)> on_up;
  };

  ReplicaSession(PgPool& pool, Options options);
  explicit ReplicaSession(PgPool& pool) : ReplicaSession(pool, Options()) {}
  // Closes the connection (so the lock goes) after stopping the thread.
  ~ReplicaSession();
  ReplicaSession(const ReplicaSession&) = delete;
  ReplicaSession& operator=(const ReplicaSession&) = delete;

  // True once the lock is held and the LISTEN is on (within `timeout`).
  bool WaitUp(absl::Duration timeout);
  // This replica's id while the lock is held; 0 while the session is down.
  int32_t id() const;
  // Notifications received (tests).
  int64_t notifications() const;

  enum class Wake { kSettled, kRestarted, kTimeout };
  // Registered before the caller looks at the row, so no notification is missed between.
  class Watch {
   public:
    ~Watch();
    Watch(const Watch&) = delete;
    Watch& operator=(const Watch&) = delete;
    // kSettled: the row was notified; kRestarted: the session went down or came back (look
    // again); kTimeout: the deadline passed.
    Wake Wait(absl::Time deadline);

   private:
    friend class ReplicaSession;
    Watch(ReplicaSession* session, std::string id) : session_(session), id_(std::move(id)) {}
    ReplicaSession* session_;
    std::string id_;
    bool settled_ = false;
    bool restarted_ = false;
  };
  std::unique_ptr<Watch> WatchSettled(const std::string& sandbox_id);

 private:
  class Receiver;
  void Run();
  void OnNotification(const std::string& sandbox_id);
  // The session changed (down or up): every waiter looks again.
  void SetId(int32_t id);
  bool stopping();

  PgPool& pool_;
  const Options options_;
  mutable absl::Mutex mu_;
  int32_t id_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int64_t notifications_ ABSL_GUARDED_BY(mu_) = 0;
  std::multimap<std::string, Watch*> watches_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace isorun::lifecycle
