#pragma once

// Schema migrations: the ordered files of migrations/ (embedded into the binary at build time),
// applied once each in its own transaction, recorded with a SHA-256 checksum, under a Postgres
// advisory lock so that replicas (or several isorunctl runs) starting together do not race. An
// applied migration whose file changed is an error, never silently skipped.

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace isorun {

struct Migration {
  int version = 0;
  std::string name;  // file name, e.g. "0002_quota.sql"
  std::string sql;
};

// The migrations built into this binary, in version order.
const std::vector<Migration>& EmbeddedMigrations();

// The newest embedded version: what services require at start.
int LatestMigrationVersion();

struct MigrationStatus {
  int version = 0;
  std::string name;
  bool applied = false;
  std::string applied_at;  // empty when pending
  bool checksum_mismatch = false;
};

// Applies pending migrations; returns the names applied (empty when up to date).
absl::StatusOr<std::vector<std::string>> ApplyMigrations(const std::string& database_url);

// Lists every embedded migration with whether it is applied.
absl::StatusOr<std::vector<MigrationStatus>> GetMigrationStatus(const std::string& database_url);

}  // namespace isorun
