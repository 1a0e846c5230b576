#include "services/kit/pg.h"

#include <sys/socket.h>

#include <algorithm>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "services/kit/log.h"

namespace isorun {

namespace {

bool HasParam(const std::string& url, const std::string& key) {
  // Good enough for the keys we add: none is a suffix of another parameter's name.
  return url.find(key + "=") != std::string::npos;
}

}  // namespace

std::string WithConnectionSafeguards(const std::string& url, int connect_timeout_sec) {
  // A dead peer is noticed on an idle connection after about 10 + 3 * 3 s; data a peer does not
  // acknowledge for 10 s breaks the connection (tcp_user_timeout). Neither helps against a frozen
  // server, whose kernel still acknowledges everything: the pool's watchdog handles that.
  const std::pair<std::string, std::string> params[] = {
      {"connect_timeout", std::to_string(connect_timeout_sec)},
      {"keepalives", "1"},
      {"keepalives_idle", "10"},
      {"keepalives_interval", "3"},
      {"keepalives_count", "3"},
      {"tcp_user_timeout", "10000"},
  };
  const bool uri = url.rfind("postgresql://", 0) == 0 || url.rfind("postgres://", 0) == 0;
  std::string out = url;
  for (const auto& [key, value] : params) {
    if (HasParam(url, key)) continue;
    if (uri) {
      out += out.find('?') == std::string::npos ? '?' : '&';
    } else if (!out.empty()) {
      out += ' ';
    }
    out += key + "=" + value;
  }
  return out;
}

PgPool::PgPool(std::string url, int max_connections, Durability default_durability,
               PgPoolOptions options)
    : url_(std::move(url)),
      max_connections_(max_connections),
      default_durability_(default_durability),
      options_(options),
      connect_url_(WithConnectionSafeguards(url_, options.connect_timeout_sec)) {
  watchdog_ = std::thread([this] { WatchdogLoop(); });
  prober_ = std::thread([this] { ProbeLoop(); });
}

PgPool::~PgPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  prober_.join();
  {
    absl::MutexLock lock(&watch_mu_);
    watch_stopping_ = true;
  }
  watchdog_.join();
}

void PgPool::Prepare(std::string name, std::string sql) {
  statements_.emplace_back(std::move(name), std::move(sql));
}

std::unique_ptr<pqxx::connection> PgPool::Connect(Durability durability, absl::Time deadline) {
  // Bounded by connect_timeout.
  auto conn = std::make_unique<pqxx::connection>(connect_url_);
  Watch(*conn, deadline);
  try {
    pqxx::nontransaction nt(*conn);
    // Our statements are small and keyed (ids, arrays of ids): one generic plan per connection
    // serves them all. Left to choose, Postgres re-plans each execution whenever the custom plan
    // looks cheaper, and planning the CTE-shaped statements costs more than running them.
    // That plan is made once, often while a table is new and looks a few pages long, and kept:
    // a sequential scan chosen then would read the whole table on every call as it grows. Every
    // statement of ours is meant to go through an index, so sequential scans are off unless no
    // index can serve a statement at all. Such a plan carries the huge cost that marks a disabled
    // path, which would otherwise make Postgres compile it (JIT) for half a second.
    // statement_timeout ends a statement stuck on the server (a lock, an overloaded disk) when
    // its caller has given up on it anyway.
    std::string settings = absl::StrCat(
        "SET plan_cache_mode TO force_generic_plan; SET enable_seqscan TO off; SET jit TO off; "
        "SET statement_timeout TO ",
        absl::ToInt64Milliseconds(options_.call_timeout));
    if (durability == Durability::kAsync) settings += "; SET synchronous_commit TO OFF";
    nt.exec0(settings);
  } catch (...) {
    Unwatch(*conn);
    throw;
  }
  if (Unwatch(*conn)) {
    throw pqxx::broken_connection("the database did not answer while the connection was set up");
  }
  for (const auto& [name, sql] : statements_) conn->prepare(name, sql);
  return conn;
}

