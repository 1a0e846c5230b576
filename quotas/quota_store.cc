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
  pool_.Prepare("quota_reserve",
                "INSERT INTO quota.reservations (sandbox_id, tenant_id) VALUES ($1, $2) "
                "ON CONFLICT (sandbox_id) DO NOTHING RETURNING 1");
  pool_.Prepare("quota_take",
                "UPDATE quota.usage u SET active = u.active + 1 FROM quota.limits l "
                "WHERE u.tenant_id = $1 AND l.tenant_id = $1 AND u.active < l.max_concurrent "
                "RETURNING u.active, l.max_concurrent");
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
  absl::Status status = pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    result = AdmitResult{};
    auto usage = tx.exec_prepared("quota_usage", tenant_id);
    if (usage.empty()) {
      return absl::NotFoundError(absl::StrCat("tenant ", tenant_id, " has no limits"));
    }
    auto reserved = tx.exec_prepared("quota_reserve", sandbox_id, tenant_id);
    if (reserved.empty()) {
      // A retry of an earlier admission: nothing changes.
      result.already_admitted = true;
      result.active = usage[0][0].as<int>();
      result.limit = usage[0][1].as<int>();
      return absl::OkStatus();
    }
    auto taken = tx.exec_prepared("quota_take", tenant_id);
    if (taken.empty()) {
      // Read again: the row may have changed while this transaction waited for its lock.
      auto now = tx.exec_prepared("quota_usage", tenant_id);
      int active = now[0][0].as<int>();
      int limit = now[0][1].as<int>();
      return Error(absl::StatusCode::kResourceExhausted, "CONCURRENT_SANDBOX_LIMIT",
                   absl::StrCat("tenant has ", active, " of ", limit,
                                " concurrent sandboxes; destroy one or retry later"),
                   limit, active, kRetryAfterSec);
    }
    result.active = taken[0][0].as<int>();
    result.limit = taken[0][1].as<int>();
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return result;
}

absl::StatusOr<bool> QuotaStore::Release(const std::string& sandbox_id) {
  bool released = false;
  absl::Status status = pool_.Transact([&](pqxx::work& tx) {
    released = !tx.exec_prepared("quota_release", sandbox_id).empty();
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return released;
}

absl::StatusOr<UsageInfo> QuotaStore::GetUsage(const std::string& tenant_id) {
  if (absl::Status s = CheckUuid(tenant_id); !s.ok()) return s;
  UsageInfo info;
  absl::Status status = pool_.Transact([&](pqxx::work& tx) -> absl::Status {
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
