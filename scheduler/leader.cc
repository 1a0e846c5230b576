#include "scheduler/leader.h"

#include "services/kit/pg.h"

namespace isorun::scheduler {
namespace {

// One lock per database: every scheduler replica of a deployment uses the same database.
constexpr char kTryLock[] =
    "SELECT pg_try_advisory_lock(hashtextextended('isorun.scheduler.leader', 0))";

}  // namespace

// Connect timeout and keepalives, as every service connection: a database that does not answer
// must not hold the election forever.
LeaderLock::LeaderLock(std::string database_url)
    : url_(WithConnectionSafeguards(database_url, 2)) {}

absl::StatusOr<bool> LeaderLock::TryAcquire() {
  absl::MutexLock lock(&mu_);
  if (held_) return true;
  try {
    if (!conn_ || !conn_->is_open()) conn_ = std::make_unique<pqxx::connection>(url_);
    pqxx::nontransaction tx(*conn_);
    held_ = tx.exec1(kTryLock)[0].as<bool>();
    return held_;
  } catch (const std::exception& e) {
    conn_.reset();
    return absl::UnavailableError(std::string("leader lock: ") + e.what());
  }
}

absl::Status LeaderLock::Check() {
  absl::MutexLock lock(&mu_);
  if (!held_ || !conn_) return absl::FailedPreconditionError("the leader lock is not held");
  try {
    pqxx::nontransaction tx(*conn_);
    tx.exec1("SELECT 1");
    return absl::OkStatus();
  } catch (const std::exception& e) {
    held_ = false;
    conn_.reset();
    return absl::UnavailableError(std::string("leader lock connection: ") + e.what());
  }
}

}  // namespace isorun::scheduler
