#include "quotas/quota_store.h"

#include <set>

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
  // One statement, one round trip, for any number of sandboxes (see the migration).
  pool_.Prepare("quota_admit_many",
                "SELECT o_ord, o_outcome, o_active, o_limit "
                "FROM quota.admit_many($1::text[], $2::uuid[])");
  pool_.Prepare("quota_list_reservations",
                "SELECT sandbox_id, tenant_id::text FROM quota.reservations "
                "WHERE created_at <= now() - $1::integer * interval '1 second' AND sandbox_id > $2 "
                "ORDER BY sandbox_id LIMIT $3");
  pool_.Prepare("quota_usage",
                "SELECT coalesce(u.active, 0), l.max_concurrent, l.creates_per_sec, "
                "l.requests_per_sec, l.max_concurrent_execs, l.max_hibernated, "
                "l.hibernation_retention_sec FROM quota.limits l "
                "LEFT JOIN quota.usage u ON u.tenant_id = l.tenant_id WHERE l.tenant_id = $1");
  pool_.Prepare("quota_release_many",
                "WITH r AS (DELETE FROM quota.reservations WHERE sandbox_id = ANY($1::text[]) "
                "RETURNING sandbox_id, tenant_id), "
                "c AS (SELECT tenant_id, count(*)::integer AS n FROM r GROUP BY tenant_id), "
                "u AS (UPDATE quota.usage u SET active = u.active - c.n FROM c "
                "WHERE u.tenant_id = c.tenant_id) "
                "SELECT sandbox_id FROM r");
}

absl::StatusOr<AdmitResult> QuotaStore::Admit(const std::string& tenant_id,
                                              const std::string& sandbox_id) {
  return AdmitMany({{tenant_id, sandbox_id}})[0];
}

absl::StatusOr<bool> QuotaStore::Release(const std::string& sandbox_id) {
  return ReleaseMany({sandbox_id})[0];
}

std::vector<absl::StatusOr<AdmitResult>> QuotaStore::AdmitMany(
    const std::vector<AdmitItem>& items) {
  std::vector<absl::StatusOr<AdmitResult>> out(items.size(), AdmitResult{});
  // Bad items get their error here and stay out of the statement.
  std::vector<size_t> valid;
  std::vector<std::string> ids, tenants;
  for (size_t i = 0; i < items.size(); ++i) {
    if (absl::Status s = CheckUuid(items[i].tenant_id); !s.ok()) {
      out[i] = s;
    } else if (items[i].sandbox_id.empty()) {
      out[i] = absl::InvalidArgumentError("sandbox id is empty");
    } else {
      valid.push_back(i);
      ids.push_back(items[i].sandbox_id);
      tenants.push_back(items[i].tenant_id);
    }
  }
  if (valid.empty()) return out;
  std::vector<std::string> outcomes(valid.size());
  std::vector<AdmitResult> results(valid.size());
  absl::Status status = pool_.Execute([&](pqxx::nontransaction& tx) -> absl::Status {
    for (const auto& row :
         tx.exec_prepared("quota_admit_many", PgTextArray(ids), PgTextArray(tenants))) {
      size_t k = row[0].as<size_t>() - 1;
      if (k >= valid.size()) continue;
      outcomes[k] = row[1].as<std::string>();
      results[k].active = row[2].as<int>();
      results[k].limit = row[3].as<int>();
      results[k].already_admitted = outcomes[k] == "HELD";
    }
    return absl::OkStatus();
  });
  for (size_t k = 0; k < valid.size(); ++k) {
    const size_t i = valid[k];
    const AdmitResult& r = results[k];
    if (!status.ok()) {
      out[i] = status;
    } else if (outcomes[k] == "ADMITTED" || outcomes[k] == "HELD") {
      out[i] = r;
    } else if (outcomes[k] == "FULL") {
      out[i] = Error(absl::StatusCode::kResourceExhausted, "CONCURRENT_SANDBOX_LIMIT",
                     absl::StrCat("tenant has ", r.active, " of ", r.limit,
                                  " concurrent sandboxes; destroy one or retry later"),
                     r.limit, r.active, kRetryAfterSec);
    } else if (outcomes[k] == "NO_TENANT") {
      out[i] = absl::NotFoundError(absl::StrCat("tenant ", items[i].tenant_id, " has no limits"));
    } else {
      out[i] = absl::InternalError("admission gave no outcome for this sandbox");
    }
  }
  return out;
}

std::vector<absl::StatusOr<bool>> QuotaStore::ReleaseMany(
    const std::vector<std::string>& sandbox_ids) {
  std::set<std::string> released;
  absl::Status status = pool_.Execute([&](pqxx::nontransaction& tx) {
    released.clear();
    for (const auto& row : tx.exec_prepared("quota_release_many", PgTextArray(sandbox_ids))) {
      released.insert(row[0].as<std::string>());
    }
    return absl::OkStatus();
  });
  std::vector<absl::StatusOr<bool>> out;
  for (const auto& id : sandbox_ids) {
    if (!status.ok()) {
      out.push_back(status);
    } else {
      // A sandbox named twice is released once: the first mention reports it.
      out.push_back(released.erase(id) > 0);
    }
  }
  return out;
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
    info.limits.max_concurrent_execs = r[0][4].as<int>();
    info.limits.max_hibernated = r[0][5].as<int>();
    info.limits.hibernation_retention_sec = r[0][6].as<int>();
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
