#pragma once

// A small PostgreSQL connection pool on libpqxx 6.x.
//
// Statements are named and prepared once per connection: a repository registers its statements
// with Prepare() before the first query and runs them with `tx.exec_prepared(name, ...)`.
// libpqxx exceptions stop here: Transact() turns them into absl::Status (unique violation ->
// ALREADY_EXISTS, broken connection -> UNAVAILABLE after one retry on a fresh connection,
// serialization failure and deadlock -> retried). Thread-safe; callers block while they wait for a
// connection, so call it from threads that may block (the sync gRPC pool, background loops).

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <pqxx/pqxx>

#include "absl/status/status.h"

namespace isorun {

enum class Durability {
  // COMMIT waits for the WAL flush (the default).
  kSync,
  // COMMIT returns before the WAL flush. Only for steps whose loss on a Postgres crash is repaired
  // by a reconciler: WAL is flushed in order, so the next durable commit makes them durable too.
  kAsync,
};

class PgPool {
 public:
  // `default_durability` applies to Transact() calls that do not choose one.
  PgPool(std::string url, int max_connections, Durability default_durability = Durability::kSync);
  ~PgPool();
  PgPool(const PgPool&) = delete;
  PgPool& operator=(const PgPool&) = delete;

  // Registers a named statement. Call before the first query (not thread-safe with queries).
  void Prepare(std::string name, std::string sql);

  // Runs `fn` in a transaction and commits. `fn` may run more than once (on retry), so it must
  // only touch its own outputs. A non-OK status returned by `fn` rolls back and is returned.
  absl::Status Transact(const std::function<absl::Status(pqxx::work&)>& fn,
                        std::optional<Durability> durability = std::nullopt);

  // Runs `fn` outside a transaction block: each statement commits on its own (one round trip for
  // a single statement instead of three). For single-statement work only; retried like Transact.
  absl::Status Execute(const std::function<absl::Status(pqxx::nontransaction&)>& fn,
                       std::optional<Durability> durability = std::nullopt);

  // Opens a dedicated (unpooled) connection, e.g. for LISTEN.
  std::unique_ptr<pqxx::connection> OpenDedicated();

  const std::string& url() const { return url_; }
  // The names of the registered statements (each connection prepares one when first used).
  std::vector<std::string> StatementNames() const;

 private:
  // Connections are kept apart by their session's synchronous_commit, so choosing a durability
  // never costs a round trip.
  std::unique_ptr<pqxx::connection> Acquire(Durability durability);
  void Return(std::unique_ptr<pqxx::connection> conn, Durability durability);
  std::unique_ptr<pqxx::connection> Connect(Durability durability);
  template <typename Tx>
  absl::Status Run(const std::function<absl::Status(Tx&)>& fn, Durability durability);

  const std::string url_;
  const int max_connections_;
  const Durability default_durability_;
  std::vector<std::pair<std::string, std::string>> statements_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_[2];  // by Durability; guarded by mu_
  int open_ = 0;                                          // guarded by mu_
};

// A Postgres array literal of `values` (each element quoted), for `$n::text[]` parameters of
// statements that work on a batch of rows.
std::string PgTextArray(const std::vector<std::string>& values);

// Maps a libpqxx (or std) exception to a status. Used by Transact and by code that talks to
// Postgres directly (isorunctl, LISTEN loops).
absl::Status StatusFromPgException(const std::exception& e);

// Fails with FAILED_PRECONDITION unless migration `version` (or a later one) has been applied:
// services refuse to start on an older schema.
absl::Status RequireSchemaVersion(PgPool& pool, int version);

}  // namespace isorun
