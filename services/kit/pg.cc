#include "services/kit/pg.h"

#include <chrono>
#include <thread>

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

std::unique_ptr<pqxx::connection> PgPool::Connect() {
  auto conn = std::make_unique<pqxx::connection>(url_);
  if (default_durability_ == Durability::kAsync) {
    pqxx::nontransaction nt(*conn);
    nt.exec0("SET synchronous_commit TO OFF");
  }
  for (const auto& [name, sql] : statements_) conn->prepare(name, sql);
  return conn;
}

std::unique_ptr<pqxx::connection> PgPool::OpenDedicated() {
  return std::make_unique<pqxx::connection>(url_);
}

std::unique_ptr<pqxx::connection> PgPool::Acquire() {
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !idle_.empty() || open_ < max_connections_; });
    if (!idle_.empty()) {
      auto conn = std::move(idle_.back());
      idle_.pop_back();
      return conn;
    }
    ++open_;
  }
  try {
    return Connect();
  } catch (...) {
    std::lock_guard lock(mu_);
    --open_;
    cv_.notify_one();
    throw;
  }
}

void PgPool::Return(std::unique_ptr<pqxx::connection> conn) {
  std::lock_guard lock(mu_);
  if (conn && conn->is_open()) {
    idle_.push_back(std::move(conn));
  } else {
    --open_;
  }
  cv_.notify_one();
}

absl::Status PgPool::Transact(const std::function<absl::Status(pqxx::work&)>& fn,
                              std::optional<Durability> durability) {
  constexpr int kAttempts = 4;
  absl::Status last;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    std::unique_ptr<pqxx::connection> conn;
    try {
      conn = Acquire();
    } catch (const std::exception& e) {
      last = StatusFromPgException(e);
      std::this_thread::sleep_for(std::chrono::milliseconds(50 * (attempt + 1)));
      continue;
    }
    bool retry = false;
    try {
      pqxx::work tx(*conn);
      // The session default is set at connect; only a different choice costs a round trip.
      if (durability && *durability != default_durability_) {
        tx.exec0(*durability == Durability::kAsync ? "SET LOCAL synchronous_commit TO OFF"
                                                   : "SET LOCAL synchronous_commit TO ON");
      }
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
      retry = true;
    } catch (const pqxx::serialization_failure& e) {
      last = StatusFromPgException(e);
      retry = true;
    } catch (const pqxx::deadlock_detected& e) {
      last = StatusFromPgException(e);
      retry = true;
    } catch (const std::exception& e) {
      last = StatusFromPgException(e);
    }
    Return(std::move(conn));
    if (!retry) return last;
    LogWarn("retrying transaction", {{"attempt", std::to_string(attempt + 1)},
                                     {"error", std::string(last.message())}});
  }
  return last;
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

}  // namespace isorun