std::vector<std::string> PgPool::StatementNames() const {
  std::vector<std::string> names;
  for (const auto& [name, sql] : statements_) names.push_back(name);
  return names;
}

std::unique_ptr<pqxx::connection> PgPool::OpenDedicated() {
  return std::make_unique<pqxx::connection>(connect_url_);
}

bool PgPool::Reachable() const {
  absl::MutexLock lock(&mu_);
  return !down_;
}

absl::Status PgPool::DownStatus() const {
  return absl::UnavailableError(absl::StrCat(
      "database unavailable for ", absl::FormatDuration(absl::Trunc(absl::Now() - down_since_,
                                                                     absl::Milliseconds(1))),
      ": ", down_reason_));
}

absl::StatusOr<std::unique_ptr<pqxx::connection>> PgPool::Acquire(Durability durability,
                                                                  absl::Time deadline) {
  auto& idle = idle_[static_cast<int>(durability)];
  auto& other = idle_[1 - static_cast<int>(durability)];
  std::unique_ptr<pqxx::connection> dropped;  // closed outside the lock
  {
    absl::MutexLock lock(&mu_);
    auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return down_ || !idle.empty() || !other.empty() || open_ < max_connections_;
    };
    if (!mu_.AwaitWithDeadline(absl::Condition(&ready), deadline)) {
      return absl::UnavailableError(absl::StrCat(
          "no database connection became free within ",
          absl::FormatDuration(options_.call_timeout), " (all ", max_connections_, " busy)"));
    }
    if (down_) return DownStatus();
    if (!idle.empty()) {
      auto conn = std::move(idle.back());
      idle.pop_back();
      return conn;
    }
    if (open_ >= max_connections_) {
      // Only connections of the other kind are idle: close one to make room.
      dropped = std::move(other.back());
      other.pop_back();
    } else {
      ++open_;
    }
  }
  dropped.reset();
  try {
    return Connect(durability, deadline);
  } catch (const std::exception& e) {
    {
      absl::MutexLock lock(&mu_);
      --open_;
    }
    absl::Status status = StatusFromPgException(e);
    if (status.code() == absl::StatusCode::kUnavailable) {
      MarkDown(std::string(status.message()));
    }
    return absl::UnavailableError(absl::StrCat("cannot connect to the database: ", e.what()));
  }
}

void PgPool::Return(std::unique_ptr<pqxx::connection> conn, Durability durability) {
  absl::MutexLock lock(&mu_);
  if (conn != nullptr && conn->is_open() && !down_) {
    idle_[static_cast<int>(durability)].push_back(std::move(conn));
  } else {
    --open_;
  }
  // A connection not kept closes when `conn` goes out of scope, after the lock.
}

void PgPool::MarkDown(const std::string& reason) {
  std::vector<std::unique_ptr<pqxx::connection>> drop;
  {
    absl::MutexLock lock(&mu_);
    if (!down_) {
      down_ = true;
      down_since_ = absl::Now();
      down_reason_ = reason;
      LogWarn("database marked down: calls fail at once until a probe reconnects",
              {{"error", reason}});
    }
    // Idle connections are most likely broken too, and a frozen server would hold each of their
    // next users for a whole call_timeout.
    for (auto& idle : idle_) {
      for (auto& c : idle) drop.push_back(std::move(c));
      open_ -= static_cast<int>(idle.size());
      idle.clear();
    }
  }
}

