#include "services/kit/pg.h"

#include <chrono>
#include <thread>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "services/kit/log.h"

namespace isorun {

PgPool::PgPool(std::string url, int max_connections, Durability default_durability)
    : url_(std::move(url)),
      max_connections_(max_connections),
      default_durability_(default_durability) {}

PgPool::~PgPool() = default;

void PgPool::Prepare(std::string name, std::string sql) {
  statements_.emplace_back(std::move(name), std::move(sql));
}

std::unique_ptr<pqxx::connection> PgPool::Connect(Durability durability) {
  auto conn = std::make_unique<pqxx::connection>(url_);
  {
    pqxx::nontransaction nt(*conn);
    // Our statements are small and keyed (ids, arrays of ids): one generic plan per connection
    // serves them all. Left to choose, Postgres re-plans each execution whenever the custom plan
    // looks cheaper, and planning the CTE-shaped statements costs more than running them.
    // That plan is made once, often while a table is new and looks a few pages long, and kept:
    // a sequential scan chosen then would read the whole table on every call as it grows. Every
    // statement of ours is meant to go through an index, so sequential scans are off unless no
    // index can serve a statement at all. Such a plan carries the huge cost that marks a disabled
    // path, which would otherwise make Postgres compile it (JIT) for half a second.
    const std::string settings =
        "SET plan_cache_mode TO force_generic_plan; SET enable_seqscan TO off; SET jit TO off";
    nt.exec0(durability == Durability::kAsync ? settings + "; SET synchronous_commit TO OFF"
                                              : settings);
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
  return std::make_unique<pqxx::connection>(url_);
}

std::unique_ptr<pqxx::connection> PgPool::Acquire(Durability durability) {
  auto& idle = idle_[static_cast<int>(durability)];
  auto& other = idle_[1 - static_cast<int>(durability)];
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !idle.empty() || !other.empty() || open_ < max_connections_; });
    if (!idle.empty()) {
      auto conn = std::move(idle.back());
      idle.pop_back();
      return conn;
    }
    if (open_ >= max_connections_) {
      // Only connections of the other kind are idle: close one to make room.
      other.pop_back();
    } else {
      ++open_;
    }
  }
  try {
    return Connect(durability);
  } catch (...) {
    std::lock_guard lock(mu_);
    --open_;
    cv_.notify_one();
    throw;
  }
}

void PgPool::Return(std::unique_ptr<pqxx::connection> conn, Durability durability) {
  std::lock_guard lock(mu_);
  if (conn && conn->is_open()) {
    idle_[static_cast<int>(durability)].push_back(std::move(conn));
  } else {
    --open_;
  }
  cv_.notify_one();
}

template <typename Tx>
absl::Status PgPool::Run(const std::function<absl::Status(Tx&)>& fn, Durability durability) {
  constexpr int kAttempts = 4;
  absl::Status last;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    std::unique_ptr<pqxx::connection> conn;
    try {
      conn = Acquire(durability);
    } catch (const std::exception& e) {
      last = StatusFromPgException(e);
      std::this_thread::sleep_for(std::chrono::milliseconds(50 * (attempt + 1)));
      continue;
    }
    bool retry = false;
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
      conn.reset();
      last = absl::UnavailableError(absl::StrCat("database commit in doubt: ", e.what()));
    } catch (const pqxx::broken_connection& e) {
      conn.reset();
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
    Return(std::move(conn), durability);
    if (!retry) return last;
    LogWarn("retrying database work", {{"attempt", std::to_string(attempt + 1)},
                                       {"error", std::string(last.message())}});
  }
  return last;
}

absl::Status PgPool::Transact(const std::function<absl::Status(pqxx::work&)>& fn,
                              std::optional<Durability> durability) {
  return Run<pqxx::work>(fn, durability.value_or(default_durability_));
}

absl::Status PgPool::Execute(const std::function<absl::Status(pqxx::nontransaction&)>& fn,
                             std::optional<Durability> durability) {
  return Run<pqxx::nontransaction>(fn, durability.value_or(default_durability_));
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
