#pragma once

// Admission of concurrent sandboxes, on Postgres (schema `quota`).
//
// Exactness: Admit locks the tenant's usage row, inserts a reservation keyed by sandbox id and
// raises the usage only while it is below the limit, in one transaction (quota.admit_many). The
// row lock serializes admissions of one tenant, so no interleaving admits past the limit; the reservation's primary key makes a retried Admit or Release
// a no-op. `usage.active` always equals the tenant's reservation count.
//
// Durability: these transactions commit asynchronously. The lifecycle service's RUNNING transition
// commits synchronously in the same Postgres cluster after Admit returns, and WAL is flushed in
// order, so an admission is durable before its sandbox is acknowledged; one lost in a crash belongs
// to a create that was never acknowledged, and the reconciler repairs it.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/kit/pg.h"

namespace isorun::quota {

struct TenantLimits {
  int max_concurrent = 0;
  double creates_per_sec = 0;
  double requests_per_sec = 0;
  int max_concurrent_execs = 0;
  int max_hibernated = 0;
  int hibernation_retention_sec = 0;
};

struct AdmitResult {
  int active = 0;
  int limit = 0;
  bool already_admitted = false;
};

struct UsageInfo {
  int active = 0;
  TenantLimits limits;
};

class QuotaStore {
 public:
  // Registers its statements on `pool`; construct before the pool's first query.
  explicit QuotaStore(PgPool& pool);

  // RESOURCE_EXHAUSTED (reason CONCURRENT_SANDBOX_LIMIT, with limit, current, retry-after) when the
  // tenant is at its limit; NOT_FOUND when the tenant has no limits row.
  absl::StatusOr<AdmitResult> Admit(const std::string& tenant_id, const std::string& sandbox_id);

  // True when a reservation was released, false when there was none.
  absl::StatusOr<bool> Release(const std::string& sandbox_id);

  // Admit and Release for many sandboxes in one statement each; every item gets the result it
  // would have had alone, in order. Admission stays exact: each tenant's usage row is locked once
  // for the whole batch (see migrations/0006_quota_admit_many.sql).
  struct AdmitItem {
    std::string tenant_id;
    std::string sandbox_id;
  };
  std::vector<absl::StatusOr<AdmitResult>> AdmitMany(const std::vector<AdmitItem>& items);
  std::vector<absl::StatusOr<bool>> ReleaseMany(const std::vector<std::string>& sandbox_ids);

  absl::StatusOr<UsageInfo> GetUsage(const std::string& tenant_id);
  absl::StatusOr<TenantLimits> GetLimits(const std::string& tenant_id);

  struct ReservationRow {
    std::string sandbox_id;
    std::string tenant_id;
  };
  // Reservations at least `older_than_sec` old with sandbox id > `after`, by sandbox id.
  absl::StatusOr<std::vector<ReservationRow>> ListReservations(int older_than_sec,
                                                               const std::string& after,
                                                               int limit);

 private:
  PgPool& pool_;
};

}  // namespace isorun::quota
