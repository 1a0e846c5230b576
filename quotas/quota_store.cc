#include "quotas/quota_store.h"

#include "absl/strings/str_cat.h"
#include "services/kit/status.h"

namespace isorun::quota {
namespace {

constexpr int kRetryAfterSec = 1;

absl::Status CheckUuid(const std::string& id) {
  // Postgres would reject a malformed uuid too, but with a message about SQL.
  static constexpr int kDashes[] = {8, 13, 18, 23};
  bool ok = id.size() == 36;
  for (size_t i = 0; ok && i < id.size(); ++i) {
    bool dash = false;
    for (int d : kDashes) dash = dash || static_cast<int>(i) == d;
    ok = dash ? id[i] == '-' : std::isxdigit(static_cast<unsigned char>(id[i])) != 0;
  }
  if (!ok) return absl::InvalidArgumentError(absl::StrCat("malformed tenant id '", id, "'"));
  return absl::OkStatus();
}

}  // namespace

QuotaStore::QuotaStore(PgPool& pool) : pool_(pool) {
  // One statement, one round trip: take a slot if there is one and this sandbox holds none,
  // and record the reservation. A concurrent Admit of the same sandbox id that slipped past the
  // NOT EXISTS fails on the reservation's primary key, which undoes its whole statement.
  pool_.Prepare("quota_admit",
                "WITH t AS (UPDATE quota.usage u SET active = u.active + 1 FROM quota.limits l "
                "WHERE u.tenant_id = $2 AND l.tenant_id = $2 AND u.active < l.max_concurrent "
                "AND NOT EXISTS (SELECT 1 FROM quota.reservations WHERE sandbox_id = $1) "
                "RETURNING u.active, l.max_concurrent), "
                "r AS (INSERT INTO quota.reservations (sandbox_id, tenant_id) "
                "SELECT $1, $2 FROM t) SELECT active, max_concurrent FROM t");
  pool_.Prepare("quota_list_reservations",
                "SELECT sandbox_id, tenant_id::text FROM quota.reservations "
                "WHERE created_at <= now() - $1::integer * interval '1 second' AND sandbox_id > $2 "
                "ORDER BY sandbox_id LIMIT $3");
  pool_.Prepare("quota_holds",
                "SELECT 1 FROM quota.reservations WHERE sandbox_id = $1");
  pool_.Prepare("quota_usage",
                "SELECT coalesce(u.active, 0), l.max_concurrent, l.creates_per_sec, "
                "l.requests_per_sec FROM quota.limits l "
                "LEFT JOIN quota.usage u ON u.tenant_id = l.tenant_id WHERE l.tenant_id = $1");
  pool_.Prepare("quota_release",
                "WITH r AS (DELETE FROM quota.reservations WHERE sandbox_id = $1 "
                "RETURNING tenant_id) "
                "UPDATE quota.usage u SET active = u.active - 1 FROM r "
                "WHERE u.tenant_id = r.tenant_id RETURNING u.active");
}

absl::StatusOr<AdmitResult> QuotaStore::Admit(const std::string& tenant_id,
                                              const std::string& sandbox_id) {
  if (absl::Status s = CheckUuid(tenant_id); !s.ok()) return s;
  if (sandbox_id.empty()) return absl::InvalidArgumentError("sandbox id is empty");
  AdmitResult result;
  absl::Status status = pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
    result = AdmitResult{};
    pqxx::result taken;
    try {
      taken = tx.exec_prepared("quota_admit", sandbox_id, tenant_id);
    } catch (const pqxx::unique_violation&) {
      // A concurrent Admit of this sandbox won; fall through to the explanation below.
    }
    if (!taken.empty()) {
      result.active = taken[0][0].as<int>();
      result.limit = taken[0][1].as<int>();
      return absl::OkStatus();
    }
    // Nothing taken: the tenant is unknown, the sandbox already holds a slot, or it is full.
    auto usage = tx.exec_prepared("quota_usage", tenant_id);
    if (usage.empty()) {
      return absl::NotFoundError(absl::StrCat("tenant ", tenant_id, " has no limits"));
    }
    result.active = usage[0][0].as<int>();
    result.limit = usage[0][1].as<int>();
    if (!tx.exec_prepared("quota_holds", sandbox_id).empty()) {
      result.already_admitted = true;
      return absl::OkStatus();
    }
    return Error(absl::StatusCode::kResourceExhausted, "CONCURRENT_SANDBOX_LIMIT",
                 absl::StrCat("tenant has ", result.active, " of ", result.limit,
                              " concurrent sandboxes; destroy one or retry later"),
                 result.limit, result.active, kRetryAfterSec);
  });
  if (!status.ok()) return status;
  return result;
}

absl::StatusOr<bool> QuotaStore::Release(const std::string& sandbox_id) {
  bool released = false;
  absl::Status status = pool_.Execute([&](pqxx::nontransaction& tx) {
    released = !tx.exec_prepared("quota_release", sandbox_id).empty();
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return released;
}

absl::StatusOr<UsageInfo> QuotaStore::GetUsage(const std::string& tenant_id) {
  if (absl::Status s = CheckUuid(tenant_id); !s.ok()) return s;
  UsageInfo info;
  absl::Status status = pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
    auto r = tx.exec_prepared("quota_usage", tenant_id);
    if (r.empty()) return absl::NotFoundError(absl::StrCat("tenant ", tenant_id, " has no limits"));
    info.active = r[0][0].as<int>();
    info.limits.max_concurrent = r[0][1].as<int>();
    info.limits.creates_per_sec = r[0][2].as<double>();
    info.limits.requests_per_sec = r[0][3].as<double>();
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return info;
}

}  // namespace isorun::quota

namespace isorun::quota {

absl::StatusOr<TenantLimits> QuotaStore::GetLimits(const std::string& tenant_id) {
  auto usage = GetUsage(tenant_id);
  if (!usage.ok()) return usage.status();
  return usage->limits;
}

}  // namespace isorun::quota

namespace isorun::quota {

absl::StatusOr<std::vector<QuotaStore::ReservationRow>> QuotaStore::ListReservations(
    int older_than_sec, const std::string& after, int limit) {
  std::vector<ReservationRow> rows;
  absl::Status s = pool_.Execute([&](pqxx::nontransaction& tx) {
    rows.clear();
    for (const auto& r : tx.exec_prepared("quota_list_reservations", older_than_sec, after, limit)) {
      rows.push_back({r[0].as<std::string>(), r[1].as<std::string>()});
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return rows;
}

}  // namespace isorun::quota
