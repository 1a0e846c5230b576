#pragma once

// A small PostgreSQL connection pool on libpqxx 6.x.
//
// Statements are named and prepared once per connection: a repository registers its statements
// with Prepare() before the first query and runs them with `tx.exec_prepared(name, ...)`.
// libpqxx exceptions stop here: Transact() turns them into absl::Status (unique violation ->
// ALREADY_EXISTS, broken connection -> UNAVAILABLE after one retry on a fresh connection,
// serialization failure and deadlock -> retried). Thread-safe; callers block while they wait for a
// connection, so call it from threads that may block (the sync gRPC pool, background loops).
//
// A database that is down or hung never hangs a caller: every call has a deadline
// (PgPoolOptions::call_timeout) covering the wait for a pooled connection, connecting, its
// statements and its commit, retries included. Connections carry libpq's connect_timeout, TCP
// keepalives and a server-side statement_timeout; a watchdog shuts down the socket of a call that
// passes its deadline (a frozen server never answers, so no server-side timeout can fire). A
// failed connect or a call that timed out marks the database down: later calls fail at once with
// UNAVAILABLE while a background probe reconnects every probe_interval, and the first successful
// probe serves again.

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <pqxx/pqxx>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace isorun {

enum class Durability {
  // COMMIT waits for the WAL flush (the default).
  kSync,
  // COMMIT returns before the WAL flush. Only for steps whose loss on a Postgres crash is repaired
  // by a reconciler: WAL is flushed in order, so the next durable commit makes them durable too.
  kAsync,
};

struct PgPoolOptions {
  // The deadline of one Transact() or Execute() call as a whole; also each connection's
  // statement_timeout. A call that passes it fails with UNAVAILABLE.
  absl::Duration call_timeout = absl::Seconds(2);
  // libpq's connect_timeout, in whole seconds (libpq treats anything below 2 as 2).
  int connect_timeout_sec = 2;
  // How often the background probe tries to reconnect while the database is down.
  absl::Duration probe_interval = absl::Milliseconds(200);
};

class PgPool {
 public:
  // `default_durability` applies to Transact() calls that do not choose one.
  PgPool(std::string url, int max_connections, Durability default_durability = Durability::kSync,
         PgPoolOptions options = {});
  ~PgPool();
  PgPool(const PgPool&) = delete;
  PgPool& operator=(const PgPool&) = delete;

  // Registers a named statement. Call before the first query (not thread-safe with queries).
  void Prepare(std::string name, std::string sql);

  // Runs `fn` in a transaction and commits. `fn` may run more than once (on retry), so it must
  // only touch its own outputs. A non-OK status returned by `fn` rolls back and is returned.
  absl::Status Transact(const std::function<absl::Status(pqxx::work&)>& fn,
                        std::optional<Durability> durability = std::nullopt);

  // Transact() with a deadline of the caller's (at most call_timeout from now), for callers that
  // already spent part of their time budget.
  absl::Status TransactBefore(absl::Time deadline,
                              const std::function<absl::Status(pqxx::work&)>& fn,
                              std::optional<Durability> durability = std::nullopt);

  // Runs `fn` outside a transaction block: each statement commits on its own (one round trip for
  // a single statement instead of three). For single-statement work only; retried like Transact.
  absl::Status Execute(const std::function<absl::Status(pqxx::nontransaction&)>& fn,
                       std::optional<Durability> durability = std::nullopt);

  // Opens a dedicated (unpooled) connection, e.g. for LISTEN, with the pool's connect timeout
  // and keepalives.
  std::unique_ptr<pqxx::connection> OpenDedicated();

  // The pool's watchdog for work on a dedicated connection: while the guard lives, a call on
  // `conn` still running at `deadline` fails (the socket is shut down; the connection is lost).
  class Deadline {
   public:
    Deadline(PgPool& pool, pqxx::connection& conn, absl::Time deadline);
    ~Deadline();
    Deadline(const Deadline&) = delete;
    Deadline& operator=(const Deadline&) = delete;

   private:
    PgPool& pool_;
    pqxx::connection& conn_;
  };

  const std::string& url() const { return url_; }
  // The URL connections are opened with: url() plus the timeouts and keepalives.
  const std::string& connect_url() const { return connect_url_; }
  const PgPoolOptions& options() const { return options_; }
  // The names of the registered statements (each connection prepares one when first used).
  std::vector<std::string> StatementNames() const;

  // False while the database is marked down (calls fail at once until a probe reconnects).
  bool Reachable() const;

 private:
  // Connections are kept apart by their session's synchronous_commit, so choosing a durability
  // never costs a round trip.
  absl::StatusOr<std::unique_ptr<pqxx::connection>> Acquire(Durability durability,
                                                            absl::Time deadline);
  void Return(std::unique_ptr<pqxx::connection> conn, Durability durability);
  std::unique_ptr<pqxx::connection> Connect(Durability durability, absl::Time deadline);
  template <typename Tx>
  absl::Status Run(const std::function<absl::Status(Tx&)>& fn, Durability durability,
                   absl::Time deadline);

  // The watchdog: Watch() arms a deadline for `conn`'s socket, Unwatch() disarms it and says
  // whether it fired (the socket was shut down: the connection is useless).
  void Watch(pqxx::connection& conn, absl::Time deadline);
  bool Unwatch(pqxx::connection& conn);
  void WatchdogLoop();
  // Marks the database down (calls fail fast) and drops the idle connections.
  void MarkDown(const std::string& reason);
  absl::Status DownStatus() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void ProbeLoop();

  const std::string url_;
  const int max_connections_;
  const Durability default_durability_;
  const PgPoolOptions options_;
  const std::string connect_url_;
  std::vector<std::pair<std::string, std::string>> statements_;

  mutable absl::Mutex mu_;
  // Idle connections by Durability.
  std::vector<std::unique_ptr<pqxx::connection>> idle_[2] ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;
  bool down_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time down_since_ ABSL_GUARDED_BY(mu_);
  std::string down_reason_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  struct Watched {
    int fd;
    absl::Time deadline;
    bool fired;
  };
  absl::Mutex watch_mu_;
  std::map<const pqxx::connection*, Watched> watched_ ABSL_GUARDED_BY(watch_mu_);
  bool watch_stopping_ ABSL_GUARDED_BY(watch_mu_) = false;

  std::thread watchdog_;
  std::thread prober_;
};

// A Postgres array literal of `values` (each element quoted), for `$n::text[]` parameters of
// statements that work on a batch of rows.
std::string PgTextArray(const std::vector<std::string>& values);

// `url` (a postgresql:// URI or a key=value string) with libpq's connect_timeout and TCP
// keepalives added, unless it sets them itself.
std::string WithConnectionSafeguards(const std::string& url, int connect_timeout_sec);

// Maps a libpqxx (or std) exception to a status. Used by Transact and by code that talks to
// Postgres directly (isorunctl, LISTEN loops).
absl::Status StatusFromPgException(const std::exception& e);

// Fails with FAILED_PRECONDITION unless migration `version` (or a later one) has been applied:
// services refuse to start on an older schema.
absl::Status RequireSchemaVersion(PgPool& pool, int version);

}  // namespace isorun
