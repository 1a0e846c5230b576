#pragma once

// Which scheduler replica decides placements. The fleet view (runners' heartbeats, reservations)
// lives in one process's memory, so exactly one replica serves the Scheduler API at a time: the
// one holding a session-level Postgres advisory lock on a dedicated connection. The others serve
// gRPC health and answer every Scheduler method UNAVAILABLE ("not the leader"), which clients
// retry on another replica; they try to take the lock every `poll`.
//
// A leader that dies (even kill -9) closes its connection, and Postgres drops the lock at once;
// a follower takes it within `poll`, loads the fleet from Postgres (placements are written before
// they are acknowledged, so none is lost) and serves; runners reconnect their heartbeat streams
// to it. A leader whose lock connection stops answering cannot know whether it still holds the
// lock, so it stops deciding at once (follows) rather than risk two deciders, and competes for
// the lock again: a database that restarted dropped it, and the winner reloads the fleet.
//
// Thread-safe: the connection is used by one thread at a time (the caller of TryAcquire/Check).

#include <memory>
#include <pqxx/pqxx>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace isorun::scheduler {

class LeaderLock {
 public:
  explicit LeaderLock(std::string database_url);

  // True when this process holds the lock now (also when it already did); false when another
  // session holds it; an error when Postgres cannot be asked.
  absl::StatusOr<bool> TryAcquire();
  // OK while the lock's session answers. Once this fails the lock may be gone.
  absl::Status Check();

 private:
  const std::string url_;
  absl::Mutex mu_;
  std::unique_ptr<pqxx::connection> conn_ ABSL_GUARDED_BY(mu_);
  bool held_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace isorun::scheduler