void PgPool::ProbeLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || down_; };
      mu_.Await(absl::Condition(&wake));
      if (stopping_) return;
    }
    const absl::Time deadline = absl::Now() + options_.call_timeout;
    std::unique_ptr<pqxx::connection> conn;
    std::string error;
    try {
      // A bare connection: the probe only needs an answer (and must not read statements_,
      // which Prepare() may still be filling while a service starts).
      conn = std::make_unique<pqxx::connection>(connect_url_);
      Watch(*conn, deadline);
      try {
        pqxx::nontransaction nt(*conn);
        nt.exec("SELECT 1");
      } catch (...) {
        Unwatch(*conn);
        throw;
      }
      if (Unwatch(*conn)) throw pqxx::broken_connection("the probe's SELECT 1 did not answer");
    } catch (const std::exception& e) {
      conn.reset();
      error = e.what();
    }
    if (conn != nullptr) {
      absl::MutexLock lock(&mu_);
      LogInfo("database reachable again",
              {{"down_for", absl::FormatDuration(absl::Now() - down_since_)}});
      down_ = false;
      continue;
    }
    absl::MutexLock lock(&mu_);
    down_reason_ = error;
    auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
    mu_.AwaitWithTimeout(absl::Condition(&stop), options_.probe_interval);
  }
}

void PgPool::Watch(pqxx::connection& conn, absl::Time deadline) {
  absl::MutexLock lock(&watch_mu_);
  watched_[&conn] = Watched{conn.sock(), deadline, false};
}

bool PgPool::Unwatch(pqxx::connection& conn) {
  absl::MutexLock lock(&watch_mu_);
  auto it = watched_.find(&conn);
  if (it == watched_.end()) return false;
  bool fired = it->second.fired;
  watched_.erase(it);
  return fired;
}

void PgPool::WatchdogLoop() {
  absl::MutexLock lock(&watch_mu_);
  while (!watch_stopping_) {
    const absl::Time now = absl::Now();
    absl::Time next = now + absl::Milliseconds(100);
    for (auto& [conn, w] : watched_) {
      if (w.fired) continue;
      if (w.deadline <= now) {
        // The owner is blocked in libpq on this socket (or about to be): shutting it down makes
        // every read and write fail at once, so libpq reports a broken connection. The fd stays
        // open (and so cannot be reused) until the owner, which unwatches first, closes it.
        if (w.fd >= 0) ::shutdown(w.fd, SHUT_RDWR);
        w.fired = true;
      } else {
        next = std::min(next, w.deadline);
      }
    }
    // Woken early by a new watch with an earlier deadline? Not needed: deadlines are at least
    // call_timeout away when armed, and we look at least every 100 ms.
    watch_mu_.AwaitWithDeadline(absl::Condition(&watch_stopping_), next);
  }
}

PgPool::Deadline::Deadline(PgPool& pool, pqxx::connection& conn, absl::Time deadline)
    : pool_(pool), conn_(conn) {
  pool_.Watch(conn_, deadline);
}

PgPool::Deadline::~Deadline() { pool_.Unwatch(conn_); }

template <typename Tx>
absl::Status PgPool::Run(const std::function<absl::Status(Tx&)>& fn, Durability durability,
                         absl::Time deadline) {
  constexpr int kAttempts = 4;
  absl::Status last;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    auto acquired = Acquire(durability, deadline);
    if (!acquired.ok()) return acquired.status();
    std::unique_ptr<pqxx::connection> conn = std::move(*acquired);
    bool retry = false;
    bool broken = false;
    Watch(*conn, deadline);
    try {
      Tx tx(*conn);
      absl::Status status = fn(tx);
      if (status.ok()) {
        tx.commit();
      } else {
        tx.abort();
      }
      last = status;
    } catch (const pqxx::in_doubt_error& e) {
      // The commit may or may not have happened: never retry blindly.
      broken = true;
      last = absl::UnavailableError(absl::StrCat("database commit in doubt: ", e.what()));
    } catch (const pqxx::broken_connection& e) {
      broken = true;
      last = StatusFromPgException(e);
      // Inside a transaction block nothing was committed, so a retry is safe. Outside one, the
      // statement may have committed before the connection broke: the caller must decide.
      retry = std::is_same_v<Tx, pqxx::work>;
    } catch (const pqxx::serialization_failure& e) {
      last = StatusFromPgException(e);
      retry = true;
    } catch (const pqxx::deadlock_detected& e) {
      last = StatusFromPgException(e);
      retry = true;
    } catch (const std::exception& e) {
      last = StatusFromPgException(e);
    }
    if (Unwatch(*conn)) {
      // The watchdog shut the socket down: the database did not answer in time. Whatever libpq
      // reported, the connection is gone and the outcome of a commit is unknown.
      conn.reset();
      Return(nullptr, durability);
      std::string reason = "the database did not answer in time";
      MarkDown(reason);
      return absl::UnavailableError(reason);
    }
    if (broken) conn.reset();
    Return(std::move(conn), durability);
    if (!retry) return last;
    if (absl::Now() + absl::Milliseconds(50 * (attempt + 1)) >= deadline) return last;
    LogWarn("retrying database work", {{"attempt", std::to_string(attempt + 1)},
                                       {"error", std::string(last.message())}});
    absl::SleepFor(absl::Milliseconds(10 * attempt));
  }
  return last;
}

