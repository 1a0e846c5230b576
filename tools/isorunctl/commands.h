#pragma once

// What isorunctl does, one function per command. Each takes the database URL and the stream for
// its normal output (stdout in the binary), validates its input before touching the database
// (UsageError on bad input), and returns a status whose message is what the user sees.
//
// isorunctl is the one process that writes several services' schemas (accounts, quota,
// scheduler): it is the operator's hand, run rarely, and every write is a single transaction.

#include <optional>
#include <ostream>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace isorun::ctl {

enum class Format { kTable, kJson };

// Defaults of `tenants create` (also the column defaults of quota.limits).
inline constexpr int kDefaultMaxConcurrent = 10;
inline constexpr double kDefaultCreatesPerSec = 5;
inline constexpr double kDefaultRequestsPerSec = 50;
inline constexpr int kDefaultMaxConcurrentExecs = 32;
inline constexpr int kDefaultMaxHibernated = 10;
inline constexpr int kDefaultHibernationRetentionSec = 7 * 24 * 3600;

struct LimitsUpdate {
  std::optional<int> max_concurrent;
  std::optional<double> creates_per_sec;
  std::optional<double> requests_per_sec;
  std::optional<int> max_concurrent_execs;
  std::optional<int> max_hibernated;
  std::optional<int> hibernation_retention_sec;

  bool empty() const {
    return !max_concurrent.has_value() && !creates_per_sec.has_value() &&
           !requests_per_sec.has_value() && !max_concurrent_execs.has_value() &&
           !max_hibernated.has_value() && !hibernation_retention_sec.has_value();
  }
};

// `migrate`: applies pending migrations, printing "applied NAME" for each, or "up to date".
absl::Status Migrate(const std::string& database_url, std::ostream& out);
// `migrate --status`: VERSION NAME STATUS APPLIED_AT NOTE, NOTE "CHANGED" on checksum mismatch.
absl::Status MigrationStatusTable(const std::string& database_url, std::ostream& out);

// `tenants create`: the tenant, its limits (defaults for what `limits` leaves out) and its usage
// row, in one transaction. Prints the tenant id.
absl::Status CreateTenant(const std::string& database_url, const std::string& name,
                          const LimitsUpdate& limits, std::ostream& out);
// `tenants set-limits`: changes only the limits given (at least one); prints the new limits.
absl::Status SetTenantLimits(const std::string& database_url, const std::string& name,
                             const LimitsUpdate& limits, std::ostream& out);
// `tenants list`: NAME ID MAX_CONCURRENT CREATES_PER_SEC REQUESTS_PER_SEC ACTIVE, by name.
absl::Status ListTenants(const std::string& database_url, Format format, std::ostream& out);

// `keys create`: prints the new key, and nothing else, on one line. Only the secret's hash is
// stored.
absl::Status CreateKey(const std::string& database_url, const std::string& tenant,
                       const std::string& region, const std::string& role,
                       const std::string& name, std::ostream& out);
// `keys list`: KEY_ID REGION CREATED_AT REVOKED_AT, oldest first. Never the secret or its hash.
absl::Status CreateOperatorToken(const std::string& database_url, const std::string& name,
                                 std::ostream& out);

absl::Status ListKeys(const std::string& database_url, const std::string& tenant, Format format,
                      std::ostream& out);
// `keys revoke`: `key` is a key id or a whole key. Revoking a revoked key is not an error.
absl::Status RevokeKey(const std::string& database_url, const std::string& key, std::ostream& out);

struct SandboxFilter {
  std::string tenant;  // tenant name; empty: every tenant
  std::string state;   // a state, "all", or empty: live sandboxes only
};
// `sandboxes list`: ID TENANT STATE IMAGE RUNNER CREATED_AT EXPIRES_AT END_REASON, oldest first.
absl::Status ListSandboxes(const std::string& database_url, const SandboxFilter& filter,
                           Format format, std::ostream& out);

// Runner liveness from the age of its last heartbeat: "healthy" up to kHealthySec, "unhealthy" up
// to kUnhealthySec, "lost" after.
inline constexpr double kHealthySec = 10;
inline constexpr double kUnhealthySec = 60;
std::string_view RunnerLiveness(double heartbeat_age_sec);

// `capacity`: one line per runner (liveness, free/total cpu and memory, sandboxes, cached images,
// warm and cold placements), then fleet totals.
absl::Status ShowCapacity(const std::string& database_url, Format format, std::ostream& out);

// `runners drain` / `runners undrain`: `runner` is a runner name or id.
absl::Status SetRunnerDraining(const std::string& database_url, const std::string& runner,
                               bool draining, std::ostream& out);

// `sandboxes set-network`: replaces a running or hibernated sandbox's network profile through
// the lifecycle service at `lifecycle_addr` (its runner applies it at once). `allow` is a
// comma-separated list. Prints the sandbox's new profile.
absl::Status SetSandboxNetwork(const std::string& database_url, const std::string& lifecycle_addr,
                               const std::string& sandbox_id, const std::string& egress,
                               const std::string& allow, std::ostream& out);

}  // namespace isorun::ctl