absl::Status PgPool::Transact(const std::function<absl::Status(pqxx::work&)>& fn,
                              std::optional<Durability> durability) {
  return Run<pqxx::work>(fn, durability.value_or(default_durability_),
                         absl::Now() + options_.call_timeout);
}

absl::Status PgPool::TransactBefore(absl::Time deadline,
                                    const std::function<absl::Status(pqxx::work&)>& fn,
                                    std::optional<Durability> durability) {
  return Run<pqxx::work>(fn, durability.value_or(default_durability_),
                         std::min(deadline, absl::Now() + options_.call_timeout));
}

absl::Status PgPool::Execute(const std::function<absl::Status(pqxx::nontransaction&)>& fn,
                             std::optional<Durability> durability) {
  return Run<pqxx::nontransaction>(fn, durability.value_or(default_durability_),
                                   absl::Now() + options_.call_timeout);
}

absl::Status StatusFromPgException(const std::exception& e) {
  if (dynamic_cast<const pqxx::unique_violation*>(&e) != nullptr) {
    return absl::AlreadyExistsError(e.what());
  }
  if (dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr) {
    return absl::UnavailableError(absl::StrCat("database unavailable: ", e.what()));
  }
  if (dynamic_cast<const pqxx::transaction_rollback*>(&e) != nullptr) {
    return absl::AbortedError(absl::StrCat("transaction rolled back: ", e.what()));
  }
  if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e)) {
    const std::string& state = sql->sqlstate();
    if (state.rfind("22", 0) == 0 || state.rfind("23", 0) == 0) {
      return absl::InvalidArgumentError(e.what());
    }
    if (state.rfind("57", 0) == 0 || state.rfind("08", 0) == 0) {
      return absl::UnavailableError(absl::StrCat("database unavailable: ", e.what()));
    }
    return absl::InternalError(absl::StrCat("database error: ", e.what()));
  }
  return absl::InternalError(absl::StrCat("database error: ", e.what()));
}

absl::Status RequireSchemaVersion(PgPool& pool, int version) {
  int applied = 0;
  absl::Status status = pool.Transact([&](pqxx::work& tx) {
    auto exists = tx.exec("SELECT to_regclass('isorun_migrations.applied') IS NOT NULL");
    applied = 0;
    if (exists[0][0].as<bool>()) {
      applied = tx.exec("SELECT coalesce(max(version), 0) FROM isorun_migrations.applied")[0][0]
                    .as<int>();
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  if (applied < version) {
    return absl::FailedPreconditionError(absl::StrCat(
        "database schema is at migration ", applied, " but this binary needs ", version,
        " or later: run `isorunctl migrate` first"));
  }
  return absl::OkStatus();
}

std::string PgTextArray(const std::vector<std::string>& values) {
  std::string out = "{";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += ',';
    out += '"';
    for (char c : values[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  out += '}';
  return out;
}

}  // namespace isorun
